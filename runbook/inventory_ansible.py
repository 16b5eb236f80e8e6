"""Ansible YAML inventories, read into runbook's inventory model.

Teams reuse what they have: a file whose top level is ``all:`` with Ansible
groups (``hosts`` / ``children`` / ``vars``) loads into the same
:class:`~runbook.inventory.Inventory` as our own format, through
:class:`_AnsibleLoader`.  Connection variables (``ansible_host``,
``ansible_port``, ``ansible_user``, ProxyJump in the ssh args) become host
settings with Ansible's precedence; passwords are masked and never used;
INI inventories, ``!vault`` values and vault-encrypted files are reported as
problems at file:line:col.
"""

from __future__ import annotations

import os
import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from runbook.errors import Problem
from runbook.inventory import (
    _NAME, _SECTIONS, Group, Host, Inventory, SshDefaults, _describe, _join, _Loader, _plain_secret, _suggest,
    jump_cycles,
)
from runbook.secrets import Secret
from runbook.yamlload import Map, Seq, load


_ANSIBLE_KEYS = ("hosts", "children", "vars")
#: Host settings read from Ansible connection variables: aliases of one setting, the preferred name first.
_ANSIBLE_CONNECTION = {
    "address": ("ansible_host", "ansible_ssh_host"),
    "port": ("ansible_port", "ansible_ssh_port"),
    "user": ("ansible_user", "ansible_ssh_user"),
}
#: Variables that become Host fields (or group order) and are therefore left out of ``vars``.
_ANSIBLE_MAPPED = frozenset(name for names in _ANSIBLE_CONNECTION.values() for name in names) | {"ansible_group_priority"}
_ANSIBLE_LOGIN_PASSWORDS = frozenset({"ansible_password", "ansible_ssh_pass", "ansible_ssh_password"})
_ANSIBLE_BECOME_PASSWORDS = frozenset({
    "ansible_become_password", "ansible_become_pass", "ansible_sudo_pass", "ansible_sudo_password",
    "ansible_su_pass", "ansible_su_password",
})
_ANSIBLE_KEY_FILES = ("ansible_ssh_private_key_file", "ansible_private_key_file")
_ANSIBLE_SSH_ARGS = ("ansible_ssh_common_args", "ansible_ssh_extra_args", "ansible_ssh_args")
_ANSIBLE_HOST_KEY_CHECKING = ("ansible_host_key_checking", "ansible_ssh_host_key_checking")
_ANSIBLE_SSH_CONNECTIONS = frozenset({
    "ssh", "smart", "paramiko", "paramiko_ssh", "ansible.builtin.ssh", "ansible.builtin.paramiko_ssh",
})
_ANSIBLE_TAGS = ("!vault", "!unsafe")  # !unsafe only stops Ansible templating: the value is kept as a string
_ANSIBLE_INI_HINT = "Ansible INI inventories are not supported; convert with `ansible-inventory -i {path} --list -y`"
_INI_SECTION = re.compile(r"\[[^\[\]\s,]+\]\s*(?:[#;].*)?")  # [group], [group:vars], [group:children]
_INI_HOST_LINE = re.compile(r"[^\s#;=\[\-][^\s=]*(?<!:)(?:\s+[A-Za-z_][A-Za-z0-9_]*=\S*)+")  # web-1 ansible_host=...
_HOST_RANGE = re.compile(r"\[([^\[\]]*)\]")
_SSH_OPTIONS_WITH_ARGUMENT = "BbcDEeFIiJLlmOoPpQRSWw"
_MAX_EXPANDED_HOSTS = 10_000



def mapping() -> list[tuple[str, str]]:
    """How an Ansible YAML inventory maps onto runbook's model, as (what Ansible
    has, what runbook makes of it), for the reference
    (``runbook schema --inventory --markdown``). Built from the names this
    module reads, so the table names exactly what the loader honours."""

    def names(items: Iterable[str]) -> str:
        return ", ".join(f"`{name}`" for name in sorted(items))

    connection = {key: ", ".join(f"`{name}`" for name in aliases) for key, aliases in _ANSIBLE_CONNECTION.items()}
    return [
        ("`all:` at the top (or only groups with `hosts`, `children`, `vars`)",
         "read as an Ansible inventory; it cannot be mixed with runbook sections in one file"),
        ("a group (`hosts`, `children`, `vars`)", "a group holding its own hosts and its children's; `all` holds every host, "
         "`ungrouped` those in no other group"),
        ("host patterns `web[01:03]`, `db-[a:c]`, `[1:9:2]`; `name:port`",
         f"expanded as Ansible does (at most {_MAX_EXPANDED_HOSTS:,} hosts per pattern)"),
        (connection["address"], "the host's `address` (else its name)"),
        (connection["port"], "the host's `port`"),
        (connection["user"], "the host's `user`"),
        ("where those are set", "the host's own value, else its deepest group's (`ansible_group_priority` orders "
         "siblings), else `all.vars`, which also give the `ssh` defaults"),
        (names(_ANSIBLE_KEY_FILES) + " in `all.vars`", "`ssh.identity_file` (set per host or group: ignored, with a warning; "
         "use an ssh-agent)"),
        (names(_ANSIBLE_SSH_ARGS) + " with `-o ProxyJump=H`, `-J H` or an `ssh -W` ProxyCommand",
         "the host's `jump_host` when H is a host of the file (by name or address); else a warning and a direct connection"),
        (names(_ANSIBLE_LOGIN_PASSWORDS) + ", " + names(_ANSIBLE_BECOME_PASSWORDS),
         "masked and never used, with a warning: runbook logs in with SSH keys only"),
        (names(_ANSIBLE_HOST_KEY_CHECKING) + " false", "ignored, with a warning: host keys are always checked"),
        ("`ansible_connection` other than " + names(_ANSIBLE_SSH_CONNECTIONS), "a warning: runbook reaches hosts over SSH only"),
        ("every other variable", "the host's or group's `vars` (secret-looking values masked, with a warning)"),
        ("values with Jinja templates (`{{ … }}`)", "not evaluated: a variable keeps the text; a connection setting is "
         "ignored, with a warning"),
        ("`!unsafe`", "the value as a plain string"),
        ("`!vault` values, vault-encrypted files, INI inventories",
         "errors at file:line:col (convert INI with `ansible-inventory -i FILE --list -y`)"),
        ("`group_vars/` and `host_vars/` folders, dynamic inventory plugins", "not read"),
    ]

def _is_ansible(data: Any) -> bool:
    """Whether loaded YAML is an Ansible inventory: ``all:`` or only groups
    at the top. A top-level key named like one of our sections (``vars``,
    ``databases``, ...) must then hold an Ansible group (hosts/children/vars)."""
    if not isinstance(data, Map) or not data:
        return False

    def group(value: Any) -> bool:
        return isinstance(value, Map) and bool(value) and set(value) <= set(_ANSIBLE_KEYS)

    if "all" in data:
        return all(group(value) for key, value in data.items() if key in _SECTIONS)
    return all(key not in _SECTIONS and group(value) for key, value in data.items())


def _foreign_format(path: Path, data: Any) -> Problem | None:
    """One clear problem for a file that is not YAML data at all but an
    Ansible INI inventory or a vault-encrypted file; ``None`` otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError):
        return None
    if text.lstrip().startswith("$ANSIBLE_VAULT;"):
        return Problem(str(path), 1, 1, "this file is encrypted with ansible-vault, which runbook cannot decrypt;"
                                        " keep the inventory in plain text and put secrets in environment variables"
                                        " ({env: NAME} in a runbook inventory)")
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if _INI_SECTION.fullmatch(line.rstrip()):
            return Problem(str(path), number, 1, _ANSIBLE_INI_HINT.format(path=path))
    if isinstance(data, str):  # INI host lines without a [group] header read as one YAML string
        for number, line in enumerate(lines, 1):
            if _INI_HOST_LINE.fullmatch(line.strip()):
                return Problem(str(path), number, 1, _ANSIBLE_INI_HINT.format(path=path))
    return None


def _load_tagged(path: Path, problems: list[Problem]) -> tuple[Any, list[Problem], set[tuple[int, int]]]:
    """Reload a file that uses Ansible's ``!vault`` or ``!unsafe`` tags, which
    the safe loader refuses. Each tag is overwritten in place by ``!!str``
    (so every line and column stays put), every ``!vault`` value becomes an
    error at its position, and the rest of the file is checked as usual.
    Returns ``(data, problems, positions of the vaulted values)``."""
    try:
        text = path.read_text(encoding="utf-8")
        tagged: list[tuple[yaml.Node, str]] = []
        _tagged_nodes(yaml.compose(text, Loader=yaml.SafeLoader), "", tagged, set())
    except (OSError, UnicodeError, yaml.YAMLError, RecursionError):
        return None, problems, set()
    if not tagged:
        return None, problems, set()
    patched, end = [], 0
    for node, _ in sorted(tagged, key=lambda item: item[0].start_mark.index):
        start = node.start_mark.index
        if text.startswith(node.tag, start):
            patched += [text[end:start], "!!str".ljust(len(node.tag))]
            end = start + len(node.tag)
    data, problems = load("".join(patched) + text[end:], str(path))
    vaulted: set[tuple[int, int]] = set()
    for node, where in tagged:
        if node.tag == "!vault":
            pos = (node.start_mark.line + 1, node.start_mark.column + 1)
            vaulted.add(pos)
            problems.append(Problem(str(path), *pos, f"{where}: vaulted values (!vault) are not supported, runbook cannot"
                                                     " decrypt Ansible Vault; put the secret in an environment variable"
                                                     " and use {env: NAME} in a runbook inventory"))
    return data, problems, vaulted


def _tagged_nodes(node: Any, where: str, out: list[tuple[Any, str]], seen: set[int]) -> None:
    """Collect the scalar nodes tagged ``!vault`` or ``!unsafe`` with their dotted key paths."""
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        if node.tag in _ANSIBLE_TAGS:
            out.append((node, where or "value"))
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _tagged_nodes(value, _join(where, key.value if isinstance(key, yaml.ScalarNode) else "?"), out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _tagged_nodes(item, f"{where}[{i}]", out, seen)


def _expand_host_pattern(pattern: str) -> list[str]:
    """Ansible host ranges: ``web[01:03].x`` -> web01.x, web02.x, web03.x;
    ``[a:c]`` letters; ``[1:9:2]`` with a step. Raises ValueError."""
    m = _HOST_RANGE.search(pattern)
    if m is None:
        return [pattern]
    head, tail, spec = pattern[:m.start()], pattern[m.end():], m.group(1)
    bounds = spec.split(":")
    if len(bounds) not in (2, 3):
        raise ValueError(f"host range [{spec}] must be [begin:end] or [begin:end:step]")
    begin, end, step = bounds[0] or "0", bounds[1], bounds[2] if len(bounds) == 3 else "1"
    if not end:
        raise ValueError(f"host range [{spec}] has no end")
    if not step.isdigit() or int(step) < 1:
        raise ValueError(f"host range [{spec}]: the step must be a whole number of at least 1")
    if begin.isdigit() and end.isdigit():
        width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
        if width and len(end) != width:
            raise ValueError(f"host range [{spec}]: a zero-padded begin and its end must have the same length")
        numbers = range(int(begin), int(end) + 1, int(step))
        if len(numbers) > _MAX_EXPANDED_HOSTS:  # count before building anything
            raise ValueError(f"host pattern expands to more than {_MAX_EXPANDED_HOSTS} hosts")
        values = [str(i).zfill(width) for i in numbers]
    elif len(begin) == 1 and len(end) == 1 and begin in string.ascii_letters and end in string.ascii_letters:
        values = list(string.ascii_letters[string.ascii_letters.index(begin):string.ascii_letters.index(end) + 1:int(step)])
    else:
        raise ValueError(f"host range [{spec}] must go from a number to a number or from a letter to a letter")
    if not values:
        raise ValueError(f"host range [{spec}] is empty (its begin is after its end)")
    names: list[str] = []
    for value in values:
        names += _expand_host_pattern(head + value + tail)
        if len(names) > _MAX_EXPANDED_HOSTS:
            raise ValueError(f"host pattern expands to more than {_MAX_EXPANDED_HOSTS} hosts")
    return names


def _ssh_proxy(args: str) -> tuple[str | None, str | None]:
    """The jump host named in ssh options: ``-o ProxyJump=NAME``, ``-J NAME``
    or ``-o ProxyCommand="ssh -W %h:%p NAME"``. Returns ``(NAME, note)``;
    NAME is ``None`` when there is no usable proxy, and ``note`` says why
    a proxy that is there cannot be used as such."""
    try:
        tokens = shlex.split(args)
    except ValueError:
        return None, "cannot be read as ssh options (unbalanced quotes?), so any proxy in it is ignored"
    options: list[tuple[str, str]] = []
    it = iter(tokens)
    for token in it:
        if token in ("-J", "-o"):
            flag, arg = token, next(it, "")
        elif token.startswith(("-J", "-o")):
            flag, arg = token[:2], token[2:]
        else:
            continue
        if flag == "-J":
            options.append(("proxyjump", arg))
        elif m := re.fullmatch(r"\s*([A-Za-z]+)\s*(?:=\s*|\s+)(.*)", arg, re.DOTALL):
            options.append((m.group(1).lower(), m.group(2).strip()))
    for key, value in options:  # like ssh, the first proxy setting counts
        if key not in ("proxyjump", "proxycommand"):
            continue
        if value.lower() == "none":
            return None, None
        if key == "proxyjump":
            hops = [hop.strip() for hop in value.split(",") if hop.strip()]
            if not hops:
                return None, None
            note = (f"ProxyJump through {len(hops)} hosts: runbook only uses the last one, '{_ssh_destination(hops[-1])}';"
                    " give that host its own ProxyJump for the hops before it") if len(hops) > 1 else None
            return _ssh_destination(hops[-1]), note
        return _proxy_command_destination(value)
    return None, None


def _proxy_command_destination(command: str) -> tuple[str | None, str | None]:
    """The host a ``ProxyCommand`` of the form ``ssh [options] HOST ...`` goes through."""
    unusable = "a ProxyCommand that does not run ssh is not supported, so runbook connects directly"
    try:
        tokens = shlex.split(command)
    except ValueError:
        return None, unusable
    if tokens[:1] == ["exec"]:
        tokens = tokens[1:]
    if not tokens or os.path.basename(tokens[0]) != "ssh":
        return None, unusable
    i = 1
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("-") and len(token) > 1:
            for j, letter in enumerate(token[1:], 1):
                if letter in _SSH_OPTIONS_WITH_ARGUMENT:
                    i += 1 if j < len(token) - 1 else 2  # -pPORT, or -p PORT
                    break
            else:
                i += 1
            continue
        return _ssh_destination(token), None
    return None, unusable


def _ssh_destination(text: str) -> str:
    """The host of ``[ssh://][user@]host[:port]``."""
    text = text.removeprefix("ssh://").rpartition("@")[2]
    if text.startswith("[") and "]" in text:
        return text[1:text.index("]")]
    return text.split(":")[0] if text.count(":") == 1 else text


@dataclass
class _AVar:
    """One Ansible variable as written: its checked value, position and dotted path."""

    value: Any
    pos: tuple[int, int]
    where: str


@dataclass
class _AGroup:
    pos: tuple[int, int]
    where: str
    hosts: list[str] = field(default_factory=list)  # direct members, in file order
    children: dict[str, tuple[tuple[int, int], str]] = field(default_factory=dict)  # name -> (position, path)
    vars: dict[str, _AVar] = field(default_factory=dict)
    priority: int = 1


@dataclass
class _AHost:
    pos: tuple[int, int]
    where: str
    vars: dict[str, _AVar] = field(default_factory=dict)
    port: _AVar | None = None  # from a ``name:port`` host pattern


class _AnsibleLoader(_Loader):
    """Turns an Ansible YAML inventory into an :class:`Inventory`.

    * Groups nest under ``children``; a group may be written in several
      places (its hosts, children and vars merge). The implicit ``all`` holds
      every host and ``ungrouped`` the hosts that are in no other group.
      ``Group.hosts`` lists a group's own hosts, then those of its
      descendants, breadth first, as Ansible does.
    * Host patterns ``web[01:03]`` and ``name:port`` expand as in Ansible; a
      host written under several groups is one :class:`Host` whose variables
      merge (a later value wins, with a warning when it differs).
    * ``Host.groups`` is in Ansible's variable order (depth from ``all``, then
      ``ansible_group_priority``, then name), so ``host_vars`` layers all <
      parent groups < child groups < host, like Ansible.
    * ``address``/``port``/``user`` come from ``ansible_host``/``ansible_port``/
      ``ansible_user`` (or their ``ansible_ssh_*`` aliases), taken from the most
      specific level that sets them; those variables leave ``vars``, every
      other variable stays. ``jump_host`` comes from a ProxyJump (or an
      ``ssh -W`` ProxyCommand) in ``ansible_ssh_common_args``/``_extra_args``
      when it names a host of the inventory (by name or address).
    * Passwords (``ansible_password``, ``ansible_become_password``, ...) are
      kept masked as secrets, unused, with a warning recommending key
      authentication; other secret-looking values are masked with a warning.
    """

    def __init__(self, path: Path, vaulted: set[tuple[int, int]] | None = None):
        super().__init__(path)
        self.vaulted = vaulted or set()
        self.agroups: dict[str, _AGroup] = {}
        self.ahosts: dict[str, _AHost] = {}
        self._reported: set[Problem] = set()

    # A group variable applies to many hosts: report each problem once.
    def error(self, pos: tuple[int, int], message: str) -> None:
        self._report(Problem(self.file, pos[0], pos[1], message))

    def warn(self, pos: tuple[int, int], message: str, rule: str) -> None:
        self._report(Problem(self.file, pos[0], pos[1], message, "warning", rule))

    def _report(self, problem: Problem) -> None:
        if problem not in self._reported:
            self._reported.add(problem)
            self.problems.append(problem)

    # -- the whole file -------------------------------------------------------

    def build(self, data: Map) -> Inventory | None:
        if "_meta" in data:
            self.error(data.kpos("_meta"), "this is the JSON output of `ansible-inventory --list`; write the YAML inventory"
                                           f" format instead: `ansible-inventory -i FILE --list -y > {self.path.name}`")
            return None
        self.agroups["all"] = _AGroup(data.kpos("all") if "all" in data else (1, 1), "all")
        self.agroups["ungrouped"] = _AGroup((1, 1), "ungrouped")
        for name, value in data.items():
            self.group(name, value, data.kpos(name), str(name), None)
        for folder in ("group_vars", "host_vars"):
            if (self.path.parent / folder).is_dir():
                self.warn((1, 1), f"{folder}/ next to this inventory is not read by runbook: its variables (connection"
                                  " settings such as ansible_user too) do not apply; move what runbooks need into this file",
                          "inventory")
        for name, group in self.agroups.items():
            if name in self.ahosts:
                self.error(group.pos, f"{group.where}: '{name}' is both a host and a group; rename one")
        parents = self.link_groups()
        members, host_groups = self.memberships(parents)
        settings = {name: self.connection(name, host_groups[name]) for name in self.ahosts}
        jumps = self.jump_hosts_of(host_groups, {name: s["address"] for name, s in settings.items()})
        ssh = self.ssh_defaults()
        self.other_settings(host_groups)
        if any(p.severity == "error" for p in self.problems):
            return None

        def plain(variables: dict[str, _AVar]) -> dict[str, Any]:
            return {key: var.value for key, var in variables.items() if key not in _ANSIBLE_MAPPED}

        return Inventory(
            path=self.path,
            env=self.path.stem,
            vars=plain(self.agroups["all"].vars),
            ssh=ssh,
            hosts={
                name: Host(
                    name=name,
                    address=settings[name]["address"] or name,
                    port=settings[name]["port"] or ssh.port,
                    user=settings[name]["user"] or ssh.user,
                    groups=host_groups[name],
                    vars=plain(host.vars),
                    jump_host=jumps[name],
                )
                for name, host in self.ahosts.items()
            },
            groups={name: Group(name=name, hosts=members[name], vars=plain(group.vars)) for name, group in self.agroups.items()},
            secret_sources=self.secrets,
        )

    # -- reading groups and hosts -------------------------------------------------

    def group(self, name: Any, value: Any, pos: tuple[int, int], where: str, parent: str | None) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            self.error(pos, f"{where}: invalid group name '{name}' (use letters, digits, '.', '_' and '-')")
            return
        if parent is not None:
            if name == "all":
                self.error(pos, f"{where}: 'all' holds every group and cannot be the child of another")
                return
            self.agroups[parent].children.setdefault(name, (pos, where))
        group = self.agroups.get(name)
        if group is None:
            group = self.agroups[name] = _AGroup(pos, where)
        elif group.pos == (1, 1) and name == "ungrouped":
            group.pos, group.where = pos, where
        if value is None:
            return
        if not isinstance(value, Map):
            self.error(pos, f"{where}: a group must be a mapping with hosts, children and/or vars,"
                            f" got {_describe(value, show=False)}")
            return
        for key in value:
            if key not in _ANSIBLE_KEYS:
                hint = _suggest(key, _ANSIBLE_KEYS) or " (a group has only hosts, children and vars)"
                self.error(value.kpos(key), f"{where}: unknown key '{key}'{hint}")
        variables = value.get("vars")
        if isinstance(variables, Map):
            self.variables(group.vars, variables, f"{where}.vars")
        elif variables is not None:
            self.error(value.vpos("vars"), f"{where}.vars: must be a mapping of variables, got {_describe(variables, show=False)}")
        hosts = value.get("hosts")
        if isinstance(hosts, Map):
            for pattern, host_vars in hosts.items():
                self.host(pattern, host_vars, hosts.kpos(pattern), hosts.vpos(pattern), f"{where}.hosts.{pattern}", group)
        elif hosts is not None:
            hint = "; write each host as a key (`api-1:` on its own line)" if isinstance(hosts, (Seq, str)) else ""
            self.error(value.vpos("hosts"), f"{where}.hosts: must be a mapping of host names to their variables,"
                                            f" got {_describe(hosts, show=False)}{hint}")
        children = value.get("children")
        if isinstance(children, Map):
            for child, child_value in children.items():
                self.group(child, child_value, children.kpos(child), f"{where}.children.{child}", name)
        elif children is not None:
            hint = "; write each group as a key (`canary:` on its own line)" if isinstance(children, (Seq, str)) else ""
            self.error(value.vpos("children"), f"{where}.children: must be a mapping of group names,"
                                               f" got {_describe(children, show=False)}{hint}")

    def host(self, pattern: Any, value: Any, kpos: tuple[int, int], vpos: tuple[int, int], where: str, group: _AGroup) -> None:
        if not isinstance(pattern, str):
            self.error(kpos, f"{where}: a host name must be a string, got {_describe(pattern)}; quote it")
            return
        port = None
        m = re.fullmatch(r"(.+):([0-9]+)", pattern)
        if m and ":" not in _HOST_RANGE.sub("", m.group(1)):  # name:port (an IPv6 address has more colons)
            pattern, port = m.group(1), int(m.group(2))
            if not 1 <= port <= 65535:
                self.error(kpos, f"{where}: the port must be from 1 to 65535, got {port}")
                port = None
        try:
            names = _expand_host_pattern(pattern)
        except ValueError as exc:
            self.error(kpos, f"{where}: {exc}")
            return
        if value is None:
            value = Map()
        if not isinstance(value, Map):
            self.error(vpos, f"{where}: host variables must be a mapping such as {{ansible_host: 192.0.2.10}},"
                             f" got {_describe(value, show=False)}")
            return
        variables: dict[str, _AVar] = {}
        self.variables(variables, value, where)
        for name in names:
            if not _NAME.match(name):
                self.error(kpos, f"{where}: invalid host name '{name}' (use letters, digits, '.', '_' and '-')")
                continue
            host = self.ahosts.get(name)
            if host is None:
                host = self.ahosts[name] = _AHost(kpos, where)
            if name not in group.hosts:
                group.hosts.append(name)
            for key, var in variables.items():
                old = host.vars.get(key)
                if old is not None and old.value != var.value:
                    self.warn(var.pos, f"{var.where}: host '{name}' already sets {key} at line {old.pos[0]};"
                                       " this later value wins, as in Ansible", "inventory")
                host.vars[key] = var
            if port is not None:
                host.port = _AVar(port, kpos, where)

    def variables(self, target: dict[str, _AVar], m: Map, where: str) -> None:
        for key, item in m.items():
            if not isinstance(key, str):
                self.error(m.kpos(key), f"{where}: variable names must be strings, got {_describe(key)}")
                continue
            pos, var_where = m.vpos(key), _join(where, key)
            target[key] = _AVar(self.ansible_value(item, pos, var_where, key), pos, var_where)

    def ansible_value(self, value: Any, pos: tuple[int, int], where: str, key: str) -> Any:
        """Plain data; passwords and secret-looking strings become masked Secrets.
        (Unlike our format, ``{env: NAME}`` means nothing special to Ansible.)"""
        if isinstance(value, Map):
            return {k: self.ansible_value(v, value.vpos(k), _join(where, k), k if isinstance(k, str) else key)
                    for k, v in value.items()}
        if isinstance(value, Seq):
            return [self.ansible_value(v, value.ipos(i), f"{where}[{i}]", key) for i, v in enumerate(value)]
        name = key.lower()
        password = name in _ANSIBLE_LOGIN_PASSWORDS or name in _ANSIBLE_BECOME_PASSWORDS
        if password and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            return value
        if pos in self.vaulted:
            pass  # reported as an error already
        elif name in _ANSIBLE_LOGIN_PASSWORDS:
            self.warn(pos, f"{where}: runbook never logs in with a password, so this one is masked and unused;"
                           " use SSH key authentication (an ssh-agent or ansible_ssh_private_key_file)", "secret")
        elif name in _ANSIBLE_BECOME_PASSWORDS:
            self.warn(pos, f"{where}: runbook does not send become (sudo) passwords, so this one is masked and unused;"
                           " use SSH key authentication and passwordless sudo for what runbooks run", "secret")
        elif "{{" in value or not _plain_secret(key, value):
            return value
        else:
            self.warn(pos, f"{where}: holds a secret in plain text; it is masked in runbook output, but keep secrets out"
                           " of inventory files (a runbook inventory reads them with {env: NAME})", "secret")
        secret = Secret(value, name=where)
        self.secrets.append(secret)
        return secret

    # -- groups -------------------------------------------------------------------

    def link_groups(self) -> dict[str, list[str]]:
        """Break (and report) group cycles, make every group without a parent
        a child of ``all`` (``ungrouped`` first, as in Ansible), read
        ``ansible_group_priority``. Returns the parents of every group."""
        groups = self.agroups
        state: dict[str, int] = {}  # 1: being visited, 2: done

        def visit(name: str, stack: list[str]) -> None:
            state[name] = 1
            stack.append(name)
            for child, (pos, where) in list(groups[name].children.items()):
                if state.get(child) == 1:
                    cycle = " -> ".join([*stack[stack.index(child):], child])
                    self.error(pos, f"{where}: group cycle {cycle}")
                    del groups[name].children[child]
                elif child not in state:
                    visit(child, stack)
            stack.pop()
            state[name] = 2

        for name in list(groups):
            if name not in state:
                visit(name, [])
        parents: dict[str, list[str]] = {name: [] for name in groups}
        for name, group in groups.items():
            for child in group.children:
                parents[child].append(name)
        top = groups["all"]
        orphans = [name for name in groups if name != "all" and not parents[name]]
        ungrouped = {"ungrouped": top.children.get("ungrouped", ((1, 1), "all.children.ungrouped"))}
        top.children = {**ungrouped, **top.children, **{name: (groups[name].pos, name) for name in orphans}}
        for name in [*ungrouped, *orphans]:
            if "all" not in parents[name]:
                parents[name].append("all")
        for group in groups.values():
            if (var := group.vars.get("ansible_group_priority")) is not None:
                value = var.value
                if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
                    value = int(value)
                if isinstance(value, int) and not isinstance(value, bool):
                    group.priority = value
                else:
                    self.error(var.pos, f"{var.where}: must be a whole number, got {_describe(value)}")
        return parents

    def memberships(self, parents: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """The hosts of every group and the groups of every host (in Ansible's variable order)."""
        groups = self.agroups
        ungrouped = groups["ungrouped"]
        for host in self.ahosts:
            grouped = any(host in group.hosts for name, group in groups.items() if name not in ("all", "ungrouped"))
            if not grouped and host not in ungrouped.hosts:
                ungrouped.hosts.append(host)
            elif grouped and host in ungrouped.hosts:
                ungrouped.hosts.remove(host)

        members: dict[str, list[str]] = {}
        for name in groups:
            order, seen = [name], {name}
            for group in order:  # breadth first; the list grows while it is read
                for child in groups[group].children:
                    if child not in seen:
                        seen.add(child)
                        order.append(child)
            members[name] = list(dict.fromkeys(host for group in order for host in groups[group].hosts))

        depth: dict[str, int] = {}

        def level(name: str) -> int:
            if name not in depth:
                depth[name] = 0  # a guard only: cycles are broken already
                depth[name] = 1 + max((level(p) for p in parents[name]), default=-1)
            return depth[name]

        order = sorted(groups, key=lambda name: (level(name), groups[name].priority, name))
        host_groups: dict[str, list[str]] = {host: [] for host in self.ahosts}
        for name in order:
            for host in members[name]:
                host_groups[host].append(name)
        return members, host_groups

    # -- connection settings ------------------------------------------------------------

    def layers(self, host: str | None, groups: list[str]) -> list[dict[str, _AVar]]:
        """The variable levels of a host, most specific first (``host=None``: ``all`` only)."""
        levels = [self.ahosts[host].vars] if host is not None else []
        return levels + [self.agroups[group].vars for group in reversed(groups)]

    @staticmethod
    def setting(levels: list[dict[str, _AVar]], names: Iterable[str]) -> _AVar | None:
        """The most specific variable of one setting (any of its alias ``names``)."""
        for variables in levels:
            for name in names:
                if (var := variables.get(name)) is not None and var.value is not None:
                    return var
        return None

    def connection(self, host: str | None, groups: list[str]) -> dict[str, Any]:
        """``address``, ``port`` and ``user`` of a host (``None`` where not set)."""
        levels = self.layers(host, groups)
        out: dict[str, Any] = {}
        for key, names in _ANSIBLE_CONNECTION.items():
            var = self.setting(levels[:1], names) if host is not None else None
            if var is None and key == "port" and host is not None:
                var = self.ahosts[host].port
            if var is None:
                var = self.setting(levels[1:] if host is not None else levels, names)
            out[key] = None if var is None else self.connection_value(key, var)
        return out

    def connection_value(self, key: str, var: _AVar) -> Any:
        value = var.value
        if isinstance(value, str) and "{{" in value:
            instead = {"address": "each host's name is its address", "port": "port 22 is used",
                       "user": "the ssh default user applies"}[key]
            self.warn(var.pos, f"{var.where}: is a Jinja template, which runbook does not evaluate; {instead} instead", "inventory")
            return None
        if key == "port":
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
                return value
            self.error(var.pos, f"{var.where}: must be a port number from 1 to 65535, got {_describe(value)}")
            return None
        if isinstance(value, str) and value.strip():
            return value
        what = "a host name or IP address" if key == "address" else "a user name"
        self.error(var.pos, f"{var.where}: must be {what}, got {_describe(value, show=False)}")
        return None

    def jump_hosts_of(self, host_groups: dict[str, list[str]], addresses: dict[str, Any]) -> dict[str, str | None]:
        """Jump hosts from ProxyJump / ``ssh -W`` ProxyCommand options naming an inventory host."""
        by_address: dict[str, list[str]] = {}
        for host, address in addresses.items():
            by_address.setdefault(str(address or host), []).append(host)
        jumps: dict[str, str | None] = {}
        origin: dict[str, _AVar] = {}
        for host in self.ahosts:
            jumps[host] = None
            levels = self.layers(host, host_groups[host])
            for var in filter(None, (self.setting(levels, (name,)) for name in _ANSIBLE_SSH_ARGS)):
                if not isinstance(var.value, str):
                    self.error(var.pos, f"{var.where}: must be a string of ssh options, got {_describe(var.value, show=False)}")
                    continue
                target, note = _ssh_proxy(var.value)
                if note:
                    self.warn(var.pos, f"{var.where}: {note}", "inventory")
                if target is None:
                    if note:
                        break
                    continue
                if target not in self.ahosts and len(by_address.get(target, [])) == 1:
                    target = by_address[target][0]
                if target not in self.ahosts:
                    self.warn(var.pos, f"{var.where}: jump host '{target}' is not a host of this inventory, so runbook"
                                       f" connects directly; add '{target}' under hosts to go through it", "inventory")
                elif target != host:  # a bastion inheriting its own ProxyJump connects directly
                    jumps[host], origin[host] = target, var
                break

        for cycle in jump_cycles({h: jumps[h] for h in self.ahosts}):
            var = origin[cycle[0]]
            self.error(var.pos, f"{var.where}: jump host cycle {' -> '.join([*cycle, cycle[0]])}")
        return jumps

    def ssh_defaults(self) -> SshDefaults:
        """``all``-level connection settings as the ``ssh:`` defaults."""
        top = self.connection(None, ["all"])
        key_file = self.setting(self.layers(None, ["all"]), _ANSIBLE_KEY_FILES)
        identity = key_file.value if key_file is not None and isinstance(key_file.value, str) and key_file.value else None
        return SshDefaults(user=top["user"], port=top["port"] or 22, identity_file=identity)

    def other_settings(self, host_groups: dict[str, list[str]]) -> None:
        """Warnings for Ansible settings runbook cannot honour."""
        default_key = self.setting(self.layers(None, ["all"]), _ANSIBLE_KEY_FILES)
        for host in self.ahosts:
            levels = self.layers(host, host_groups[host])
            var = self.setting(levels, ("ansible_connection",))
            if var is not None and str(var.value) not in _ANSIBLE_SSH_CONNECTIONS:
                local = " (run commands on this machine with a shell step)" if var.value == "local" else ""
                self.warn(var.pos, f"{var.where}: connection '{var.value}' is not supported; runbook reaches hosts"
                                   f" over SSH only{local}", "inventory")
            var = self.setting(levels, _ANSIBLE_HOST_KEY_CHECKING)
            if var is not None and str(var.value).strip().lower() in ("false", "no", "off", "0"):
                self.warn(var.pos, f"{var.where}: runbook always checks host keys, so this is ignored"
                                   " (a runbook inventory can set ssh.host_key_policy: accept-new)", "inventory")
            var = self.setting(levels, _ANSIBLE_KEY_FILES)
            if var is not None and (default_key is None or var.value != default_key.value):
                self.warn(var.pos, f"{var.where}: runbook uses one private key for every host (the one in all.vars),"
                                   " so this one is ignored; load it into an ssh-agent instead", "inventory")
