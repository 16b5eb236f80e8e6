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


def test_a_missing_head_is_a_warning(book: Path, audit_dir: Path) -> None:
    live(book)
    path = log_path(audit_dir)
    audit.head_path(path).unlink()
    result = check(path, "ok")
    assert result.warnings == (f"no head file {audit.head_path(path)}: records cut off the end cannot be detected",)
    r = cli("audit", "verify", path)
    assert r.returncode == 0 and "warning: no head file" in r.stderr
    live(book)  # the next writer counts the log and writes the head again
    assert check(path, "ok").warnings == ()


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
    assert len(retired) == 1 and sorted(p.name for p in retired[0].iterdir()) == ["seal.key", "verify.pub"]


def test_the_logs_own_record_types_are_reserved(tmp_path: Path) -> None:
    with audit.AuditLog(tmp_path) as log:
        for kind in audit.SEAL_TYPES:
            with pytest.raises(RunbookError, match="reserved"):
                log.append({"type": kind, "public_key": "x"})
