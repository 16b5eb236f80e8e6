"""``manual``: instructions the operator carries out and confirms as done.

    - id: check-dashboard
      manual: "Open the 'API errors' dashboard and look for a deploy marker."

Without a terminal the step needs ``--answer ID=done``; otherwise the run
stops safely (exit 3).  Its effect is ``read`` unless ``readonly: false``.
"""

from __future__ import annotations

from runbook import schema as S
from runbook.steps import Action, StepResult

SCHEMA = S.OneOf(
    (
        (str, S.Str(doc="the instructions")),
        (dict, S.Obj({"instructions": S.Str(), "confirm": S.Str(doc="the question (default: Done?)")}, required=("instructions",))),
    ),
    doc="Instructions for the operator",
    expect_text="instructions text or a mapping with instructions",
)
DEFAULT_READONLY = True
FIXED_EFFECT = None
RESULT_FIELDS = ("answer",)
WRITE_NEEDS_TIMEOUT = False  # a person carries it out: a timeout would cut them off
CARD_SUMMARY = False  # the UI shows the instructions in their own panel
CARD_TARGETS = False  # the operator


def normalize(value) -> dict:
    return {"instructions": value} if isinstance(value, str) else dict(value)


def templates(body):
    return [("instructions", body["instructions"], "text")] + ([("confirm", body["confirm"], "text")] if "confirm" in body else [])


def edges(body):
    return []


def action(step, r) -> Action:
    return Action(summary=r.text(step.body["instructions"]),
                  targets=["operator"], detail={"confirm": r.text(step.body.get("confirm", "Done?"))})


def details(action: Action) -> list[tuple[str, str]]:
    return [("instructions", action.summary)]


def run(step, act: Action, ctx) -> StepResult:
    answer = ctx.answer(step.id)
    if answer is None:
        if not ctx.interactive:
            return StepResult("refused", error=f"manual step '{step.id}' needs an operator: run in a terminal, or pass --answer {step.id}=done once it is done")
        done = ctx.ui.manual(step, act)
        answer = "done" if done else "not done"
    ok = str(answer).lower() in ("done", "yes", "y", "true")
    return StepResult("ok" if ok else "failed", data={"answer": answer}, error=None if ok else "the operator did not confirm it as done")
