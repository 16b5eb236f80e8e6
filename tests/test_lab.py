"""The live lab: shipped runbooks run through the real CLI against real services on
127.0.0.1 (sshd, PostgreSQL, Redis, Prometheus, HTTP services, a webhook receiver),
each from a broken state to a verified healthy one, with an audit log that verifies.

The inventory is inventory/lab.yaml with its addresses pointed at the servers the
fixtures start on free ports (tests/labservers.py ``lab_inventory``)."""

from __future__ import annotations

from pathlib import Path

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
