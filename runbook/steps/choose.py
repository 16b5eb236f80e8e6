"""``choose``: branch on conditions; the first that holds wins.

    - id: decide
      choose:
        - when: "steps.pool.outputs.n > 140"
          goto: kill-idle
        - default: rollback

Without a ``default`` and with no condition true, the run continues with the
following step.
"""

from __future__ import annotations

from runbook import expr
from runbook import schema as S
from runbook.steps import Action, StepResult

_BRANCH = S.Obj({"when": S.Str(doc="condition"), "goto": S.Str(doc="step id")}, required=("when", "goto"))
_DEFAULT = S.Obj({"default": S.Str(doc="step id when no condition holds")}, required=("default",))


def _check_branch(value, pos, where, rep):
    node = _DEFAULT if "default" in value else _BRANCH
    return node.check(value, pos, where, rep)


class _Branch(S.Node):
    expect = "a branch ({when, goto} or {default})"

    def check(self, value, pos, where, rep):
        if not isinstance(value, dict):
            return self._wrong(value, pos, where, rep)
        return _check_branch(value, pos, where, rep)

    def json(self):
        return {"anyOf": [_BRANCH.json(), _DEFAULT.json()]}


SCHEMA = S.List(_Branch(), min_items=1, doc="Branch on conditions")
DEFAULT_READONLY = True
FIXED_EFFECT = "read"
RESULT_FIELDS = ("branch", "why")
BRANCHING = True  # goes to a branch's goto, the default, or the following step
PLAN_SUMMARY = False  # the plan lists the branches as successors
CARD_SUMMARY = False  # the UI shows the branch taken
CARD_TARGETS = False


def normalize(value) -> dict:
    branches, default = [], None
    for b in value:
        if "default" in b:
            default = b["default"]
        else:
            branches.append({"when": b["when"], "goto": b["goto"]})
    return {"branches": branches, "default": default}


def templates(body):
    return [(f"[{i}].when", b["when"], "expr") for i, b in enumerate(body["branches"])]


def edges(body):
    out = [(f"when {b['when']}", b["goto"]) for b in body["branches"]]
    if body["default"]:
        out.append(("default", body["default"]))
    return out


def falls_through(body) -> bool:
    return not body["default"]


def outline(body) -> str:
    return "branch"


def action(step, r) -> Action:
    parts = [f"when {b['when']} → {b['goto']}" for b in step.body["branches"]]
    parts.append(f"otherwise → {step.body['default'] or '(next step)'}")
    return Action(summary="; ".join(parts), targets=[], detail={"branches": step.body["branches"], "default": step.body["default"]})


def _redact(ctx):
    redactor = getattr(ctx, "redactor", None)
    return redactor.text if redactor is not None else None


def run(step, act: Action, ctx) -> StepResult:
    for b in step.body["branches"]:
        if expr.evaluate(b["when"], ctx.context):
            values = expr.explain(b["when"], ctx.context, redact=_redact(ctx))
            why = b["when"] + (f"  ({values})" if values else "")
            return StepResult("ok", stdout=b["goto"], data={"branch": b["when"], "why": why}, goto=b["goto"])
    tried = "; ".join(filter(None, (expr.explain(b["when"], ctx.context, redact=_redact(ctx))
                                    for b in step.body["branches"])))
    why = "no condition held" + (f" ({tried})" if tried else "")
    return StepResult("ok", stdout=step.body["default"] or "", data={"branch": "default", "why": why},
                      goto=step.body["default"])
