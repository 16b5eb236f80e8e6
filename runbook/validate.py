"""Static checks of a loaded runbook: graph, references, templates, safety.

Structural problems (YAML, unknown keys, types) come from the loader in
:mod:`runbook.spec`; this module checks what needs the whole document:

* graph: duplicate ids, ``next``/``goto``/``on_failure`` naming no step,
  unreachable steps, loops with no bound;
* templates and conditions: syntax, unknown names, undefined parameters,
  a step's output read where that step cannot have run before;
* parameters: defaults that break their own type, pattern or enum;
* inventory targets (with an inventory);
* safety rules (ids RB1xx), whose severity a project tunes in ``.runbook.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook import expr
from runbook import graph as G
from runbook import outputs
from runbook.errors import Problem
from runbook.schema import suggest
from runbook.spec import SPECIAL_TARGETS, Runbook, Step


# id -> (name, default severity, what it means)
RULES: dict[str, tuple[str, str, str]] = {
    "RB101": ("write-in-diagnose", "error", "the diagnose stage only looks: a write step belongs in mitigate"),
    "RB102": ("mitigate-without-verify", "error", "a mitigate stage needs a verify stage after it"),
    "RB103": ("write-without-timeout", "warning", "a write step should have a timeout"),
    "RB104": ("unbounded-fanout", "warning", "a step that fans out over many hosts should say how many at once (forks)"),
    "RB105": ("secret-printed", "error", "a secret parameter is rendered where it would be printed"),
    "RB106": ("template-in-quotes", "error", "a template inside quotes or a here-document in a shell command is not protected by quoting"),
    "RB107": ("readonly-without-role", "warning", "a read-only sql step on a non-local database whose inventory entry has no readonly_role"),
    "RB109": ("auto-approve-severe", "warning", "a SEV1/SEV2 runbook lets a team worker run a write step without a person (auto_approve: true); validate --allow-auto-approve accepts it"),
    "RB108": ("aggregate-unchecked", "info", "without an inventory, validate cannot tell whether a host name is a group whose outputs need an aggregate"),
    # alert coverage (validate --alert-rules FILE…: runbook.alert_rules); "info" is never made an error by --strict
    "RB201": ("alert-without-runbook", "warning", "an alert of the rule files that no runbook answers: no alerts: list names it, no runbook or runbook_url annotation names a runbook"),
    "RB202": ("alert-not-in-rules", "info", "a runbook's alerts: entry that no rule of the rule files defines (a proposal, an alert from another source, or a name to fix)"),
    "RB203": ("unknown-runbook-annotation", "error", "a rule's runbook annotation names no runbook: run --alert refuses the alert"),
    "RB204": ("alert-in-several-runbooks", "warning", "an alert that several runbooks list, with no runbook annotation to choose: run --alert refuses it"),
    "RB205": ("alert-answered-elsewhere", "warning", "a runbook lists an alert whose every rule names another runbook in its runbook annotation: run --alert never starts this one for it"),
}
SEVERITIES = ("error", "warning", "off")
CONFIG_FILES = (".runbook.yaml", ".runbook.yml")


@dataclass
class Config:
    """Project settings for the validator, from ``.runbook.yaml``::

        rules:
          RB103: error        # or the rule's name: write-without-timeout: error
          RB106: off
    """

    severities: dict[str, str] = field(default_factory=dict)
    path: str | None = None

    def severity(self, rule: str) -> str:
        return self.severities.get(rule, RULES[rule][1])


def load_config(explicit: str | None = None, start: Path | None = None) -> tuple[Config, list[Problem]]:
    from runbook.yamlload import Map, load_file

    if explicit:
        path = Path(explicit)
    else:
        path = None
        d = (start or Path.cwd()).resolve()
        for cand in [d, *d.parents]:
            for name in CONFIG_FILES:
                if (cand / name).is_file():
                    path = cand / name
                    break
            if path or (cand / ".git").exists():
                break
        if path is None:
            return Config(), []
    data, problems = load_file(path)
    cfg = Config(path=str(path))
    if problems or data is None:
        return cfg, problems
    by_name = {v[0]: k for k, v in RULES.items()}
    if not isinstance(data, Map) or set(data) - {"rules"}:
        bad = [k for k in (data if isinstance(data, dict) else {}) if k != "rules"]
        pos = data.kpos(bad[0]) if bad and isinstance(data, Map) else (1, 1)
        return cfg, [Problem(str(path), pos[0], pos[1], f"config: expected only the key 'rules'{suggest(bad[0], ['rules']) if bad else ''}")]
    rules = data.get("rules") or {}
    if not isinstance(rules, Map):
        return cfg, [Problem(str(path), *data.vpos("rules"), "config: rules must be a mapping of rule id to error, warning or off")]
    for key, sev in rules.items():
        rid = key if key in RULES else by_name.get(key)
        if rid is None:
            problems.append(Problem(str(path), *rules.kpos(key), f"config: unknown rule '{key}'{suggest(key, [*RULES, *by_name])}"))
        elif sev is False or sev not in SEVERITIES:
            sev_text = "off" if sev is False else sev
            if sev_text == "off":
                cfg.severities[rid] = "off"
            else:
                problems.append(Problem(str(path), *rules.vpos(key), f"config: severity of {key} must be error, warning or off"))
        else:
            cfg.severities[rid] = sev
    return cfg, problems


@dataclass
class Result:
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


# --- graph (successors, reachability, loops: runbook.graph) -----------------


def _bounded(step: Step) -> bool:
    # A step's own polling is bounded by until + timeout; a loop through the
    # graph only by a step that may run a limited number of times.
    return step.max_visits is not None


# --- the checks ------------------------------------------------------------


_MAPPING_METHODS = frozenset(("keys", "items", "values", "get", "pop", "popitem", "update", "copy", "clear",
                              "setdefault", "fromkeys"))


def _label_form_problems(rb: Runbook, pname: str, problem) -> None:
    """A parameter from a label form (``deployment: {from_pod: pod}``): the form
    gives a name, so the parameter is a string; the form's keys that name a
    parameter name a declared one; and a dry-run, which contacts nothing, needs
    an example value to plan with."""
    from runbook.alert import form_of, label_forms

    entry = rb.params_from_labels[pname]
    form = form_of(entry)
    if form is None:
        return
    where = rb.data["params_from_labels"]
    p = rb.params[pname]
    if p.type != "string":
        problem(where.vpos(pname), f"params_from_labels: '{pname}' gets a name ({form}: {entry[form]}), but parameter "
                                   f"'{pname}' is type: {p.type}; make it type: string")
    node = label_forms()[form].LABEL_FORMS[form]
    for key, value in entry.items():
        field = node.fields.get(key)
        if key != form and getattr(field, "hint", "") == "a parameter name" and value not in rb.params:
            hint = suggest(str(value), list(rb.params)) or (f" (parameters: {', '.join(rb.params)})" if rb.params else "")
            problem(where[pname].vpos(key), f"params_from_labels: '{pname}': {key} names parameter '{value}', which "
                                            f"the runbook does not declare{hint}")
    if p.required and not p.has_default and pname not in rb.example_params:
        problem(where.kpos(pname), f"params_from_labels: '{pname}' is found from a label only when a live run starts; "
                                   f"give it an example_params value for --dry-run (which contacts nothing) to plan with")


def validate_runbook(rb: Runbook, inventory: Any = None, config: Config | None = None) -> Result:
    config = config or Config()
    res = Result()
    path = rb.path

    def problem(pos, msg, rule="schema", severity="error"):
        if rule in RULES:
            severity = config.severity(rule)
            if severity == "off":
                return
        res.problems.append(Problem(path, pos[0], pos[1], msg, severity, rule))

    # ids
    seen: dict[str, Step] = {}
    for s in rb.steps:
        if s.id in seen:
            problem(s.raw.vpos("id"), f"duplicate step id '{s.id}' (first at line {seen[s.id].pos[0]})")
        else:
            seen[s.id] = s
    if not rb.steps:
        problem(rb.data.vpos("stages"), "the runbook has no steps")
        return res

    # names that templates would read as a mapping's method (steps.x.outputs.keys is dict.keys)
    for pname in rb.params:
        if pname in _MAPPING_METHODS:
            problem(rb.data["params"].kpos(pname), f"parameter name '{pname}' is also a mapping method: params.{pname} "
                                                   f"would read the method, not the value; rename it (e.g. '{pname}_')")
    for s in rb.steps:
        for oname in s.outputs:
            if oname in _MAPPING_METHODS:
                problem(s.raw["outputs"].kpos(oname), f"step '{s.id}': output name '{oname}' is also a mapping method: "
                                                      f"steps.{s.id}.outputs.{oname} would read the method, not the value; "
                                                      f"rename it (e.g. 'n_{oname}')")

    # alert labels → parameters (run --alert)
    for pname in rb.params_from_labels:
        if pname not in rb.params:
            hint = suggest(pname, list(rb.params)) or (f" (parameters: {', '.join(rb.params)})" if rb.params else "")
            problem(rb.data["params_from_labels"].kpos(pname), f"params_from_labels names parameter '{pname}', which the runbook does not declare{hint}")
        elif rb.params[pname].secret:
            problem(rb.data["params_from_labels"].kpos(pname), f"params_from_labels: '{pname}' is a secret parameter; alert labels are not secret, so do not take it from one")
        else:
            _label_form_problems(rb, pname, problem)

    for pname in rb.example_params:
        if pname not in rb.params:
            hint = suggest(pname, list(rb.params)) or ""
            problem(rb.data["example_params"].kpos(pname), f"example_params names parameter '{pname}', which the runbook does not declare{hint}")
        elif rb.params[pname].secret:
            problem(rb.data["example_params"].kpos(pname), f"example_params: '{pname}' is a secret parameter; never write a secret in a runbook (CI can set RUNBOOK_PARAM_{pname.upper()})")

    # references to steps
    ids = list(rb.by_id)
    for s in rb.steps:
        refs = [("next", s.next), ("on_failure", s.on_failure)]
        refs += [(f"{s.kind} → {t}", t) for _, t in s.module.edges(s.body)]
        for key, target in refs:
            if target is None or (key == "on_failure" and target in SPECIAL_TARGETS):
                continue
            if target not in rb.by_id:
                pos = s.raw.vpos(key) if key in s.raw else s.raw.vpos(s.kind)
                extra = " (give a step id, or 'continue' or 'abort')" if key == "on_failure" else ""
                problem(pos, f"step '{s.id}': {key.split(' ')[0]} names step '{target}', which does not exist{suggest(target, ids) or extra}")
        if s.until is not None and s.timeout is None:
            problem(s.raw.kpos("until"), f"step '{s.id}': until needs a timeout, or it may poll forever")

    if len(seen) != len(rb.steps):
        return res  # the graph checks would only repeat the confusion of duplicate ids
    graph = G.graph(rb)
    reach = G.reach(graph, rb.steps[0].id)
    for s in rb.steps:
        if s.id not in reach:
            problem(s.pos, f"step '{s.id}' can never be reached (no step leads to it; give a previous step next/goto/on_failure, or remove it)")

    # loops
    for comp in G.sccs(graph):
        is_cycle = len(comp) > 1 or comp[0] in graph[comp[0]]
        if is_cycle and not any(_bounded(rb.by_id[i]) for i in comp):
            order = [s.id for s in rb.steps if s.id in comp]
            first = rb.by_id[order[0]]
            problem(first.pos, f"loop with no bound: {' → '.join(order)} → {order[0]}; give a step in it max_visits (how often it may run)")

    # ancestors, for "can this step's output exist here?"
    ancestors: dict[str, set[str]] | None = None

    def can_run_before(src: str, dst: str) -> bool:
        nonlocal ancestors
        if ancestors is None:
            ancestors = {i: set() for i in graph}
            for i in graph:
                for j in G.reach(graph, i):
                    if j != i or i in graph[i]:
                        ancestors[j].add(i)
        return src in ancestors.get(dst, ())

    # parameters
    for p in rb.params.values():
        if p.has_default and p.default is not None:
            why = p.check(p.default)
            if why:
                problem(_param_key_pos(rb, p.name, "default"), f"parameter '{p.name}': default {p.default!r} {why}")
        if p.pattern:
            try:
                re.compile(p.pattern)
            except re.error as exc:
                problem(_param_key_pos(rb, p.name, "pattern"), f"parameter '{p.name}': invalid pattern: {exc}")
        if p.required and p.has_default:
            problem(_param_key_pos(rb, p.name, "required"), f"parameter '{p.name}' is required and has a default; drop one of them", severity="warning")

    secret_params = {n for n, p in rb.params.items() if p.secret}
    for s in rb.steps:
        for o, spec in s.outputs.items():
            if "regex" in spec:
                try:
                    re.compile(spec["regex"])
                except re.error as exc:
                    problem(s.raw["outputs"].vpos(o), f"step '{s.id}': output '{o}': invalid regex: {exc}")
            why = outputs.type_problem(spec)
            if why:
                problem(s.raw["outputs"].vpos(o), f"step '{s.id}': output '{o}': {why}")
        where = s.module.fans_out(s.body, inventory) if s.outputs else ""
        unsaid = outputs.missing_aggregates(s.outputs) if where else []
        if unsaid:
            problem(s.raw["outputs"].kpos(unsaid[0]), outputs.needs_aggregate(s.id, unsaid, where))
        elif inventory is None and s.outputs and outputs.missing_aggregates(s.outputs) \
                and s.module.fans_out(s.body, _EVERY_NAME_A_GROUP):
            problem(s.raw["outputs"].kpos(outputs.missing_aggregates(s.outputs)[0]),
                    f"step '{s.id}': not checked without an inventory: if its host is a group, its outputs need an "
                    "aggregate (the plan and the run refuse them without one); validate with --env or --inventory",
                    rule="RB108")
        for field_name, source, mode in step_templates(s):
            _check_template(rb, s, field_name, source, mode, problem, can_run_before, secret_params)
        for field_name, source, mode in step_templates(s):
            if mode != "shell":
                continue
            for why in expr.shell_quoting_problems(source):
                problem(_template_pos(s, field_name, mode), f"step '{s.id}' {field_name}: {why}", rule="RB106")
            for name in expr.secret_misuse(source, frozenset(secret_params)):
                problem(_template_pos(s, field_name, mode), f"step '{s.id}' {field_name}: secret parameter '{name}' is used inside an expression or filter, "
                        f"which would put it in the command line; use {{{{ params.{name} }}}} alone (it is passed as an environment variable)", rule="RB105")
        mod = s.module
        for key, message, rule in mod.static_problems(s):
            body = s.raw.get(s.kind)
            pos = body.vpos(key) if hasattr(body, "vpos") and key in body else s.raw.vpos(s.kind)
            problem(pos, f"step '{s.id}' {s.kind}.{key}: {message}", rule=rule)
        if mod.fanout(s.body) is False:
            problem(s.raw.vpos(s.kind), f"step '{s.id}' fans out over several hosts without forks: say how many hosts at once (forks: 10)", rule="RB104")
        if inventory is not None:
            for field_name, source, mode in step_templates(s):
                _check_inventory_refs(s, source, mode, inventory, problem)
        if inventory is not None:
            for key, message, rule in mod.inventory_problems(s, inventory):
                body = s.raw.get(s.kind)
                pos = body.vpos(key) if hasattr(body, "vpos") and key in body else s.raw.vpos(s.kind)
                problem(pos, f"step '{s.id}' {s.kind}.{key}: {message}", rule=rule)
            for kind, name, key in mod.inventory_targets(s.body):
                if expr.is_template(name):
                    continue
                if name not in inventory.names(kind) and not (kind == "host" and name in inventory.names("group")):
                    problem(s.raw.vpos(s.kind), f"step '{s.id}': {kind} '{name}' is not in {inventory.path}{suggest(name, inventory.names(kind))}")

    # safety rules
    for s in rb.steps:
        if s.stage == "diagnose" and s.effect == "write":
            problem(s.pos, f"step '{s.id}' writes in the diagnose stage; mark it readonly: true if it only looks, or move it to mitigate", rule="RB101")
        if s.effect == "write" and s.timeout is None and s.module.WRITE_NEEDS_TIMEOUT:
            problem(s.pos, f"step '{s.id}' writes and has no timeout; add timeout: 5m (or what fits)", rule="RB103")
        if s.auto_approve and s.effect == "write" and str(rb.severity or "").upper() in ("SEV1", "SEV2"):
            problem(s.raw.vpos("auto_approve"), f"step '{s.id}' may be run by a team worker without a person "
                    f"(auto_approve) in a {rb.severity} runbook; remove auto_approve, or accept it with "
                    "validate --allow-auto-approve (or RB109: off in .runbook.yaml)", rule="RB109")
    if inventory is not None:
        for (_after, to), name in rb.escalation_page.items():
            notifier = getattr(inventory, "notify", {}).get(name)
            if notifier is None or not getattr(notifier, "pagerduty", False):
                why = "is not in" if notifier is None else "has no routing_key (escalation pages go through PagerDuty) in"
                problem(rb.data.kpos("escalation"), f"the escalation to {to} pages through notifier '{name}', which "
                        f"{why} {inventory.path}")
    if rb.stage("mitigate") and not rb.stage("verify"):
        problem(rb.data["stages"].kpos("mitigate"), "the mitigate stage has no verify stage after it: add verify steps that prove the system is healthy again", rule="RB102")
    return res


class _EveryName(dict):
    def __contains__(self, name) -> bool:
        return True

    def __bool__(self) -> bool:
        return True


class _EveryNameAGroup:
    """A stand-in inventory in which every name is a group: could this step fan out?"""

    groups = _EveryName()


_EVERY_NAME_A_GROUP = _EveryNameAGroup()


# template section under `inventory.` -> Inventory kind
INVENTORY_SECTIONS = {"hosts": "host", "groups": "group", "clusters": "cluster", "databases": "database",
                      "prometheus": "prometheus", "http": "http", "notify": "notify"}


def _check_inventory_refs(s: Step, source: str, mode: str, inventory, problem) -> None:
    """`inventory.databases.main…` must name an entry the inventory has."""
    if mode not in ("expr", "until") and not expr.is_template(source):
        return
    refs, err = expr.references(source, is_expression=mode in ("expr", "until"))
    for ref in refs:
        path = ref.path
        if ref.root != "inventory" or len(path) < 2 or path[0] not in INVENTORY_SECTIONS:
            continue
        kind, name = INVENTORY_SECTIONS[path[0]], str(path[1])
        known = inventory.names(kind)
        if name not in known:
            problem(_template_pos(s, "", mode), f"step '{s.id}': {kind} '{name}' is not in the inventory {inventory.path}{suggest(name, known)}")


def _result_fields(step: Step) -> tuple[str, ...]:
    from runbook.steps import BASE_RESULT_FIELDS

    return BASE_RESULT_FIELDS + tuple(step.module.RESULT_FIELDS)


def _check_result_path(target: Step, path: tuple, pos, where: str, problem) -> None:
    """``steps.ID.<field>`` must be a field of that step's result, and
    ``steps.ID.outputs.<name>`` an output it declares."""
    if not path or not isinstance(path[0], str):
        return
    fields = _result_fields(target)
    if path[0] not in fields:
        problem(pos, f"{where}: step '{target.id}' has no result field '{path[0]}'{suggest(path[0], fields) or ' (fields: ' + ', '.join(fields) + ')'}")
    elif path[0] == "outputs" and len(path) > 1 and isinstance(path[1], str):
        declared = list(target.outputs) + [o for o in target.module.IMPLICIT_OUTPUTS if o not in target.outputs]
        if path[1] not in declared:
            hint = suggest(path[1], declared) or (f" (it declares: {', '.join(declared)})" if declared else " (declare it under outputs:)")
            problem(pos, f"{where}: step '{target.id}' has no output '{path[1]}'{hint}")


def _template_pos(s: Step, field_name: str, mode: str):
    """Where a template sits: its own key where the step has one, else the kind's value."""
    if mode == "until":
        return s.raw.vpos("until")
    if field_name in ("title", "description"):
        return s.raw.vpos(field_name)
    value = s.raw.get(s.kind)
    m = re.match(r"^\[(\d+)\]\.(\w+)$", field_name)  # choose branches: [i].when
    if m and isinstance(value, list) and int(m.group(1)) < len(value):
        item = value[int(m.group(1))]
        return item.vpos(m.group(2)) if hasattr(item, "vpos") else value.ipos(int(m.group(1)))
    if hasattr(value, "vpos") and field_name.split(".")[0] in value:
        return value.vpos(field_name.split(".")[0])
    return s.raw.vpos(s.kind)


def _param_key_pos(rb: Runbook, name: str, key: str):
    entry = rb.data["params"][name]
    return entry.vpos(key)


def step_templates(s: Step):
    """(field, source, mode) of every template of a step: its kind's, its title and description, its until."""
    for item in s.module.templates(s.body):
        yield item
    for key, mode in (("title", "text"), ("description", "text")):
        if key in s.raw and isinstance(s.raw[key], str):
            yield key, s.raw[key], mode
    if s.until:
        yield "until", s.until, "until"


def _check_template(rb, s, field_name, source, mode, problem, can_run_before, secret_params):
    is_expr = mode in ("expr", "until")
    if not is_expr and not expr.is_template(source):
        return
    pos = _template_pos(s, field_name, mode)
    refs, err = expr.references(source, is_expression=is_expr)
    where = f"step '{s.id}' {field_name}"
    if err:
        problem(pos, f"{where}: template syntax error: {err}")
        return
    allowed_roots = set(expr.ROOTS)
    if mode == "until":
        # an until condition also sees the step's own result: stdout, exit_code, outputs, …
        allowed_roots |= set(_result_fields(s)) | set(s.outputs)
    for ref in refs:
        if ref.root not in allowed_roots:
            problem(pos, f"{where}: unknown name '{ref.root}'{suggest(ref.root, allowed_roots) or ' (use params.…, steps.…, inventory.…, env.… or run.…)'}")
        elif ref.root == "params" and ref.key is not None:
            if ref.key not in rb.params:
                problem(pos, f"{where}: parameter '{ref.key}' is not defined{suggest(ref.key, rb.params) or ' (declare it under params:)'}")
            elif ref.key in secret_params and mode == "text":
                problem(pos, f"{where}: secret parameter '{ref.key}' would be printed here", rule="RB105")
        elif ref.root == "steps" and ref.key is not None:
            if ref.key not in rb.by_id:
                problem(pos, f"{where}: no step '{ref.key}'{suggest(ref.key, rb.by_id)}")
                continue
            if not (ref.key == s.id and mode == "until") and not can_run_before(ref.key, s.id):
                problem(pos, f"{where}: reads steps.{ref.key}, but step '{ref.key}' cannot have run before '{s.id}'")
            _check_result_path(rb.by_id[ref.key], ref.path[1:], pos, where, problem)
        elif ref.root == "env" and ref.key is not None and ref.key not in rb.env_allow:
            problem(pos, f"{where}: environment variable '{ref.key}' is not allowed; list it under env: at the top of the runbook")
