"""The audit log: hash chain, tamper detection, durability, redaction and the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from threading import Thread

import pytest

from runbook.audit import (
    EXCERPT_CHARS,
    GENESIS,
    AuditLog,
    RunJournal,
    default_dir,
    list_runs,
    new_run_id,
    read_records,
    run_records,
    verify,
)
from runbook.errors import RunbookError
from runbook.secrets import Redactor

ROOT = Path(__file__).resolve().parents[1]


def fill(directory: Path, n: int) -> Path:
    with AuditLog(directory) as log:
        for i in range(n):
            log.append({"type": "tick", "i": i})
    return log.path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def python(script: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, cwd=ROOT, **kwargs)


def journal(log: AuditLog, run_id: str | None = None, secrets: tuple[str, ...] = ()) -> RunJournal:
    return RunJournal(log, run_id or new_run_id(), Redactor(secrets))


def start(j: RunJournal, dry_run: bool = False, **extra) -> None:
    j.run_started(
        runbook="restart-api",
        path="runbooks/restart-api.yaml",
        sha256="ab" * 32,
        git_commit=None,
        params={"service": "api"},
        dry_run=dry_run,
        who="alice",
        host="laptop",
        **extra,
    )


# --- the chain ---------------------------------------------------------------


def test_records_are_chained_and_verify(tmp_path: Path) -> None:
    path = fill(tmp_path, 10)
    records = [json.loads(line) for line in lines_of(path)]
    assert [r["type"] for r in records] == ["epoch"] + ["tick"] * 10  # the first sealed record opens epoch 0
    assert [r["i"] for r in read_records(path)] == list(range(10))  # without the log's own records
    assert records[0]["prev"] == GENESIS
    for before, after in zip(records, records[1:], strict=False):
        assert after["prev"] == before["hash"]
    for line, r in zip(lines_of(path), records, strict=True):
        assert (r["v"], r["epoch"]) == (2, 0)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["ts"])
        body = {k: v for k, v in r.items() if k not in ("hash", "sig")}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert r["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert line == json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    result = verify(path)
    assert (result.ok, result.status, result.records, result.line) == (True, "ok", 11, None)
    assert result.message.startswith("ok: 11 records, chain intact, sealed (1 epoch, anchor ")
    assert result.message.endswith("), head matches")


def test_append_returns_the_record_as_written_and_keeps_a_given_ts(tmp_path: Path) -> None:
    record = {"type": "x", "ts": "2026-01-01T00:00:00.000000Z", "where": tmp_path}
    with AuditLog(tmp_path) as log:
        written = log.append(record)
    assert "hash" not in record  # the caller's dict is not changed
    assert written["ts"] == "2026-01-01T00:00:00.000000Z"
    assert written["where"] == str(tmp_path)  # non-JSON values are stored as strings
    assert json.loads(lines_of(log.path)[-1]) == written
    assert list(read_records(log.path)) == [{k: v for k, v in written.items() if k not in ("sig", "epoch")}]


def test_empty_log_verifies(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").write_bytes(b"")
    assert verify(tmp_path / "audit.jsonl").ok


def test_new_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "runbook"
    path = fill(directory, 1)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_edited_record_is_detected_at_its_line(tmp_path: Path) -> None:
    path = fill(tmp_path, 10)
    lines = lines_of(path)
    record = json.loads(lines[4])
    record["i"] = 99
    lines[4] = json.dumps(record).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert (result.ok, result.status, result.line, result.records) == (False, "tampered", 5, 4)
    assert result.message == "line 5: record was modified (hash mismatch)"


def test_deleted_record_is_detected(tmp_path: Path) -> None:
    path = fill(tmp_path, 10)
    lines = lines_of(path)
    del lines[6]
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert (result.ok, result.line) == (False, 7)
    assert result.message == (
        "line 7: chain broken: prev does not match the hash of line 6 (a record was removed or reordered)"
    )


def test_deleted_first_record_is_detected(tmp_path: Path) -> None:
    path = fill(tmp_path, 3)
    path.write_bytes(b"".join(lines_of(path)[1:]))
    result = verify(path)
    assert (result.ok, result.line) == (False, 1)
    assert "chain broken" in result.message


def test_swapped_records_are_detected(tmp_path: Path) -> None:
    path = fill(tmp_path, 10)
    lines = lines_of(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert (result.ok, result.line) == (False, 3)
    assert "chain broken" in result.message


def test_non_json_line_is_detected(tmp_path: Path) -> None:
    path = fill(tmp_path, 5)
    lines = lines_of(path)
    lines.insert(2, b"hello, I was not written by runbook\n")
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert (result.ok, result.line) == (False, 3)
    assert result.message.startswith("line 3: not valid JSON")


def test_torn_final_line_is_a_crash_that_the_next_append_repairs(tmp_path: Path) -> None:
    path = fill(tmp_path, 3)
    last_good = json.loads(lines_of(path)[-1])
    torn = b'{"type":"tick","i":3,"pr'
    with open(path, "ab") as f:
        f.write(torn)  # power lost in the middle of a write
    result = verify(path)
    assert (result.ok, result.status, result.line, result.records) == (False, "torn", 5, 4)
    assert "incomplete record at the end of the file" in result.message and "the next write repairs it" in result.message

    with AuditLog(tmp_path) as log:
        written = log.append({"type": "tick", "i": 4})
    lines = lines_of(path)
    assert lines[4] == torn + b"\n"  # the torn line stays as evidence, ended by a newline
    repair = json.loads(lines[5])
    assert (repair["type"], repair["line"], repair["length"]) == ("torn_tail", 5, len(torn))
    assert base64.b64decode(repair["bytes"]) == torn and repair["prev"] == last_good["hash"]
    assert written["prev"] == repair["hash"]
    assert lines[-1] == json.dumps(written, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    result = verify(path)
    assert (result.ok, result.status, result.records) == (True, "ok", 6)
    assert result.message.endswith("torn writes repaired at line 5")


def test_record_that_lost_only_its_newline_still_chains(tmp_path: Path) -> None:
    path = fill(tmp_path, 3)
    path.write_bytes(path.read_bytes()[:-1])
    assert verify(path).ok
    fill(tmp_path, 1)
    assert verify(path).records == 5
    assert len(lines_of(path)) == 5  # no torn_tail record: nothing was torn


def test_records_longer_than_the_tail_buffer(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        for i in range(3):
            log.append({"type": "big", "blob": str(i) * 50_000})
            log.append({"type": "small"})
    assert verify(log.path).records == 7


def test_damaged_last_record_stops_appends(tmp_path: Path) -> None:
    path = fill(tmp_path, 2)
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    with AuditLog(tmp_path) as log, pytest.raises(RunbookError, match="last record is damaged"):
        log.append({"type": "tick"})


def test_missing_log_cannot_be_verified(tmp_path: Path) -> None:
    with pytest.raises(RunbookError, match="cannot read the audit log"):
        verify(tmp_path / "audit.jsonl")


# --- concurrency and crashes --------------------------------------------------

WORKER = """
import sys, time
from pathlib import Path
from runbook.audit import AuditLog
directory, worker = sys.argv[1], int(sys.argv[2])
go = Path(directory) / "go"
while not go.exists():
    time.sleep(0.001)
with AuditLog(directory) as log:
    for i in range(200):
        log.append({"type": "tick", "worker": worker, "i": i})
"""


def test_concurrent_processes_append_without_breaking_the_chain(tmp_path: Path) -> None:
    workers = [python(WORKER, str(tmp_path), str(w)) for w in range(4)]
    time.sleep(0.3)  # let them all start and wait at the barrier
    (tmp_path / "go").touch()
    assert [p.wait(timeout=60) for p in workers] == [0, 0, 0, 0]
    path = tmp_path / "audit.jsonl"
    assert len(lines_of(path)) == 801  # and the epoch record that starts the seals
    assert verify(path).records == 801
    records = list(read_records(path))
    for w in range(4):
        assert [r["i"] for r in records if r["worker"] == w] == list(range(200))


def test_threads_sharing_one_log(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        threads = [Thread(target=lambda: [log.append({"type": "tick"}) for _ in range(100)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert verify(log.path).records == 401


LOOPER = """
import sys
from runbook.audit import AuditLog
log = AuditLog(sys.argv[1])
i = 0
while True:
    log.append({"type": "tick", "i": i, "pad": "x" * (i * 37 % 5000)})
    i += 1
"""


def test_sigkill_during_appends_leaves_a_valid_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    proc = python(LOOPER, str(tmp_path))
    deadline = time.monotonic() + 30
    while not (path.exists() and path.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    result = verify(path)
    assert result.ok, result.message
    assert result.records > 0
    fill(tmp_path, 1)
    assert verify(path).records == result.records + 1


# --- the journal ----------------------------------------------------------------


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        j = journal(log, secrets=("hunter2",))
        start(
            j,
            argv=["runbook", "run", "x", "-p", "password=hunter2"],
            note="token hunter2",
            params_raw={"password": "hunter2", "hunter2": ["a", ("hunter2",)]},
            where=tmp_path / "hunter2",
        )
        j.step_intent(
            step="login",
            kind="shell",
            stage="mitigate",
            effect="write",
            targets=["db-hunter2"],
            rendered="psql postgres://admin:hunter2@db",
        )
        j.decision(step="login", approved=True, by="alice", how="--yes")
        j.step_intent(
            step="api",
            kind="http",
            stage="mitigate",
            effect="write",
            targets=["api"],
            rendered={"headers": {"Authorization": "Bearer hunter2"}, "url": "https://x/?k=hunter2"},
        )
        cut = "a" * 100 + "hunter2" + "b" * (EXCERPT_CHARS - 4)  # the cut falls inside the secret
        j.step_result(
            step="login",
            status="failed",
            exit_code=1,
            duration=0.5,
            output="password hunter2\n" + cut,
            error="auth failed for hunter2",
            outputs={"pw": "hunter2"},
        )
        j.event("note", text="hunter2", nested={"k": ["hunter2"]})
        j.run_finished(status="failed", exit_code=1)
    data = log.path.read_bytes()
    assert b"hunter2" not in data
    assert b"ter2" not in data and b"hunte" not in data
    assert b"***" in data
    assert verify(log.path).records == 8


def test_step_result_keeps_a_bounded_excerpt_and_a_digest(tmp_path: Path) -> None:
    output = "".join(f"line {i}\n" for i in range(5000))
    with AuditLog(tmp_path) as log:
        j = journal(log)
        big = j.step_result(step="s", status="ok", exit_code=0, duration=1.25, output=output, outputs={"n": 1})
        small = j.step_result(step="t", status="ok", exit_code=0, duration=0.1, output="hello\n")
    assert big["output_sha256"] == hashlib.sha256(output.encode()).hexdigest()
    assert big["output_bytes"] == len(output.encode())
    excerpt = big["output_excerpt"]
    assert excerpt.endswith("line 4999\n")
    assert excerpt.startswith("[... ") and "earlier characters not shown" in excerpt
    assert len(excerpt) < EXCERPT_CHARS + 100
    assert output.endswith(excerpt.split("\n", 1)[1])
    assert small["output_excerpt"] == "hello\n"
    assert len(log.path.read_bytes()) < 6000  # never the full output
    assert (big["type"], big["step"], big["exit_code"], big["outputs"]) == ("step_result", "s", 0, {"n": 1})


def test_undecodable_output_is_stored_and_verifies(tmp_path: Path) -> None:
    output = b"caf\xe9 \xff\n".decode("utf-8", "surrogateescape")
    with AuditLog(tmp_path) as log:
        journal(log).step_result(step="s", status="ok", exit_code=0, duration=0.0, output=output)
    assert verify(log.path).ok
    assert next(read_records(log.path))["output_excerpt"] == output


def test_journal_records_carry_type_and_run(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        j = journal(log, run_id="20260101T000000Z-abcdef")
        start(j, dry_run=True, argv=["runbook", "run"])
        j.step_intent(step="s", kind="shell", stage="diagnose", effect="read", targets=["h1"], rendered="uptime")
        j.decision(step="s", approved=False, by="alice", how="prompt")
        j.event("retry", step="s", run="something else")
        j.run_finished(status="declined", exit_code=3)
    records = list(read_records(log.path))
    assert [r["type"] for r in records] == ["run_started", "step_intent", "decision", "retry", "run_finished"]
    assert {r["run"] for r in records} == {"20260101T000000Z-abcdef"}
    assert records[0]["params"] == {"service": "api"} and records[0]["dry_run"] is True
    assert records[1]["attempt"] == 1 and records[1]["targets"] == ["h1"]
    assert records[2]["approved"] is False and records[2]["how"] == "prompt"


# --- reading runs ----------------------------------------------------------------


def test_run_summaries(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        done = journal(log, "20260101T000000Z-aaaaaa")
        start(done, dry_run=True)
        for step in ("a", "b"):
            done.step_intent(step=step, kind="shell", stage="diagnose", effect="read", targets=["h"], rendered="x")
            done.step_result(step=step, status="ok", exit_code=0, duration=0.1)
        done.run_finished(status="succeeded", exit_code=0)

        crashed = journal(log, "20260101T000100Z-bbbbbb")
        start(crashed)
        crashed.step_intent(step="restart", kind="shell", stage="mitigate", effect="write", targets=["h"], rendered="x")
        crashed.decision(step="restart", approved=True, by="alice", how="--yes")

        between = journal(log, "20260101T000200Z-cccccc")
        start(between)
        between.step_intent(step="a", kind="shell", stage="mitigate", effect="write", targets=["h"], rendered="x")
        between.decision(step="a", approved=False, by="alice", how="prompt")
    runs = {r["run"]: r for r in list_runs(log.path)}
    assert list(runs) == ["20260101T000000Z-aaaaaa", "20260101T000100Z-bbbbbb", "20260101T000200Z-cccccc"]
    a = runs["20260101T000000Z-aaaaaa"]
    assert (a["status"], a["exit_code"], a["steps"], a["dry_run"], a["who"], a["runbook"]) == (
        "succeeded",
        0,
        2,
        True,
        "alice",
        "restart-api",
    )
    assert a["finished"] >= a["started"]
    b = runs["20260101T000100Z-bbbbbb"]
    assert (b["status"], b["exit_code"], b["finished"], b["in_doubt"], b["dry_run"]) == (
        "in doubt",
        None,
        None,
        ["restart"],
        False,
    )
    c = runs["20260101T000200Z-cccccc"]
    assert (c["status"], c["in_doubt"]) == ("in progress", [])


def test_run_lookup_by_prefix(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        for run_id in ("20260101T000000Z-aaaaaa", "20260101T000000Z-aabbbb"):
            j = journal(log, run_id)
            start(j)
            j.run_finished(status="succeeded", exit_code=0)
    records = run_records(log.path, "20260101T000000Z-aab")
    assert [r["type"] for r in records] == ["run_started", "run_finished"]
    assert {r["run"] for r in records} == {"20260101T000000Z-aabbbb"}
    assert len(run_records(log.path, "20260101T000000Z-aaaaaa")) == 2
    with pytest.raises(RunbookError, match="ambiguous"):
        run_records(log.path, "20260101T000000Z-aa")
    with pytest.raises(RunbookError, match="no run"):
        run_records(log.path, "2025")


def test_run_ids_start_with_the_utc_time_and_are_unique() -> None:
    run_id = new_run_id()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", run_id)
    started = datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - started).total_seconds()) < 5
    assert len({new_run_id() for _ in range(1000)}) == 1000


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNBOOK_AUDIT_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert default_dir() == Path.home() / ".local" / "state" / "runbook"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_dir() == tmp_path / "state" / "runbook"
    monkeypatch.setenv("RUNBOOK_AUDIT_DIR", str(tmp_path / "audit"))
    assert default_dir() == tmp_path / "audit"
    assert AuditLog().path == tmp_path / "audit" / "audit.jsonl"


# --- the command line --------------------------------------------------------------


def main(*args: str, audit_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNBOOK_AUDIT_DIR": str(audit_dir), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "runbook", "audit", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_cli_verify(tmp_path: Path) -> None:
    path = fill(tmp_path, 5)
    ok = main("verify", str(path), audit_dir=tmp_path / "elsewhere")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 6 records, chain intact, sealed (1 epoch, anchor ")
    assert main("verify", audit_dir=tmp_path).returncode == 0  # the default log

    lines = lines_of(path)
    del lines[2]
    path.write_bytes(b"".join(lines))
    bad = main("verify", str(path), audit_dir=tmp_path)
    assert bad.returncode == 1
    assert f"{path}:3: error: chain broken" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr

    missing = main("verify", str(tmp_path / "nope.jsonl"), audit_dir=tmp_path)
    assert missing.returncode == 1
    assert "nope.jsonl" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_cli_list_and_show(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        j = journal(log, secrets=("hunter2",))
        start(j)
        j.step_intent(
            step="restart",
            kind="shell",
            stage="mitigate",
            effect="write",
            targets=["web1"],
            rendered="systemctl restart [bold]api",
        )
        j.decision(step="restart", approved=True, by="alice", how="--yes")
        j.step_result(step="restart", status="ok", exit_code=0, duration=0.2, output="restarted\n")
        j.run_finished(status="succeeded", exit_code=0)
    listed = main("list", audit_dir=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert j.run_id in listed.stdout and "restart-api" in listed.stdout and "live" in listed.stdout
    as_json = json.loads(main("list", "--format", "json", audit_dir=tmp_path).stdout)
    assert [r["run"] for r in as_json] == [j.run_id]

    shown = main("show", j.run_id[:-3], audit_dir=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for text in (j.run_id, "step_intent", "systemctl restart [bold]api", "restarted", "approved"):
        assert text in shown.stdout
    shown_json = main("show", j.run_id, "--format", "json", "--dir", str(tmp_path), audit_dir=tmp_path / "elsewhere")
    records = json.loads(shown_json.stdout)
    assert [r["type"] for r in records] == ["run_started", "step_intent", "decision", "step_result", "run_finished"]

    unknown = main("show", "1999", audit_dir=tmp_path)
    assert unknown.returncode == 2 and "no run" in unknown.stderr and "Traceback" not in unknown.stderr
