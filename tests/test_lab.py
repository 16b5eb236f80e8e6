"""The live lab: shipped runbooks run through the real CLI against real services on
127.0.0.1 (sshd, PostgreSQL, Redis, Prometheus, HTTP services, a webhook receiver),
each from a broken state to a verified healthy one, with an audit log that verifies.

The inventory is inventory/lab.yaml with its addresses pointed at the servers the
fixtures start on free ports (tests/labservers.py ``lab_inventory``)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from conftest import ROOT
from runbook import audit

PLAYBOOKS = ROOT / "playbooks"


def results(audit_dir: Path) -> dict:
    """The last result of every step, by step id."""
    return {r["step"]: r for r in audit.read_records(audit_dir / "audit.jsonl") if r["type"] == "step_result"}


def verified(cli, audit_dir: Path) -> None:
    r = cli("audit", "verify", audit_dir / "audit.jsonl")
    assert r.returncode == 0, r.stdout + r.stderr


def hook_texts(web) -> list[str]:
    return [h["payload"]["text"] for h in web.hooks]


def test_redis_session_store_crash_restarted_over_ssh(cli, lab_redis, lab_inventory, web, audit_dir):
    for i in range(3):
        lab_redis.cli("SET", f"session:user-{i}", f"token-{i}")
    lab_redis.crash()  # all users are logged out
    inv = lab_inventory(groups={"redis-servers": {"vars": {"restart_command": lab_redis.restart_command}}})
    r = cli("run", "redis-session-store-crash", "--path", PLAYBOOKS, "--inventory", inv, "--yes",
            "-p", "platform=process", "-p", f"port={lab_redis.port}", "-p", f"log_file={lab_redis.log}",
            env={"LAB_WEBHOOK": f"{web.url}/hook/incidents"}, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lab_redis.ping() and lab_redis.cli("GET", "session:user-1") == "token-1"  # back, from its AOF
    res = results(audit_dir)
    assert res["ping"]["status"] == "failed"  # the diagnosis saw it down
    assert res["restart"]["status"] == "ok" and res["pong"]["status"] == "ok"
    assert "resolved" in r.stdout and "holds 3 keys" in r.stdout
    texts = hook_texts(web)
    assert [t.split()[0] for t in texts] == ["*STARTED*", "*RESOLVED*"], texts
    assert "(3 keys)" in texts[1]
    verified(cli, audit_dir)


def test_service_unavailable_restarted_over_ssh_on_the_docker_path(cli, lab_api, lab_inventory, audit_dir):
    stuck = lab_api.pid()
    assert not lab_api.healthy()  # /health answers 503
    inv = lab_inventory(groups={"api-servers": {"vars": {"restart_command": lab_api.restart_command}}},
                        http={"api": {"url": lab_api.url, "timeout": 5}})
    r = cli("run", "service-unavailable", "--path", PLAYBOOKS, "--inventory", inv, "--yes",
            "-p", "service=api", "-p", "platform=docker", "--answer", "pick-remedy=restart", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lab_api.healthy() and lab_api.pid() != stuck
    res = results(audit_dir)
    assert res["liveness"]["status"] == "ok" and "503" in r.stdout  # the diagnosis saw the 503
    assert "logs" not in res and "restart" not in res  # no Kubernetes on this path
    assert res["docker-restart"]["status"] == "ok" and res["healthy"]["status"] == "ok"
    assert "api restarted: pid" in r.stdout and "is healthy again" in r.stdout
    verified(cli, audit_dir)


def test_connection_pool_exhaustion_idle_sessions_terminated(cli, pg, pg_db, make_pg_role, lab_inventory, audit_dir):
    app = make_pg_role(grants=())  # the leaking client: an ordinary login role
    monitor = make_pg_role()  # read-only steps run as a pg_monitor role, as in production
    leaked = [pg.connect(pg_db, user=app, application_name="leaky-app") for _ in range(8)]
    try:
        time.sleep(1.2)  # idle for longer than idle_seconds
        db = {"host": pg.host, "port": pg.port, "dbname": pg_db, "user": pg.user, "readonly_role": monitor,
              "connect_timeout": 5}
        if pg.password:
            db["password"] = {"env": "LAB_PG_PASSWORD"}
        inv = lab_inventory(databases={"main": db})
        r = cli("run", "db-connection-pool-exhaustion", "--path", PLAYBOOKS, "--inventory", inv, "--yes",
                "-p", "threshold=5", "-p", "idle_seconds=1", env={"LAB_PG_PASSWORD": pg.password or ""}, timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        res = results(audit_dir)
        assert res["decide"]["status"] == "ok" and res["terminate-idle"]["status"] == "ok"
        assert res["count-ok"]["status"] == "ok" and "Connections are back under 5" in r.stdout
        assert r.stdout.count("leaky-app") >= 8  # the terminated sessions, named for the post-mortem
        with pg.connect(pg_db) as c:
            n = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND application_name = 'leaky-app'").fetchone()[0]
        assert n == 0
        for conn in leaked:
            try:
                conn.execute("SELECT 1")
                raise AssertionError("a leaked connection survived")
            except psycopg.OperationalError:
                pass
        verified(cli, audit_dir)
    finally:
        for conn in leaked:
            conn.close()
