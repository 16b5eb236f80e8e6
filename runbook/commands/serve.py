"""runbook serve — receive Alertmanager webhooks (each alert's diagnosis queued for a
worker) and show the runs on a read-only page (team mode)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("serve", help="receive Alertmanager webhooks and show the runs (team mode)",
                       description=__doc__,
                       epilog="Environment: RUNBOOK_WEBHOOK_TOKEN (or --token-file), RUNBOOK_READ_TOKEN (or "
                              "--read-token-file: the page), RUNBOOK_AUDIT_URL=postgresql://… (required), "
                              "RUNBOOK_BROKER_URL=redis://… or amqp://… (required), RUNBOOK_PATH.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port to listen on (default 8787)")
    p.add_argument("--path", action="append", metavar="DIR",
                   help="where runbooks live (repeatable; default: $RUNBOOK_PATH or ./playbooks)")
    p.add_argument("--token-file", metavar="FILE", help="the webhook's bearer token (else $RUNBOOK_WEBHOOK_TOKEN)")
    p.add_argument("--read-token-file", metavar="FILE", help="the page's token (else $RUNBOOK_READ_TOKEN)")
    p.set_defaults(func=run)


def run(args) -> int:
    from runbook.errors import UsageError

    try:
        import starlette  # noqa: F401 - the team extra, checked before anything starts
        import uvicorn  # noqa: F401

        from runbook.team import serve
    except ImportError as exc:
        raise UsageError(f"runbook serve needs the team extra: pip install 'runbook-executor[team]' ({exc})") from None
    cfg = serve.config_from(args)
    return serve.serve(cfg, args.host, args.port)
