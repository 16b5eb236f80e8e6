"""A small declarative schema language for YAML documents.

Each node checks a value loaded by :mod:`runbook.yamlload` and reports
problems with file:line:col; the same nodes produce the JSON Schema that
``runbook schema`` prints, so the editor's view and the validator's view of
the format cannot drift apart.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable

from runbook.errors import Problem
from runbook.yamlload import Map, Seq

Pos = tuple[int, int]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float | None:
    """``30``, ``"30s"``, ``"5m"``, ``"1.5h"``, ``"250ms"`` → seconds; ``None`` if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    return None


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Report:
    """Collects problems for one file."""

    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []

    def error(self, pos: Pos, message: str, rule: str = "schema", severity: str = "error") -> None:
        self.problems.append(Problem(self.path, pos[0], pos[1], message, severity, rule))


def _w(where: str) -> str:
    return f"{where}: " if where else ""


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Node:
    doc: str = ""
    expect: str = "a value"

    def check(self, value: Any, pos: Pos, where: str, rep: Report) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def json(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wrong(self, value, pos, where, rep) -> bool:
        rep.error(pos, f"{_w(where)}expected {self.expect}, got {_type_name(value)}")
        return False

    def _j(self, d: dict) -> dict:
        if self.doc:
            d["description"] = self.doc
        return d


@dataclass
class Str(Node):
    doc: str = ""
    pattern: str | None = None
    enum: tuple | None = None
    hint: str = ""
    expect = "a string"

    def check(self, value, pos, where, rep):
        if not isinstance(value, str):
            return self._wrong(value, pos, where, rep)
        if self.enum and value not in self.enum:
            rep.error(pos, f"{_w(where)}'{value}' is not one of {', '.join(map(str, self.enum))}{suggest(value, self.enum)}")
            return False
        if self.pattern and not re.search(self.pattern, value):
            rep.error(pos, f"{_w(where)}'{value}' does not match {self.pattern}{' (' + self.hint + ')' if self.hint else ''}")
            return False
        return True

    def json(self):
        d: dict = {"type": "string"}
        if self.enum:
            d["enum"] = list(self.enum)
        if self.pattern:
            d["pattern"] = self.pattern
        return self._j(d)


@dataclass
class Int(Node):
    doc: str = ""
    minimum: int | None = None
    maximum: int | None = None
    expect = "an integer"

    def check(self, value, pos, where, rep):
        if isinstance(value, bool) or not isinstance(value, int):
            return self._wrong(value, pos, where, rep)
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            rep.error(pos, f"{_w(where)}{value} is out of range ({self.minimum}..{self.maximum if self.maximum is not None else ''})")
            return False
        return True

    def json(self):
        d: dict = {"type": "integer"}
        if self.minimum is not None:
            d["minimum"] = self.minimum
        if self.maximum is not None:
            d["maximum"] = self.maximum
        return self._j(d)


@dataclass
class Bool(Node):
    doc: str = ""
    expect = "true or false"

    def check(self, value, pos, where, rep):
        return True if isinstance(value, bool) else self._wrong(value, pos, where, rep)

    def json(self):
        return self._j({"type": "boolean"})


@dataclass
class Duration(Node):
    doc: str = ""
    positive: bool = False  # zero is not allowed (a timeout of 0 would mean none)
    expect = "a duration such as 30s, 5m or 1h"

    def check(self, value, pos, where, rep):
        seconds = parse_duration(value)
        if seconds is None:
            rep.error(pos, f"{_w(where)}expected a duration such as 30s, 5m or 1h, got {value!r}")
            return False
        if self.positive and seconds <= 0:
            rep.error(pos, f"{_w(where)}must be more than 0")
            return False
        if seconds > 366 * 86400:
            rep.error(pos, f"{_w(where)}{value!r} is more than a year")
            return False
        return True

    def json(self):
        return self._j({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION.pattern}]})


@dataclass
class AnyValue(Node):
    doc: str = ""

    def check(self, value, pos, where, rep):
        return True

    def json(self):
        return self._j({})


@dataclass
class List(Node):
    item: Node
    doc: str = ""
    min_items: int = 0
    expect = "a list"

    def check(self, value, pos, where, rep):
        if not isinstance(value, list):
            return self._wrong(value, pos, where, rep)
        if len(value) < self.min_items:
            rep.error(pos, f"{_w(where)}needs at least {self.min_items} item{'s' if self.min_items > 1 else ''}")
            return False
        ok = True
        for i, item in enumerate(value):
            ipos = value.ipos(i) if isinstance(value, Seq) else pos
            ok &= self.item.check(item, ipos, f"{where}[{i}]", rep)
        return ok

    def json(self):
        d = {"type": "array", "items": self.item.json()}
        if self.min_items:
            d["minItems"] = self.min_items
        return self._j(d)


@dataclass
class MapOf(Node):
    value: Node
    doc: str = ""
    key_pattern: str | None = None
    key_hint: str = ""
    expect = "a mapping"

    def check(self, value, pos, where, rep):
        if not isinstance(value, dict):
            return self._wrong(value, pos, where, rep)
        ok = True
        for k, v in value.items():
            kpos = value.kpos(k) if isinstance(value, Map) else pos
            vpos = value.vpos(k) if isinstance(value, Map) else pos
            if self.key_pattern and not (isinstance(k, str) and re.match(self.key_pattern, k)):
                rep.error(kpos, f"{_w(where)}invalid name '{k}'{' (' + self.key_hint + ')' if self.key_hint else ''}")
                ok = False
                continue
            ok &= self.value.check(v, vpos, f"{where}.{k}", rep)
        return ok

    def json(self):
        d: dict = {"type": "object", "additionalProperties": self.value.json()}
        if self.key_pattern:
            d["propertyNames"] = {"pattern": self.key_pattern}
        return self._j(d)


@dataclass
class Obj(Node):
    fields: dict[str, Node]
    doc: str = ""
    required: tuple[str, ...] = ()
    exclusive: tuple[tuple[str, ...], ...] = ()  # groups of keys of which at most one may be given
    extra_check: Callable[[Map, Pos, str, Report], bool] | None = None
    expect = "a mapping"

    def check(self, value, pos, where, rep):
        if not isinstance(value, dict):
            return self._wrong(value, pos, where, rep)
        ok = True
        for k, v in value.items():
            kpos = value.kpos(k) if isinstance(value, Map) else pos
            if k not in self.fields:
                rep.error(kpos, f"{_w(where)}unknown key '{k}'{suggest(k, self.fields)}")
                ok = False
                continue
            vpos = value.vpos(k) if isinstance(value, Map) else pos
            ok &= self.fields[k].check(v, vpos, f"{where}.{k}" if where else str(k), rep)
        for k in self.required:
            if k not in value:
                rep.error(pos, f"{_w(where)}missing required key '{k}'")
                ok = False
        for group in self.exclusive:
            given = [k for k in group if k in value]
            if len(given) > 1:
                rep.error(value.kpos(given[1]) if isinstance(value, Map) else pos,
                          f"{_w(where)}'{given[0]}' and '{given[1]}' cannot be used together")
                ok = False
        if ok and self.extra_check:
            ok = self.extra_check(value, pos, where, rep)
        return ok

    def json(self):
        d: dict = {
            "type": "object",
            "properties": {k: v.json() for k, v in self.fields.items()},
            "additionalProperties": False,
        }
        if self.required:
            d["required"] = list(self.required)
        return self._j(d)


@dataclass
class OneOf(Node):
    """Alternatives chosen by the Python type of the value (str, dict, list, …)."""

    alts: tuple[tuple[type | tuple[type, ...], Node], ...]
    doc: str = ""
    expect_text: str = ""

    def check(self, value, pos, where, rep):
        for types, node in self.alts:
            if isinstance(value, types) and not (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
                return node.check(value, pos, where, rep)
        rep.error(pos, f"{_w(where)}expected {self.expect_text or ' or '.join(n.expect for _, n in self.alts)}, got {_type_name(value)}")
        return False

    def json(self):
        return self._j({"anyOf": [n.json() for _, n in self.alts]})
