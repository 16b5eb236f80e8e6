"""runbook completion bash|zsh|fish — print the shell completion script.

The script is generated from runbook's own argument parser by shtab (subcommands,
options, choices) and completes what only runbook knows by asking the fast helper
`runbook __complete` on Tab: runbook names (from --path, $RUNBOOK_PATH or
./playbooks), parameter names and enum values after -p, step ids after --start-at,
environments after --env (inventory/*.yaml), run ids after resume, report and
audit show.

  bash:  runbook completion bash > ~/.local/share/bash-completion/completions/runbook
  zsh:   runbook completion zsh > "${fpath[1]}/_runbook"   (then compinit)
  fish:  runbook completion fish > ~/.config/fish/completions/runbook.fish
"""

from __future__ import annotations

SHELLS = ("bash", "zsh", "fish")


def register(sub) -> None:
    import argparse

    p = sub.add_parser("completion", help="print the shell completion script (bash, zsh or fish)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS, help="the shell")
    p.set_defaults(func=run)


# What each kind of candidate is in each shell: bash calls a function with the word being
# completed (COMP_WORDS is in scope), zsh evaluates an _arguments action ($words in scope),
# fish a command substitution (commandline -opc: the words before the cursor).
_BASH = """
_runbook_complete_{kind}() {{
  local IFS=$'\\n'
  compgen -W "$(command runbook __complete {kind} -- "${{COMP_WORDS[@]:1:COMP_CWORD-1}}" 2>/dev/null)" -- "$1"
}}
"""
_ZSH = """
_runbook_complete_{kind}() {{
  local -a candidates
  candidates=(${{(f)"$(command runbook __complete {kind} -- ${{words[2,CURRENT-1]}} 2>/dev/null)"}})
  compadd {nospace}-- $candidates
}}
"""

# bash splits "-p service=api" at "=" (COMP_WORDBREAKS): parameters are completed before
# shtab's function sees the line, from the line itself.
_BASH_PARAMS = """
_runbook_complete_params_word() {
  local line="${COMP_LINE:0:COMP_POINT}"
  local cur="${line##*[[:space:]]}"
  local -a before
  read -ra before <<< "${line:0:${#line}-${#cur}}"
  local prev="${before[${#before[@]}-1]}"
  [[ "$prev" == "-p" || "$prev" == "--param" ]] || return 1
  local IFS=$'\\n' c
  local -a all
  all=($(command runbook __complete params -- "${before[@]:1}" 2>/dev/null))
  COMPREPLY=()
  for c in "${all[@]}"; do
    [[ "$c" == "$cur"* ]] || continue
    if [[ "$cur" != *=* ]]; then
      [[ "$c" == *= ]] && COMPREPLY+=("$c")
    elif [[ "$COMP_WORDBREAKS" == *=* ]]; then
      COMPREPLY+=("${c#*=}")
    else
      COMPREPLY+=("$c")
    fi
  done
  [[ "$cur" != *=* ]] && compopt -o nospace 2>/dev/null
  return 0
}

_runbook_complete() {
  _runbook_complete_params_word && return 0
  _shtab_runbook "$@"
}
complete -o bashdefault -F _runbook_complete runbook
"""


def _complete(kind: str) -> dict:
    return {
        "bash": f"_runbook_complete_{kind}",
        "zsh": f"_runbook_complete_{kind}",
        "fish": f"(command runbook __complete {kind} -- (commandline -opc)[2..-1])",
        "preamble": {
            "bash": _BASH.format(kind=kind),
            "zsh": _ZSH.format(kind=kind, nospace="-S '' " if kind == "params" else ""),
        },
    }


def _subparsers(parser):
    import argparse

    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def annotate(parser) -> None:
    """Say which arguments complete from runbook's own candidates."""
    commands = _subparsers(parser).choices
    by_dest = {"name": "runbooks", "param": "params", "start_at": "steps", "env": "envs", "run_id": "runs"}
    parsers = [p for name, p in commands.items() if name != "audit"]
    audit_sub = _subparsers(commands["audit"])
    parsers += [audit_sub.choices["show"]]
    for p in parsers:
        for action in p._actions:
            kind = by_dest.get(action.dest)
            if kind and not action.choices:
                action.complete = _complete(kind)


def script(shell: str) -> str:
    import shtab

    from runbook.cli import build_parser

    parser = build_parser("*")
    annotate(parser)
    text = shtab.complete(parser, shell=shell)
    if shell == "bash":
        text = text.rstrip("\n") + "\n" + _BASH_PARAMS
    return text


def run(args) -> int:
    import sys

    sys.stdout.write(script(args.shell))
    return 0
