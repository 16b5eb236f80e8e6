"""Secret masking (issue 16): only the secrets a run has revealed are masked,
and a revealed secret too short to mask safely is reported, not masked.
In-process runs (tests/fakeui.py), a real audit log in a temp dir."""

from __future__ import annotations

import json

import pytest

from conftest import book
from fakeui import FakeUI
from runbook import audit, session, spec
from runbook.secrets import MIN_MASKED, Redactor, Secret

# what `ssh-keygen -lf` prints: full of x and X
FINGERPRINT = "256 SHA256:xK3x9Xq0ZxXx+T1mX/8exAmpleXX4xx7 root@box (ED25519)"


@pytest.fixture(autouse=True)
def _here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no inventory/local.yaml or .runbook.yaml of the checkout


def start(path, ui=None, **kw):
    return session.start(session.RunRequest(runbook=spec.find(str(path), []), **kw), ui or FakeUI())


def records(audit_dir, run_id):
    return [r for r in audit.read_records(audit_dir / audit.LOG_NAME) if r.get("run") == run_id]


def outputs(audit_dir, run_id) -> dict[str, str]:
    return {r["step"]: r.get("output_excerpt") or "" for r in records(audit_dir, run_id) if r["type"] == "step_result"}


def inventory(write, password: str, other: str = "x"):
    """Two databases: `main` (the one a step may use) and `reports` (never used)."""
    return write("inv.yaml", f"""
databases:
  main: {{host: 127.0.0.1, dbname: app, password: "{password}"}}
  reports: {{host: 127.0.0.1, dbname: reports, password: "{other}"}}
""")


def test_an_unused_one_character_secret_leaves_output_and_fingerprints_intact(write, audit_dir):
    inv = inventory(write, "main-pw-1234", other="x")
    p = book(write, f"""
  diagnose:
    - id: keys
      shell: "echo '{FINGERPRINT}'; echo 'exit xyz X'"
      readonly: true
""")
    ui = FakeUI()
    out = start(p, ui, inventory_file=str(inv))
    assert (out.status, out.exit_code) == ("completed", 0), out.message
    text = outputs(audit_dir, out.run_id)["keys"]
    assert FINGERPRINT in text and "exit xyz X" in text and "***" not in text
    assert ui.calls[[c[0] for c in ui.calls].index("step_started")][2] == f"echo '{FINGERPRINT}'; echo 'exit xyz X'"
    # nothing was revealed, so nothing to warn about either
    assert not [n for n in ui.notices if "too short" in n]
    assert not [r for r in records(audit_dir, out.run_id) if r["type"] == "secret_too_short"]
    assert out.redactor.masked() == ["main-pw-1234"]  # an unused long one is still masked, the "x" is not


def test_a_used_secret_is_still_masked_in_output_and_the_audit_log(write, audit_dir, tmp_path):
    inv = inventory(write, "s3cr3t-pw-42", other="x")
    p = book(write, f"""
  diagnose:
    - id: use
      shell: "echo pw={{{{ inventory.databases.main.password }}}}"
      readonly: true
    - id: later
      shell: "echo 'again S3CR3T''-PW-42 and {FINGERPRINT}'"  # split: a secret in a command is refused
      readonly: true
    - id: fails
      shell: "echo 'cannot log in with s3cr3t''-pw-42' >&2; exit 3"
      readonly: true
""")
    out = start(p, FakeUI(), inventory_file=str(inv))
    assert out.exit_code == 1
    got = outputs(audit_dir, out.run_id)
    assert got["use"].strip() == "pw=***"
    assert got["later"].strip() == f"again *** and {FINGERPRINT}"  # the unused "x" masks nothing
    assert "cannot log in with ***" in got["fails"]
    raw = (audit_dir / audit.LOG_NAME).read_bytes().lower()
    assert b"s3cr3t-pw-42" not in raw
    assert "s3cr3t-pw-42" not in json.dumps(out.message).lower()


def test_a_revealed_three_character_secret_is_reported_not_masked(write, audit_dir):
    inv = inventory(write, "abc", other="x")
    p = book(write, """
  diagnose:
    - id: use
      shell: "echo pw={{ inventory.databases.main.password }}; echo 'the abcs of cabbage'"
      readonly: true
    - id: again
      shell: "echo pw={{ inventory.databases.main.password }}"
      readonly: true
""")
    ui = FakeUI()
    out = start(p, ui, inventory_file=str(inv))
    assert (out.status, out.exit_code) == ("completed", 0), out.message
    got = outputs(audit_dir, out.run_id)
    assert got["use"] == "pw=abc\nthe abcs of cabbage\n"  # not "the ***s of c***bage"
    warned = [n for n in ui.notices if "too short to mask safely" in n]
    assert warned == [f"warning: secret 'databases.main.password' is too short to mask safely (under {MIN_MASKED} "
                      "characters): it is not masked in output or the audit log; use a longer one"]
    (event,) = [r for r in records(audit_dir, out.run_id) if r["type"] == "secret_too_short"]  # once, not per use
    told = {k: v for k, v in event.items() if k not in ("hash", "prev", "sig", "run", "ts")}  # hex/base64 may hold "abc"
    assert event["secret"] == "databases.main.password" and "abc" not in json.dumps(told)


def test_a_short_secret_parameter_is_reported_at_the_start(write, audit_dir, monkeypatch):
    monkeypatch.setenv("RUNBOOK_PARAM_TOKEN", "q7")
    p = book(write, """
  diagnose:
    - id: look
      shell: "echo 'q7 is a sq7are'; echo {{ params.token }}"
      readonly: true
""", head="params:\n  token: {secret: true}\n")
    ui = FakeUI()
    out = start(p, ui)
    assert out.exit_code == 0, out.message
    assert [n for n in ui.notices if "too short" in n] == [
        f"warning: secret 'token' is too short to mask safely (under {MIN_MASKED} characters): "
        "it is not masked in output or the audit log; use a longer one"]
    recs = records(audit_dir, out.run_id)
    assert [r["secret"] for r in recs if r["type"] == "secret_too_short"] == ["token"]
    assert outputs(audit_dir, out.run_id)["look"] == "q7 is a sq7are\nq7\n"


def test_an_unrevealed_inventory_secret_pasted_into_a_command_is_still_refused(write, audit_dir, tmp_path):
    inv = inventory(write, "s3cr3t-pw-42")
    p = book(write, f"""
  diagnose:
    - id: leak
      shell: "touch {tmp_path / 'ran'}; echo {{{{ inventory.databases.main.password | upper }}}}"
      readonly: true
""")
    write(".runbook.yaml", "rules: {RB105: off}\n")
    out = start(p, FakeUI(), inventory_file=str(inv))
    assert out.exit_code == 1 and not (tmp_path / "ran").exists()
    assert b"s3cr3t-pw-42" not in (audit_dir / audit.LOG_NAME).read_bytes().lower()


def test_redactor_masks_revealed_watches_the_rest_and_reports_short_ones():
    r = Redactor()
    r.watch("watched-secret")  # not used by the run, but long: masked too (a command may print it)
    r.watch("wtch")  # looked for in commands, too short to mask unused
    r.watch("x")  # too short even to look for
    assert r.text("a watched-secret and x, wtch") == "a *** and x, wtch"
    assert r.values() == ["watched-secret", "wtch"] and r.masked() == ["watched-secret"]
    told: list[str] = []
    assert r.add(Secret("ab", name="early")) is False  # before a listener: kept until one comes
    r.on_too_short(told.append)
    assert told == ["early"]
    assert r.add("revealed-1") is True and r.add(Secret("ab", name="again")) is False and r.add("") is False
    assert told == ["early"] and r.too_short() == ["early"]
    assert r.text("REVEALED-1 ab") == "*** ab"
    assert r.values() == ["watched-secret", "revealed-1", "wtch"] and r.masked() == ["watched-secret", "revealed-1"]
