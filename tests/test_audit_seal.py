"""The sealed audit log against someone who can write the file (issue 14): forward-secure
Ed25519 seals per epoch, the head file against truncation, torn writes repaired as crashes.

Each attack is made on the real log of live runs (runbook.session in process, real
local commands), the way an attacker on the machine would: rewrite lines, recompute
every hash, even sign with the key the machine holds now."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeui import FakeUI

from runbook import audit, seal, session, spec
from runbook.errors import RunbookError

ROOT = Path(__file__).resolve().parents[1]

BOOK = """\
name: t
title: T
stages:
  diagnose:
    - id: look
      shell: "printf 'look \\\\033[31mred\\\\033[0m\\\\n'"
      readonly: true
  mitigate:
    - id: act
      shell: "echo act"
      timeout: 5s
  verify:
    - id: check
      shell: "echo healthy"
      readonly: true
"""


@pytest.fixture
def book(tmp_path: Path) -> Path:
    p = tmp_path / "t.yaml"
    p.write_text(BOOK)
    return p


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return Path(os.environ["RUNBOOK_KEY_DIR"])


def live(book: Path, runs: int = 1) -> list[str]:
    ids = []
    for _ in range(runs):
        out = session.start(session.RunRequest(runbook=spec.find(str(book), []), yes=True), FakeUI())
        assert out.exit_code == 0, out
        ids.append(out.run_id)
    return ids


def log_path(audit_dir: Path) -> Path:
    return audit_dir / audit.LOG_NAME


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def canon(r: dict) -> bytes:
    return json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def body(r: dict) -> bytes:
    return canon({k: v for k, v in r.items() if k not in ("hash", "sig")})


def write_rows(path: Path, records: list[dict]) -> None:
    path.write_bytes(b"".join(canon(r) + b"\n" for r in records))


def rehash(records: list[dict], start: int = 0, key: seal.Key | None = None) -> None:
    """What an attacker does: recompute prev and hash from ``start`` on (and sign with ``key``)."""
    import hashlib

    for i in range(start, len(records)):
        r = records[i]
        r["prev"] = records[i - 1]["hash"] if i else audit.GENESIS
        if key is not None:
            r["sig"] = key.sign(body(r))
        r["hash"] = hashlib.sha256(body(r) if "sig" in r else canon({k: v for k, v in r.items() if k != "hash"})).hexdigest()


def check(path: Path, status: str, line: int | None = None, **kw) -> audit.VerifyResult:
    result = audit.verify(path, **kw)
    assert result.status == status, result.message
    assert result.ok == (status in ("ok", "unsealed")), result
    if line is not None:
        assert result.line == line, result.message
    return result


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "runbook", *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


# --- what is written ------------------------------------------------------------------


def test_epochs_keys_and_head_of_live_runs(book: Path, audit_dir: Path, keys: Path) -> None:
    live(book)
    anchor = (keys / "verify.pub").read_bytes()
    first = rows(log_path(audit_dir))
    live(book, 2)
    path = log_path(audit_dir)
    records = rows(path)
    assert records[: len(first)] == first
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]  # the first seal, then one new key before each later run
    assert [records[records.index(e) + 1]["type"] for e in epochs] == ["run_started"] * 3
    assert records[0] == epochs[0] and records[0]["anchor"] is True
    assert all(r["v"] == 2 and isinstance(r["sig"], str) for r in records)
    # keys: the anchor is written once; seal.key holds only the current epoch's key
    assert (keys / "verify.pub").read_bytes() == anchor
    assert seal.read_anchor(keys / "verify.pub") == base64.b64decode(epochs[0]["public_key"])
    current = seal.read_key(keys / "seal.key")
    assert current.epoch == 2 and current.public == base64.b64decode(epochs[2]["public_key"])
    assert sorted(p.name for p in keys.iterdir()) == ["seal.key", "verify.pub"]  # no old key, no leftover
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "seal.key").stat().st_mode) == 0o600
    head = json.loads(audit.head_path(path).read_bytes())
    assert (head["records"], head["hash"], head["epoch"]) == (len(records), records[-1]["hash"], 2)
    result = check(path, "ok")
    assert result.records == len(records) and "sealed (3 epochs" in result.message and "head matches" in result.message
    assert [r["type"] for r in audit.run_records(path, audit.list_runs(path)[0]["run"])][0] == "run_started"


def test_a_new_epoch_at_least_every_1000_records(tmp_path: Path) -> None:
    with audit.AuditLog(tmp_path) as log:
        for i in range(2500):
            log.append({"type": "tick", "i": i})
    records = rows(log.path)
    starts = [i for i, r in enumerate(records) if r["type"] == "epoch"]
    assert [records[i]["epoch"] for i in starts] == [0, 1, 2]
    assert all(b - a <= seal.EPOCH_RECORDS + 1 for a, b in zip(starts, starts[1:] + [len(records)], strict=True))
    check(log.path, "ok")


def test_cryptography_is_not_imported_by_help() -> None:
    code = "import sys, runbook.cli\ntry: runbook.cli.main(['--help'])\nexcept SystemExit: pass\nprint('cryptography' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.strip().splitlines()[-1] == "False", p.stderr


# --- what is detected -----------------------------------------------------------------


def test_forged_append_with_recomputed_hashes(book: Path, audit_dir: Path) -> None:
    live(book)
    path = log_path(audit_dir)
    good = rows(path)
    n = len(good)
    fake = [dict(good[-2], ts="2099-01-01T00:00:00.000000Z"), dict(good[-1], status="resolved")]
    for unsealed in (True, False):
        records = [dict(r) for r in good] + [dict(r) for r in fake]
        if unsealed:
            for r in records[n:]:
                del r["sig"]
        rehash(records, n)  # hashes and chain recomputed, the old signatures kept or dropped
        write_rows(path, records)
        result = check(path, "tampered", n + 1)
        assert ("not sealed" if unsealed else "seal does not verify with the key of epoch 0") in result.message
    # signed with a key of the attacker's own: still not the epoch's key
    records = [dict(r) for r in good] + [dict(r) for r in fake]
    rehash(records, n, key=seal.generate(0))
    write_rows(path, records)
    check(path, "tampered", n + 1)


def test_middle_edit_with_the_chain_recomputed(book: Path, audit_dir: Path) -> None:
    live(book, 2)
    path = log_path(audit_dir)
    records = rows(path)
    i = next(i for i, r in enumerate(records) if r["type"] == "step_result" and r["step"] == "act")
    records[i]["status"] = "failed"
    rehash(records, i)
    write_rows(path, records)
    result = check(path, "tampered", i + 1)
    assert "seal does not verify" in result.message


@pytest.mark.parametrize("cut, epoch_left", [(1, 1), (4, 1), (20, 0)])
def test_records_cut_off_the_end(book: Path, audit_dir: Path, cut: int, epoch_left: int) -> None:
    live(book, 2)
    path = log_path(audit_dir)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-cut]))
    result = check(path, "tampered", len(lines) - cut + 1)
    assert max(r["epoch"] for r in rows(path)) == epoch_left
    if epoch_left == 1:  # still in the last epoch: the head's count
        assert f"the log ends at record {len(lines) - cut} but the head says {len(lines)}" in result.message
    else:  # back into an earlier epoch: the head is sealed by a key the log never reaches
        assert "is sealed in epoch 1 (records were removed from the end)" in result.message


def test_resume_refuses_a_finished_run_cut_back_before_its_write_step(book: Path, audit_dir: Path,
                                                                        tmp_path: Path) -> None:
    """The issue's case: a finished run cut back to just before its write step, then resumed."""
    (run_id,) = live(book)
    path = log_path(audit_dir)
    lines = path.read_bytes().splitlines(keepends=True)
    i = next(i for i, x in enumerate(lines) if b'"step":"act"' in x and b'"decision"' in x)
    path.write_bytes(b"".join(lines[:i]))
    with pytest.raises(RunbookError, match=f"the log ends at record {i} but the head says {len(lines)}"):
        session.resume(session.ResumeRequest(run_id=run_id, yes=True), FakeUI())
    assert not any(b'"step":"act"' in x and b'"step_intent"' in x for x in path.read_bytes().splitlines())
    # the writer does not write over the evidence: a new run is refused too, and verify still says so
    with pytest.raises(RunbookError, match=f"cannot seal the audit log .*the log ends at record {i} but the head says"):
        live(book)
    check(path, "tampered", i + 1)


def test_swapped_records(book: Path, audit_dir: Path) -> None:
    live(book)
    path = log_path(audit_dir)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"".join(lines))
    assert "chain broken" in check(path, "tampered", 4).message


@pytest.mark.parametrize("same, changed", [(b"\\u001b", b"\\u001B"), (b'"exit_code":0,', b'"exit_code":-0,'),
                                           (b'"exit_code":0,', b'"exit_code": 0,')])
def test_byte_changes_that_decode_to_the_same_json(book: Path, audit_dir: Path, same: bytes, changed: bytes) -> None:
    live(book)
    path = log_path(audit_dir)
    lines = path.read_bytes().splitlines(keepends=True)
    i = next(i for i, x in enumerate(lines) if b'"step_result"' in x and b'"step":"look"' in x)
    assert same in lines[i]
    lines[i] = lines[i].replace(same, changed, 1)
    assert json.loads(lines[i]) == json.loads(lines[i].replace(changed, same, 1))  # the same record once read
    path.write_bytes(b"".join(lines))
    assert "its bytes are not its canonical JSON" in check(path, "tampered", i + 1).message


def test_every_bit_of_a_record_is_covered(book: Path, audit_dir: Path) -> None:
    """As journald's verifier test: toggling any bit of a record (its newline included) is noticed."""
    live(book)
    path = log_path(audit_dir)
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    i = next(i for i, x in enumerate(lines) if b'"step_result"' in x and b'"step":"look"' in x)
    start = sum(map(len, lines[:i]))
    for pos in range(start, start + len(lines[i])):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            result = audit.verify(path)
            assert not result.ok, (pos - start, bit, result.message)


def test_a_record_signed_with_a_later_epochs_key(book: Path, audit_dir: Path, keys: Path) -> None:
    """CVE-2023-31439: the key the machine holds now (epoch 2) must not seal records of epoch 0 or 1."""
    live(book, 3)
    path = log_path(audit_dir)
    stolen = seal.read_key(keys / "seal.key")
    assert stolen.epoch == 2
    good = rows(path)
    i = next(i for i, r in enumerate(good) if r["type"] == "step_result" and r["epoch"] == 0)
    for claim in (0, 2):  # keeping the record's epoch, or claiming the thief's
        records = [dict(r) for r in good]
        records[i]["status"], records[i]["epoch"] = "failed", claim
        rehash(records, i, key=stolen)  # everything after it re-sealed with the stolen key too
        write_rows(path, records)
        result = check(path, "tampered", i + 1)
        assert ("does not verify with the key of epoch 0" if claim == 0 else "sealed for epoch 2 but sits in epoch 0") \
            in result.message


def test_the_current_key_can_forge_the_current_epoch_only(book: Path, audit_dir: Path, keys: Path) -> None:
    """What the README says is not detected: the holder of the current key appends as the writer would."""
    live(book, 2)
    path = log_path(audit_dir)
    with audit.AuditLog(audit_dir) as log:  # anyone with the key directory can write like runbook
        log.append({"type": "note", "text": "forged, but in the current epoch"})
    check(path, "ok")
    records = rows(path)
    first_epoch1 = next(i for i, r in enumerate(records) if r["type"] == "epoch" and r["epoch"] == 1)
    records[first_epoch1 - 1]["exit_code"] = 0  # but the epoch before cannot be rewritten
    rehash(records, first_epoch1 - 1, key=seal.read_key(keys / "seal.key"))
    write_rows(path, records)
    check(path, "tampered", first_epoch1)


# --- crashes --------------------------------------------------------------------------


def test_torn_last_line_is_a_crash_repaired_by_the_next_run(book: Path, audit_dir: Path) -> None:
    live(book)
    path = log_path(audit_dir)
    whole = path.read_bytes()
    n = whole.count(b"\n")
    record = rows(path)[-1]
    path.write_bytes(whole + canon(dict(record, type="step_intent"))[:57])  # the power went in a write
    r = cli("audit", "verify", path)
    assert r.returncode == 4, r.stdout + r.stderr
    assert f"{path}:{n + 1}: warning: incomplete record at the end of the file" in r.stdout
    assert "the next write repairs it" in r.stdout and "Traceback" not in r.stderr

    live(book)  # the next run repairs it
    lines = path.read_bytes().splitlines()
    repair = json.loads(lines[n + 1])
    assert (repair["type"], repair["line"], base64.b64decode(repair["bytes"])) == ("torn_tail", n + 1, lines[n])
    r = cli("audit", "verify", path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"torn writes repaired at line {n + 1}" in r.stdout
    assert audit.list_runs(path)[-1]["status"] == "completed"

    records = path.read_bytes().splitlines(keepends=True)  # an edit after the repaired line is still found
    j = next(j for j in range(n + 2, len(records)) if b'"step":"act"' in records[j] and b'"step_result"' in records[j])
    records[j] = records[j].replace(b'"status":"ok"', b'"status":"failed"')
    path.write_bytes(b"".join(records))
    r = cli("audit", "verify", path)
    assert r.returncode == 1 and f"{path}:{j + 1}: error: record was modified" in r.stdout
    # and the torn line cannot be changed either
    records[j] = records[j].replace(b'"status":"failed"', b'"status":"ok"')
    records[n] = records[n].replace(b'{"', b'{"x', 1)
    path.write_bytes(b"".join(records))
    check(path, "tampered", n + 1)


def test_a_rotation_cut_by_a_crash_is_finished_by_the_next_writer(book: Path, audit_dir: Path, keys: Path) -> None:
    live(book)
    old = (keys / "seal.key").read_bytes()
    live(book)
    # the state of a crash after the new epoch was written but before seal.key was replaced
    os.replace(keys / "seal.key", keys / "seal.key.next")
    (keys / "seal.key").write_bytes(old)
    live(book)
    assert sorted(p.name for p in keys.iterdir()) == ["seal.key", "verify.pub"]
    assert seal.read_key(keys / "seal.key").epoch == 2
    check(log_path(audit_dir), "ok")


# --- keys -----------------------------------------------------------------------------


def test_a_lost_anchor_is_not_tampering(book: Path, audit_dir: Path, keys: Path, tmp_path: Path) -> None:
    live(book, 2)
    path = log_path(audit_dir)
    copy = tmp_path / "anchor-copy.pub"
    copy.write_bytes((keys / "verify.pub").read_bytes())
    (keys / "verify.pub").unlink()
    result = check(path, "key-missing")
    assert result.message.startswith("cannot verify the seals: key missing") and "tamper" not in result.message
    r = cli("audit", "verify", path)
    assert r.returncode == 5 and "error: cannot verify the seals: key missing" in r.stdout, r.stdout + r.stderr
    assert check(path, "ok", key=copy).records == len(rows(path))  # the copy kept elsewhere proves it
    r = cli("audit", "verify", path, "--key", copy)
    assert r.returncode == 0, r.stdout + r.stderr
    # a changed record is still tampering, key or not
    lines = path.read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"type":"', b'"type":"x', 1)
    path.write_bytes(b"".join(lines))
    check(path, "tampered", 6)


def test_a_lost_sealing_key_stops_the_writer(book: Path, audit_dir: Path, keys: Path) -> None:
    live(book)
    (keys / "seal.key").unlink()
    with pytest.raises(RunbookError, match=r"cannot seal the audit log .*: its sealing key .*seal.key is missing"):
        live(book)
    check(log_path(audit_dir), "ok")  # nothing was written


def test_another_public_key(book: Path, audit_dir: Path, tmp_path: Path) -> None:
    live(book)
    other_anchor = tmp_path / "other.pub"
    seal.write_anchor(tmp_path, seal.generate(0).public)
    os.replace(tmp_path / "verify.pub", other_anchor)
    result = check(log_path(audit_dir), "tampered", 1, key=other_anchor)
    assert "not by the anchor" in result.message and "the anchor of another log, or this log was re-sealed" \
        in result.message
    r = cli("audit", "verify", log_path(audit_dir), "--key", other_anchor)
    assert r.returncode == 1 and ":1: error: the log's first seal is by key" in r.stdout
    nokey = cli("audit", "verify", log_path(audit_dir), "--key", tmp_path / "nope.pub")
    assert nokey.returncode == 5 and "nope.pub not found" in nokey.stdout


def test_a_pem_public_key_is_an_anchor_too(book: Path, audit_dir: Path, keys: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    live(book)
    pem = Ed25519PublicKey.from_public_bytes(seal.read_anchor(keys / "verify.pub")).public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "anchor.pem").write_bytes(pem)
    check(log_path(audit_dir), "ok", key=tmp_path / "anchor.pem")


# --- the head, legacy logs -------------------------------------------------------------


def _forge_head(path: Path, how: str, tmp_path: Path) -> None:
    head = audit.head_path(path)
    if how == "missing":
        head.unlink()
    elif how == "damaged":
        head.write_bytes(b'{"records": 3')
    elif how == "unsigned":  # names the (new) last record, as an attacker who cut the end would write it
        records = rows(path)
        forged = {**json.loads(head.read_bytes()), "records": len(records), "hash": records[-1]["hash"]}
        del forged["sig"]
        head.write_bytes(canon(forged) + b"\n")
    elif how == "other-log":
        with audit.AuditLog(tmp_path / "other") as other:
            other.append({"type": "tick"})
        head.write_bytes(other.head_path.read_bytes())


@pytest.mark.parametrize("how", ["missing", "damaged", "unsigned", "other-log"])
def test_a_sealed_log_without_its_head_is_tampering(book: Path, audit_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Finding 1: deleting or corrupting audit.head let records cut off the end pass, and resume then ran a
    write step again."""
    (run_id,) = live(book)
    path = log_path(audit_dir)
    lines = path.read_bytes().splitlines(keepends=True)
    i = next(i for i, x in enumerate(lines) if b'"step":"act"' in x and b'"decision"' in x)
    path.write_bytes(b"".join(lines[:i]))  # cut back to just before the write step...
    if how == "other-log":
        monkeypatch.setenv("RUNBOOK_KEY_DIR", str(tmp_path / "other-keys"))
    _forge_head(path, how, tmp_path)  # ...and the head removed or replaced
    monkeypatch.setenv("RUNBOOK_KEY_DIR", str(tmp_path / "keys"))
    result = check(path, "tampered", i + 1)
    assert "records may have been cut off the end" in result.message
    assert {"missing": "is missing", "damaged": "is damaged", "unsigned": "does not verify",
            "other-log": "belongs to another log"}[how] in result.message
    r = cli("audit", "verify", path)
    assert r.returncode == 1 and f"{path}:{i + 1}: error: " in r.stdout, r.stdout + r.stderr
    with pytest.raises(RunbookError, match="records may have been cut off the end"):
        session.resume(session.ResumeRequest(run_id=run_id, yes=True), FakeUI())
    # the writer does not sign a new head over it: nothing is appended, the evidence stays
    before = path.read_bytes()
    with pytest.raises(RunbookError, match=r"cannot seal the audit log .*records may have been cut off the end.*"
                                           r"move audit.jsonl and audit.head aside"):
        live(book)
    assert path.read_bytes() == before and not any(b'"step_intent"' in x and b'"act"' in x for x in before.split(b"\n"))
    check(path, "tampered", i + 1)


@pytest.mark.parametrize("exchange", [True, False])
def test_the_head_is_synced_before_it_replaces_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          exchange: bool) -> None:
    """Finding 1: a power loss must leave the old head or the new one, never an empty one.  The new head
    is written into a second file and synced, then the two names are exchanged (renameat2); where that
    is not available, into a new file, synced, then renamed over the head."""
    events: list[tuple[str, str]] = []
    real_sync, real_fsync, real_replace, real_exchange = audit._sync, os.fsync, os.replace, audit._exchange
    name = lambda fd: os.readlink(f"/proc/self/fd/{fd}")

    monkeypatch.setattr(audit, "_sync", lambda fd: (events.append(("sync", name(fd))), real_sync(fd)))
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("sync", name(fd))), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    monkeypatch.setattr(audit, "_exchange", lambda a, b: (events.append(("replace", str(a))),
                                                          exchange and real_exchange(a, b))[1])
    with audit.AuditLog(tmp_path / "log") as log:
        for i in range(3):
            log.append({"type": "tick"})
            check(log.path, "ok")
    src = [src for what, src in events if what == "replace" and ".head." in src][-1]
    assert src.endswith(".next" if exchange else f".tmp{os.getpid()}")
    assert events.index(("sync", src)) < events.index(("replace", src))
    if exchange:  # the old head is not left beside the new one
        assert log.head_path.with_name("audit.head.next").read_bytes().strip() == b""
    else:
        assert not log.head_path.with_name("audit.head.next").exists()
    assert json.loads(log.head_path.read_bytes())["records"] == 4


def test_a_new_log_always_has_its_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 1: a new log never has a sealed record without a head: the head is written before the
    first seal, and a crash between the two is finished by the next writer with the same key."""
    fresh = audit.AuditLog(tmp_path / "fresh")
    real_write = os.write

    def crash(fd: int, data) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("audit.jsonl"):
            raise KeyboardInterrupt  # the power went before the first record reached the log
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        fresh.append({"type": "tick"})
    monkeypatch.setattr(os, "write", real_write)
    fresh.close()
    assert fresh.head_path.exists() and fresh.path.read_bytes() == b""
    keys = Path(os.environ["RUNBOOK_KEY_DIR"])
    anchor = (keys / "verify.pub").read_bytes()
    with audit.AuditLog(tmp_path / "fresh") as again:  # the next writer finishes the start with the same key
        again.append({"type": "tick"})
    check(again.path, "ok")
    assert (keys / "verify.pub").read_bytes() == anchor and sorted(p.name for p in keys.iterdir()) == [
        "seal.key", "verify.pub"]


def test_logs_written_before_sealing(tmp_path: Path, audit_dir: Path, keys: Path, book: Path) -> None:
    legacy = ROOT / "tests" / "data" / "report_runs.jsonl"
    result = check(legacy, "unsealed")
    assert result.message.startswith("not sealed (written before sealing): ")
    r = cli("audit", "verify", legacy)
    assert r.returncode == 3 and "warning: not sealed (written before sealing)" in r.stdout
    # a log written before sealing goes on sealed: its old records are pinned by the first seal
    audit_dir.mkdir()
    log_path(audit_dir).write_bytes(legacy.read_bytes())
    n = len(rows(legacy))
    live(book)
    result = check(log_path(audit_dir), "ok")
    assert f"the first {n} were written before sealing" in result.message
    lines = log_path(audit_dir).read_bytes().splitlines(keepends=True)
    assert json.loads(lines[n])["type"] == "epoch"
    records = rows(log_path(audit_dir))
    records[2]["who"] = "mallory"
    rehash(records, 2)
    write_rows(log_path(audit_dir), records)
    check(log_path(audit_dir), "tampered", n + 1)  # the first seal signed the old chain's last hash


def test_stripping_every_seal_is_found_while_the_head_or_anchor_remains(book: Path, audit_dir: Path,
                                                                        keys: Path) -> None:
    live(book)
    path = log_path(audit_dir)
    records = [r for r in rows(path) if r["type"] != "epoch"]
    for r in records:
        del r["sig"], r["epoch"]
        r["v"] = 1
    rehash(records)
    write_rows(path, records)
    assert "its seals were removed" in check(path, "tampered").message  # the head says so
    audit.head_path(path).unlink()
    assert "its anchor" in check(path, "tampered").message  # verify.pub says so
    (keys / "verify.pub").unlink()
    check(path, "unsealed")  # with both gone: what the README says is not detected


# --- concurrency ------------------------------------------------------------------------


def test_eight_runs_in_parallel_keep_a_valid_chain(tmp_path: Path, audit_dir: Path, book: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "runbook", "run", str(book), "--yes"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    deadline = time.monotonic() + 120
    for p in procs:
        _, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        assert p.returncode == 0, err
    path = log_path(audit_dir)
    result = check(path, "ok")
    runs = audit.list_runs(path)
    assert len(runs) == 8 and {r["status"] for r in runs} == {"completed"}
    epochs = [r for r in rows(path) if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(8))  # one key per run
    assert result.records == len(rows(path))


def test_one_key_directory_per_log(tmp_path: Path, keys: Path) -> None:
    with audit.AuditLog(tmp_path / "a") as a:
        a.append({"type": "tick"})
    with audit.AuditLog(tmp_path / "b") as b, pytest.raises(RunbookError, match="seals another log"):
        b.append({"type": "tick"})  # the same RUNBOOK_KEY_DIR: the keys of log a are not taken over
    check(a.path, "ok")
    # once log a is gone, a new log starts a new chain; the old keys are kept aside
    a.path.unlink()
    with audit.AuditLog(tmp_path / "b") as b:
        b.append({"type": "tick"})
    check(b.path, "ok")
    retired = [p for p in keys.iterdir() if p.name.startswith("retired-")]
    assert len(retired) == 1 and sorted(p.name for p in retired[0].iterdir()) == ["verify.pub"]  # key destroyed


def test_the_logs_own_record_types_are_reserved(tmp_path: Path) -> None:
    with audit.AuditLog(tmp_path) as log:
        for kind in audit.SEAL_TYPES:
            with pytest.raises(RunbookError, match="reserved"):
                log.append({"type": kind, "public_key": "x"})


# --- review findings: no silent re-anchoring, the head re-read, torn repairs, retired keys ---------


def _strip_seals(path: Path) -> None:
    """What /tmp/rv/strip.py did: drop the epoch records and every seal, edit a record, rechain as v1."""
    records = [r for r in rows(path) if r["type"] not in audit.SEAL_TYPES]
    for r in records:
        del r["sig"], r["epoch"]
        r["v"] = 1
        if r["type"] == "step_intent" and r["step"] == "act":
            r["rendered"] = "echo FORGED"
    rehash(records)
    write_rows(path, records)


def _key_files(keys: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(keys.iterdir()) if p.is_file()}


@pytest.mark.parametrize("head", ["kept", "deleted"])
def test_stripped_seals_are_not_re_anchored_by_the_next_run(book: Path, audit_dir: Path, keys: Path,
                                                           head: str) -> None:
    """Finding 2: with every seal stripped, the next ordinary run moved this log's keys aside and
    sealed the forged log under a new anchor; verify then said ok."""
    live(book, 2)
    path = log_path(audit_dir)
    _strip_seals(path)
    if head == "deleted":
        audit.head_path(path).unlink()
    before, key_files = path.read_bytes(), _key_files(keys)
    with pytest.raises(RunbookError, match=r"cannot seal the audit log .*(head file .* says \d+ records up to epoch 1|"
                                           r"holds its sealing key \(epoch 1\)).*its seals were removed.*aside"):
        live(book)
    assert path.read_bytes() == before and _key_files(keys) == key_files  # nothing re-anchored, no key moved
    assert not [p for p in keys.iterdir() if p.name.startswith("retired-")]
    result = check(path, "tampered", 1)  # the first stripped line
    assert "seals were removed" in result.message


def test_a_forged_unsealed_record_is_not_re_anchored(book: Path, audit_dir: Path, keys: Path) -> None:
    """Finding 2: one forged v1 record appended to a sealed log made the next run re-anchor."""
    live(book)
    path = log_path(audit_dir)
    records = rows(path)
    forged = {k: v for k, v in records[-1].items() if k not in ("sig", "epoch")}
    forged.update(v=1, status="resolved")
    records.append(forged)
    rehash(records, len(records) - 1)
    write_rows(path, records)
    n = len(records)
    key_files = _key_files(keys)
    with pytest.raises(RunbookError, match=f"line {n}: a record is not sealed, after sealed records"):
        live(book)
    assert _key_files(keys) == key_files and len(rows(path)) == n
    assert "record is not sealed, after sealed records" in check(path, "tampered", n).message
    r = cli("audit", "verify", path)
    assert r.returncode == 1 and f"{path}:{n}: error: record is not sealed" in r.stdout


def test_the_writer_reads_the_head_on_disk_before_every_append(tmp_path: Path, keys: Path) -> None:
    """Finding 3: a writer trusted the head it had written itself, and re-signed a forged unsigned head."""
    log_dir = tmp_path / "log"
    with audit.AuditLog(log_dir) as a, audit.AuditLog(log_dir) as b:
        a.append({"type": "tick", "by": "a"})
        kept = a.path.read_bytes()
        for i in range(3):
            b.append({"type": "tick", "by": "b", "i": i})
        a.path.write_bytes(kept)  # b's records cut off: the log ends where a's own head said
        with pytest.raises(RunbookError, match="the log ends at record 2 but the head says 5"):
            a.append({"type": "tick", "by": "a"})
        check(a.path, "tampered", 3)
        # a head naming the new last record, but not signed by the current key, is not re-signed
        head = json.loads(a.head_path.read_bytes())
        for forged in ({k: v for k, v in head.items() if k != "sig"} | {"records": 2, "hash": rows(a.path)[-1]["hash"]},
                       {**head, "records": 2, "hash": rows(a.path)[-1]["hash"], "sig": seal.generate(0).sign(b"x")}):
            a.head_path.write_bytes(canon(forged) + b"\n")
            for writer in (a, b):
                with pytest.raises(RunbookError, match="head file .* does not verify with the key of epoch 0"):
                    writer.append({"type": "tick"})
            assert a.path.read_bytes() == kept
            assert "does not verify" in check(a.path, "tampered").message


def _torn_repair_states(path: Path) -> tuple[int, bytes, list[tuple[str, bytes]]]:
    """A log ending in a torn write, and what a crash during its repair can leave."""
    whole = path.read_bytes()
    n = whole.count(b"\n")
    fragment = canon(dict(rows(path)[-1], type="step_intent"))[:57]
    repair = canon({"type": "torn_tail", "line": n + 1, "bytes": base64.b64encode(fragment).decode()})
    return n, whole, [
        ("newline only", whole + fragment + b"\n"),
        ("part of the torn_tail", whole + fragment + b"\n" + repair[:40]),
        ("a repair of the repair torn too", whole + fragment + b"\n" + repair[:40] + b"\n" + repair[:21]),
    ]


@pytest.mark.parametrize("state", [0, 1, 2])
def test_a_crash_during_the_repair_of_a_torn_write_is_a_crash_too(book: Path, audit_dir: Path, state: int) -> None:
    """Finding 4: a repair torn by a crash left a log the writer refused and verify called tampered."""
    live(book)
    path = log_path(audit_dir)
    n, whole, states = _torn_repair_states(path)
    _, torn = states[state]
    path.write_bytes(torn)
    r = cli("audit", "verify", path)
    assert r.returncode == 4 and f"{path}:{n + 1}: warning: incomplete record at the end" in r.stdout, r.stdout
    live(book)  # repaired again: every torn byte kept in one torn_tail record
    lines = path.read_bytes().splitlines()
    cut = torn[len(whole):]
    repair = json.loads(lines[n + cut.count(b"\n") + (0 if torn.endswith(b"\n") else 1)])
    assert repair["type"] == "torn_tail" and repair["line"] == n + 1
    assert base64.b64decode(repair["bytes"]) == cut.rstrip(b"\n") and repair["offset"] == len(whole)
    result = check(path, "ok")
    assert result.message.endswith(f"torn writes repaired at line {n + 1}")
    # the torn bytes cannot be changed afterwards
    data = path.read_bytes()
    path.write_bytes(data[: len(whole)] + data[len(whole) :].replace(b'{"', b'{"x', 1))
    check(path, "tampered", n + 1)


def test_torn_bytes_are_not_just_any_bytes(book: Path, audit_dir: Path) -> None:
    live(book)
    path = log_path(audit_dir)
    with open(path, "ab") as f:
        f.write(b"garbage\n")  # no crash of runbook's writes leaves this
    n = path.read_bytes().count(b"\n")
    check(path, "tampered", n)
    with pytest.raises(RunbookError, match="its last record is damaged"):
        live(book)


def test_moving_a_log_aside_retires_its_anchor_and_destroys_its_key(book: Path, audit_dir: Path, keys: Path,
                                                                  tmp_path: Path) -> None:
    """Finding 5: the old private key was kept; verifying the moved, honest log said "not by the anchor"."""
    live(book)
    path = log_path(audit_dir)
    os.replace(path, audit_dir / "audit-old.jsonl")  # as the writer's refusal says
    os.replace(audit.head_path(path), audit_dir / "audit-old.head")
    live(book)  # a new log starts here
    (retired,) = [p for p in keys.iterdir() if p.name.startswith("retired-")]
    assert sorted(p.name for p in retired.iterdir()) == ["verify.pub"]  # no private key of the old log is left
    old = audit_dir / "audit-old.jsonl"
    result = check(old, "key-missing")
    assert f"verify it with --key {retired / 'verify.pub'}" in result.message and "tamper" not in result.message
    r = cli("audit", "verify", old)
    assert r.returncode == 5 and "this log was moved aside" in r.stdout, r.stdout
    check(old, "ok", key=retired / "verify.pub")
    check(path, "ok")
    # with --key given, a key that is not the log's stays an alarm
    check(old, "tampered", 1, key=keys / "verify.pub")


def test_leftovers_of_a_crash_in_the_key_directory_are_removed(book: Path, audit_dir: Path, keys: Path) -> None:
    live(book)
    leftover = keys / f"{seal.NEXT_NAME}.tmp99999"
    leftover.write_bytes((keys / seal.KEY_NAME).read_bytes())  # a rotation died while writing the next key
    os.chmod(keys, 0o755)  # and a directory someone opened up
    os.chmod(keys / seal.KEY_NAME, 0o644)
    old = keys / "retired-20261201T000000Z-abcdef"  # as an older runbook retired a log: with its private key
    old.mkdir()
    (old / seal.KEY_NAME).write_bytes(b"{}")
    (old / seal.ANCHOR_NAME).write_bytes(b"{}")
    live(book)
    assert not leftover.exists() and sorted(p.name for p in old.iterdir()) == ["verify.pub"]
    assert sorted(p.name for p in keys.iterdir()) == [old.name, "seal.key", "verify.pub"]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / seal.KEY_NAME).stat().st_mode) == 0o600
    check(log_path(audit_dir), "ok")


def test_verify_waits_for_an_append_in_progress(book: Path, audit_dir: Path) -> None:
    """Finding 6: verify during a large write reported a torn write."""
    import fcntl
    import threading

    live(book)
    path = log_path(audit_dir)
    whole = path.read_bytes()
    results: list[audit.VerifyResult] = []
    with open(audit.lock_path(path), "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a writer in the middle of an append
        with open(path, "ab") as f:
            f.write(canon(rows(path)[-1])[:100])
        t = threading.Thread(target=lambda: results.append(audit.verify(path)))
        t.start()
        time.sleep(0.3)
        assert t.is_alive()  # verify waits for it
        with open(path, "r+b") as f:  # (the append, finished: here simply taken back)
            f.truncate(len(whole))
        fcntl.flock(lock, fcntl.LOCK_UN)
    t.join(10)
    assert results and results[0].status == "ok", results


def test_verify_does_not_read_what_was_appended_after_it_began(tmp_path: Path, keys: Path) -> None:
    """Finding 6 with real writers: one process appends large records while verify runs again and again."""
    log_dir = tmp_path / "log"
    with audit.AuditLog(log_dir) as log:
        log.append({"type": "tick"})
    code = ("import sys\nfrom runbook import audit\nlog = audit.AuditLog(sys.argv[1])\n"
            "for i in range(60): log.append({'type': 'note', 'blob': 'x' * 500_000})\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(log_dir)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    statuses = set()
    try:
        while p.poll() is None:
            statuses.add(audit.verify(log_dir / audit.LOG_NAME).status)
    finally:
        p.wait(60)
    assert p.returncode == 0 and statuses <= {"ok"}, statuses


def test_an_append_after_a_huge_record_is_fast(tmp_path: Path) -> None:
    """Finding 7: reading the tail was quadratic: an append after a 20 MB record took 9 s."""
    with audit.AuditLog(tmp_path) as log:
        log.append({"type": "note", "blob": "x" * 20_000_000})
        t = time.monotonic()
        last, torn, newline, _ = log._tail(log._open()[0])
        assert time.monotonic() - t < 1.0 and torn is None and not newline and len(last["blob"]) == 20_000_000
        t = time.monotonic()
        log.append({"type": "tick"})
        assert time.monotonic() - t < 2.0
    check(log.path, "ok")


def test_a_key_that_is_no_key_cannot_verify(book: Path, audit_dir: Path, tmp_path: Path) -> None:
    """Minor: a junk or unreadable --key is "cannot verify" (exit 5), not tampering."""
    live(book)
    junk = tmp_path / "junk.pub"
    junk.write_bytes(b"not a key\n")
    for key in (junk, tmp_path):  # junk, and a directory (cannot be read)
        result = check(log_path(audit_dir), "key-missing", key=key)
        assert result.message.startswith("cannot verify the seals: key missing")
        r = cli("audit", "verify", log_path(audit_dir), "--key", key)
        assert r.returncode == 5 and "Traceback" not in r.stderr, r.stdout + r.stderr
