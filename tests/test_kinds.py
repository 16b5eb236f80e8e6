"""Every step kind satisfies the one protocol of ``runbook/steps/base.py``;
a kind with only the required hooks validates, plans and shows; nothing
outside ``runbook/steps/`` compares a kind's name."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from pathlib import Path

import pytest
from conftest import ROOT

from runbook import spec, steps
from runbook.steps import Action, StepResult, base

KINDS = sorted(steps.KINDS)
TEMPLATE_MODES = {"shell", "text", "env", "value", "expr"}


# --- the protocol ---------------------------------------------------------------


def test_base_lists_every_hook_once_and_the_protocol_names_them_all():
    assert len(set(base.HOOKS)) == len(base.HOOKS)
    assert set(base.defaults()) == set(base.DEFAULTED)
    declared = set(typing.get_type_hints(steps.StepKind)) | {
        name for name, v in vars(steps.StepKind).items() if inspect.isfunction(v) and not name.startswith("_")}
    assert declared == set(base.HOOKS)
    for name in base.DEFAULTED:  # every default is documented where it is defined
        assert re.search(rf"^(#: .*\n)+{name}: |^def {name}\(.*\n    \"\"\"", inspect.getsource(base), re.M), name


def _has_type(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return isinstance(value, tuple) and all(_has_type(v, args[0]) for v in value)
    if args:  # a union: str | None, bool | str
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


@pytest.mark.parametrize("kind", KINDS)
def test_kind_defines_the_required_hooks_and_every_hook_has_its_type(kind):
    mod = steps.get(kind)
    for name in base.REQUIRED:
        assert steps.defines(mod, name), f"{mod.__name__} must define {name}"
    assert callable(getattr(mod.SCHEMA, "check", None)) and callable(getattr(mod.SCHEMA, "json", None))
    for name in ("normalize", "templates", "action", "run"):
        assert callable(getattr(mod, name))
    hints = typing.get_type_hints(base)
    for name in base.DEFAULTED:
        value, default = getattr(mod, name), getattr(base, name)
        if callable(default):
            assert callable(value), f"{kind}.{name}"
            assert len(inspect.signature(value).parameters) == len(inspect.signature(default).parameters), f"{kind}.{name}"
        else:
            assert _has_type(value, hints[name]), f"{kind}.{name} = {value!r} is not {hints[name]}"
    assert mod.FIXED_EFFECT in (None, "read", "write")
    assert mod.SHOW_OUTPUT in (True, False, "head")
    assert set(mod.IMPLICIT_OUTPUTS) <= set(mod.RESULT_FIELDS) | set(steps.BASE_RESULT_FIELDS), \
        "an implicit output is also a field of the result"


def test_get_fills_only_what_a_kind_leaves_out():
    choose, shell = steps.get("choose"), steps.get("shell")
    assert choose.BRANCHING is True and steps.defines(choose, "BRANCHING")
    assert shell.BRANCHING is False and not steps.defines(shell, "BRANCHING")
    assert shell.edges is not base.edges  # its own
    assert steps.get("end").ENDS_RUN and steps.get("end").end_status({"status": "escalated"}) == "escalated"
    assert steps.get("ask").IMPLICIT_OUTPUTS == ("answer",)
    assert steps.get("manual").WRITE_NEEDS_TIMEOUT is False


# --- every kind on the shipped playbooks ----------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    """(runbook, plan entries) of every shipped playbook, planned as `runbook validate --dry-run --env production` does."""
    from runbook.engine import Engine, Options, resolve_params
    from runbook.inventory import resolve_inventory

    inventory = resolve_inventory(None, "production", ROOT)
    out = []
    for path in sorted((ROOT / "playbooks").glob("*.yaml")):
        rb, problems = spec.load_runbook(path)
        assert rb is not None, [p.format() for p in problems]
        given = {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in rb.example_params.items()}
        given.update({n: "dry-run-secret" for n, p in rb.params.items() if p.secret and n not in given and not p.has_default})
        params = resolve_params(rb, given)
        out.append((rb, Engine(rb, params, inventory=inventory, options=Options(dry_run=True)).plan()))
    return out


def test_the_shipped_playbooks_use_every_kind(shipped):
    used = {s.kind for rb, _ in shipped for s in rb.steps}
    assert used == set(steps.KINDS), f"no shipped playbook uses {sorted(set(steps.KINDS) - used)}: add one for this test"


@pytest.mark.parametrize("kind", KINDS)
def test_kind_hooks_work_on_the_shipped_steps(kind, shipped):
    from runbook.graph import successors

    mod = steps.get(kind)
    seen = 0
    for rb, entries in shipped:
        for s in rb.steps:
            if s.kind != kind:
                continue
            seen += 1
            assert isinstance(s.body, dict)
            assert mod.normalize(s.raw[kind]) == s.body, f"{rb.name}/{s.id}: normalize is not deterministic"
            for item in mod.templates(s.body):
                field_name, source, mode = item
                assert isinstance(field_name, str) and isinstance(source, str) and mode in TEMPLATE_MODES, item
            for label, target in mod.edges(s.body):
                assert isinstance(label, str) and target in rb.by_id, (label, target)
            assert s.effect in ("read", "write")
            assert mod.effect_of(s.body) in (None, "read", "write")
            assert isinstance(mod.outline(s.body), str)
            assert mod.fanout(s.body) in (None, True, False)
            assert all(len(t) == 3 for t in mod.inventory_targets(s.body))
            assert all(len(p) == 3 for p in mod.static_problems(s))
            assert isinstance(mod.falls_through(s.body), bool)
            if mod.ENDS_RUN:
                assert isinstance(mod.end_status(s.body), str)
                assert successors(rb, s) == []
    assert seen, f"no shipped step of kind {kind}"
    planned = [e for _, entries in shipped for e in entries if e.step.kind == kind]
    assert planned, f"no shipped {kind} step is reachable"
    for e in planned:  # action rendered with the dry-run Renderer
        a = e.action
        assert isinstance(a, Action), e.step.id
        assert isinstance(a.summary, str) and isinstance(a.targets, list) and isinstance(a.detail, dict)
        assert all(isinstance(t, str) for t in a.targets)


# --- a kind with only the required hooks --------------------------------------------------

FAKE = "fakekind"


def _fake_module() -> types.ModuleType:
    from runbook import schema as S

    mod = types.ModuleType("runbook_test_fakekind")
    mod.__doc__ = "``fakekind``: a kind with only the required hooks."
    mod.SCHEMA = S.Str(doc="some text")
    mod.normalize = lambda value: {"text": value}
    mod.templates = lambda body: [("text", body["text"], "text")]
    mod.action = lambda step, r: Action(summary=r.text(step.body["text"]), targets=["somewhere"])
    mod.run = lambda step, act, ctx: StepResult("ok", stdout=act.summary)
    return mod


@pytest.fixture
def fake_kind(monkeypatch):
    """The fake kind registered for one test (the schema is rebuilt with it)."""
    mod = _fake_module()
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(steps.KINDS, FAKE, mod.__name__)
    monkeypatch.setattr(steps, "_loaded", dict(steps._loaded))
    monkeypatch.setattr(spec, "_DOC", None)
    monkeypatch.setattr(spec, "_STEP", None)
    return mod


FAKE_BOOK = """\
name: fake
title: A runbook of the fake kind
params:
  what: {type: string, default: things}
stages:
  diagnose:
    - id: look
      fakekind: "look at {{ params.what }}"
      readonly: true
    - id: again
      fakekind: "look again"
      readonly: true
      outputs: {n: {regex: "(\\\\d+)", type: integer}}
  mitigate:
    - id: fix
      fakekind: "fix {{ steps.again.outputs.n }} {{ params.what }}"
      timeout: 1m
  verify:
    - id: check
      fakekind: "check"
      readonly: true
"""


def test_a_kind_with_only_the_required_hooks_validates_plans_and_shows(fake_kind, write, capsys):
    from runbook import ui
    from runbook.commands import graph as graph_cmd
    from runbook.commands import show as show_cmd
    from runbook.engine import Engine, Options, resolve_params
    from runbook.secrets import Redactor
    from runbook.validate import validate_runbook

    path = write("fake.yaml", FAKE_BOOK)
    rb, problems = spec.load_runbook(path)
    assert rb is not None, [p.format() for p in problems]
    assert [s.kind for s in rb.steps] == [FAKE] * 4
    assert not steps.defines(fake_kind, "edges") and fake_kind.edges({"text": "x"}) == []
    assert [p.format() for p in validate_runbook(rb).problems] == []
    assert rb.by_id["fix"].effect == "write"  # a kind that does not say is treated as one that writes

    # what the defaults mean for the validator
    no_timeout = FAKE_BOOK.replace("      timeout: 1m\n", "")
    rb2, _ = spec.load_text(no_timeout, "fake2.yaml")
    assert [p.rule for p in validate_runbook(rb2).problems] == ["RB103"]
    bad_output = FAKE_BOOK.replace("steps.again.outputs.n", "steps.again.outputs.answer")
    rb3, _ = spec.load_text(bad_output, "fake3.yaml")
    assert "has no output 'answer'" in " ".join(p.message for p in validate_runbook(rb3).problems)

    # the graph and the plan
    assert "s0 --> s1" in graph_cmd.mermaid(rb) and '"look" -> "again";' in graph_cmd.dot(rb)
    entries = Engine(rb, resolve_params(rb, {}), options=Options(dry_run=True)).plan()
    assert [e.step.id for e in entries] == ["look", "again", "fix", "check"]
    assert entries[0].action.summary == "look at things"
    ui.print_plan(rb, entries, {}, Redactor())
    plan = capsys.readouterr().out
    assert "look at things" in plan and "(the run ends here)" in plan

    # show, and a live step card
    assert show_cmd.run(argparse.Namespace(name=str(path), path=None)) == 0
    shown = capsys.readouterr().out
    assert all(re.search(rf"{i}\s+{FAKE}\s+(read|write)\s", shown) for i in rb.by_id), shown
    card = ui.ConsoleUI(Redactor())
    card.step_started(rb.by_id["look"], entries[0].action)
    assert card.output_sink(rb.by_id["look"]) is None
    card.step_finished(rb.by_id["look"], StepResult("ok", stdout="3 things"))
    live = capsys.readouterr().out
    assert "on: somewhere" in live and "look at things" in live


def test_a_kind_without_a_required_hook_is_refused_by_name(monkeypatch):
    mod = _fake_module()
    del mod.templates
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(steps.KINDS, FAKE, mod.__name__)
    monkeypatch.setattr(steps, "_loaded", dict(steps._loaded))
    with pytest.raises(TypeError, match="does not define templates"):
        steps.get(FAKE)


# --- nothing outside runbook/steps/ compares a kind's name -------------------------------

_NAMES = "|".join(map(re.escape, sorted(steps.KINDS, key=len, reverse=True)))
_OP = r"(?:==|!=|\bnot\s+in\b|\bin\b)"
# step.kind == …, s.kind in (…): a step's kind compared with anything
_ATTR = re.compile(rf"\.kind\s*{_OP}")
# kind == "choose", r.get("kind") != "end", rec["kind"] in ("shell", …): something called kind against a kind's name
_NAMED = re.compile(rf"""\bkind\b["']?[\])]*\s*{_OP}\s*(?P<rhs>[(\[{{][^)\]}}]*|["'][^"']*["'])""")
_LITERAL = re.compile(r"""["']([^"']*)["']""")
# "choose" == step.kind
_REVERSED = re.compile(rf"""["'](?:{_NAMES})["']\s*(?:==|!=)\s*[\w.\[\]()"']*kind\b""")


def kind_name_comparisons(text: str) -> list[str]:
    """The lines of ``text`` that compare a step kind's name."""
    out = []
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        named = any(lit in steps.KINDS for m in _NAMED.finditer(code) for lit in _LITERAL.findall(m["rhs"]))
        if _ATTR.search(code) or named or _REVERSED.search(code):
            out.append(line.strip())
    return out


# a kind's module asked whether it has a hook: base fills them all
_FALLBACK = re.compile(r"\b(?:getattr|hasattr)\(\s*[\w.]*\bmod(?:ule)?\s*,")


def test_the_pattern_finds_kind_name_comparisons_and_nothing_else():
    found = [
        'if step.kind == "choose":', "if s.kind in (\"shell\", \"ssh\"):", "elif s.kind not in ('manual',):",
        'if intent.get("kind") == "end" and x:', 'if kind == "choose" and y:', 'x = rec["kind"] in ("wait", "ask")',
        'if "end" == step.kind:', "if s.kind != other:",
    ]
    not_found = [
        'if kind == "decision":', 'if kind not in ("decision", "step_intent", "step_result"):',
        'if kind == "host" and name in names:', 'text_only=kind == "headers"', 'print(f"{s.kind} → {t}")',
        'for kind, name, key in mod.inventory_targets(s.body):', '"kind": s.kind,  # == "choose" in a comment',
        "kind = next(k for k in raw if k in kinds.KINDS)",
    ]
    assert [line for line in found if not kind_name_comparisons(line)] == []
    assert [line for line in not_found if kind_name_comparisons(line)] == []


_OUTSIDE_STEPS = sorted(p for p in (ROOT / "runbook").rglob("*.py") if (ROOT / "runbook" / "steps") not in p.parents)


@pytest.mark.parametrize("path", _OUTSIDE_STEPS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_kind_name_comparison_outside_the_steps_package(path: Path):
    text = path.read_text(encoding="utf-8")
    assert kind_name_comparisons(text) == [], (
        f"{path.relative_to(ROOT)} treats step kinds by name: give the kinds a hook in runbook/steps/base.py instead")
    assert [line.strip() for line in text.splitlines() if _FALLBACK.search(line)] == [], (
        f"{path.relative_to(ROOT)} asks whether a kind has a hook: runbook.steps.get fills them all")


def test_the_readme_says_where_a_kind_lives():
    assert "runbook/steps/base.py" in (ROOT / "README.md").read_text(encoding="utf-8")
