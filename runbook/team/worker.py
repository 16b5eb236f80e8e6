"""STAND-IN written on the ``serve`` branch so that ``runbook serve`` can be built
and tested before the lead's worker lands; the lead's ``worker.py`` replaces this
file and keeps :func:`enqueue` and :class:`BrokerDown` exactly as here.

A job is the Celery task ``runbook.diagnose`` with ``args=[incident_id]`` and the
incident's run id as its task id, on the queue :data:`QUEUE`
(``RUNBOOK_QUEUE``, default ``runbook``; with Redis its messages are the list of
that name in the broker's database).
"""

from __future__ import annotations

import os
import threading

from runbook.errors import RunbookError

BROKER_ENV = "RUNBOOK_BROKER_URL"
QUEUE = os.environ.get("RUNBOOK_QUEUE", "runbook")
TASK = "runbook.diagnose"


class BrokerDown(RunbookError):
    """The broker did not take the job (down, unreachable, refused)."""


_apps: dict[str, object] = {}
_apps_lock = threading.Lock()


def _safe(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        return f"{u.scheme}://{u.hostname or ''}{':' + str(u.port) if u.port else ''}{u.path}"
    except ValueError:
        return "the broker"


def app(url: str | None = None):
    """The Celery app for the broker at ``url`` (default ``RUNBOOK_BROKER_URL``), one per URL."""
    url = url or os.environ.get(BROKER_ENV)
    if not url:
        raise BrokerDown(f"no broker: set {BROKER_ENV} (redis://… or amqp://…)")
    with _apps_lock:
        got = _apps.get(url)
        if got is None:
            from celery import Celery

            got = Celery("runbook", broker=url, set_as_current=False)
            got.conf.update(
                task_default_queue=QUEUE,
                broker_connection_timeout=3,
                broker_connection_retry=False,
                broker_connection_retry_on_startup=False,
                broker_connection_max_retries=0,
                broker_transport_options={"socket_connect_timeout": 3, "socket_timeout": 5,
                                          "max_retries": 0},
                task_acks_late=True,
                task_reject_on_worker_lost=False,
            )
            _apps[url] = got
        return got


def enqueue(incident_id: int, run_id: str) -> None:
    """Put the incident's diagnosis on the broker; BrokerDown when it cannot take it."""
    celery = app()
    try:
        celery.send_task(TASK, args=[incident_id], task_id=run_id, queue=QUEUE, retry=False)
    except Exception as exc:  # noqa: BLE001 - kombu/redis/amqp raise many kinds; all mean "not queued"
        url = os.environ.get(BROKER_ENV, "")
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BrokerDown(f"the broker at {_safe(url)} did not take the job: {first}") from None
