"""``ask``: a question to the operator; the answer becomes the step's output.

    - id: scope
      ask: {prompt: "Is the problem limited to one region?", choices: [yes, no]}
    - id: go
      choose:
        - when: steps.scope.answer == "yes"
          goto: drain-region

Without a terminal the answer comes from ``--answer ID=VALUE``; otherwise
the run stops safely (exit 3).
"""

from __future__ import annotations

from runbook import schema as S
from runbook.steps import Action, StepResult

SCHEMA = S.OneOf(
    (
        (str, S.Str(doc="the question")),
        (dict, S.Obj(
            {"prompt": S.Str(), "choices": S.List(S.Str(), min_items=1), "default": S.Str()},
            required=("prompt",),
        )),
    ),
    doc="Ask the operator a question",
    expect_text="a question or a mapping with prompt",
)
DEFAULT_READONLY = True
FIXED_EFFECT = "read"
RESULT_FIELDS = ("answer",)
IMPLICIT_OUTPUTS = ("answer",)  # steps.ID.outputs.answer without declaring it
CARD_SUMMARY = False  # the UI shows the question as its prompt
CARD_TARGETS = False  # the operator


def normalize(value) -> dict:
    return {"prompt": value} if isinstance(value, str) else dict(value)


def templates(body):
    return [("prompt", body["prompt"], "text")]


def edges(body):
    return []


def action(step, r) -> Action:
    detail = {"prompt": r.text(step.body["prompt"])}
    for k in ("choices", "default"):
        if k in step.body:
            detail[k] = step.body[k]
    return Action(summary=detail["prompt"], targets=["operator"], detail=detail)


def run(step, act: Action, ctx) -> StepResult:
    choices = act.detail.get("choices")
    answer = ctx.answer(step.id)
    if answer is None:
        if not ctx.interactive:
            hint = f" (one of: {', '.join(choices)})" if choices else ""
            return StepResult("refused", error=f"step '{step.id}' asks the operator '{act.summary}': run in a terminal, or pass --answer {step.id}=VALUE{hint}")
        answer = ctx.ui.ask(step, act.summary, choices, act.detail.get("default"))
        if answer is None:
            return StepResult("refused", error=f"no answer to step '{step.id}' (input closed); stopped")
    if choices and answer not in choices:
        return StepResult("failed", error=f"answer {answer!r} is not one of {', '.join(choices)}")
    return StepResult("ok", stdout=str(answer), data={"answer": answer}, outputs={"answer": answer})
