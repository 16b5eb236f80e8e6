"""Team mode (``pip install 'runbook-executor[team]'``): alerts diagnosed by Celery
workers before anyone wakes, the audit shared in PostgreSQL, a page to watch it.

* :mod:`runbook.team.pgstore`: the audit store in PostgreSQL (same records, chain
  and seals as the file log) and its advisory locks;
* :mod:`runbook.team.ledger`: the alert ledger: one row per incident (runbook,
  fingerprint, startsAt), the run it became, every webhook that named it;
* :mod:`runbook.team.worker`: the Celery app and its task (a run's diagnosis);
* :mod:`runbook.team.serve`: the Alertmanager webhook and the page.

Nothing here is imported by ``runbook --help`` or a plain ``runbook run``.
"""
