"""Step kinds: one module per kind, each satisfying :class:`StepKind`.

Adding a kind is one module here and one line in ``KINDS``.  Kind modules
are imported when a runbook uses them; a module that needs a heavy client
library (fabric, kubernetes, psycopg) imports it inside ``run`` only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

# kind name -> module
KINDS: dict[str, str] = {
    "shell": "runbook.steps.shell",
    "manual": "runbook.steps.manual",
    "ask": "runbook.steps.ask",
    "choose": "runbook.steps.choose",
    "wait": "runbook.steps.wait",
    "end": "runbook.steps.end",
    "sql": "runbook.steps.sql",
    "ssh": "runbook.steps.ssh",
    "k8s": "runbook.steps.k8s",
    "http": "runbook.steps.http",
    "prometheus": "runbook.steps.prometheus",
    "notify": "runbook.steps.notify",
}

# Fields every step result has, whatever its kind (see StepResult.as_context).
BASE_RESULT_FIELDS = ("status", "ok", "exit_code", "stdout", "stderr", "outputs", "duration", "attempts", "error")


@dataclass
class Action:
    """What a step would do, fully rendered: shown in the plan and the
    confirmation prompt, written to the audit log, then executed."""

    summary: str  # one line, e.g. the rendered command
    targets: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)  # kind-specific rendered data
    env: dict[str, str] = field(default_factory=dict)  # secret environment (never shown)


@dataclass
class StepResult:
    status: str  # ok | failed | timeout | skipped | refused
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # kind-specific fields (answer, rows, …)
    outputs: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    attempts: int = 1
    goto: str | None = None  # set by branching kinds (choose)
    end: bool = False  # set by `end`

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_context(self) -> dict[str, Any]:
        ctx = dict(self.data)
        ctx.update(
            status=self.status, ok=self.ok, exit_code=self.exit_code, stdout=self.stdout, stderr=self.stderr,
            outputs=self.outputs, duration=self.duration, attempts=self.attempts, error=self.error,
        )
        return ctx


class StepKind(Protocol):
    """What a step-kind module provides (module-level names)."""

    SCHEMA: Any  # runbook.schema.Node for the value under the kind's key
    DEFAULT_READONLY: bool  # the effect when the author does not say: True = read
    FIXED_EFFECT: str | None  # "read"/"write" when the kind knows its effect for sure
    RESULT_FIELDS: tuple[str, ...]  # kind-specific fields of its result

    def normalize(self, value: Any) -> dict: ...  # shorthand -> mapping

    # (field, source, mode); mode: "shell" (a command), "text" (shown to people),
    # "env"/"value" (handed to a process or bound as a value, masked when shown), "expr" (a condition)
    def templates(self, body: dict) -> list[tuple[str, str, str]]: ...

    def edges(self, body: dict) -> list[tuple[str, str]]: ...  # (label, step id) branches

    def action(self, step, render) -> Action: ...  # render the step (no side effects)

    def run(self, step, action: Action, ctx) -> StepResult: ...


_loaded: dict[str, ModuleType] = {}


def get(kind: str) -> ModuleType:
    mod = _loaded.get(kind)
    if mod is None:
        mod = _loaded[kind] = importlib.import_module(KINDS[kind])
    return mod
