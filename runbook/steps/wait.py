"""``wait``: pause, e.g. to let a restart settle before verifying.

    - id: settle
      wait: 30s
"""

from __future__ import annotations

import time

from runbook import schema as S
from runbook.schema import parse_duration
from runbook.steps import Action, StepResult

SCHEMA = S.OneOf(
    (
        ((str, int, float), S.Duration(doc="how long")),
        (dict, S.Obj({"duration": S.Duration(), "reason": S.Str()}, required=("duration",))),
    ),
    doc="Pause",
    expect_text="a duration such as 30s or a mapping with duration",
)
DEFAULT_READONLY = True
FIXED_EFFECT = "read"
RESULT_FIELDS = ()
CARD_TARGETS = False


def normalize(value) -> dict:
    return dict(value) if isinstance(value, dict) else {"duration": value}


def templates(body):
    return [("reason", body["reason"], "text")] if "reason" in body else []


def edges(body):
    return []


def outline(body) -> str:
    return f"wait {body['duration']}"


def action(step, r) -> Action:
    seconds = parse_duration(step.body["duration"])
    reason = f" ({r.text(step.body['reason'])})" if "reason" in step.body else ""
    return Action(summary=f"wait {seconds:g}s{reason}", detail={"seconds": seconds})


def run(step, act: Action, ctx) -> StepResult:
    seconds = act.detail["seconds"]
    if ctx.timeout is not None and ctx.timeout < seconds:
        time.sleep(ctx.timeout)
        return StepResult("timeout", error=f"timed out after {ctx.timeout:g}s")
    time.sleep(seconds)
    return StepResult("ok")
