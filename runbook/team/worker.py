"""``runbook worker``: Celery workers that diagnose an alert before anyone wakes.

``runbook serve`` records each firing alert in the ledger (:mod:`runbook.team.ledger`)
and sends one job per incident (``runbook.diagnose``, its Celery task id the run id)
to the broker (``RUNBOOK_BROKER_URL``: ``redis://…`` or ``amqp://…``).  A worker
runs the incident's runbook through the same lifecycle as ``runbook run``
(:mod:`runbook.session`), with nobody at a terminal: the run reads until the
diagnose stage is done (``--through`` a later stage lets it go further) and
pauses before the first write step, unless the runbook marks that step
``auto_approve`` (recorded as ``auto-approved``).  A paused run is finished by a
person: ``runbook resume RUN_ID`` on a laptop, against the same audit store.

Delivery, stated:

* **a job is acknowledged only once its run is recorded** — late acknowledgement
  (``task_acks_late``): the broker keeps the message until the task returns,
  i.e. after ``run_started`` and the diagnosis are committed to PostgreSQL;
  a worker process that dies mid-task has its job handed out again
  (``task_reject_on_worker_lost``; with Redis, also after the visibility timeout);
* **exactly one start** comes from PostgreSQL, never from the broker: the run id
  is fixed when the ledger row is inserted (unique per runbook, fingerprint and
  startsAt), a worker takes the run's *claim* lock (an advisory lock, dropped
  when its connection dies) before it looks at the store, and a run that has a
  ``run_started`` record is never started again: a redelivered job for a run
  cut short by a dead worker *resumes* it (read steps cut short run again; a
  write in doubt would be left for a person, and workers run no writes but
  ``auto_approve`` ones), for a run that is paused or finished it does nothing,
  and for a run another worker holds it does nothing;
* **a write is never run twice by redelivery**: a worker stops before writes;
  an ``auto_approve`` write cut short is *in doubt* on resume, and a worker
  never settles doubt (the run pauses for a person).

A worker never waits for a person inside a task: ``manual`` and ``ask`` steps
pause the run too.  When the diagnosis stops (paused, finished or failed) the
worker posts a notification (``RUNBOOK_NOTIFY_URL``, a Slack-compatible incoming
webhook; ``RUNBOOK_PAGE_URL``, the page's base URL for the link).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from runbook.errors import RunbookError

TASK = "runbook.diagnose"
QUEUE = os.environ.get("RUNBOOK_QUEUE", "runbook")  # with Redis, the list of that name in the broker's database
BROKER_ENV = "RUNBOOK_BROKER_URL"
log = logging.getLogger("runbook.worker")


class BrokerDown(RunbookError):
    """The broker did not take a job (unreachable, refused): the caller answers 503."""


def shown_url(url: str) -> str:
    """A URL without its password (for messages), one with ``@`` in it too."""
    from runbook.team.pgstore import redact_url

    return redact_url(url)


def broker_url() -> str:
    url = os.environ.get(BROKER_ENV, "")
    if not url:
        raise RunbookError(f"no broker: set {BROKER_ENV} to redis://HOST:6379/0 or amqp://USER:PASSWORD@HOST:5672//",
                           exit_code=2)
    return url


_apps: dict[str, Any] = {}
_apps_lock = threading.Lock()  # the webhook's threads: celery imported and the app made once


def app(url: str | None = None):
    """The Celery app for ``url`` (default: ``RUNBOOK_BROKER_URL``), made once per URL."""
    url = url or broker_url()
    with _apps_lock:
        if url not in _apps:
            _apps[url] = _make_app(url)
        return _apps[url]


def _make_app(url: str):
    from celery import Celery

    a = Celery("runbook", broker=url, set_as_current=False)
    a.conf.update(
        task_acks_late=True,  # acknowledged when the task returns: after the run is recorded
        task_reject_on_worker_lost=True,  # a worker process that dies: the job goes back to the queue
        worker_prefetch_multiplier=1,  # no job waits behind a long diagnosis in another process's buffer
        task_serializer="json", accept_content=["json"], task_ignore_result=True,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=float(os.environ.get("RUNBOOK_BROKER_TIMEOUT", "3")),
        broker_transport_options={
            "socket_connect_timeout": 3,
            # Redis hands an unacknowledged job to another worker after this long (default 1 h): a
            # duplicate delivery is harmless (the claim lock), a short one finds a dead worker sooner
            "visibility_timeout": float(os.environ.get("RUNBOOK_VISIBILITY_TIMEOUT", "3600")),
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    a.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(_task)
    return a


def enqueue(incident_id: int, run_id: str, url: str | None = None) -> None:
    """Send the job for one incident (its task id the run id); :class:`BrokerDown` when the
    broker cannot take it, so that the webhook answers 503 and Alertmanager sends it again."""
    url = url or broker_url()
    try:
        a = app(url)
        with a.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=float(os.environ.get("RUNBOOK_BROKER_TIMEOUT", "3")))
            a.send_task(TASK, args=[incident_id], task_id=run_id, queue=QUEUE, connection=conn, retry=False)
    except RunbookError:
        raise
    except Exception as exc:  # noqa: BLE001 - kombu/redis/amqp raise many kinds; all mean "not queued"
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BrokerDown(f"the broker {shown_url(url)} did not take the job: {why}") from None


# --- the task ----------------------------------------------------------------------------------


RETRY_MAX = 300.0  # seconds: the longest wait between tries of a job that failed for a reason outside the run


def _task(self, incident_id: int) -> dict:
    """A job that fails before its run could say why (PostgreSQL unreachable, the store or the
    ledger refusing) is tried again with a growing delay, never dropped: an acknowledged
    failure would lose the incident."""
    try:
        return diagnose(int(incident_id))
    except Exception as exc:  # noqa: BLE001 - whatever it was, the incident must not be lost
        delay = min(RETRY_MAX, 2.0 * 2 ** self.request.retries)
        log.warning("incident %s: %s; trying again in %.0fs", incident_id, exc, delay)
        raise self.retry(exc=exc, countdown=delay, max_retries=None) from None


def who() -> str:
    return f"worker@{socket.gethostname()}"


def diagnose(incident_id: int, *, paths: list | None = None, through: str | None = None, env: str | None = None,
             inventory: str | None = None) -> dict:
    """Diagnose one incident of the ledger: start its run, or go on with it when a dead
    worker left it cut short; nothing when it is paused, finished or held by another
    worker.  Returns what happened (the task's result, also logged)."""
    from runbook import audit, session
    from runbook.catalog import search_path
    from runbook.errors import UsageError
    from runbook.store import URL_ENV, open_store
    from runbook.team import ledger

    url = os.environ.get(URL_ENV, "")
    if not url:
        raise RunbookError(f"a worker needs the shared audit store: set {URL_ENV}=postgresql://…", exit_code=2)
    through = through or os.environ.get("RUNBOOK_WORKER_THROUGH") or "diagnose"
    env = env or os.environ.get("RUNBOOK_ENV") or None
    inventory = inventory or os.environ.get("RUNBOOK_INVENTORY") or None
    paths = paths or search_path(None)
    store = open_store(url=url)
    conn = ledger.connect(url)
    try:
        inc = ledger.get(conn, incident_id)
    finally:
        conn.close()
    if inc is None:
        log.warning("incident %s is not in the ledger; nothing to do", incident_id)
        return {"incident": incident_id, "status": "unknown incident"}
    me = who()
    claim = store.lock(f"claim-{inc.run_id}", f"run {inc.run_id} is being diagnosed by another worker")
    try:
        claim.acquire(inc.run_id, me, audit.now())
    except RunbookError as exc:
        if exc.exit_code != 3:
            raise  # the store cannot be reached: the job is tried again
        log.info("run %s: %s", inc.run_id, exc)
        return {"incident": incident_id, "run": inc.run_id, "status": "held elsewhere"}
    # the alert's lock, taken here rather than by the lifecycle: while another run has the alert (the
    # diagnosis of its previous incident), this job waits and is tried again, instead of being refused
    alert_lock = store.lock(f"alert-{inc.fingerprint}")
    try:
        alert_lock.acquire(inc.run_id, me, audit.now())
    except RunbookError as exc:
        claim.release()
        if exc.exit_code == 3:
            raise Busy(f"run {inc.run_id} waits: {exc}") from None
        raise
    checks = session.fence([claim, alert_lock])
    ui = LogUI(inc.run_id)
    common = dict(interactive=False, who=me, store=store, env=env, inventory_file=inventory, pause_after=through,
                  pause_before_writes=True, fence=checks, auto_ok=lambda step: not _resolved(url, incident_id),
                  locks_held=[alert_lock.name], argv=["runbook", "worker", f"incident {incident_id}"])
    try:
        try:
            records = store.run_records(inc.run_id)
        except UsageError:
            records = None
        if records is None:
            start = session.from_alert(inc.doc, inc.fingerprint, inc.runbook, paths, {}, who=me, store=store)
            if start.runbook is None:
                return {"incident": incident_id, "run": inc.run_id, "status": "resolved before it started"}
            outcome = session.start(session.RunRequest(runbook=start.runbook, params=start.params, alert=start.alert,
                                                       run_id=inc.run_id, **common), ui)
        else:
            summary = audit.summarize(records)
            if summary["finished"] is not None:
                log.info("run %s is %s; nothing to do", inc.run_id, summary["status"])
                return {"incident": incident_id, "run": inc.run_id, "status": summary["status"], "again": False}
            log.info("run %s was cut short (a worker died?): going on with it", inc.run_id)
            outcome = session.resume(session.ResumeRequest(run_id=inc.run_id, **common), ui)
    except RunbookError as exc:
        _refused(url, store, inc, exc)
        return {"incident": incident_id, "run": inc.run_id, "status": "refused", "error": str(exc)}
    finally:
        alert_lock.release()
        claim.release()
    log.info("run %s: %s (%s)", outcome.run_id, outcome.status, outcome.message or outcome.note)
    if outcome.status != "lock lost":  # whoever took the run over says how it ends
        notify(inc, outcome, None, store=store)
    return {"incident": incident_id, "run": outcome.run_id, "status": outcome.status, "exit_code": outcome.exit_code}


class Busy(RunbookError):
    """The incident's alert is held by another run: the job is tried again later."""


def _resolved(url: str, incident_id: int) -> bool:
    """Whether the incident's alert resolved (the ledger says so): a worker then runs no write,
    auto_approve or not; the run pauses for a person instead."""
    from runbook.team import ledger

    conn = ledger.connect(url)
    try:
        inc = ledger.get(conn, incident_id)
    finally:
        conn.close()
    return inc is None or inc.resolved_at is not None


def _refused(url: str, store, inc, exc: RunbookError) -> None:
    """A run the lifecycle refused: said on the page and in #incidents.  When the store itself
    cannot be reached, the job is tried again instead (raised)."""
    from runbook.errors import UsageError
    from runbook.team import ledger

    try:
        started = store.run_records(inc.run_id)
    except UsageError:
        started = []  # refused before anything was recorded (a runbook that does not load, a parameter)
    except RunbookError:
        raise exc from None  # the store is down: not a refusal
    log.warning("run %s: %s", inc.run_id, exc)
    if not started:
        conn = ledger.connect(url)
        try:
            ledger.mark_refused(conn, inc.id, str(exc))
        finally:
            conn.close()
    notify(inc, None, str(exc))


# --- runs left behind by a dead worker -------------------------------------------------------------


def sweep(url: str | None = None) -> list[str]:
    """Queue the incidents never queued (:func:`_queue_unqueued`), and send again the job of
    every run that started and stopped without finishing while no worker holds its claim (a worker killed with its job, e.g. by the OOM killer, whose
    message the broker would hand out only after its visibility timeout).  A duplicate job
    is harmless: the claim lock and the store decide.  Returns the run ids sent again."""
    from runbook.store import URL_ENV, open_store
    from runbook.team import ledger

    url = url or os.environ[URL_ENV]
    store = open_store(url=url)
    runs = {r["run"]: r for r in store.list_runs()}
    conn = ledger.connect(url)
    try:
        incidents = ledger.incidents(conn, limit=1000)
    finally:
        conn.close()
    sent = _queue_unqueued(url, incidents)
    sent += _queue_stale(url, incidents, set(runs))
    for inc in incidents:
        summary = runs.get(inc.run_id)
        if summary is None or summary["finished"] is not None:
            continue  # not started yet (its job is queued), or paused/finished
        if store.lock(f"claim-{inc.run_id}").held() or store.lock(f"run-{inc.run_id}").held():
            continue  # a live worker has it, or a person is resuming it
        if summary["in_doubt"] or not _workers_run(store.run_records(inc.run_id)):
            continue  # a write in doubt, or a person took it over: a person settles it, not a worker
        try:
            enqueue(inc.id, inc.run_id)
        except BrokerDown as exc:
            log.warning("sweep: %s", exc)
            break
        log.info("run %s stopped without finishing and no worker holds it: its job is sent again", inc.run_id)
        sent.append(inc.run_id)
    return sent


UNQUEUED_AFTER = 60.0  # seconds: a webhook that committed its incident but not its job is retried by then


def _queue_unqueued(url: str, incidents: list) -> list[str]:
    """Queue the incidents whose webhook committed them but never got their job to the broker
    (the server died between the two, and Alertmanager gave up retrying), under the same row
    lock as the webhook's; a resolved incident is not diagnosed."""
    import datetime

    from runbook.team import ledger

    now = datetime.datetime.now(datetime.timezone.utc)
    late = [i for i in incidents if i.enqueued is None and i.resolved_at is None
            and (now - i.received).total_seconds() > UNQUEUED_AFTER]
    if not late:
        return []
    sent = []
    conn = ledger.connect(url)
    try:
        for inc in late:
            try:
                if ledger.queue_once(conn, inc, enqueue) is not True:
                    continue
            except BrokerDown as exc:
                log.warning("sweep: %s", exc)
                break
            log.info("incident %s (run %s) was never queued: queued now", inc.id, inc.run_id)
            sent.append(inc.run_id)
    finally:
        conn.close()
    return sent


STALE_AFTER = 600.0  # seconds: a queued incident no worker has started by then is queued again


def _queue_stale(url: str, incidents: list, started: set[str]) -> list[str]:
    """Queue again the incidents queued long ago whose run never started and that nobody
    claims: a job the broker lost (a Redis restarted without persistence, a job dropped
    after an error).  Its ``enqueued`` time is renewed, so a long backlog is not flooded."""
    import datetime

    from runbook.store import open_store
    from runbook.team import ledger

    now = datetime.datetime.now(datetime.timezone.utc)
    stale = [i for i in incidents if i.enqueued is not None and i.resolved_at is None and i.run_id not in started
             and (now - i.enqueued).total_seconds() > STALE_AFTER]
    if not stale:
        return []
    store = open_store(url=url)
    sent = []
    conn = ledger.connect(url)
    try:
        for inc in stale:
            if store.lock(f"claim-{inc.run_id}").held():
                continue
            with conn.transaction():
                conn.execute("UPDATE runbook_incidents SET enqueued = now() WHERE id = %s", (inc.id,))
                try:
                    enqueue(inc.id, inc.run_id)
                except BrokerDown as exc:
                    log.warning("sweep: %s", exc)
                    raise
            log.info("incident %s (run %s) was queued long ago and never started: queued again", inc.id, inc.run_id)
            sent.append(inc.run_id)
    except BrokerDown:
        pass
    finally:
        conn.close()
    return sent


def _workers_run(records: list[dict]) -> bool:
    """Whether the run was last started or resumed by a worker."""
    last = next((r for r in reversed(records) if r.get("type") in ("run_started", "resumed")), {})
    return str(last.get("who") or "").startswith("worker@")


def _sweeper(every: float) -> None:
    """Sweep at the worker's start and then every ``every`` seconds (a daemon thread)."""
    import threading

    def loop() -> None:
        while True:
            try:
                sweep()
            except Exception as exc:  # noqa: BLE001 - a sweep that fails is tried again later
                log.warning("sweep failed: %s", exc)
            time.sleep(every)

    threading.Thread(target=loop, name="runbook-sweep", daemon=True).start()


# --- notification ------------------------------------------------------------------------------


def summary_text(inc, outcome, error: str | None, store=None) -> str:
    """The message for #incidents: the alert, the runbook, the key outputs, how to go on, the page."""
    lines = [f"*{inc.alertname}* ({inc.fingerprint}) → runbook *{inc.runbook}*"]
    if error:
        lines.append(f"not diagnosed: {error}")
    else:
        lines.append(f"diagnosis {outcome.status}: {outcome.message or outcome.note or ''}".rstrip(": "))
        if store is not None:
            lines += _key_outputs(store, outcome.run_id)
    lines.append(f"go on: `runbook resume {inc.run_id}`")
    page = os.environ.get("RUNBOOK_PAGE_URL", "").rstrip("/")
    if page:
        lines.append(f"{page}/runs/{inc.run_id}")
    return "\n".join(lines)


def _key_outputs(store, run_id: str, limit: int = 12) -> list[str]:
    from runbook.text import visible

    out = []
    for r in store.run_records(run_id):
        if r.get("type") == "step_result" and isinstance(r.get("outputs"), dict):
            for k, v in r["outputs"].items():
                out.append(f"• {r.get('step')}.{k} = {visible(str(v), one_line=True)[:120]}")
    return out[-limit:]


def notify(inc, outcome, error: str | None, store=None) -> bool:
    """Post the diagnosis to ``RUNBOOK_NOTIFY_URL`` (Slack-compatible: ``{"text": …}``); a chat
    that is down never fails the task (logged).  True when sent."""
    url = os.environ.get("RUNBOOK_NOTIFY_URL", "")
    if not url:
        return False
    import json

    import urllib3

    from runbook.steps import _web as W

    try:
        W.check_url(url, shown="RUNBOOK_NOTIFY_URL (not shown)")
        text = summary_text(inc, outcome, error, store)
        resp = urllib3.request("POST", url, body=json.dumps({"text": text}).encode(),
                               headers={"Content-Type": "application/json"}, timeout=5.0, retries=False)
        if not 200 <= resp.status < 300:
            raise RunbookError(f"the webhook answered {resp.status}")
    except Exception as exc:  # noqa: BLE001 - chat being down must not fail the diagnosis
        log.warning("run %s: notification not sent: %s", inc.run_id, str(exc).replace(url, "(the webhook)"))
        return False
    return True


# --- a UI with nobody at it ----------------------------------------------------------------------


class LogUI:
    """The lifecycle's UI for a worker: nobody answers; what a person would see goes to the
    worker's log, one line per event (the audit store has the details)."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.redactor = None

    def _say(self, text: str) -> None:
        if self.redactor is not None:
            text = self.redactor.text(text)
        log.info("run %s: %s", self.run_id, text)

    def attach(self, redactor) -> None:
        self.redactor = redactor

    def notice(self, text: str) -> None:
        self._say(text)

    def secret(self, prompt: str):
        return None

    def in_doubt(self, step, step_id: str, run_id: str) -> str:
        return "abort"

    def output_value(self, step, name: str):
        return None

    def run_started(self, rb, run_id: str, params_shown: dict, **kw) -> None:
        self.run_id = run_id
        self._say(f"{'resumed' if kw.get('resumed') else 'started'} {rb.name}")

    def step_started(self, step, action) -> None:
        self._say(f"step {step.id} ({step.kind}, {step.effect})")

    def output_sink(self, step):
        return None

    def confirm(self, step, action) -> str:
        return "abort"

    def step_prompt(self, step, action) -> str:
        return "abort"

    def after_failure(self, step, result, on_failure) -> str:
        return "abort"

    def manual(self, step, action) -> bool:
        return False

    def ask(self, step, prompt: str, choices, default):
        return None

    def branch(self, step, why: str, goto: str) -> None:
        self._say(f"step {step.id}: {why} → {goto}")

    def escalation_due(self, to: str, after: float, elapsed: float) -> None:
        self._say(f"escalation to {to} is due ({int(elapsed)}s since the alert)")

    def polling(self, step, result, attempt: int, observed=None) -> None:
        pass

    def retrying(self, step, result, attempt: int, delay: float) -> None:
        self._say(f"step {step.id} failed (attempt {attempt}); again in {delay:g}s")

    def step_finished(self, step, result) -> None:
        self._say(f"step {step.id}: {result.status}" + (f" ({result.error})" if result.error else ""))

    def run_finished(self, status: str, code: int, message: str) -> None:
        self._say(f"{status} ({message})" if message else status)


# --- the command -------------------------------------------------------------------------------


def run_worker(*, concurrency: int = 2, paths: list | None = None, through: str | None = None,
               env: str | None = None, inventory: str | None = None, loglevel: str = "INFO") -> int:
    """Run a Celery worker (prefork: a diagnosis that crashes or is killed takes only its process)."""
    if paths:
        os.environ["RUNBOOK_PATH"] = os.pathsep.join(str(p) for p in paths)
    if through:
        os.environ["RUNBOOK_WORKER_THROUGH"] = through
    if env:
        os.environ["RUNBOOK_ENV"] = env
    if inventory:
        os.environ["RUNBOOK_INVENTORY"] = inventory
    from runbook.store import URL_ENV

    if not os.environ.get(URL_ENV, "").startswith(("postgresql://", "postgres://")):
        raise RunbookError(f"a worker needs the shared audit store: set {URL_ENV}=postgresql://USER@HOST/DB "
                           "(the same as runbook serve's)", exit_code=2)
    logging.basicConfig(level=getattr(logging, loglevel.upper(), logging.INFO),
                        format="%(asctime)s %(processName)s %(name)s: %(message)s")
    a = app()
    from celery.signals import worker_ready

    every = float(os.environ.get("RUNBOOK_SWEEP_SECONDS", "30"))
    worker_ready.connect(lambda **_: _sweeper(every), weak=False)
    started = time.monotonic()
    a.worker_main(["worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}", "-Q", QUEUE,
                   "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"runbook-{os.getpid()}@%h"])
    log.info("worker stopped after %.0fs", time.monotonic() - started)
    return 0
