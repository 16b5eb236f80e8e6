"""The live lab: shipped runbooks run through the real CLI against real services on
127.0.0.1 (sshd, PostgreSQL, Redis, Prometheus, HTTP services, a webhook receiver),
each from a broken state to a verified healthy one, with an audit log that verifies.

The inventory is inventory/lab.yaml with its addresses pointed at the servers the
fixtures start on free ports (tests/labservers.py ``lab_inventory``)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg

from conftest import ROOT
from kubeapi import deployment, event, node
from runbook import audit

PLAYBOOKS = ROOT / "playbooks"


def results(audit_dir: Path) -> dict:
    """The last result of every step, by step id."""
    return {r["step"]: r for r in audit.read_records(audit_dir / "audit.jsonl") if r["type"] == "step_result"}


def verified(main, audit_dir: Path) -> None:
    r = main("audit", "verify", audit_dir / "audit.jsonl")
    assert r.returncode == 0, r.stdout + r.stderr


def hook_texts(web) -> list[str]:
    return [h["payload"]["text"] for h in web.hooks]


def test_redis_session_store_crash_restarted_over_ssh(main, lab_redis, lab_inventory, web, audit_dir):
    for i in range(3):
        lab_redis.cli("SET", f"session:user-{i}", f"token-{i}")
    lab_redis.crash()  # all users are logged out
    inv = lab_inventory(groups={"redis-servers": {"vars": {"restart_command": lab_redis.restart_command}}})
    r = main("run", "redis-session-store-crash", "--path", PLAYBOOKS, "--inventory", inv, "--yes",
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
    verified(main, audit_dir)


def test_redis_with_a_password_restarted_with_it_and_never_restarted_when_it_answers(main, lab_redis, lab_inventory, web,
                                                                                     audit_dir, tmp_path):
    for i in range(3):
        lab_redis.cli("SET", f"session:user-{i}", f"token-{i}")
    lab_redis.cli("CONFIG", "SET", "requirepass", "s3cr3t-pw")
    marker = tmp_path / "restarted"
    args = ["run", "redis-session-store-crash", "--path", PLAYBOOKS, "--yes", "-p", "platform=process",
            "-p", f"port={lab_redis.port}", "-p", f"log_file={lab_redis.log}"]
    hook = {"LAB_WEBHOOK": f"{web.url}/hook/incidents"}
    # up, but no password given: NOAUTH counts as answering, so no restart
    inv = lab_inventory(groups={"redis-servers": {"vars": {"restart_command": f"touch {marker}"}}})
    pid = lab_redis.pid()
    r = main(*args, "--inventory", inv, env=hook, timeout=90)
    assert r.returncode == 1 and "NOAUTH" in r.stdout, r.stdout + r.stderr
    assert not marker.exists() and lab_redis.pid() == pid
    # down: restarted, and verified with the password (a secret: over stdin, never shown)
    with open(lab_redis.conf, "a") as f:
        f.write("requirepass s3cr3t-pw\n")
    lab_redis.crash()
    inv = lab_inventory(groups={"redis-servers": {"vars": {"restart_command": lab_redis.restart_command}}})
    r = main(*args, "--inventory", inv, env=dict(hook, RUNBOOK_PARAM_PASSWORD="s3cr3t-pw"), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "holds 3 keys" in r.stdout
    assert "s3cr3t-pw" not in r.stdout + r.stderr + (audit_dir / "audit.jsonl").read_text()


def test_redis_loading_is_waited_for_not_restarted(main, lab_inventory, web, audit_dir, tmp_path):
    import socket

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    until = time.time() + 6  # a Redis reading its AOF/RDB for 6 seconds

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                data = c.recv(4096).upper()
                if time.time() < until:
                    c.sendall(b"-LOADING Redis is loading the dataset in memory\r\n")
                else:
                    c.sendall(b":3\r\n" if b"DBSIZE" in data else b"+PONG\r\n" if b"PING" in data else b"$-1\r\n")

    threading.Thread(target=serve, daemon=True).start()
    marker = tmp_path / "restarted"
    inv = lab_inventory(groups={"redis-servers": {"vars": {"restart_command": f"touch {marker}"}}})
    try:
        r = main("run", "redis-session-store-crash", "--path", PLAYBOOKS, "--inventory", inv, "--yes",
                "-p", "platform=process", "-p", f"port={srv.getsockname()[1]}", "-p", f"log_file={tmp_path}/none.log",
                env={"LAB_WEBHOOK": f"{web.url}/hook/incidents"}, timeout=90)
    finally:
        srv.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert not marker.exists() and "restart" not in results(audit_dir)
    assert "holds 3 keys" in r.stdout and any("LOADING" in t for t in hook_texts(web))


def test_service_unavailable_restarted_over_ssh_on_the_docker_path(main, lab_api, lab_inventory, audit_dir):
    stuck = lab_api.pid()
    assert not lab_api.healthy()  # /health answers 503
    inv = lab_inventory(groups={"api-servers": {"vars": {"restart_command": lab_api.restart_command,
                                                         "health_url": f"{lab_api.url}/health"}}},
                        http={"api": {"url": lab_api.url, "timeout": 5}})
    # a service the inventory has no endpoint for is refused, not checked against the API's
    r = main("run", "service-unavailable", "--path", PLAYBOOKS, "--inventory", inv, "--yes",
            "-p", "service=worker", "-p", "platform=docker", timeout=90)
    assert r.returncode == 1 and "no http endpoint 'worker'" in r.stdout, r.stdout + r.stderr
    assert lab_api.pid() == stuck
    r = main("run", "service-unavailable", "--path", PLAYBOOKS, "--inventory", inv, "--yes",
            "-p", "service=api", "-p", "platform=docker", "--answer", "pick-remedy=restart", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"healthy: {lab_api.url}/health" in r.stdout  # the host's own health check, before any next host
    assert lab_api.healthy() and lab_api.pid() != stuck
    res = results(audit_dir)
    assert res["liveness"]["status"] == "failed" and "503" in r.stdout  # the diagnosis saw the 503 (and went on)
    assert "logs" not in res and "restart" not in res  # no Kubernetes on this path
    assert res["docker-restart"]["status"] == "ok" and res["healthy"]["status"] == "ok"
    assert "api restarted: pid" in r.stdout and "is healthy again" in r.stdout
    verified(main, audit_dir)


def test_connection_pool_exhaustion_idle_sessions_terminated(main, pg, pg_db, make_pg_role, lab_inventory, audit_dir):
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
        r = main("run", "db-connection-pool-exhaustion", "--path", PLAYBOOKS, "--inventory", inv, "--yes",
                "--answer", "remedy=terminate-idle",  # the default in a terminal; without one it must be said
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
        verified(main, audit_dir)
    finally:
        for conn in leaked:
            conn.close()


RATIO = ('sum(rate(http_requests_total{{service="{s}",status_code=~"5.."}}[3s])) '
         '/ sum(rate(http_requests_total{{service="{s}"}}[3s]))')


def alert_payload(service: str) -> dict:
    """An Alertmanager webhook payload for seed 003's HighErrorRate rule firing on ``service``."""
    labels = {"alertname": "HighErrorRate", "service": service, "namespace": "production", "severity": "critical"}
    return {
        "version": "4", "status": "firing", "receiver": "runbook", "groupKey": '{}:{alertname="HighErrorRate"}',
        "groupLabels": {"alertname": "HighErrorRate"}, "commonLabels": labels, "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093", "truncatedAlerts": 0,
        "alerts": [{"status": "firing", "labels": labels,
                    "annotations": {"summary": f"High error rate on {service}", "runbook": "high-error-rate"},
                    "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": "1ab0e7c0ffee0001"}],
    }


def test_high_error_rate_from_an_alert_rolled_back_until_three_good_polls(
        main, write, tmp_path, prom, exporter, web, kubeapi, pg, lab_inventory, audit_dir):
    service = "lab-api"
    exporter.set(service, requests=100, errors=30)  # the bad release: 30% of requests fail
    deployment(kubeapi, service, "production", replicas=2, image="registry.example/api:1.5.0", revisions=2)
    node(kubeapi, "node-1")
    d = kubeapi.get("deployments", service, "production")
    event(kubeapi, d, "ScalingReplicaSet", "Scaled up replica set to 2 (release 1.5.0)", type_="Normal")
    pod = kubeapi.all("pods", "production")[0]["metadata"]["name"]
    kubeapi.add_log("production", pod, service, ["GET /orders 500 NullPointerException in OrderMapper"] * 3)

    # the application: its errors stop once the Deployment runs the previous release again
    done = threading.Event()

    def app():
        while not done.wait(0.2):
            image = kubeapi.get("deployments", service, "production")["spec"]["template"]["spec"]["containers"][0]["image"]
            if not image.endswith(":1.5.0"):
                exporter.set(service, requests=100, errors=0)
                return

    watcher = threading.Thread(target=app, daemon=True)
    watcher.start()
    try:
        end = time.monotonic() + 30
        while True:  # Prometheus's own HighErrorRate rule fires for the service, as Alertmanager would page
            firing = [a for a in prom.get("/api/v1/alerts")["data"]["alerts"]
                      if a["labels"].get("alertname") == "HighErrorRate" and a["labels"].get("service") == service
                      and a["state"] == "firing"]
            if firing and prom.query(RATIO.format(s=service))["result"]:
                break
            assert time.monotonic() < end, "HighErrorRate never fired"
            time.sleep(0.3)
        # the shipped playbook with test-sized timings (a 3 s rate window, polls every 0.5 s)
        text = (PLAYBOOKS / "high-error-rate.yaml").read_text()
        text = text.replace("[5m]", "[3s]").replace("every: 30s", "every: 0.5s").replace("timeout: 10m", "timeout: 30s")
        assert text.count("[3s]") == 4 and "every: 0.5s" in text and "timeout: 30s" in text
        write("books/high-error-rate.yaml", text)
        inv = lab_inventory(
            prometheus={"default": {"url": prom.url, "timeout": 5}},
            http={"api": {"url": web.url, "timeout": 5}},
            clusters={"main": {"kubeconfig": str(kubeapi.kubeconfig), "namespace": "production"}},
            databases={"main": {"host": pg.host, "port": pg.port, "dbname": "postgres", "user": pg.user,
                                **({"password": {"env": "LAB_PG_PASSWORD"}} if pg.password else {})}},
        )
        payload = write("alert.json", json.dumps(alert_payload(service)))
        r = main("run", "--alert", payload, "--path", tmp_path / "books", "--inventory", inv, "--yes",
                "--answer", "cause=bad-deploy",
                env={"LAB_WEBHOOK": f"{web.url}/hook/incidents", "LAB_PG_PASSWORD": pg.password or ""}, timeout=100)
    finally:
        done.set()
        watcher.join(5)
    assert r.returncode == 0, r.stdout + r.stderr
    res = results(audit_dir)
    assert res["error-rate"]["status"] == "ok" and res["error-rate"]["data"]["value"] > 0.2
    assert "HighErrorRate" in res["firing"]["data"]["firing"]
    assert res["rollback"]["status"] == "ok" and res["rollout"]["status"] == "ok"
    assert res["error-rate-ok"]["status"] == "ok" and res["error-rate-ok"]["data"]["held"] == 3
    assert res["error-rate-ok"]["data"]["value"] < 0.01
    image = kubeapi.get("deployments", service, "production")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example/api:0.1"  # rolled back to the previous revision
    assert "NullPointerException" in r.stdout
    texts = hook_texts(web)
    assert [t.split()[0] for t in texts] == ["*STARTED*", "*RESOLVED*"], texts
    assert "cause: bad-deploy" in texts[1]
    started = next(x for x in audit.read_records(audit_dir / "audit.jsonl") if x["type"] == "run_started")
    assert started["alert"]["labels"]["alertname"] == "HighErrorRate"
    assert started["params"]["service"] == service  # from the alert's labels
    verified(main, audit_dir)


def test_every_shipped_playbook_validates_and_dry_runs_against_the_lab(main):
    r = main("validate", "playbooks", "--dry-run", "--env", "lab", cwd=ROOT)
    assert r.returncode == 0 and "all valid" in r.stdout + r.stderr, r.stdout + r.stderr
