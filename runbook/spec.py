"""The runbook document model, its schema, and the loader.

A runbook file is YAML: metadata, typed parameters and steps grouped in the
stages diagnose → mitigate → verify.  :func:`load_runbook` returns a
:class:`Runbook` or problems with file:line:col; static checks of the graph,
templates and safety rules live in :mod:`runbook.validate`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook import schema as S
from runbook.catalog import runbook_files, search_path  # noqa: F401 - where runbooks are found (spec.* for callers)
from runbook import steps as kinds
from runbook.errors import Problem, RunbookError, UsageError
from runbook.yamlload import Map, load

STAGES = ("diagnose", "mitigate", "verify")
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
PARAM_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool}
SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4", "SEV5")
SPECIAL_TARGETS = ("continue", "abort")  # on_failure values that are not step ids

PARAM = S.Obj(
    {
        "type": S.Str(enum=tuple(PARAM_TYPES), doc="string (default), integer, number or boolean"),
        "description": S.Str(),
        "required": S.Bool(doc="the run refuses to start without it"),
        "default": S.AnyValue(doc="used when the parameter is not given"),
        "pattern": S.Str(doc="regular expression a string value must match"),
        "enum": S.List(S.AnyValue(), min_items=1, doc="the allowed values"),
        "secret": S.Bool(doc="masked everywhere; passed to commands by environment, never in argument lists"),
    },
    doc="A typed parameter, given with -p name=value",
)

OUTPUT = S.Obj(
    {
        "from": S.Str(enum=("stdout", "stderr"), doc="which stream to read (default stdout)"),
        "regex": S.Str(doc="take the first group (or the whole match) of this regular expression"),
        "json": S.Str(doc="parse the stream as JSON and take this dotted path ('' for the whole document)"),
        "type": S.Str(enum=("string", "integer", "number", "boolean", "json"), doc="convert the value"),
        "aggregate": S.Str(enum=("max", "min", "sum", "avg", "count", "any", "all", "list"),
                           doc="how the hosts' values combine when the step runs on several hosts or a group "
                               "(required there): max/min/sum/avg of numbers, count/any/all of booleans, "
                               "or list; each host's own value is steps.ID.hosts[\"HOST\"].outputs.NAME"),
    },
    exclusive=(("regex", "json"),),
    doc="An output taken from the step's result",
)

COMMON_FIELDS: dict[str, S.Node] = {
    "id": S.Str(pattern=ID_PATTERN, hint="lower-case letters, digits, - and _", doc="unique step id"),
    "title": S.Str(doc="one line shown to the operator"),
    "description": S.Str(doc="what the step is for (guided mode shows it on the step's card)"),
    "readonly": S.Bool(doc="the step changes nothing (its effect is read); enforced by kinds that can"),
    "timeout": S.Duration(positive=True, doc="stop the step after this long"),
    "retries": S.Int(minimum=0, maximum=100, doc="try again this many times when the step fails"),
    "retry_delay": S.Duration(doc="wait between retries (default 5s)"),
    "until": S.Str(doc="poll the step until this condition holds (needs timeout)"),
    "every": S.Duration(positive=True, doc="poll interval for until (default 10s)"),
    "outputs": S.MapOf(OUTPUT, key_pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", key_hint="letters, digits and _",
                       doc="named values taken from the result (steps.ID.outputs.NAME)"),
    "next": S.Str(doc="the step to go to after this one succeeds (default: the following step)"),
    "on_failure": S.Str(doc="the step to go to when this one fails, or 'continue' / 'abort' (default)"),
    "max_visits": S.Int(minimum=1, maximum=10000, doc="how often the step may run in one run: the bound of a loop"),
    "auto_approve": S.Bool(doc="a team worker (runbook worker) may run this write step without a person; recorded as "
                                "auto-approved; validate warns for SEV1/SEV2 runbooks (RB109)"),
    # for the operator (guided mode, the report): what the step looks at and what to make of it
    "checks": S.Str(doc="what this step checks"),
    "normal": S.Str(doc="what a healthy answer looks like"),
    "if_failed": S.Str(doc="what to do if it fails or looks wrong"),
}


def _step_node() -> S.Obj:
    fields = dict(COMMON_FIELDS)
    for name in kinds.KINDS:
        fields[name] = kinds.get(name).SCHEMA
    return S.Obj(fields, required=("id",), extra_check=_one_kind, doc="A step: common keys and exactly one kind key")


def _one_kind(value: Map, pos, where, rep) -> bool:
    found = [k for k in value if k in kinds.KINDS]
    if not found:
        rep.error(pos, f"{where}: step has no kind: give one of {', '.join(kinds.KINDS)}")
        return False
    if len(found) > 1:
        rep.error(value.kpos(found[1]), f"{where}: step has two kinds ('{found[0]}' and '{found[1]}'); split it into two steps")
        return False
    return True


class _LabelForm(S.Node):
    """A ``params_from_labels`` value given as a mapping: one of the forms the
    step kinds resolve (``{from_pod: pod}``: their ``LABEL_FORMS`` hook), each
    checked by its own schema."""

    doc = "a label the run turns into the parameter (a step kind's form)"
    expect = "a mapping"

    def __init__(self, forms: dict):
        self.forms = forms

    def check(self, value, pos, where, rep):
        found = [k for k in value if k in self.forms]
        if not found:
            unknown = next(iter(value), None)
            at = value.kpos(unknown) if isinstance(value, Map) and unknown is not None else pos
            names = ", ".join(self.forms) or "none"
            rep.error(at, f"{where}: unknown label form"
                          + (f" '{unknown}'{S.suggest(unknown, self.forms)}" if unknown is not None else " (empty mapping)")
                          + f": give a label name (a string) or one of the forms {names}")
            return False
        if len(found) > 1:
            rep.error(value.kpos(found[1]) if isinstance(value, Map) else pos,
                      f"{where}: two label forms ('{found[0]}' and '{found[1]}'): a parameter comes from one")
            return False
        return self.forms[found[0]].check(value, pos, where, rep)

    def json(self):
        return {"anyOf": [n.json() for n in self.forms.values()]} if self.forms else {"type": "object"}


def _label_forms() -> dict:
    forms: dict = {}
    for name in kinds.KINDS:
        forms.update({k: v for k, v in kinds.get(name).LABEL_FORMS.items() if k not in forms})
    return forms


def _params_from_labels() -> S.Node:
    forms = _label_forms()
    label = S.Str(doc="the alert label whose value is the parameter's")
    shown = "; ".join(f"{{{k}: LABEL}}: {n.doc}" + "".join(f"; {f}: {sub.doc}" for f, sub in n.fields.items() if f != k)
                      for k, n in forms.items())
    return S.MapOf(S.OneOf(((str, label), (dict, _LabelForm(forms))),
                           expect_text=f"a label name, or a mapping with one of: {', '.join(forms) or 'none'}"),
                   key_pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", key_hint="a parameter name",
                   doc="run --alert: parameter ← alert label (e.g. service: job)"
                       + (f", or ← what a label names, resolved when a live run starts: {shown}" if forms else ""))


_STEP: S.Obj | None = None
_DOC: S.Obj | None = None


def document_schema() -> S.Obj:
    global _STEP, _DOC
    if _DOC is None:
        _STEP = _step_node()
        steps = S.List(_STEP)
        _DOC = S.Obj(
            {
                "name": S.Str(pattern=NAME_PATTERN, hint="lower-case letters, digits and -", doc="what `runbook run NAME` takes"),
                "title": S.Str(doc="one line: what this runbook answers"),
                "description": S.Str(doc="what the incident looks like and what the runbook does about it"),
                "severity": S.Str(enum=SEVERITIES, doc="SEV1 (critical, all hands) … SEV4 (low) as the on-call policy defines them"),
                "alerts": S.List(S.Str(), doc="the alerts this runbook answers"),
                "escalation": S.List(
                    S.Obj({"after": S.Duration(positive=True, doc="time since the alert fired (else since the start)"),
                           "to": S.Str(doc="who: a role, a rota or a person"),
                           "how": S.Str(doc="how to reach them"),
                           "page": S.Str(doc="page them through this inventory notifier (a PagerDuty routing_key) "
                                             "when the time passes in a live run: opt-in, recorded, never in a "
                                             "dry-run")},
                          required=("after", "to"), doc="An escalation level"),
                    doc="who to escalate to as the incident clock passes each time (e.g. secondary after 15m)"),
                "example_params": S.MapOf(S.AnyValue(), key_pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                          key_hint="a parameter name",
                                          doc="parameters for `runbook validate --dry-run` (CI) and for trying the runbook"),
                "params_from_labels": _params_from_labels(),
                "owner": S.Str(doc="the team that maintains the runbook"),
                "tags": S.List(S.Str(), doc="free-form labels (runbook list shows them)"),
                "links": S.List(S.Str(), doc="dashboards, docs"),
                "env": S.List(S.Str(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"), doc="environment variables templates may read as env.NAME"),
                "params": S.MapOf(PARAM, key_pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", key_hint="letters, digits and _",
                                  doc="typed parameters (-p name=value; params.NAME in templates)"),
                "stages": S.Obj({s: steps for s in STAGES}, required=(), doc="steps by stage, in order"),
            },
            required=("name", "title", "stages"),
            doc="A runbook: diagnose → mitigate → verify",
        )
    return _DOC


def json_schema() -> dict:
    d = document_schema().json()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://github.com/runbook-executor/runbook/schema.json", "title": "runbook", **d}


@dataclass
class Param:
    name: str
    type: str = "string"
    description: str = ""
    required: bool = False
    default: Any = None
    has_default: bool = False
    pattern: str | None = None
    enum: list | None = None
    secret: bool = False
    pos: tuple[int, int] = (1, 1)

    def check(self, value: Any) -> str | None:
        """None when the value is valid, else why not."""
        py = PARAM_TYPES[self.type]
        if py is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif py is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, py)
        if not ok:
            return f"is not {'an' if self.type == 'integer' else 'a'} {self.type}"
        if self.enum is not None and value not in self.enum:
            return f"must be one of {', '.join(map(str, self.enum))}"
        if self.pattern and isinstance(value, str):
            try:
                if not re.search(self.pattern, value):
                    return f"does not match {self.pattern}"
            except re.error:
                return f"cannot be checked: its pattern {self.pattern!r} is not a valid regular expression"
        return None

    def coerce(self, text: str) -> Any:
        """Turn a command-line string into a value of the parameter's type."""
        if self.type == "integer":
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"expected an integer, got {text!r}") from None
        if self.type == "number":
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"expected a number, got {text!r}") from None
        if self.type == "boolean":
            low = text.lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError(f"expected true or false, got {text!r}")
        return text


@dataclass
class Step:
    id: str
    stage: str
    kind: str
    body: dict
    raw: Map
    index: int
    title: str = ""
    description: str = ""
    readonly: bool | None = None
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 5.0
    until: str | None = None
    every: float = 10.0
    outputs: dict = field(default_factory=dict)
    next: str | None = None
    on_failure: str | None = None
    max_visits: int | None = None
    auto_approve: bool = False

    @property
    def pos(self) -> tuple[int, int]:
        return self.raw.pos

    def key_pos(self, key: str) -> tuple[int, int]:
        return self.raw.vpos(key)

    @property
    def module(self):
        return kinds.get(self.kind)

    @property
    def effect(self) -> str:
        mod = self.module
        if mod.FIXED_EFFECT:
            return mod.FIXED_EFFECT
        # kinds that know their effect from the step's body (a k8s get, an HTTP GET);
        # an author's readonly: false still makes a step confirmed (a GET that changes state)
        known = mod.effect_of(self.body)
        if known:
            return "write" if self.readonly is False else known
        readonly = mod.DEFAULT_READONLY if self.readonly is None else self.readonly
        return "read" if readonly else "write"

    @property
    def label(self) -> str:
        return self.title or self.id


@dataclass
class Runbook:
    name: str
    title: str
    path: str
    sha256: str
    data: Map
    description: str = ""
    severity: str | None = None
    alerts: list[str] = field(default_factory=list)
    params_from_labels: dict[str, Any] = field(default_factory=dict)  # label name, or a form mapping
    example_params: dict[str, Any] = field(default_factory=dict)
    escalation: list[tuple[float, str, str]] = field(default_factory=list)  # (seconds, to, how)
    escalation_page: dict = field(default_factory=dict)  # (seconds, to) -> the notifier that pages them
    owner: str | None = None
    env_allow: list[str] = field(default_factory=list)
    params: dict[str, Param] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    def __post_init__(self):
        self.by_id = {s.id: s for s in self.steps}

    def stage(self, name: str) -> list[Step]:
        return [s for s in self.steps if s.stage == name]

    def following(self, step: Step) -> Step | None:
        """The step after this one in document order (the default `next`)."""
        i = step.index + 1
        return self.steps[i] if i < len(self.steps) else None


def _build(data: Map, path: str, sha: str) -> Runbook:
    params = {}
    for name, p in (data.get("params") or {}).items():
        params[name] = Param(
            name=name, type=p.get("type", "string"), description=p.get("description", ""),
            required=bool(p.get("required", False)), default=p.get("default"), has_default="default" in p,
            pattern=p.get("pattern"), enum=list(p["enum"]) if "enum" in p else None, secret=bool(p.get("secret", False)),
            pos=data["params"].kpos(name),
        )
    steps: list[Step] = []
    stages = data.get("stages") or {}
    for stage in STAGES:
        for raw in stages.get(stage) or []:
            kind = next(k for k in raw if k in kinds.KINDS)
            mod = kinds.get(kind)
            retries = raw.get("retries", 0)
            steps.append(Step(
                id=raw["id"], stage=stage, kind=kind, body=mod.normalize(raw[kind]), raw=raw, index=len(steps),
                title=raw.get("title", ""), description=raw.get("description", ""), readonly=raw.get("readonly"),
                timeout=S.parse_duration(raw["timeout"]) if "timeout" in raw else None,
                retries=retries, retry_delay=S.parse_duration(raw.get("retry_delay", 5)),
                until=raw.get("until"), every=S.parse_duration(raw.get("every", 10)),
                outputs=dict(raw.get("outputs") or {}), next=raw.get("next"), on_failure=raw.get("on_failure"),
                max_visits=raw.get("max_visits"), auto_approve=bool(raw.get("auto_approve")),
            ))
    return Runbook(
        name=data["name"], title=data["title"], path=path, sha256=sha, data=data,
        description=data.get("description", ""), severity=data.get("severity"), alerts=list(data.get("alerts") or []),
        params_from_labels=dict(data.get("params_from_labels") or {}),
        example_params=dict(data.get("example_params") or {}),
        escalation=sorted((S.parse_duration(e["after"]), e["to"], e.get("how", "")) for e in data.get("escalation") or []),
        escalation_page={(S.parse_duration(e["after"]), e["to"]): e["page"] for e in data.get("escalation") or []
                         if e.get("page")},
        owner=data.get("owner"), env_allow=list(data.get("env") or []), params=params, steps=steps,
    )


def load_text(text: str, path: str) -> tuple[Runbook | None, list[Problem]]:
    data, problems = load(text, path)
    if problems and data is None:
        return None, problems
    rep = S.Report(path)
    rep.problems.extend(problems)
    if data is None:
        rep.error((1, 1), "the file is empty: a runbook needs name, title and stages")
        return None, rep.problems
    if not isinstance(data, Map):
        rep.error((1, 1), "a runbook must be a mapping with name, title and stages")
        return None, rep.problems
    document_schema().check(data, data.pos, "", rep)
    if any(p.severity == "error" for p in rep.problems):
        return None, rep.problems
    sha = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return _build(data, path, sha), rep.problems


def load_runbook(path: str | os.PathLike) -> tuple[Runbook | None, list[Problem]]:
    p = str(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise RunbookError(f"{p}: cannot read file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(p, 1, 1, f"file is not UTF-8 text (bad byte at offset {exc.start})", rule="yaml")]
    return load_text(text, p)


# --- finding runbooks ------------------------------------------------------


def find(name: str, search: list[Path]) -> Runbook:
    """A runbook by file path or by name; a clean error when it is missing or broken."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or os.sep in name:
        if not p.is_file():
            raise UsageError(f"no runbook file {name}")
        return _load_or_raise(p)
    candidates = runbook_files(search)
    for f in candidates:
        if f.stem == name:
            return _load_or_raise(f)
    names = []
    for f in candidates:  # the name inside the file may differ from the file name
        rb, _ = load_runbook(f)
        if rb is not None:
            if rb.name == name:
                return _load_or_raise(f)
            names.append(rb.name)
    where = ", ".join(str(s) for s in search)
    known = S.suggest(name, names) or (f" (known: {', '.join(sorted(names)[:10])})" if names else "")
    raise UsageError(f"no runbook named '{name}' in {where}{known}")


def _load_or_raise(path: Path) -> Runbook:
    from runbook.validate import load_config, validate_runbook

    rb, problems = load_runbook(path)
    if rb is not None:
        config, config_problems = load_config()
        problems = problems + config_problems + validate_runbook(rb, config=config).problems
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        first = errors[0].format()
        more = f" (and {len(errors) - 1} more; run `runbook validate {path}`)" if len(errors) > 1 else ""
        raise RunbookError(first + more)
    return rb
