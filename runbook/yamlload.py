"""YAML loading that remembers where every value came from.

``load(text, path)`` returns plain Python data built from :class:`Map` and
:class:`Seq` (``dict`` and ``list`` subclasses) that carry 1-based line and
column numbers, so that every later check can say ``file:line:col``.
A syntax error becomes a :class:`~runbook.errors.Problem` naming the file,
line and column, with a hint on how to fix the most common mistakes.

Two limits keep a hostile or mistaken file from taking the CLI down: a file
over :data:`MAX_FILE_BYTES` is refused before it is parsed (parsing 10 MB of
YAML takes many seconds), and aliases may add at most :data:`MAX_ALIAS_VALUES`
values to the document ("billion laughs").
"""

from __future__ import annotations

import os
from typing import Any

import yaml

try:  # libyaml is several times faster; fall back to the pure-Python parser.
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


class _Loader(_SafeLoader):  # type: ignore[valid-type,misc]
    """The safe loader with PyYAML's tag resolution done in fewer steps: libyaml's composer calls
    these three methods in Python for every node (~280 nodes a runbook), and the safe loader has
    no path resolvers, so descending and ascending do nothing.  Same tags as the safe loader's
    ``resolve`` (tests/test_loader.py compares them)."""

    _by_char = {c: tuple(rs) + tuple(_SafeLoader.yaml_implicit_resolvers.get(None, ()))
                for c, rs in _SafeLoader.yaml_implicit_resolvers.items() if c is not None}
    _wild = tuple(_SafeLoader.yaml_implicit_resolvers.get(None, ()))
    _defaults = {yaml.ScalarNode: _SafeLoader.DEFAULT_SCALAR_TAG, yaml.SequenceNode: _SafeLoader.DEFAULT_SEQUENCE_TAG,
                 yaml.MappingNode: _SafeLoader.DEFAULT_MAPPING_TAG}

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0]:
            for tag, regexp in self._by_char.get(value[:1], self._wild):
                if regexp.match(value):
                    return tag
        return self._defaults.get(kind)

    def descend_resolver(self, current_node, current_index):
        pass

    def ascend_resolver(self):
        pass


assert not _SafeLoader.yaml_path_resolvers, "the fast resolver assumes the safe loader has no path resolvers"

from runbook.errors import Problem, RunbookError


class Map(dict):
    """A YAML mapping. ``pos`` is where it starts; ``key_pos[k]`` and
    ``value_pos[k]`` where each key and its value start."""

    __slots__ = ("pos", "key_pos", "value_pos")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pos = (1, 1)
        self.key_pos: dict[Any, tuple[int, int]] = {}
        self.value_pos: dict[Any, tuple[int, int]] = {}

    def kpos(self, key) -> tuple[int, int]:
        return self.key_pos.get(key, self.pos)

    def vpos(self, key) -> tuple[int, int]:
        return self.value_pos.get(key, self.kpos(key))


class Seq(list):
    """A YAML sequence. ``item_pos[i]`` is where item ``i`` starts."""

    __slots__ = ("pos", "item_pos")

    def __init__(self, *a):
        super().__init__(*a)
        self.pos = (1, 1)
        self.item_pos: list[tuple[int, int]] = []

    def ipos(self, i: int) -> tuple[int, int]:
        return self.item_pos[i] if i < len(self.item_pos) else self.pos


def _pos(node) -> tuple[int, int]:
    m = node.start_mark
    return (m.line + 1, m.column + 1)


_constructor = yaml.constructor.SafeConstructor()
_STR = "tag:yaml.org,2002:str"


#: The largest runbook, inventory or alert payload file runbook reads, in bytes (1 MB).
#: A runbook is a few kilobytes; a file this size is a mistake, or an attack.
MAX_FILE_BYTES = 1_000_000
#: The most values aliases may add to a document: a few kilobytes of nested
#: aliases can otherwise expand to billions of values ("billion laughs").
MAX_ALIAS_VALUES = 100_000


class _TooBig(Exception):
    pass


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1.05e6 else f"{size:,} bytes"


def size_problem(path: str, size: int) -> Problem | None:
    """The refusal of a file of ``size`` bytes over :data:`MAX_FILE_BYTES`; ``None`` when it is not."""
    if size <= MAX_FILE_BYTES:
        return None
    return Problem(path, 1, 1, f"{_megabytes(size)} is over runbook's {MAX_FILE_BYTES // 1_000_000} MB limit for a runbook,"
                               " inventory or alert file; split it into smaller files (one runbook per incident,"
                               " one inventory per environment)", rule="yaml")


def text_size(text: str) -> int:
    """The size of ``text`` in UTF-8 bytes, exact only when it matters for :data:`MAX_FILE_BYTES`."""
    if len(text) * 4 <= MAX_FILE_BYTES:  # a character is at most 4 bytes
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


_LONG = 1024  # characters: a scalar this long repeated by an alias counts per KiB


def _spend(budget: list[int], n: int) -> None:
    budget[0] -= n
    if budget[0] < 0:
        raise _TooBig


def _build(node, path: str, problems: list[Problem], budget: list[int], seen: set[int], aliased: bool = False):
    """Python data from a composed node. A collection node seen before is an
    alias being expanded: every value built under it counts against ``budget``,
    as does every key a merge (``<<: *a``) copies in, and a long text repeated by
    an alias counts one value per KiB (else 15,000 aliases of a 300 KB text are
    4.5 GB from a 1 MB file).  (The hot path of ``runbook validate``: scalars
    first, positions inline.)"""
    cls = node.__class__
    if cls is _SCALAR:
        value = node.value
        if len(value) > _LONG:
            if aliased or id(node) in seen:
                _spend(budget, 1 + len(value) // _LONG)
            else:
                seen.add(id(node))
        elif aliased:
            _spend(budget, 1)
        if node.tag == _STR:  # the common case, without the constructor's bookkeeping
            return value
        return _constructor.construct_object(node, deep=True)
    if aliased:
        _spend(budget, 1)
    else:
        aliased = id(node) in seen
        seen.add(id(node))
    m = node.start_mark
    if cls is _MAPPING:
        out = Map()
        out.pos = (m.line + 1, m.column + 1)
        pairs = node.value
        if any(k.tag == _MERGE for k, _ in pairs):
            own = {id(k) for k, _ in pairs}
            _constructor.flatten_mapping(node)
            pairs = node.value
            _spend(budget, sum(1 for k, _ in pairs if id(k) not in own))  # what merges copied in
        key_pos, value_pos = out.key_pos, out.value_pos
        for knode, vnode in pairs:
            key = _build(knode, path, problems, budget, seen, aliased)
            km = knode.start_mark
            kp = (km.line + 1, km.column + 1)
            if isinstance(key, (Map, Seq)):
                msg = ("a value that starts with '{{' must be quoted, e.g. \"{{ params.x }}\""
                       if isinstance(key, Map) else "a mapping key must be a plain value")
                problems.append(Problem(path, kp[0], kp[1], f"YAML error: {msg}", rule="yaml"))
                continue
            if key in out:
                first = key_pos[key]
                problems.append(Problem(path, kp[0], kp[1], f"duplicate key '{key}' (first defined at line {first[0]})", rule="yaml"))
            out[key] = _build(vnode, path, problems, budget, seen, aliased)
            key_pos[key] = kp
            vm = vnode.start_mark
            value_pos[key] = (vm.line + 1, vm.column + 1)
        return out
    if cls is _SEQUENCE:
        out = Seq()
        out.pos = (m.line + 1, m.column + 1)
        items = out.item_pos
        for item in node.value:
            out.append(_build(item, path, problems, budget, seen, aliased))
            im = item.start_mark
            items.append((im.line + 1, im.column + 1))
        return out
    return _constructor.construct_object(node, deep=True)


_SCALAR, _MAPPING, _SEQUENCE = yaml.ScalarNode, yaml.MappingNode, yaml.SequenceNode
_MERGE = "tag:yaml.org,2002:merge"


def _hint(exc: yaml.MarkedYAMLError, text: str) -> str:
    problem = (exc.problem or "").strip()
    ctx = (exc.context or "").strip()
    mark = exc.problem_mark
    line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
    if "{{" in line and ("mapping" in problem or "mapping" in ctx or "unhashable" in problem or "flow" in ctx):
        return "a value that starts with '{{' must be quoted, e.g. \"{{ params.x }}\""
    if "\t" in line[: (mark.column + 1 if mark else 0)] or "tab" in problem:
        return "YAML does not allow tabs for indentation; use spaces"
    if "mapping values are not allowed" in problem:
        return "check the indentation, or quote a value that contains ': '"
    if "expected <block end>" in problem or "could not find expected ':'" in problem:
        return "check the indentation of this line against the lines above it"
    if "found character" in problem and "'@'" in problem or "'`'" in problem:
        return "quote a value that starts with @ or `"
    if "found unexpected end of stream" in problem or "while scanning a quoted scalar" in ctx:
        return "a quoted string is not closed"
    return "fix the YAML syntax at this position"


def load(text: str, path: str = "<string>") -> tuple[Any, list[Problem]]:
    """Parse one YAML document. Returns ``(data, problems)``; a syntax error
    is returned as a single problem with ``data`` set to ``None``, and so is
    a text over :data:`MAX_FILE_BYTES`, before any parsing."""
    return _load(text, path, many=False)


def load_all(text: str, path: str = "<string>") -> tuple[list[Any] | None, list[Problem]]:
    """Every YAML document of a text (``---`` between them, as Kubernetes manifests
    often are): ``(documents, problems)``, with :func:`load`'s checks and one alias
    budget for the whole text; ``None`` for the documents when it cannot be read."""
    return _load(text, path, many=True)


def _load(text: str, path: str, many: bool):
    problems: list[Problem] = []
    if (too_big := size_problem(path, text_size(text))) is not None:
        return None, [too_big]
    budget, seen = [MAX_ALIAS_VALUES], set()
    try:
        if many:
            return [_build(node, path, problems, budget, seen) for node in yaml.compose_all(text, Loader=_Loader)
                    if node is not None], problems
        node = yaml.compose(text, Loader=_Loader)
        if node is None:
            return None, problems
        return _build(node, path, problems, budget, seen), problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if isinstance(exc, yaml.constructor.ConstructorError):
            return None, [Problem(path, line, col, f"YAML error: {(exc.problem or 'cannot read value').strip()}", rule="yaml")]
        what = (exc.problem or exc.context or "invalid YAML").strip()
        return None, [Problem(path, line, col, f"YAML syntax error: {what} ({_hint(exc, text)})", rule="yaml")]
    except UnicodeError as exc:  # lone surrogates and the like: not text a file can hold
        return None, [Problem(path, 1, 1, f"YAML error: the text is not valid Unicode ({exc.reason})", rule="yaml")]
    except yaml.YAMLError as exc:  # e.g. reader errors on bad characters
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [Problem(path, line, col, f"YAML error: {str(getattr(exc, 'reason', '') or exc).splitlines()[0]}", rule="yaml")]
    except _TooBig:
        return None, [Problem(path, 1, 1, f"YAML error: aliases expand the document by more than {MAX_ALIAS_VALUES:,} values"
                                          " (aliases nested too deep?); write the values out, or nest fewer aliases", rule="yaml")]
    except RecursionError:
        return None, [Problem(path, 1, 1, "YAML error: document nested too deeply", rule="yaml")]


def load_file(path) -> tuple[Any, list[Problem]]:
    """:func:`load` of a file; a file over :data:`MAX_FILE_BYTES` is refused without reading it."""
    return _load_file(path, load)


def load_all_file(path) -> tuple[list[Any] | None, list[Problem]]:
    """:func:`load_all` of a file, with :func:`load_file`'s checks."""
    return _load_file(path, load_all)


def _load_file(path, parse):
    p = str(path)
    try:
        with open(p, encoding="utf-8") as f:
            if (too_big := size_problem(p, os.fstat(f.fileno()).st_size)) is not None:
                return None, [too_big]
            text = f.read()
    except UnicodeDecodeError as exc:
        return None, [Problem(p, 1, 1, f"file is not UTF-8 text ({exc.reason} at byte {exc.start})", rule="yaml")]
    except OSError as exc:
        raise RunbookError(f"{p}: cannot read file: {exc.strerror}") from None
    return parse(text, p)
