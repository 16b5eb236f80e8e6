"""``runbook __complete WHAT [WORD...]``: the candidates a shell completion script asks
for on Tab (``runbook completion bash|zsh|fish`` prints the scripts; they call this).

WHAT is ``runbooks``, ``params``, ``steps``, ``envs`` or ``runs``; the WORDs are the
command line after ``runbook`` up to the word being completed (for the runbook named
there and its ``--path``).  One candidate a line; the shell filters them by what was
typed.  It must answer well under 100 ms on every Tab, so it imports no command
module, no schema, no rich: runbook names are file names (a stat of the search path),
and only parameters and step ids read one YAML file.  Errors print nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The options of every command that take a value (tests/test_complete.py checks this against
# the parsers), so that "run -p x=1 NAME" finds NAME and not the value of -p.
VALUE_OPTIONS = frozenset({
    "--alert", "--alert-rules", "--answer", "--concurrency", "--config", "--dir", "--env", "--fingerprint", "--format",
    "--host", "--inventory", "--key", "--limit", "--loglevel", "--output", "--param", "--path", "--port",
    "--read-token-file", "--stage", "--start-at", "--through", "--token-file", "-a", "-e", "-i", "-o", "-p",
})


def _option_value(words: list[str], *names: str) -> str | None:
    """The last value given to one of ``names`` (``--path DIR`` or ``--path=DIR``)."""
    found = None
    for i, w in enumerate(words):
        for n in names:
            if w == n and i + 1 < len(words):
                found = words[i + 1]
            elif w.startswith(n + "=") and n.startswith("--"):
                found = w[len(n) + 1:]
    return found


def _positionals(words: list[str]) -> list[str]:
    """The words that are not options or their values (the command first)."""
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w == "--":
            continue
        elif w.startswith("-"):
            skip = w in VALUE_OPTIONS  # "--opt=value" carries its value
        else:
            out.append(w)
    return out


def _search(words: list[str]) -> list[Path]:
    from runbook.catalog import search_path

    return search_path(_option_value(words, "--path"))


def runbooks(words: list[str]) -> list[str]:
    from runbook.catalog import runbook_files

    return sorted({f.stem for f in runbook_files(_search(words))})


def _runbook_doc(words: list[str]) -> dict:
    """The YAML of the runbook named on the line (``run NAME``: a name or a file)."""
    pos = _positionals(words)
    if len(pos) < 2:
        return {}
    name = pos[1]
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") or os.sep in name):
        from runbook.catalog import runbook_files

        path = next((f for f in runbook_files(_search(words)) if f.stem == name), None)
        if path is None:
            return {}
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, UnicodeError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def params(words: list[str]) -> list[str]:
    """``NAME=`` for every parameter, and ``NAME=VALUE`` for each value of an enum or boolean."""
    declared = _runbook_doc(words).get("params")
    out = []
    for name, p in (declared if isinstance(declared, dict) else {}).items():
        out.append(f"{name}=")
        p = p if isinstance(p, dict) else {}
        values = p.get("enum") if isinstance(p.get("enum"), list) else (
            ["true", "false"] if p.get("type") == "boolean" else [])
        out += [f"{name}={str(v).lower() if isinstance(v, bool) else v}" for v in values]
    return out


def steps(words: list[str]) -> list[str]:
    stages = _runbook_doc(words).get("stages")
    out = []
    for body in (stages.values() if isinstance(stages, dict) else []):
        for s in body if isinstance(body, list) else []:
            if isinstance(s, dict) and isinstance(s.get("id"), str):
                out.append(s["id"])
    return out


def envs(words: list[str]) -> list[str]:
    d = Path("inventory")
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def runs(words: list[str]) -> list[str]:
    """Run ids of the audit log file, newest first (a database store is not asked: too slow for Tab)."""
    if os.environ.get("RUNBOOK_AUDIT_URL") and not _option_value(words, "--dir"):
        return []
    d = _option_value(words, "--dir")
    if d:
        base = Path(d).expanduser()
    elif os.environ.get("RUNBOOK_AUDIT_DIR"):
        base = Path(os.environ["RUNBOOK_AUDIT_DIR"]).expanduser()
    elif os.environ.get("XDG_STATE_HOME"):
        base = Path(os.environ["XDG_STATE_HOME"]).expanduser() / "runbook"
    else:
        base = Path.home() / ".local" / "state" / "runbook"
    log = base if base.is_file() else base / "audit.jsonl"
    import json

    seen: dict[str, None] = {}
    try:
        with open(log, "rb") as f:
            for line in f:
                if b'"run_started"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("type") == "run_started" and isinstance(rec.get("run"), str):
                    seen[rec["run"]] = None
    except OSError:
        return []
    return list(seen)[::-1]


KINDS = {"runbooks": runbooks, "params": params, "steps": steps, "envs": envs, "runs": runs}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in KINDS:
        print(f"runbook: error: __complete takes one of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    words = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    try:
        out = KINDS[argv[0]](words)
    except Exception:  # noqa: BLE001 - a Tab must never print a traceback
        return 0
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    return 0
