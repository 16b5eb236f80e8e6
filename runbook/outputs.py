"""Outputs: named values taken from a step's result, and how the values of a
step that runs on several hosts combine.

A step's ``outputs:`` are read from its stdout (or stderr) with a regex, a JSON
path or whole, then converted to their ``type``.  A kind that fans out (ssh over
a list of hosts or a group) gives each host's own result; each output is then
read on every host (``steps.ID.hosts["web-2"].outputs.NAME``) and the step-level
value ``steps.ID.outputs.NAME`` is the hosts' values combined by the output's
``aggregate``.  Reading "the first host" would decide a disk-full runbook from
the emptiest disk, so a fan-out step's output without an aggregate is refused
(by ``validate``, the plan, and before the step runs).

Aggregates (over the hosts that gave a value, in inventory order):

* ``max`` / ``min`` — the largest / smallest number; ``steps.ID.aggregates.NAME.host``
  says which host gave it (the first one on a tie).
* ``sum`` / ``avg`` — of the numbers.
* ``count`` — how many hosts gave true; ``any`` / ``all`` — whether any / every host did.
* ``list`` — every host's value, in order.
"""

from __future__ import annotations

import json
import re
from typing import Any

from runbook.errors import RunbookError
from runbook.text import plural

NUMERIC = ("max", "min", "sum", "avg")
BOOLEAN = ("count", "any", "all")
AGGREGATES = NUMERIC + BOOLEAN + ("list",)
_CHOICES = "max, min, sum, avg, count, any, all or list"


def convert(value: Any, type_: str | None) -> Any:
    """An output's text as its declared type (ValueError when it is not one)."""
    if type_ is None or type_ == "json":
        return value
    if type_ == "integer":
        return int(str(value).strip())
    if type_ == "number":
        number = float(str(value).strip())
        if number != number:  # NaN compares false with everything: a max over hosts would depend on their order
            raise ValueError(f"{value!r} is not a number (NaN)")
        return number
    if type_ == "boolean":
        low = str(value).strip().lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0", ""):
            return False
        raise ValueError(f"{value!r} is not a boolean")
    return str(value)


def extract(spec: dict, stdout: str, stderr: str) -> Any:
    """One output's value from one result's streams (ValueError, KeyError,
    IndexError or TypeError when it is not there or not of its type)."""
    text = stderr if spec.get("from") == "stderr" else stdout
    if "regex" in spec:
        m = re.search(spec["regex"], text, re.MULTILINE)
        if not m:
            raise ValueError(f"pattern {spec['regex']!r} did not match")
        value: Any = m.group(1) if m.groups() else m.group(0)
    elif "json" in spec:
        value = json.loads(text)
        for part in [p for p in spec["json"].split(".") if p]:
            value = value[int(part)] if isinstance(value, list) else value[part]
    else:
        value = text.strip()
    return convert(value, spec.get("type"))


EXTRACT_ERRORS = (ValueError, KeyError, IndexError, TypeError)


def type_problem(spec: dict) -> str | None:
    """Why an output's aggregate does not fit its type (None when it does)."""
    how, type_ = spec.get("aggregate"), spec.get("type")
    if how in NUMERIC and type_ not in ("integer", "number"):
        return (f"aggregate: {how} compares numbers; add type: integer or type: number "
                f"(as text, '9' would beat '70')")
    if how in BOOLEAN and type_ != "boolean":
        return f"aggregate: {how} counts true values; add type: boolean"
    return None


def missing_aggregates(outputs: dict) -> list[str]:
    return [name for name, spec in outputs.items() if not spec.get("aggregate")]


def needs_aggregate(step_id: str, names: list[str], where: str) -> str:
    """The message for outputs of a fan-out step that do not say how hosts combine."""
    listed = ", ".join(f"'{n}'" for n in names)
    example = names[0]
    return (f"step '{step_id}' runs on {where}, so output{'s' if len(names) != 1 else ''} {listed} "
            f"must say how the hosts' values combine: under outputs.{example} add aggregate: one of {_CHOICES} "
            f"(each host's own value stays in steps.{step_id}.hosts[\"HOST\"].outputs.{example})")


def combine(how: str, values: dict[str, Any]) -> tuple[Any, str | None]:
    """The hosts' values (host -> value, in order) combined; with the host that
    gave the max or min."""
    if not values:
        raise RunbookError("no host gave a value")
    if how in ("max", "min"):
        pick = max if how == "max" else min
        host = pick(values, key=lambda h: values[h])  # the first host on a tie
        return values[host], host
    if how == "sum":
        return sum(values.values()), None
    if how == "avg":
        return sum(values.values()) / len(values), None
    if how == "count":
        return sum(1 for v in values.values() if v is True), None
    if how == "any":
        return any(v is True for v in values.values()), None
    if how == "all":
        return all(v is True for v in values.values()), None
    if how == "list":
        return list(values.values()), None
    raise RunbookError(f"unknown aggregate {how!r}: use {_CHOICES}")


def take(step_id: str, outputs: dict, result, per_host: dict[str, dict] | None) -> None:
    """Fill ``result.outputs`` from the result (fails the result when an output
    is not there).  ``per_host``: each host's result (a fan-out kind's), whose
    dicts get their own ``outputs``; the step-level values are then the
    aggregates (``result.data["aggregates"]`` says how, and which host gave a
    max or min)."""
    if per_host is None:
        for name, spec in outputs.items():
            try:
                result.outputs[name] = extract(spec, result.stdout, result.stderr)
            except EXTRACT_ERRORS as exc:
                result.status, result.error = "failed", f"output '{name}': {exc}"
                return
        return
    # every host whose command ran to its end: an `until` decides whatever the exit code
    hosts = {h: r for h, r in per_host.items() if r.get("exit_code") is not None}
    if not hosts:
        result.status, result.error = "failed", "no host's command ran to its end, so no output could be read"
        return
    for host, r in hosts.items():
        got: dict[str, Any] = {}
        for name, spec in outputs.items():
            try:
                got[name] = extract(spec, r.get("stdout") or "", r.get("stderr") or "")
            except EXTRACT_ERRORS as exc:
                result.status, result.error = "failed", f"output '{name}' on {host}: {exc}"
                return
        r["outputs"] = got
    notes: dict[str, dict] = {}
    for name, spec in outputs.items():
        values = {h: r["outputs"][name] for h, r in hosts.items()}
        how = spec.get("aggregate")
        if not how:
            if len(values) != 1:
                result.status = "failed"
                result.error = needs_aggregate(step_id, [name], f"{len(values)} hosts")
                return
            result.outputs[name] = next(iter(values.values()))
            continue
        try:
            value, host = combine(how, values)
        except (TypeError, RunbookError) as exc:
            result.status, result.error = "failed", f"output '{name}' ({how} over {len(values)} hosts): {exc}"
            return
        result.outputs[name] = value
        notes[name] = {"aggregate": how, "hosts": len(values), **({"host": host} if host else {})}
    if notes:
        result.data["aggregates"] = notes


def note(name: str, info: dict | None) -> str:
    """`` (max of 3 hosts, from web-2)`` for a step-level output shown on a card."""
    if not info:
        return ""
    text = f"{info.get('aggregate')} of {plural(info.get('hosts'), 'host')}"
    if info.get("host"):
        text += f", from {info['host']}"
    return f" ({text})"
