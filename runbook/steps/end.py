"""``end``: finish the run here, with a status and a message.

    - id: resolved
      end: "Error rate is back under 1%."
    - id: escalate
      end: {status: escalated, message: "Page the database on-call."}

``resolved`` (the default) exits 0; ``escalated`` and ``failed`` exit 1.
"""

from __future__ import annotations

from runbook import schema as S
from runbook.steps import Action, StepResult

STATUSES = ("resolved", "escalated", "failed")
SCHEMA = S.OneOf(
    (
        (str, S.Str(doc="message")),
        (dict, S.Obj({"status": S.Str(enum=STATUSES), "message": S.Str()})),
    ),
    doc="End the run",
    expect_text="a message or a mapping with status and message",
)
DEFAULT_READONLY = True
FIXED_EFFECT = "read"
RESULT_FIELDS = ("message",)
ENDS_RUN = True
CARD_SUMMARY = False  # the run's last line shows the status and message
CARD_TARGETS = False


def normalize(value) -> dict:
    if isinstance(value, str):
        return {"status": "resolved", "message": value}
    return {"status": value.get("status", "resolved"), "message": value.get("message", "")}


def templates(body):
    return [("message", body["message"], "text")] if body.get("message") else []


def edges(body):
    return []


def end_status(body) -> str:
    return body["status"]


def action(step, r) -> Action:
    msg = r.text(step.body["message"]) if step.body.get("message") else ""
    return Action(summary=f"end: {step.body['status']}" + (f" — {msg}" if msg else ""), detail={"status": step.body["status"], "message": msg})


def run(step, act: Action, ctx) -> StepResult:
    return StepResult("ok", stdout=act.detail["message"], data={"message": act.detail["message"]}, end=True)
