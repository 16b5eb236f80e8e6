"""The audit store in PostgreSQL (runbook.team.pgstore) against a real server: the file
log's records, chain and seals in rows; attacks made with SQL the way someone with
write access to the database would; appends from several processes and across a
server restart; advisory locks; errors in one line without the password."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pgserver
import pytest

from runbook import audit, seal
from runbook.errors import RunbookError, UsageError
from runbook.secrets import Redactor
from runbook.store import FileStore, open_store
from runbook.team.pgstore import PgStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def url(pg, pg_db) -> str:
    return pg.url(pg_db)


@pytest.fixture
def store(url) -> PgStore:
    return PgStore(url)


@pytest.fixture
def db(pg, pg_db):
    """A plain connection to the store's database: the attacker's."""
    with pg.connect(pg_db) as conn:
        yield conn


def run(log, run_id: str, steps: int = 2, secret: str | None = None) -> None:
    j = audit.RunJournal(log, run_id, Redactor([secret] if secret else []))
    j.run_started(runbook="t", path="/b/t.yaml", sha256="0" * 64, git_commit=None, params={"p": 1},
                  dry_run=False, who="alice", host="h1")
    for n in range(steps):
        j.step_intent(step=f"s{n}", kind="shell", stage="mitigate", effect="write", targets=["local"],
                      rendered=f"echo {secret or ''} \x1b[31mred")
        j.step_result(step=f"s{n}", status="ok", exit_code=0, duration=0.1, output=f"out {secret or ''}\n")
    j.run_finished(status="ok", exit_code=0)


def rows(db) -> list[tuple[int, bytes]]:
    return [(seq, bytes(line)) for seq, line in db.execute("SELECT seq, line FROM runbook_audit ORDER BY seq")]


def check(store: PgStore, status: str, line: int | None = None, **kw) -> audit.VerifyResult:
    result = store.verify(**kw)
    assert result.status == status, result.message
    if line is not None:
        assert result.line == line, result.message
        assert result.message.startswith(f"record {line}: "), result.message
    return result


def python(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# --- what is written -------------------------------------------------------------------


def test_a_run_written_through_the_journal_reads_back(store: PgStore, db) -> None:
    assert not store.exists() and store.list_runs() == [] and list(store.records()) == []
    assert check(store, "ok").records == 0
    with store.log() as log:
        run(log, "20261205T000000Z-aaaaaa", secret="hunter2")
    assert store.exists()
    stored = rows(db)
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
    assert b"hunter2" not in b"".join(line for _, line in stored)
    prev = audit.GENESIS
    for _, line in stored:  # the file log's exact lines: canonical bytes, chained, sealed
        r = json.loads(line)
        assert line == audit._canonical(r) and r["prev"] == prev and r["v"] == audit.VERSION
        assert r["hash"] == hashlib.sha256(audit._body(r)).hexdigest() and "sig" in r and "ts" in r
        prev = r["hash"]
    first = store.record_at(1)
    assert first["type"] == "epoch" and first["anchor"] is True and first["epoch"] == 0
    assert store.record_at(2)["type"] == "run_started" and store.record_at(len(stored) + 1) is None
    assert seal.read_anchor  # the anchor row is a verify.pub
    assert seal.parse_anchor(store.anchor(), "x") == seal.unb64(first["public_key"])
    records = store.run_records("20261205T000000Z")
    assert [r["type"] for r in records] == ["run_started"] + ["step_intent", "step_result"] * 2 + ["run_finished"]
    assert all("sig" not in r and "epoch" not in r for r in records)
    assert records == list(store.records())
    (summary,) = store.list_runs()
    assert summary["status"] == "ok" and summary["steps"] == 2 and summary["who"] == "alice"
    assert db.execute("SELECT count(*) FROM runbook_audit WHERE run = %s",
                      ("20261205T000000Z-aaaaaa",)).fetchone()[0] == 6
    result = check(store, "ok")
    assert result.records == 7 and "1 epoch," in result.message and "head matches" in result.message
    assert open_store(url=store.url).where == store.where


def test_epochs_rotate_and_the_old_key_is_destroyed(store: PgStore, db, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = []
    with store.log() as log:
        for n in range(3):
            run(log, f"r{n}", steps=0)
            keys.append(bytes(db.execute("SELECT data FROM runbook_audit_key").fetchone()[0]))
        monkeypatch.setattr(seal, "EPOCH_RECORDS", 4)
        for n in range(9):
            log.append({"type": "note", "run": "r2", "n": n})
    epochs = [json.loads(line) for _, line in rows(db) if json.loads(line)["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == list(range(len(epochs))) and len(epochs) == 3 + 9 // 4
    assert len(set(keys)) == 3 and seal.parse_key(keys[-1], "k").epoch == 2
    assert db.execute("SELECT count(*) FROM runbook_audit_key").fetchone()[0] == 1  # only the current one
    current = seal.parse_key(bytes(db.execute("SELECT data FROM runbook_audit_key").fetchone()[0]), "k")
    assert seal.b64(current.public) == epochs[-1]["public_key"]
    check(store, "ok")


def test_two_processes_append_at_once(store: PgStore, url: str) -> None:
    script = """if True:
        import sys
        from runbook.team.pgstore import PgStore
        with PgStore(sys.argv[1]).log() as log:
            for i in range(60):
                log.append({"type": "note", "run": sys.argv[2], "i": i})
    """
    procs = [python(script, url, f"w{n}") for n in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for w in ("w0", "w1"):
        assert [r["i"] for r in store.run_records(w)] == list(range(60))
    result = check(store, "ok")
    assert result.records == 121  # the epoch record, then 120


def test_an_append_whose_commit_was_not_heard_is_not_written_twice(store: PgStore, db) -> None:
    with store.log() as log:
        first = log.append({"type": "note", "run": "r", "n": 1})
        token = bytes(db.execute("SELECT token FROM runbook_audit ORDER BY seq DESC").fetchone()[0], "ascii")
        again = log._append(log._conn, {"type": "note", "run": "r", "n": 1}, token.decode(), in_doubt=True)
        assert again == first
        log.append({"type": "note", "run": "r", "n": 2})
    assert [r["n"] for r in store.run_records("r")] == [1, 2]
    check(store, "ok")


def test_list_and_show_are_the_file_logs(store: PgStore, tmp_path: Path) -> None:
    file_store = FileStore(tmp_path / "file")
    t = "2026-12-05T10:00:00.000000Z"
    records = [
        {"type": "run_started", "run": "20261205T100000Z-aaaaaa", "runbook": "a", "who": "bob", "host": "h",
         "dry_run": False, "ts": t},
        {"type": "step_intent", "run": "20261205T100000Z-aaaaaa", "step": "x", "effect": "write", "ts": t},
        {"type": "run_started", "run": "20261205T100000Z-bbbbbb", "runbook": "b", "ts": t},
        {"type": "alert_resolved", "fingerprint": "f", "ts": t},
        {"type": "run_finished", "run": "20261205T100000Z-bbbbbb", "status": "ok", "exit_code": 0, "ts": t},
    ]
    for s in (file_store, store):
        with s.log() as log:
            for r in records:
                log.append(r)
    assert store.list_runs() == file_store.list_runs()
    assert [r["status"] for r in store.list_runs()] == ["in doubt", "ok"]

    def plain(rs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("prev", "hash")} for r in rs]

    assert plain(store.records()) == plain(file_store.records())
    assert plain(store.run_records("20261205T100000Z-b")) == plain(file_store.run_records("20261205T100000Z-b"))
    for bad in ("20261205T100000Z", "zz", "_"):
        with pytest.raises(UsageError) as pg_err:
            store.run_records(bad)
        with pytest.raises(UsageError) as file_err:
            file_store.run_records(bad)
        assert str(pg_err.value) == str(file_err.value).replace(file_store.where, store.where)


# --- attacks by someone who can write the database -------------------------------------


@pytest.fixture
def filled(store: PgStore) -> PgStore:
    with store.log() as log:
        run(log, "r1")
        run(log, "r2")
    check(store, "ok")
    return store


def test_a_rewritten_row_is_found(filled: PgStore, db) -> None:
    seq, line = rows(db)[3]
    assert b'"status":"ok"' in line
    db.execute("UPDATE runbook_audit SET line = %s WHERE seq = %s", (line.replace(b'"status":"ok"', b'"status":"no"'),
                                                                    seq))
    assert "hash mismatch" in check(filled, "tampered", 4).message


def test_a_change_that_reads_back_the_same_is_found(filled: PgStore, db) -> None:
    seq, line = rows(db)[2]
    assert b"\\u001b" in line
    db.execute("UPDATE runbook_audit SET line = %s WHERE seq = %s", (line.replace(b"\\u001b", b"\\u001B"), seq))
    assert "canonical JSON" in check(filled, "tampered", 3).message


def test_garbage_in_a_row_is_found(filled: PgStore, db) -> None:
    db.execute("UPDATE runbook_audit SET line = 'not json' WHERE seq = 5")
    assert "not valid JSON" in check(filled, "tampered", 5).message


def test_the_last_row_deleted_is_caught_by_the_head(filled: PgStore, db) -> None:
    n = len(rows(db))
    db.execute("DELETE FROM runbook_audit WHERE seq = %s", (n,))
    assert f"the head says {n}" in check(filled, "tampered", n).message
    with pytest.raises(RunbookError, match="cannot seal the audit store .*records were removed"):
        with filled.log() as log:
            log.append({"type": "note"})


def test_a_middle_row_deleted_breaks_the_chain(filled: PgStore, db) -> None:
    db.execute("DELETE FROM runbook_audit WHERE seq = 4")
    result = check(filled, "tampered", 4)
    assert "prev does not match the hash of record 3" in result.message
    assert filled.record_at(4)["hash"] == json.loads(rows(db)[3][1])["hash"]  # positions, as verify counts


def test_two_rows_swapped(filled: PgStore, db) -> None:
    with db.transaction():
        db.execute("UPDATE runbook_audit SET seq = -1 WHERE seq = 3")
        db.execute("UPDATE runbook_audit SET seq = 3 WHERE seq = 4")
        db.execute("UPDATE runbook_audit SET seq = 4 WHERE seq = -1")
    assert "chain broken" in check(filled, "tampered", 3).message


def test_a_forged_head(filled: PgStore, db, store: PgStore) -> None:
    head = json.loads(bytes(db.execute("SELECT data FROM runbook_audit_head").fetchone()[0]))
    n = head["records"]
    db.execute("DELETE FROM runbook_audit WHERE seq = %s", (n,))
    last = json.loads(rows(db)[-1][1])
    head.update(records=n - 1, hash=last["hash"])  # names the new last record, signed with a key of its own
    head["sig"] = seal.generate(head["epoch"]).sign(audit._canonical({k: v for k, v in head.items() if k != "sig"}))
    db.execute("UPDATE runbook_audit_head SET data = %s", (audit._canonical(head),))
    assert "does not verify (forged or damaged)" in check(filled, "tampered", n).message
    db.execute("DELETE FROM runbook_audit_head")
    assert "head row (runbook_audit_head) is missing" in check(filled, "tampered", n).message


def test_a_column_that_disagrees_with_its_record(filled: PgStore, db) -> None:
    db.execute("UPDATE runbook_audit SET run = 'r9' WHERE seq = 5")
    assert "run or type column" in check(filled, "tampered", 5).message


def resign(db) -> seal.Key:
    """What someone who can write every table does: a new chain and seals from a key of their own,
    a new anchor row, key row and head."""
    records = [json.loads(line) for _, line in rows(db)]
    key, prev = None, audit.GENESIS
    for seq, r in enumerate(records, start=1):
        r["prev"] = prev
        if r["type"] == "epoch":
            new = seal.generate(r["epoch"], key.anchor if key else None)
            r["public_key"] = seal.b64(new.public)
        signer = key or new
        r.pop("hash"), r.pop("sig")
        body = audit._body(r)
        r["hash"], r["sig"] = hashlib.sha256(body).hexdigest(), signer.sign(body)
        key = new if r["type"] == "epoch" else key
        prev = r["hash"]
        db.execute("UPDATE runbook_audit SET line = %s, hash = %s WHERE seq = %s",
                   (audit._canonical(r), r["hash"], seq))
    head = json.loads(bytes(db.execute("SELECT data FROM runbook_audit_head").fetchone()[0]))
    head.update(hash=prev, anchor=key.anchor)
    head["sig"] = key.sign(audit._canonical({k: v for k, v in head.items() if k != "sig"}))
    db.execute("UPDATE runbook_audit_head SET data = %s", (audit._canonical(head),))
    first = seal.unb64(records[0]["public_key"])
    db.execute("UPDATE runbook_audit_anchor SET data = %s", (seal.anchor_bytes(first),))
    db.execute("UPDATE runbook_audit_key SET data = %s", (seal.key_bytes(key),))
    return key


def test_a_table_re_signed_with_a_new_key_fails_against_the_anchor_kept_outside(filled: PgStore, db,
                                                                               tmp_path: Path) -> None:
    kept = tmp_path / "verify.pub"
    kept.write_bytes(filled.anchor())  # exported after the first run, kept where the database's writers cannot write
    check(filled, "ok", key=kept)
    seq, line = rows(db)[4]
    db.execute("UPDATE runbook_audit SET line = %s WHERE seq = %s", (line.replace(b'"exit_code":0', b'"exit_code":1'),
                                                                    seq))
    resign(db)
    check(filled, "ok")  # the database agrees with itself: this proves nothing
    result = check(filled, "tampered", 1, key=kept)
    assert "not by the anchor" in result.message and str(kept) in result.message
    with filled.log() as log:  # and writers go on with the forger's key: only the kept anchor tells
        log.append({"type": "note"})
    check(filled, "tampered", 1, key=kept)


def test_the_seals_cannot_be_proven_without_an_anchor(filled: PgStore, db, tmp_path: Path) -> None:
    db.execute("DELETE FROM runbook_audit_anchor")
    result = check(filled, "key-missing")
    assert "runbook_audit_anchor" in result.message and "--key" in result.message
    (tmp_path / "bad.pub").write_text("nope")
    assert check(filled, "key-missing", key=tmp_path / "bad.pub").line is None


# --- a server restart during appends ---------------------------------------------------


def test_a_server_restart_during_appends_loses_and_repeats_nothing() -> None:
    srv = pgserver.start_throwaway()
    try:
        store = PgStore(srv.url())
        written: list[int] = []
        failed: list[BaseException] = []
        stop = threading.Event()

        def writer() -> None:
            try:
                with store.log() as log:
                    i = 0
                    while not stop.is_set():
                        log.append({"type": "note", "run": "w", "i": i})
                        written.append(i)
                        i += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                failed.append(exc)

        def after(n: int) -> None:
            deadline = time.monotonic() + 20
            while len(written) < n and not failed and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not failed, failed
            assert len(written) >= n

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            pg_ctl = (srv.bindir / "pg_ctl", "-D", srv.data_dir, "-l", srv.log_file, "-w", "-t", "30")
            after(30)
            res = pgserver._run(pg_ctl[0], "restart", *pg_ctl[1:], "-m", "immediate", run_as=srv.run_as,
                                cwd=srv.base_dir, timeout=40)
            assert res.returncode == 0, res.stderr
            after(len(written) + 30)
            res = pgserver._run(pg_ctl[0], "stop", *pg_ctl[1:], "-m", "fast", run_as=srv.run_as, cwd=srv.base_dir,
                                timeout=40)
            assert res.returncode == 0, res.stderr
            time.sleep(1.0)  # the writer finds nobody there for a while
            res = pgserver._run(pg_ctl[0], "start", *pg_ctl[1:], run_as=srv.run_as, cwd=srv.base_dir, timeout=40)
            assert res.returncode == 0, res.stderr
            after(len(written) + 30)
        finally:
            stop.set()
            thread.join(30)
        assert not failed, failed
        assert [r["i"] for r in store.run_records("w")] == written == list(range(len(written)))
        check(store, "ok")
    finally:
        srv.stop()


# --- locks -----------------------------------------------------------------------------

HOLD = """if True:
    import sys, time
    from runbook.errors import RunbookError
    from runbook.team.pgstore import PgStore
    lock = PgStore(sys.argv[1]).lock("alert-FP")
    try:
        lock.acquire(sys.argv[2], "alice", "2026-12-05T10:00:00Z")
    except RunbookError as exc:
        print("refused", exc, flush=True)
        sys.exit(3)
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_lock_is_held_by_one_process_and_freed_when_it_dies(store: PgStore, url: str) -> None:
    store.lock("setup").release()
    procs = [python(HOLD, url, f"RUN{n}") for n in range(2)]
    try:
        firsts = {p: p.stdout.readline().strip() for p in procs}
        (holder,) = [p for p, said in firsts.items() if said == "locked"]
        (other,) = [p for p in procs if p is not holder]
        assert firsts[other].startswith("refused this alert is already being handled: run RUN")
        assert other.wait(10) == 3
        run_id = "RUN0" if holder is procs[0] else "RUN1"
        lock = store.lock("alert-FP")
        assert lock.held()
        with pytest.raises(RunbookError) as refused:
            lock.acquire("RUN9", "bob", "now")
        assert refused.value.exit_code == 3
        assert (f"this alert is already being handled: run {run_id} started by alice at 2026-12-05T10:00:00Z on "
                f"{audit.hostname()} (pid {holder.pid}); follow that run (runbook audit show {run_id})"
                in str(refused.value))
        warning = lock.acquire("RUN9", "bob", "now", force=True)
        assert warning.startswith(f"warning: --force: this alert is already being handled by run {run_id}")
        assert lock.held()
        holder.kill()
        holder.wait(10)
        deadline = time.monotonic() + 10
        while lock.held() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lock.held()
        assert lock.acquire("RUN9", "bob", "now") is None
        assert lock.held() and store.lock("alert-FP").held()  # held() asks on a connection of its own
        assert not store.lock("alert-other").held()
        lock.release()
        assert not lock.held()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            p.stdout.close(), p.stderr.close()


# --- errors ----------------------------------------------------------------------------


def one_line_error(store: PgStore, secret: str) -> str:
    for attempt in (store.list_runs, store.verify, lambda: store.log().append({"type": "note"}),
                    lambda: store.lock("x").acquire("r", "w", "s")):
        with pytest.raises(RunbookError) as exc:
            attempt()
        message = str(exc.value)
        assert "\n" not in message and secret not in message and "Traceback" not in message
        assert message.endswith("; check RUNBOOK_AUDIT_URL"), message
    return message


def test_an_unreachable_store(monkeypatch: pytest.MonkeyPatch) -> None:
    store = PgStore("postgresql://u:s3cret-pw@127.0.0.1:1/db")
    assert store.where == "postgresql://u@127.0.0.1:1/db"
    message = one_line_error(store, "s3cret-pw")
    assert message.startswith("cannot reach the audit store postgresql://u@127.0.0.1:1/db: connection refused")


def test_a_missing_database_and_a_wrong_password(pg, pg_password) -> None:
    message = one_line_error(PgStore(pg.url("no_such_db_here", password="pw-in-url")), "pw-in-url")
    assert 'database "no_such_db_here" does not exist' in message
    store = PgStore(pg_password.url(password="Wr0ng-Secret"))
    message = one_line_error(store, "Wr0ng-Secret")
    assert "password authentication failed" in message and "Wr0ng-Secret" not in store.where
    odd = PgStore(pg_password.url(password="p@ss:w/rd%41"))
    assert odd.where == pg_password.url(password=None) and "p%40ss" not in one_line_error(odd, "p@ss:w/rd%41")
    query = PgStore(pg_password.url(password=None) + "?password=Wr0ng-Secret")
    assert "Wr0ng-Secret" not in query.where
    one_line_error(query, "Wr0ng-Secret")


def test_the_cli_does_not_import_psycopg() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, runbook.cli, runbook.store, runbook.team.pgstore; "
                          "print('psycopg' in sys.modules)"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


def test_a_lock_whose_session_ended_is_found_lost_by_its_holder(store: PgStore, db) -> None:
    """A restart or failover ends the lock's session: the holder's check says so (the run
    then stops before its next step), while a lock still held checks fine."""
    from runbook.errors import LockLost

    kept, doomed = store.lock("run-kept"), store.lock("run-doomed")
    assert kept.acquire("R1", "alice", "now") is None and doomed.acquire("R2", "bob", "now") is None
    kept.check()
    doomed.check()
    pid = doomed._conn.info.backend_pid
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(LockLost, match="lost the lock run-doomed"):
        doomed.check()
    kept.check()
    assert not doomed.held()  # free: another process may take it now
    doomed.release()  # on a dead connection: no error
    kept.release()
