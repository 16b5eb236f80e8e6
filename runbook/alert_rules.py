"""Alert coverage: Prometheus rule files against runbooks (``runbook validate --alert-rules FILE…``).

A rule file is Prometheus's ``groups: [{name, rules: [{alert, expr, for, labels,
annotations}]}]``, or a Kubernetes ``PrometheusRule`` (its ``spec.groups``; several
``---`` documents and ``kind: List`` are read too).  A document of any other ``kind``
(a ServiceMonitor beside the PrometheusRule in ``helm template`` output) is skipped
with a note.  Recording rules (``record:``) are
checked for shape and otherwise ignored.

An alert is answered the way ``runbook run --alert`` (:mod:`runbook.alert`) would
answer it: its ``runbook`` annotation, else a ``runbook_url`` whose last path segment
names a runbook, else the one runbook whose ``alerts:`` list names it.  Findings
(rule ids in :data:`runbook.validate.RULES`):

* RB201 an alert no runbook answers (warning);
* RB202 a runbook's ``alerts:`` entry that no rule defines (info: it may come from
  another source — Loki's ruler, Grafana — or be a proposal);
* RB203 a ``runbook`` annotation naming no runbook (error: ``run --alert`` refuses it);
* RB204 an alert that several runbooks list, with no annotation to choose (warning:
  ``run --alert`` refuses it);
* RB205 a runbook listing an alert whose every rule's annotation names another runbook
  (warning: ``run --alert`` never starts this one for it).

Annotations are read as Alertmanager would send them for the rule's own alert:
``{{ $labels.alertname }}`` becomes the alert's name; any other template leaves the
annotation unchecked (it is filled in when the alert fires).

A rule file that is not YAML or not of that shape is reported as ``file:line:col``
with the rule id ``alert-rules``; so is, as a warning, an alert name outside the
classic ``[a-zA-Z_][a-zA-Z0-9_]*`` (Prometheus accepts any text there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.errors import Problem

FORMAT = "alert-rules"  # the rule id of a malformed rule file (never turned off)
RULE_KEYS = ("alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations")
_DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")
_CLASSIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # a metric or label name before Prometheus 3's UTF-8 names
_ALERTNAME = re.compile(r"\{\{-?\s*\$labels\.alertname\s*-?\}\}|\{\{-?\s*index\s+\$labels\s+\"alertname\"\s*-?\}\}")


@dataclass
class AlertRule:
    """One alerting rule of a rule file."""

    alert: str
    path: str
    pos: tuple[int, int]  # where its `alert:` key is
    group: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    annotation_pos: dict[str, tuple[int, int]] = field(default_factory=dict)


# --- reading rule files ------------------------------------------------------


def rule_files(paths: list[Path]) -> list[Path]:
    """The files named, and the *.yml / *.yaml files under folders named."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix in (".yml", ".yaml") and q.is_file()))
        else:
            out.append(p)
    return out


def _documents(path: str) -> tuple[list[Any], list[Problem]]:
    """The YAML documents of a file (several, `---`, as Kubernetes manifests often are), with
    positions (runbook.yamlload); a syntax error is one problem."""
    from runbook import yamlload

    docs, problems = yamlload.load_all_file(path)
    return docs or [], problems


@dataclass
class RuleFile:
    path: str
    rules: list[AlertRule]
    problems: list[Problem]
    readable: bool  # False when the file could not be read as rules at all (YAML, not a rule file)


def load_rule_file(path: str | Path) -> RuleFile:
    """The alerting rules of one file, and the problems of its shape (rule id ``alert-rules``)."""
    from dataclasses import replace

    from runbook.schema import suggest
    from runbook.yamlload import Map, Seq

    path = str(path)
    docs, problems = _documents(path)
    problems = [replace(p, rule=FORMAT) for p in problems]
    rules: list[AlertRule] = []

    def bad(pos, msg):
        problems.append(Problem(path, pos[0], pos[1], msg, "error", FORMAT))

    unread: list[bool] = []  # a document that is not a rule file at all

    def unreadable(pos, msg):
        unread.append(True)
        bad(pos, msg)

    def kind(v) -> str:
        return {Map: "a mapping", Seq: "a list", str: "text", type(None): "empty"}.get(type(v), type(v).__name__)

    if not docs and not problems:
        bad((1, 1), "the file is empty: expected a Prometheus rule file (groups: [...]) or a Kubernetes PrometheusRule")

    def document(doc, where: str) -> None:
        if not isinstance(doc, Map):
            unreadable(getattr(doc, "pos", (1, 1)), f"{where}expected a Prometheus rule file (a mapping with groups: [...]) "
                                              f"or a Kubernetes PrometheusRule, not {kind(doc)}")
            return
        if doc.get("kind") == "List" and "items" in doc:
            items = doc["items"]
            if not isinstance(items, Seq):
                unreadable(doc.vpos("items"), f"items must be a list, not {kind(items)}")
                return
            for i, item in enumerate(items):
                document(item, f"items[{i}]: ")
            return
        if doc.get("kind") is not None and doc.get("kind") not in ("PrometheusRule", "List"):
            # helm template / kustomize build: the PrometheusRule beside the ServiceMonitor, the Deployment…
            meta = doc.get("metadata")
            name = meta.get("name") if isinstance(meta, Map) else None
            what = f"{doc['kind']}" + (f" '{name}'" if isinstance(name, str) else "")
            problems.append(Problem(path, *doc.vpos("kind"), f"{where}skipped: a {what} holds no alerting rules "
                                    "(only PrometheusRule objects and plain rule files are read)", "info", FORMAT))
            return
        if "groups" in doc:
            groups(doc, "groups")
            return
        if doc.get("kind") == "PrometheusRule" or "spec" in doc:
            spec = doc.get("spec")
            if not isinstance(spec, Map) or "groups" not in spec:
                unreadable(doc.vpos("spec") if "spec" in doc else doc.pos,
                    "a PrometheusRule needs spec.groups: [{name, rules: [...]}]")
                return
            groups(spec, "spec.groups")
            return
        if "stages" in doc and "name" in doc:
            unreadable(doc.pos, f"{where}this is a runbook, not a rule file: give runbook PATHs before --alert-rules, "
                         "or write --alert-rules=FILE")
            return
        keys = ", ".join(map(str, list(doc)[:3])) or "nothing"
        unreadable(doc.pos, f"{where}expected a Prometheus rule file (groups: [...]) or a Kubernetes PrometheusRule "
                     f"(spec.groups); this mapping has {keys}")

    def groups(owner: Map, where: str) -> None:
        gs = owner["groups"]
        if gs is None:
            return
        if not isinstance(gs, Seq):
            unreadable(owner.vpos("groups"), f"{where} must be a list of groups, not {kind(gs)}")
            return
        seen: dict[str, int] = {}
        for i, g in enumerate(gs):
            gpos = gs.ipos(i)
            if not isinstance(g, Map):
                bad(gpos, f"{where}[{i}]: a group must be a mapping with name and rules, not {kind(g)}")
                continue
            name = g.get("name")
            if not isinstance(name, str) or not name:
                bad(g.vpos("name") if "name" in g else gpos, f"{where}[{i}]: a group needs a name (text)")
                name = f"#{i}"
            elif name in seen:
                bad(g.vpos("name"), f"group name '{name}' is repeated in the file (first at line {seen[name]})")
            else:
                seen[name] = g.vpos("name")[0]
            rs = g.get("rules")
            if rs is None:
                continue
            if not isinstance(rs, Seq):
                bad(g.vpos("rules"), f"group '{name}': rules must be a list, not {kind(rs)}")
                continue
            for j, r in enumerate(rs):
                rule(r, rs.ipos(j), name)

    def rule(r, rpos, group: str) -> None:
        if not isinstance(r, Map):
            bad(rpos, f"group '{group}': a rule must be a mapping (alert or record, expr, …), not {kind(r)}")
            return
        for k in r:
            if k not in RULE_KEYS:
                bad(r.kpos(k), f"group '{group}': unknown rule key '{k}'{suggest(k, RULE_KEYS)} "
                               f"(a rule has {', '.join(RULE_KEYS)})")
        if ("alert" in r) == ("record" in r):
            bad(rpos, f"group '{group}': a rule needs exactly one of 'alert' (an alerting rule) or 'record' (a recording rule)")
            return
        key = "alert" if "alert" in r else "record"
        name = r[key]
        if not isinstance(name, str) or not name.strip():
            bad(r.vpos(key), f"group '{group}': '{key}' must be a name (text), not {'empty' if isinstance(name, str) else kind(name)}")
            return
        if "expr" not in r or r["expr"] is None or (isinstance(r["expr"], str) and not r["expr"].strip()):
            bad(r.kpos("expr") if "expr" in r else r.kpos(key), f"{key} '{name}': a rule needs an expr (a PromQL expression)")
        elif isinstance(r["expr"], (Map, Seq, bool)):
            bad(r.vpos("expr"), f"{key} '{name}': expr must be a PromQL expression (text), not {kind(r['expr'])}")
        for k in ("for", "keep_firing_for"):
            if k in r and (not isinstance(r[k], str) or not _DURATION.match(r[k])):
                bad(r.vpos(k), f"{key} '{name}': {k} must be a duration like 5m, 1h30m or 30s, not {r[k]!r}")
        maps: dict[str, dict[str, str]] = {}
        for k in ("labels", "annotations"):
            m = r.get(k)
            if m is None:
                maps[k] = {}
                continue
            if not isinstance(m, Map):
                bad(r.vpos(k), f"{key} '{name}': {k} must be a mapping of names to text, not {kind(m)}")
                maps[k] = {}
                continue
            for lk, lv in m.items():
                if isinstance(lv, (Map, Seq)):
                    bad(m.vpos(lk), f"{key} '{name}': {k}.{lk} must be text, not {kind(lv)}")
            maps[k] = {str(lk): str(lv) for lk, lv in m.items() if not isinstance(lv, (Map, Seq)) and lv is not None}
        if key == "alert" and not _CLASSIC_NAME.fullmatch(name):
            # Prometheus takes any text (alertname is a label value), so a warning, not an error
            problems.append(Problem(path, *r.vpos("alert"), f"alert '{name}': the name is not a classic Prometheus name "
                                    "([a-zA-Z_][a-zA-Z0-9_]*): Prometheus accepts it, but Alertmanager matchers, amtool "
                                    "and URLs built from {{ $labels.alertname }} need it quoted or escaped",
                                    "warning", FORMAT))
        if key == "alert":
            ann = r.get("annotations")
            rules.append(AlertRule(
                alert=name, path=path, pos=r.kpos("alert"), group=group, labels=maps["labels"],
                annotations=maps["annotations"],
                annotation_pos={str(k): ann.vpos(k) for k in ann} if isinstance(ann, Map) else {},
            ))

    for i, doc in enumerate(docs):
        document(doc, f"document {i + 1}: " if len(docs) > 1 else "")
    return RuleFile(path, rules, problems, readable=bool(docs) and not unread)


# --- coverage ----------------------------------------------------------------


def _close(word: str, names) -> str | None:
    """A name close enough to be a typo of ``word`` (closer than runbook.schema.suggest asks:
    alert names share words, ServiceUnavailable is no typo of DatabaseUnavailable)."""
    import difflib

    close = difflib.get_close_matches(word, sorted(names), n=1, cutoff=0.85)
    return close[0] if close else None


@dataclass
class Coverage:
    """What the check found: problems by file, and how each alerting rule is answered."""

    problems: dict[str, list[Problem]] = field(default_factory=dict)
    answers: list[dict[str, Any]] = field(default_factory=list)  # one per alerting rule, for --format json
    not_in_rules: list[dict[str, Any]] = field(default_factory=list)  # runbook alerts no rule defines

    def add(self, p: Problem) -> None:
        self.problems.setdefault(p.path, []).append(p)


def check(rules: list[AlertRule], runbooks: list, config=None, complete: bool = True) -> Coverage:
    """Compare alerting rules with runbooks (loaded :class:`runbook.spec.Runbook` objects).

    ``complete`` is False when a rule file could not be read at all: then a runbook's alert
    missing from the rules proves nothing, and RB202 is not reported."""
    from runbook.alert import Alert
    from runbook.alert import by_annotation as annotated_runbook
    from runbook.errors import RunbookError
    from runbook.schema import suggest
    from runbook.validate import Config

    config = config or Config()
    cov = Coverage()

    def finding(path, pos, rule, msg):
        sev = config.severity(rule)
        if sev != "off":
            cov.add(Problem(path, pos[0], pos[1], msg, sev, rule))

    # the runbooks by name and file stem, as run --alert finds them (runbook.alert.choose_runbook)
    index: dict[str, str] = {}
    listed: dict[str, list[str]] = {}  # alert name -> names of the runbooks whose alerts: list it
    for rb in runbooks:
        index.setdefault(rb.name, rb.path)
        index.setdefault(Path(rb.path).stem, rb.path)
        for a in rb.alerts:
            if rb.name not in listed.setdefault(a, []):
                listed[a].append(rb.name)
    names = sorted({rb.name for rb in runbooks})
    name_of = {rb.path: rb.name for rb in runbooks}  # an annotation may name a runbook by its file's stem

    by_annotation: dict[str, set] = {}  # alert name -> runbooks its rules' annotations choose (None: no annotation)
    for r in rules:
        # a function, not the name itself: re.sub reads a replacement string as a template (Foo\\1, \\g<0>)
        ann = {k: _ALERTNAME.sub(lambda _m, name=r.alert: name, v) for k, v in r.annotations.items()}
        answer: dict[str, Any] = {"alert": r.alert, "file": r.path, "line": r.pos[0], "group": r.group,
                                  "runbook": None, "by": None}
        cov.answers.append(answer)
        ref = ann.get("runbook", "").strip()
        if "{{" in ref or ("{{" in ann.get("runbook_url", "") and not ref):
            answer["by"] = "template (not checked: it is filled in when the alert fires)"
            by_annotation.setdefault(r.alert, set()).add(None)
            continue
        try:
            found = annotated_runbook(Alert(name=r.alert, status="firing", labels=r.labels, annotations=ann,
                                         starts_at=None, fingerprint=""), index)
        except RunbookError:
            titled = [rb.name for rb in runbooks if re.search(rf"(?<![\w-]){re.escape(ref)}(?![\w-])", rb.title or "")]
            hint = (f" (runbook {titled[0]}'s title mentions {ref}: write runbook: {titled[0]})" if len(titled) == 1
                    else suggest(ref, names))
            by_annotation.setdefault(r.alert, set()).add("")  # refused: no runbook
            finding(r.path, r.annotation_pos.get("runbook", r.pos), "RB203",
                    f"alert {r.alert}: its 'runbook' annotation names '{ref}', which is none of the runbooks checked"
                    f"{hint}; `runbook run --alert` would refuse the alert")
            continue
        if found:
            chosen = name_of.get(index[found[0]], found[0])
            answer["runbook"], answer["by"] = chosen, ("annotation runbook" if ref else "annotation runbook_url")
            by_annotation.setdefault(r.alert, set()).add(chosen)
            continue
        by_annotation.setdefault(r.alert, set()).add(None)  # a rule of this name that the alerts: lists decide
        by_list = listed.get(r.alert, [])
        if len(by_list) == 1:
            answer["runbook"], answer["by"] = by_list[0], "alerts"
        elif not by_list:
            close = _close(r.alert, listed)
            typo = f" (runbook {listed[close][0]} lists '{close}': a typo?)" if close else ""
            finding(r.path, r.pos, "RB201",
                    f"alert {r.alert} (group '{r.group}') is answered by no runbook: none lists it in alerts:{typo} "
                    + (f"and its runbook_url ({ann['runbook_url']}) ends in no runbook's name" if ann.get("runbook_url")
                       else "and it has no 'runbook' annotation naming one"))
        else:
            finding(r.path, r.pos, "RB204",
                    f"alert {r.alert} is listed by {len(by_list)} runbooks ({', '.join(by_list)}) and has no 'runbook' "
                    f"annotation to choose: `runbook run --alert` would refuse it; set the annotation or keep it in one alerts: list")

    if complete:
        defined = {r.alert for r in rules}
        for rb in runbooks:
            seq = rb.data.get("alerts")
            for i, a in enumerate(rb.alerts):
                pos = seq.ipos(i) if hasattr(seq, "ipos") else rb.data.kpos("alerts")
                chosen = by_annotation.get(a, {None})
                if a in defined and not chosen & {None, "", rb.name}:  # "": an annotation refused (RB203 says so)
                    finding(rb.path, pos, "RB205",
                            f"alert {a} (alerts:) is never answered by this runbook: every rule defining it has a "
                            f"'runbook' annotation, naming {', '.join(sorted(chosen))}, which run --alert "
                            f"takes first; drop {a} from this list, or name {rb.name} in the annotation")
                if a in defined:
                    continue
                cov.not_in_rules.append({"alert": a, "runbook": rb.name, "file": rb.path, "line": pos[0]})
                close = _close(a, defined)
                finding(rb.path, pos, "RB202",
                        f"alert {a} (alerts:) is defined by no rule of the alert rule files"
                        + (f" (a rule defines '{close}': a typo?)" if close else
                           ": a proposal, or an alert from another source (Loki ruler, Grafana)"))
    return cov
