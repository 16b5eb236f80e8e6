"""A scripted operator for in-process runs (runbook.ui.UI): answers come from
dicts, every call is recorded, and ``crash_at`` makes the run's process "die"
right after a step's intent is durable (a BaseException the engine does not
catch, so no result and no run_finished are written, as after kill -9)."""

from __future__ import annotations

from runbook.secrets import Redactor


class Crash(BaseException):
    """The runbook process died here (as with SIGKILL: nothing more is written)."""


class FakeUI:
    def __init__(self, *, confirm=None, after_failure=None, in_doubt="abort", outputs=None, secrets=None,
                 answers=None, manual=True, crash_at=None, on_step=None, step_prompt=None):
        self.confirm_answers = confirm or {}  # step id -> run | skip | abort (default run)
        self.after_failure_answers = after_failure or {}  # step id -> retry | skip | on_failure | abort
        self.step_prompt_answers = step_prompt or {}  # --step: step id -> run | skip | continue | abort (default run)
        self.in_doubt_answer = in_doubt
        self.outputs = outputs or {}  # "step.name" -> value
        self.secrets = secrets or {}  # parameter name -> value
        self.answers = answers or {}
        self.manual_answer = manual
        self.crash_at = crash_at
        self.on_step = on_step  # callable(step) when a step's work starts (after its intent)
        self.redactor = Redactor()
        self.calls: list[tuple] = []
        self.notices: list[str] = []
        self.finished = None
        self.environment = None

    def _log(self, *call):
        self.calls.append(call)

    def names(self, what: str) -> list:
        return [c[1] for c in self.calls if c[0] == what]

    # --- the run's life
    def attach(self, redactor):
        self.redactor = redactor

    def notice(self, text):
        self.notices.append(self.redactor.text(text))

    def secret(self, prompt):
        self._log("secret", prompt)
        return next((v for k, v in self.secrets.items() if prompt.startswith(k)), None)

    def in_doubt(self, step, step_id, run_id):
        self._log("in_doubt", step_id)
        return self.in_doubt_answer

    def output_value(self, step, name):
        self._log("output_value", f"{step.id}.{name}")
        return self.outputs.get(f"{step.id}.{name}")

    # --- the engine
    def run_started(self, rb, run_id, params_shown, **kw):
        self.environment = kw.get("environment")  # what the header says
        self._log("run_started", run_id, kw.get("resumed", False))

    def step_started(self, step, action):
        self._log("step_started", step.id, self.redactor.text(action.summary))

    def output_sink(self, step):
        if self.crash_at == step.id:
            raise Crash(step.id)
        if self.on_step is not None:
            self.on_step(step)
        return None

    def confirm(self, step, action):
        self._log("confirm", step.id)
        return self.confirm_answers.get(step.id, "run")

    def step_prompt(self, step, action):
        self._log("step_prompt", step.id)
        return self.step_prompt_answers.get(step.id, "run")

    def after_failure(self, step, result, on_failure):
        self._log("after_failure", step.id, result.status)
        return self.after_failure_answers.get(step.id, "abort")

    def manual(self, step, action):
        self._log("manual", step.id)
        return self.manual_answer

    def ask(self, step, prompt, choices, default):
        self._log("ask", step.id)
        return self.answers.get(step.id)

    def branch(self, step, why, goto):
        self._log("branch", step.id, goto)

    def escalation_due(self, to, after, elapsed):
        self._log("escalation_due", to)

    def polling(self, step, result, attempt, observed=None):
        self._log("polling", step.id, attempt, observed)

    def retrying(self, step, result, attempt, delay):
        self._log("retrying", step.id, attempt)

    def step_finished(self, step, result):
        self._log("step_finished", step.id, result.status)

    def host_finished(self, step, host, result, done, total):
        self._log("host_finished", step.id, host, result.get("status"), done, total)

    def run_finished(self, status, code, message):
        self.finished = (status, code, message)
        self._log("run_finished", status, code)
