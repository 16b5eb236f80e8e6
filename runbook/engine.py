"""Walks a runbook's step graph: the dry-run planner and the live engine.

The engine never prints and never reads the terminal: it calls a UI object
(:mod:`runbook.ui`) and writes the audit journal (:mod:`runbook.audit`).

Live: read steps run; before a write step the operator confirms (or
``--yes``); without a terminal and without ``--yes`` the run stops before the
first write step (exit 3).  Every step's intent is durable in the audit log
before it runs, and its result after.

Dry-run: contacts nothing; renders every reachable step exactly as it would
be sent (values only known at run time show as ``<steps.x.stdout>``) and walks
every branch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from runbook import expr, outputs
from runbook.errors import LockLost, RunbookError, UsageError
from runbook.schema import suggest
from runbook.secrets import MASK, LazySecret, Redactor, Secret
from runbook.spec import STAGES, Runbook, Step
from runbook.steps import Action, StepResult
from runbook.text import plural

# Exit codes (also documented in README.md)
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130
MAX_STEP_RUNS = 100_000  # a last guard against runaway graphs
DONE = "<nothing left to run>"  # Engine.run(start=DONE): a resumed run whose steps had all run


class ParamError(UsageError):
    """A parameter missing, unknown or invalid: a usage error (exit 2)."""


class Interrupt(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or a signal that stops the run (SIGTERM, SIGHUP): the
    run stops, and the log says which."""

    def __init__(self, signame: str = "SIGINT"):
        super().__init__(signame)
        self.signame = signame


_RUNNER: dict | None = None


def _runner() -> dict:
    """This process, as a step's intent records it: a step that runs inside
    runbook (an API call, a query) is running while this process is."""
    global _RUNNER
    if _RUNNER is None or _RUNNER.get("pid") != os.getpid():
        from runbook import procs

        _RUNNER = procs.identity(os.getpid())
    return _RUNNER


def resolve_params(rb: Runbook, given: dict[str, str]) -> dict[str, Any]:
    """Command-line ``-p name=value`` strings → typed values (secrets wrapped)."""
    values: dict[str, Any] = {}
    for name, text in given.items():
        if name not in rb.params:
            hint = suggest(name, rb.params) or (f" (parameters: {', '.join(rb.params)})" if rb.params else " (it takes no parameters)")
            raise ParamError(f"runbook '{rb.name}' has no parameter '{name}'{hint}")
        p = rb.params[name]
        try:
            value = p.coerce(text)
        except ValueError as exc:
            raise ParamError(f"parameter '{name}': {exc if not p.secret else 'invalid value'}") from None
        why = p.check(value)
        if why:
            raise ParamError(f"parameter '{name}': {MASK if p.secret else repr(value)} {why}")
        values[name] = value
    for name, p in rb.params.items():
        if name in values:
            continue
        if p.has_default:
            values[name] = p.default
        elif p.required:
            how = f"set RUNBOOK_PARAM_{name.upper()}=VALUE" if p.secret else f"pass -p {name}=VALUE"
            raise ParamError(f"missing required parameter '{name}': {how}" + (f" ({p.description})" if p.description else ""))
        else:
            values[name] = None
    for name, p in rb.params.items():
        if p.secret and values[name] is not None:
            values[name] = Secret(str(values[name]), name)
    return values


def display_params(rb: Runbook, values: dict[str, Any]) -> dict[str, Any]:
    """The parameters as shown and logged: secrets masked, unset ones left out."""
    return {k: (MASK if rb.params[k].secret else v) for k, v in values.items() if v is not None}


class _NoInventory:
    """What templates see as `inventory` when the run has none."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise RunbookError(f"the runbook reads inventory.{name}, but no inventory was given "
                           "(use --env NAME or --inventory FILE, or add inventory/local.yaml)")

    __getitem__ = __getattr__


class Renderer:
    """Renders a step's templates against the run's context."""

    def __init__(self, context: dict, redactor: Redactor | None = None, inventory=None):
        self.context = context
        self.redactor = redactor
        self.inventory = inventory  # for kinds whose targets live there (databases, hosts, …)

    def text(self, source: str) -> str:
        return expr.render(source, self.context)

    def value(self, source: str):
        return expr.render_value(source, self.context)

    def shell(self, source: str) -> tuple[str, dict[str, Any]]:
        return expr.render_shell(source, self.context, self.redactor.values() if self.redactor else ())

    def data(self, value):
        return expr.render_data(value, self.context)


@dataclass
class Options:
    dry_run: bool = False
    yes: bool = False
    interactive: bool = False
    answers: dict[str, str] = field(default_factory=dict)
    who: str = ""
    # --server-dry-run: read steps run; write steps of kinds that can ask their
    # server to validate without persisting (SERVER_DRY_RUN = True) run that way;
    # other write steps are skipped
    server_dry_run: bool = False
    step_mode: bool = False  # --step: ask before every step, read steps included
    start_at: str | None = None  # --start-at STEP
    stage: str | None = None  # --stage NAME: run that stage only
    clock_from: float | None = None  # epoch seconds the incident clock counts from (the alert, else the start)
    # a team worker's run (runbook worker): no person is there, so the run pauses (status "paused", resumable)
    # when it reaches a stage after pause_after, and before a write step unless the step has auto_approve
    pause_after: str | None = None
    pause_before_writes: bool = False
    # called before every step: raises errors.LockLost when the run's locks were lost (a
    # PostgreSQL session that ended), so that the run never goes on beside whoever took them
    fence: Any = None
    fingerprint: str | None = None  # the alert the run answers (run.fingerprint: PagerDuty's dedup_key by default)
    # a team worker: whether an auto_approve step may run now (False when its alert resolved)
    auto_ok: Any = None


@dataclass
class StepContext:
    """What a step kind's ``run`` sees."""

    run_id: str
    context: dict
    interactive: bool
    ui: Any
    answers: dict[str, str]
    inventory: Any
    redactor: Redactor
    timeout: float | None = None
    connections: dict = field(default_factory=dict)  # kinds keep reusable connections here
    journal: Any = None
    server_dry_run: bool = False  # write calls must be sent as server-side dry-runs (nothing persisted)
    output: Any = None  # callable(stream, text) streaming a step's output to the operator as it comes, or None

    def answer(self, step_id: str) -> str | None:
        return self.answers.get(step_id)

    def reveal(self, value: Any) -> Any:
        """The real value behind a possibly secret one: a lazy secret is read now,
        and every secret revealed is masked in all output from then on."""
        if isinstance(value, LazySecret):
            value = value.resolve()
        if isinstance(value, Secret):
            self.redactor.add(value, name=value.name)  # too short to mask: reported, not masked
        return value

    def event(self, type_: str, **fields) -> None:
        """Something a kind did that the audit log must show (e.g. a host key added)."""
        if self.journal is not None:
            self.journal.event(type_, **fields)


@dataclass
class PlanEntry:
    step: Step
    action: Action | None
    successors: list[tuple[str, str]]
    error: str | None = None

    def as_dict(self, redactor: Redactor) -> dict:
        s = self.step
        d = {
            "id": s.id, "stage": s.stage, "kind": s.kind, "effect": s.effect, "title": s.title,
            "targets": self.action.targets if self.action else [],
            "action": self.action.summary if self.action else None,
            "detail": self.action.detail if self.action else {},
            "next": [{"when": label, "step": t} for label, t in self.successors],
        }
        for key in ("timeout", "retries", "until", "max_visits"):
            v = getattr(s, key)
            if v:
                d[key] = v
        if s.until:
            d["every"] = s.every
        if self.error:
            d["error"] = self.error
        return redactor.data(d)


class Engine:
    def __init__(self, rb: Runbook, params: dict[str, Any], *, inventory=None, ui=None, journal=None,
                 options: Options | None = None, run_id: str = "dry-run", redactor: Redactor | None = None):
        self.rb = rb
        self.params = params
        self.inventory = inventory
        self.ui = ui
        self.journal = journal
        self.options = options or Options()
        self.run_id = run_id
        self.redactor = redactor if redactor is not None else Redactor()
        for v in params.values():
            if isinstance(v, Secret):
                self.redactor.add(v, name=v.name)
        self.redactor.report_too_short(ui, journal)  # a revealed secret too short to mask: warned, not masked
        self.steps_ctx: dict[str, Any] = {}
        self._escalated: set = set()
        self.context = {
            "params": params,
            "steps": self.steps_ctx,
            "inventory": inventory.template_context() if inventory is not None else _NoInventory(),
            "env": {k: os.environ.get(k, "") for k in rb.env_allow},
            "run": {"id": run_id, "dry_run": self.options.dry_run, "runbook": rb.name,
                    "fingerprint": self.options.fingerprint},
        }
        self.step_ctx = StepContext(run_id, self.context, self.options.interactive, ui, self.options.answers,
                                    inventory, self.redactor, journal=journal,
                                    server_dry_run=self.options.server_dry_run)

    # --- dry-run ------------------------------------------------------------

    def plan(self) -> list[PlanEntry]:
        """Render every reachable step; raise RunbookError on the first
        thing that would fail at run time for static reasons."""
        from runbook.graph import graph, reach as reachable, successors

        for s in self.rb.steps:
            self.steps_ctx[s.id] = expr.Unknown(f"steps.{s.id}")
        reach = reachable(graph(self.rb), self.rb.steps[0].id)
        entries = []
        r = Renderer(self.context, self.redactor, self.inventory)
        for s in self.rb.steps:
            if s.id not in reach:
                continue
            try:
                act = s.module.action(s, r)
            except RunbookError as exc:
                raise RunbookError(self.redactor.text(f"{self.rb.path}:{s.pos[0]}:{s.pos[1]}: step '{s.id}': {exc}")) from None
            unsaid = _unaggregated(s, act)
            if unsaid:
                pos = s.raw["outputs"].kpos(unsaid[0][0])
                raise RunbookError(self.redactor.text(f"{self.rb.path}:{pos[0]}:{pos[1]}: {unsaid[1]}"))
            entries.append(PlanEntry(s, act, successors(self.rb, s)))
        return entries

    # --- live ---------------------------------------------------------------

    def start_step(self) -> Step:
        """Where the walk begins: --start-at, else the first step of --stage, else the first step."""
        o = self.options
        if o.start_at:
            if o.start_at not in self.rb.by_id:
                raise UsageError(f"--start-at {o.start_at}: no such step{suggest(o.start_at, list(self.rb.by_id))}")
            step = self.rb.by_id[o.start_at]
            if o.stage and step.stage != o.stage:
                raise UsageError(f"--start-at {o.start_at} is a {step.stage} step, not in --stage {o.stage}")
            return step
        if o.stage:
            steps = self.rb.stage(o.stage)
            if not steps:
                raise UsageError(f"--stage {o.stage}: the runbook has no {o.stage} steps")
            return steps[0]
        return self.rb.steps[0]

    def restore(self, results: dict[str, dict]) -> None:
        """Results of steps that ran before (a resumed run), as conditions see them."""
        self.steps_ctx.update(results)

    def run(self, start: Step | str | None = None, visits: dict[str, int] | None = None,
            again: str | None = None) -> tuple[str, int, str]:
        """Run live from ``start`` (default: :meth:`start_step`; :data:`DONE`:
        nothing is left to run); returns ``(status, exit code, message)``.
        The journal is finished in every case.  ``again``: a step run once more
        on the operator's word (not counted against its max_visits)."""
        status, code, message = "failed", EXIT_FAILED, ""
        extra: dict[str, Any] = {}
        self._rehearsal = {"accepted": [], "refused": [], "not sent": []} if self.options.server_dry_run else None
        try:
            if start == DONE:
                start = None
            elif start is None:
                start = self.start_step()
                if start is not self.rb.steps[0] and self.journal:
                    self.journal.event("start_at", step=start.id, stage=self.options.stage)
            status, code, message = self._walk(start, dict(visits or {}), again)
        except LockLost as exc:
            # another process may own the run now: say so, and leave its end to whoever goes on
            status, code, message = "lock lost", exc.exit_code, (
                f"{exc}; stopped before step '{self._current}' so that no other process runs it at the same "
                f"time (runbook resume {self.run_id} once nothing else holds it)")
            extra = {"lost": True}
            if self.journal:
                self.journal.event("lock_lost", step=self._current, error=self.redactor.text(str(exc)))
        except KeyboardInterrupt as exc:
            signame = getattr(exc, "signame", "SIGINT")
            how = "Ctrl-C" if signame == "SIGINT" else signame
            status, code, message = "interrupted", EXIT_INTERRUPTED, f"interrupted: the run was stopped ({how})"
            extra = {"signal": signame}
            if self.journal:
                self.journal.event("interrupted", step=self._current, signal=signame)
        except RunbookError as exc:
            status, code, message = "failed", EXIT_FAILED, self.redactor.text(str(exc))
            if self.journal:
                self.journal.event("error", step=self._current, error=message)
        except Exception as exc:  # noqa: BLE001 - a bug must still close the journal
            status, code = "failed", EXIT_FAILED
            message = self.redactor.text(f"internal error in step '{self._current}': {type(exc).__name__}: {exc}")
            if self.journal:
                self.journal.event("error", step=self._current, error=message)
        finally:
            self._close_connections()
        if self.journal and not extra.get("lost"):
            self.journal.run_finished(status=status, exit_code=code, **extra)
        if self.ui:
            self.ui.run_finished(status, code, message)
        return status, code, message

    def stopped_before_start(self, exc: BaseException) -> tuple[str, int, str]:
        """A signal before the first step (the host was still preparing): the run is finished as interrupted."""
        signame = getattr(exc, "signame", "SIGINT")
        message = f"interrupted: the run was stopped ({'Ctrl-C' if signame == 'SIGINT' else signame})"
        if self.journal:
            self.journal.event("interrupted", step=None, signal=signame)
            self.journal.run_finished(status="interrupted", exit_code=EXIT_INTERRUPTED, signal=signame)
        if self.ui:
            self.ui.run_finished("interrupted", EXIT_INTERRUPTED, message)
        return "interrupted", EXIT_INTERRUPTED, message

    _current: str | None = None
    _interrupt: Interrupt = Interrupt("SIGINT")
    _rehearsal: dict[str, list[str]] | None = None  # --server-dry-run: write steps accepted, refused, not sent

    def _guided(self) -> bool:
        """A person answers: prompts before write steps and after failures."""
        return self.options.interactive and not self.options.yes and self.ui is not None

    def _walk(self, step: Step | None, visits: dict[str, int], again: str | None = None) -> tuple[str, int, str]:
        """``again``: a step run once more on the operator's word (a retry, a
        resumed step in doubt), which does not count against its max_visits."""
        total = 0
        last_ok = True
        while step is not None:
            after = self.options.pause_after
            if after and STAGES.index(step.stage) > STAGES.index(after):
                message = (f"the {after} stage is done; paused before {step.stage} step '{step.id}' for a person: "
                           f"runbook resume {self.run_id}")
                if self.journal:
                    self.journal.event("paused", step=step.id, reason=f"the {after} stage is done")
                return "paused", EXIT_OK, message
            if self.options.stage and step.stage != self.options.stage:
                if not last_ok:  # the stage's failure path leads out of it: that is no success
                    return "failed", EXIT_FAILED, (f"the {self.options.stage} stage ended with a failure "
                                                   f"(its on_failure path leads to {step.stage} step '{step.id}'; not run)")
                return "completed", EXIT_OK, f"the {self.options.stage} stage is done (next: {step.stage} step '{step.id}'; not run)"
            if self._rehearsal is not None and any(self._rehearsal.values()) and (step.stage == "verify" or step.until):
                # --server-dry-run: the writes before were not stored, so nothing can show their effect
                self._record_skip(step, StepResult("skipped", error="not verifiable in a server dry-run: the writes "
                                                   "before it were validated by their servers, not stored"))
                if step.stage == "verify":
                    return "rehearsed", EXIT_OK, self._rehearsal_summary()
                step, stop = self.successor(step, StepResult("skipped"))
                continue
            self._current = step.id
            self._clock()
            total += 1
            if again == step.id:
                again = None
            else:
                visits[step.id] = visits.get(step.id, 0) + 1
            if total > MAX_STEP_RUNS:
                raise RunbookError(f"the run executed {MAX_STEP_RUNS} steps; stopping (a loop without a bound?)")
            if step.max_visits is not None and visits.get(step.id, 0) > step.max_visits:
                # the loop's bound: stop here rather than follow on_failure round the loop again
                result = StepResult("failed", error=f"step '{step.id}' already ran {step.max_visits} times (max_visits); stopping the loop")
                self._record_skip(step, result)
                return "failed", EXIT_FAILED, result.error
            result = self._execute(step)
            if result.status == "paused":
                return "paused", EXIT_OK, result.error
            if result.status == "refused" and self.options.pause_before_writes:  # a question for a person
                if self.journal:
                    self.journal.event("paused", step=step.id, reason="a person must answer")
                return "paused", EXIT_OK, f"paused at step '{step.id}' for a person ({result.error}): runbook resume {self.run_id}"
            if result.status == "refused":
                return "refused", EXIT_REFUSED, result.error or f"step '{step.id}' was not approved"
            if result.status == "interrupted" and (not self._guided() or self._interrupt.signame != "SIGINT"):
                raise self._interrupt  # without a person to ask, or a signal meant to stop us: the run stops
            if not result.ok and result.status != "skipped" and self._guided():
                choice = self.ui.after_failure(step, result, step.on_failure if step.on_failure not in (None, "abort") else None)
                if self.journal:  # the choice as it was: following on_failure or skipping approves nothing
                    self.journal.decision(step=step.id, approved=choice == "retry", by=self.options.who, how=choice,
                                          choice=choice, **({"to": step.on_failure} if choice == "on_failure" else {}))
                if choice == "retry":
                    again = step.id
                    continue
                if choice == "abort":
                    if result.status == "interrupted":
                        return "interrupted", EXIT_INTERRUPTED, f"interrupted: the operator stopped the run at step '{step.id}'"
                    return "aborted", EXIT_FAILED, f"the operator stopped the run after step '{step.id}' {result.status}"
                if choice == "skip":
                    result = StepResult("skipped", error=f"{result.status}, skipped by the operator")
                    self.steps_ctx[step.id] = result.as_context()
            last_ok = result.ok or result.status == "skipped"
            if result.end:
                end_status = step.module.end_status(step.body)
                return end_status, EXIT_OK if end_status == "resolved" else EXIT_FAILED, result.data.get("message", "")
            if (result.ok or result.status == "skipped") and result.goto and self.ui and result.data.get("why"):
                self.ui.branch(step, result.data["why"], result.goto)
            step, stop = self.successor(step, result)
            if stop:
                return "failed", EXIT_FAILED, stop
        return "completed", EXIT_OK, ""

    def successor(self, step: Step, result: StepResult) -> tuple[Step | None, str | None]:
        """(the step after ``step`` given its result, or None; why the run stops there, or None)."""
        following = self.rb.following(step)
        if result.ok or result.status == "skipped":
            if result.goto:
                return self.rb.by_id[result.goto], None
            if step.module.BRANCHING:  # no branch taken: fall through
                return following, None
            return (self.rb.by_id[step.next] if step.next else following), None
        target = step.on_failure
        if target == "continue":
            return (self.rb.by_id[step.next] if step.next else following), None
        if target and target != "abort":
            return self.rb.by_id[target], None
        return None, self.redactor.text(f"step '{step.id}' {result.status}: {result.error or 'failed'}")

    def _record_skip(self, step: Step, result: StepResult) -> StepResult:
        """A step that did not run (not renderable, skipped, over max_visits): its result is logged, shown and kept."""
        if self.journal:
            self.journal.step_result(step=step.id, status=result.status, exit_code=None, duration=0.0, error=result.error)
        if self.ui:
            self.ui.step_finished(step, result)
        self.steps_ctx[step.id] = result.as_context()
        return result

    def _execute(self, step: Step) -> StepResult:
        if self.options.fence is not None:
            self.options.fence()  # before anything of this step is recorded or run
        r = Renderer(self.context, self.redactor, self.inventory)
        try:
            act = step.module.action(step, r)
        except RunbookError as exc:
            return self._record_skip(step, StepResult("failed", error=f"cannot render the step: {exc}"))
        unsaid = _unaggregated(step, act)
        if unsaid:  # before anything is asked or contacted
            return self._record_skip(step, StepResult("failed", error=self.redactor.text(unsaid[1])))
        shown = self.redactor.text(act.summary)
        if self.ui:
            self.ui.step_started(step, act)
        if step.effect == "write" and self.options.server_dry_run:
            if not step.module.SERVER_DRY_RUN:
                self._rehearsal["not sent"].append(step.id)
                return self._record_skip(step, StepResult(
                    "skipped", error=f"--server-dry-run: a {step.kind} step cannot be dry-run by its server; not run"))
        elif step.effect == "write" or (self.options.step_mode and not self._step_mode_off):
            choice, by, how = self._approve(step, act)
            if self.journal:
                self.journal.decision(step=step.id, approved=choice in ("run", "continue"), by=by, how=how, choice=choice)
            if choice == "continue":
                choice = "run"
            if choice == "skip":
                return self._record_skip(step, StepResult("skipped", error="skipped by the operator"))
            if choice == "pause":
                if self.journal:
                    self.journal.event("paused", step=step.id, reason="a write step needs a person")
                return StepResult("paused", error=f"paused before step '{step.id}', which changes things ({shown}): "
                                  f"a person approves it with runbook resume {self.run_id}; nothing was changed")
            if choice != "run":
                if how == "no-terminal":
                    msg = (f"step '{step.id}' changes things ({shown}) and needs approval: run it in a terminal, "
                           f"or pass --yes to approve write steps; nothing was changed")
                else:
                    msg = f"the operator declined step '{step.id}'; stopped before it ran"
                return StepResult("refused", error=msg)
        if self.journal:
            self.journal.step_intent(step=step.id, kind=step.kind, stage=step.stage, effect=step.effect,
                                     targets=act.targets, rendered=act.summary, runner=_runner())
        started = time.monotonic()
        self.step_ctx.output = self.ui.output_sink(step) if self.ui and hasattr(self.ui, "output_sink") else None
        try:
            self._resolve_secrets(act)
        except RunbookError as exc:
            result = StepResult("failed", error=self.redactor.text(str(exc)))
        else:
            try:
                result = self._attempts(step, act)
            except KeyboardInterrupt as exc:
                # the kind stopped its work (a command's process group is killed); say so in the log
                self._interrupt = exc if isinstance(exc, Interrupt) else Interrupt("SIGINT")
                how = "Ctrl-C" if self._interrupt.signame == "SIGINT" else self._interrupt.signame
                result = StepResult("interrupted", error=f"interrupted ({how}); the step was stopped")
        finally:
            self.step_ctx.output = None
        result.duration = time.monotonic() - started
        if result.ok and step.outputs:
            self._outputs(step, result)
        self.steps_ctx[step.id] = result.as_context()
        if self.journal:
            self.journal.step_result(step=step.id, status=result.status, exit_code=result.exit_code,
                                     duration=round(result.duration, 6), output=result.stdout + result.stderr,
                                     error=result.error, outputs=result.outputs or None, attempts=result.attempts,
                                     data=_restorable({**result.data, **({"goto": result.goto} if result.goto else {}),
                                                       **({"end": step.module.end_status(step.body)} if result.end else {})}))
        if self.ui:
            self.ui.step_finished(step, result)
        if step.effect == "write" and self._rehearsal is not None:
            self._rehearsal["accepted" if result.ok else "refused"].append(step.id)
        return result

    def _rehearsal_summary(self) -> str:
        r = self._rehearsal or {}
        parts = [f"{what} {plural(len(ids), 'write step')} ({', '.join(ids)})"
                 for what, ids in (("the servers accepted", r.get("accepted")), ("refused", r.get("refused")),
                                   ("did not send", r.get("not sent"))) if ids]
        return ("rehearsal (--server-dry-run): " + "; ".join(parts)
                + "; the verify stage was not run: nothing was stored, so there is no effect to check")

    _step_mode_off = False  # --step: the operator answered "continue" (stop asking for read steps)

    def _approve(self, step: Step, act: Action) -> tuple[str, str, str]:
        """(choice, who, how): choice is run, skip or abort; or continue (--step: run it, and stop
        asking before read steps)."""
        who = self.options.who
        if self.options.step_mode and not self._step_mode_off and self.options.interactive:
            choice = self.ui.step_prompt(step, act)
            if choice == "continue":
                self._step_mode_off = True
                if step.effect == "write" and not self.options.yes:
                    return self.ui.confirm(step, act), who, "prompt"
            return choice, who, "step-mode"
        if self.options.pause_before_writes and step.effect == "write":
            if step.auto_approve and (self.options.auto_ok is None or self.options.auto_ok(step)):
                return "run", who, "auto-approved"
            return "pause", who, "worker"
        if self.options.yes:
            return "run", who, "--yes"
        if not self.options.interactive:
            return "abort", who, "no-terminal"
        return self.ui.confirm(step, act), who, "prompt"

    def _clock(self) -> None:
        """The incident clock: say once when each escalation time has passed."""
        if not self.rb.escalation or self.options.clock_from is None:
            return
        elapsed = time.time() - self.options.clock_from
        for after, to, _how in self.rb.escalation:
            if elapsed >= after and (after, to) not in self._escalated:
                self._escalated.add((after, to))
                if self.journal:
                    self.journal.event("escalation_due", to=to, after=after, elapsed=round(elapsed))
                if self.ui:
                    self.ui.escalation_due(to, after, elapsed)
                if (after, to) in self.rb.escalation_page and not self.options.dry_run:
                    self._page(to, self.rb.escalation_page[(after, to)], elapsed)

    def _page(self, to: str, notifier: str, elapsed: float) -> None:
        """The runbook's escalation pages ``to`` through a PagerDuty notifier (opt-in: ``page:``)."""
        from runbook.steps import notify

        message = f"escalation to {to}: {self.rb.title} is not resolved after {int(elapsed // 60)} min"
        result = notify.page(self.step_ctx, Renderer(self.context, self.redactor, self.inventory), notifier,
                             message, step_id=f"escalation-{to}")
        sent = bool(result.data.get("sent"))
        if self.journal:
            self.journal.event("escalation_paged", to=to, notifier=notifier, sent=sent,
                               **({"error": result.error} if result.error else {}))
        if self.ui:
            self.ui.notice(f"escalation: {'paged' if sent else 'could not page'} {to} through {notifier}"
                           + (f" ({result.error})" if result.error else ""))

    def _resolve_secrets(self, act: Action) -> None:
        """Read lazy secrets (inventory {env:…}/{file:…}) only now that the step runs."""
        for k, v in list(act.env.items()):
            v = self.step_ctx.reveal(v)
            act.env[k] = "" if v is None else str(v)

    def _run_once(self, step: Step, act: Action) -> StepResult:
        try:
            return step.module.run(step, act, self.step_ctx)
        except RunbookError as exc:  # e.g. a condition of a choose step that cannot be evaluated
            return StepResult("failed", error=self.redactor.text(str(exc)))

    def _until_holds(self, step: Step, result: StepResult) -> bool:
        """Whether the condition holds. A condition that cannot be evaluated yet (a
        failed command, an output not there) means "not yet": polling goes on until
        the timeout, which then reports the last reason."""
        if step.outputs and result.ok:
            self._outputs(step, result)
        scope = {**self.context, **result.as_context(), **result.outputs}
        try:
            return bool(expr.evaluate(step.until, scope))
        except RunbookError as exc:
            result.error = self.redactor.text(str(exc))
            return False

    def _observed(self, step: Step, result: StepResult) -> str | None:
        """What this check read (the kind's ``observed`` hook), for the operator; a kind's
        display hook failing must not stop the run, so that shows as nothing."""
        try:
            seen = step.module.observed(step, result)
        except Exception:  # noqa: BLE001 - display only
            return None
        return None if seen is None else str(seen)

    def _attempts(self, step: Step, act: Action) -> StepResult:
        """Retries and until-polling around the kind's run."""
        deadline = time.monotonic() + step.timeout if step.timeout is not None else None
        attempt = 0
        before = None  # why the last check that ran its course did not hold
        while True:
            attempt += 1
            self.step_ctx.timeout = max(0.0, deadline - time.monotonic()) if deadline is not None else None
            result = self._run_once(step, act)
            result.attempts = attempt
            if result.status == "timeout" and step.timeout is not None and step.until is None:
                result.error = f"timed out after {step.timeout:g}s; the step was stopped"
            if step.until is not None and result.status in ("ok", "failed", "timeout"):
                # the condition decides, whatever the command's exit code
                last_error = result.error
                if self._until_holds(step, result):
                    result.status, result.error = "ok", None
                    return result
                remaining = deadline - time.monotonic() if deadline is not None else None
                if remaining is not None and remaining <= step.every:
                    if remaining > 0:
                        time.sleep(remaining)
                    reason = result.error or last_error
                    if result.status == "timeout" and before:  # this check only ran out of the step's time
                        reason = f"{before} (the check after it was cut short by the step's timeout)"
                    result.status = "timeout"
                    result.error = f"condition '{step.until}' not met after {step.timeout:g}s ({plural(attempt, 'check')})" + \
                        (f"; last: {reason}" if reason else "")
                    return result
                if self.ui:
                    self.ui.polling(step, result, attempt, self._observed(step, result))
                if result.status != "timeout":
                    before = result.error or last_error
                time.sleep(step.every)
                continue
            if result.ok or result.status in ("refused",) or attempt > step.retries:
                return result
            if deadline is not None and deadline - time.monotonic() <= step.retry_delay:
                return result
            if self.ui:
                self.ui.retrying(step, result, attempt, step.retry_delay)
            if self.journal:
                self.journal.event("retry", step=step.id, attempt=attempt, status=result.status, error=result.error)
            time.sleep(step.retry_delay)

    def _outputs(self, step: Step, result: StepResult) -> None:
        outputs.take(step.id, step.outputs, result, step.module.per_host(result))

    def _close_connections(self) -> None:
        for conn in self.step_ctx.connections.values():
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing must never mask the run's outcome
                pass


def _unaggregated(step: Step, act: Action) -> tuple[list[str], str] | None:
    """Outputs of a step that runs on several hosts (or a group) that do not
    say how the hosts' values combine, with the message; None when all do."""
    if not act.fan_out or not step.outputs:
        return None
    names = outputs.missing_aggregates(step.outputs)
    if not names:
        return None
    return names, outputs.needs_aggregate(step.id, names, act.fan_out)


MAX_RESTORABLE = 64 * 1024


def _restorable(data: dict) -> dict | None:
    """A step's kind-specific result fields (an answer, rows, items, each host's
    result and outputs, aggregates) as the audit log keeps them, so that a
    resumed run's conditions see them again.  When too large, long texts in them
    (a host's output) are cut first, so that the structure — which host gave a
    max, each host's outputs — survives; left out only when still too large."""
    if not data:
        return None
    try:
        text = json.dumps(data, default=str)
    except (TypeError, ValueError):
        return None
    if len(text) > MAX_RESTORABLE:
        slim = json.dumps(_cut_texts(json.loads(text)))
        if len(slim) > MAX_RESTORABLE:
            return {"_truncated": len(text)}
        text = slim
    return json.loads(text)


_KEPT_TEXT = 1024


def _cut_texts(value):
    """``value`` with every string over 1 KiB cut to its first KiB and a note."""
    if isinstance(value, str):
        return value if len(value) <= _KEPT_TEXT else value[:_KEPT_TEXT] + f"…[{len(value) - _KEPT_TEXT} more characters]"
    if isinstance(value, dict):
        return {k: _cut_texts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_texts(v) for v in value]
    return value
