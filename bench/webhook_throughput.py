"""Webhook throughput of `runbook serve`: Alertmanager payloads posted by concurrent
clients to a real server process, its ledger in PostgreSQL, its broker a private
redis-server; every alert twice (Alertmanager re-sends, HA peers), so half the
webhooks are new incidents and half are counted duplicates.

Checks that exactly one job per incident reached the broker, then prints webhooks/s
and the latency of one webhook (p50, p95).

    python bench/webhook_throughput.py [--alerts 500] [--clients 16]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

TARGET: ≥ 200 webhooks/s and p95 ≤ 250 ms with 16 clients (Alertmanager sends a
handful a minute in a quiet hour and a few hundred in an outage storm).
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from _common import REPO, child_env, free_port, wait_for

TARGET_RATE = 200.0
TARGET_P95 = 0.250
TOKEN = "bench-token"
QUEUE = "runbook-bench"


def answers(port: int, path: str = "/healthz") -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", path)
        return c.getresponse().status == 200
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alerts", type=int, default=500, help="distinct alerts (each posted twice)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    ap.add_argument("--pg", default=os.environ.get("RUNBOOK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
                    help="a PostgreSQL superuser URL: a scratch database is created there and dropped")
    args = ap.parse_args()

    import psycopg

    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    redis_cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    work = Path(tempfile.mkdtemp(prefix="rb-bench-hook-"))
    db = f"rbbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    db_url = args.pg.rsplit("/", 1)[0] + f"/{db}"
    redis_port, port = free_port(), free_port()
    redis = subprocess.Popen([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    server = None
    try:
        wait_for(lambda: subprocess.run([redis_cli, "-p", str(redis_port), "PING"], capture_output=True,
                                        text=True).stdout.strip() == "PONG", 10, "redis-server did not start")
        env = child_env(RUNBOOK_WEBHOOK_TOKEN=TOKEN, RUNBOOK_AUDIT_URL=db_url, RUNBOOK_QUEUE=QUEUE,
                        RUNBOOK_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0", RUNBOOK_AUDIT_DIR=str(work / "audit"))
        server = subprocess.Popen([sys.executable, "-m", "runbook", "serve", "--port", str(port),
                                   "--path", str(REPO / "playbooks")], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(work / "serve.log", "wb"))
        wait_for(lambda: answers(port), 20, f"runbook serve did not start: {(work / 'serve.log').read_text()}")

        base = json.loads((REPO / "tests" / "data" / "alertmanager-pod-oom-killed.json").read_text())
        bodies = []
        for i in range(args.alerts):
            doc = copy.deepcopy(base)
            a = doc["alerts"][0]
            a["fingerprint"] = f"{i:016x}"
            a["labels"]["pod"] = f"api-{i}"
            bodies.append(json.dumps(doc).encode())
        bodies = bodies + bodies  # every alert twice
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        todo = iter(bodies)

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while True:
                with lock:
                    body = next(todo, None)
                if body is None:
                    conn.close()
                    return
                t0 = time.perf_counter()
                conn.request("POST", "/alertmanager", body=body,
                             headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
                r = conn.getresponse()
                text = r.read()
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if r.status != 200:
                        failures.append(f"{r.status} {text[:200]!r}")

        # one webhook first: the server's first connection, Celery's app and the runbook index are made once
        warm = copy.deepcopy(base)
        warm["alerts"][0]["fingerprint"] = "warm"
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/alertmanager", body=json.dumps(warm).encode(), headers={"Authorization": f"Bearer {TOKEN}"})
        assert c.getresponse().status == 200
        c.close()

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        jobs = int(subprocess.run([redis_cli, "-p", str(redis_port), "LLEN", QUEUE], capture_output=True,
                                  text=True).stdout.strip() or 0)
        with psycopg.connect(db_url) as c:
            incidents = c.execute("SELECT count(*), sum(webhooks) FROM runbook_incidents").fetchone()
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        redis.terminate()
        redis.wait(10)
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)

    n = len(latencies)
    rate = n / wall
    lat = sorted(latencies)
    p50, p95 = statistics.median(lat), lat[int(0.95 * (n - 1))]
    print(f"{n} webhooks ({args.alerts} alerts, each twice) from {args.clients} clients in {wall:.2f} s: "
          f"{rate:.0f} webhooks/s; latency p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
    print(f"incidents {incidents[0]} (webhooks counted {incidents[1]}), jobs on the broker {jobs}, "
          f"non-200 answers {len(failures)}")
    exact = failures == [] and incidents[0] == args.alerts + 1 and jobs == args.alerts + 1  # + the warm-up alert
    if not exact:
        print("bench: NOT EXACT: " + "; ".join(failures[:3]))
    met = exact and rate >= TARGET_RATE and p95 <= TARGET_P95
    print(f"TARGET ≥ {TARGET_RATE:.0f} webhooks/s and p95 ≤ {TARGET_P95 * 1000:.0f} ms, exactly one job per incident: "
          f"{'MET' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
