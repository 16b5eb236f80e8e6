"""The ssh step against real OpenSSH servers started on 127.0.0.1 (tests/sshserver.py)."""

from __future__ import annotations

import json
import os
import pwd
import socket
import sys
import time
from pathlib import Path

from conftest import alive, book

from runbook import audit


def inventory(write, sshd, known_hosts, *, names=("h1",), extra_hosts: dict | None = None, ssh: dict | None = None,
              groups: dict | None = None, key=None) -> Path:
    settings = {"known_hosts": str(known_hosts), "identity_file": str(key or sshd.client_key_path), "connect_timeout": 3,
                **(ssh or {})}
    hosts = {n: {"address": sshd.host, "port": sshd.port, "user": sshd.user} for n in names}
    hosts.update(extra_hosts or {})
    doc = {"ssh": settings, "hosts": hosts}
    if groups:
        doc["groups"] = groups
    return write("inv.yaml", json.dumps(doc))


def test_runs_a_command_with_key_auth_and_exposes_per_host_results(write, main, sshd, ssh_known_hosts):
    p = book(write, """
  diagnose:
    - id: who
      ssh: {hosts: h1, command: "echo hello-from-$(hostname) && id -un"}
      readonly: true
    - id: check
      choose:
        - when: "steps.who.hosts['h1'].exit_code == 0 and 'hello-from' in steps.who.hosts['h1'].stdout and steps.who.ok_count == 1"
          goto: done
    - id: bad
      end: {status: failed, message: "unexpected"}
    - id: done
      end: "ran as {{ steps.who.stdout.split()[-1] }}"
""")
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ran as {sshd.user}" in r.stdout


def test_wrong_key_is_an_authentication_failure(write, main, sshd, ssh_known_hosts, tmp_path):
    import subprocess

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    p = book(write, """
  diagnose:
    - id: who
      ssh: {hosts: h1, command: "true"}
      readonly: true
""")
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts, key=other),
            env={"SSH_AUTH_SOCK": "", "HOME": str(tmp_path)})
    assert r.returncode == 1
    assert f"authentication failed for {sshd.user}@h1 ({sshd.host}:{sshd.port}); tried: key {other}" in " ".join(r.stdout.split())  # wrapped at 200 columns


def test_unknown_host_key_is_refused_then_accept_new_adds_and_audits_it(write, main, sshd, tmp_path, audit_dir):
    known = tmp_path / "known_hosts_empty"
    known.write_text("")
    p = book(write, """
  diagnose:
    - id: who
      ssh: {hosts: h1, command: "true"}
      readonly: true
""")
    r = main("run", p, "--inventory", inventory(write, sshd, known))
    assert r.returncode == 1
    assert "offered an unknown ssh-ed25519 host key" in r.stdout and sshd.host_fingerprint in r.stdout
    assert known.read_text() == ""
    r = main("run", p, "--inventory", inventory(write, sshd, known, ssh={"host_key_policy": "accept-new"}))
    assert r.returncode == 0, r.stdout
    assert f"[{sshd.host}]:{sshd.port} ssh-ed25519" in known.read_text()
    added = [x for x in audit.read_records(audit_dir / "audit.jsonl") if x["type"] == "host_key_added"]
    assert added and added[0]["fingerprint"] == sshd.host_fingerprint


def test_changed_host_key_is_refused_even_with_accept_new(write, main, sshd, tmp_path):
    import subprocess

    fake = tmp_path / "fake_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fake)], check=True)
    known = tmp_path / "known_hosts_changed"
    pub = (tmp_path / "fake_host_key.pub").read_text().split()
    known.write_text(f"[{sshd.host}]:{sshd.port} {pub[0]} {pub[1]}\n")
    p = book(write, """
  diagnose:
    - id: who
      ssh: {hosts: h1, command: "true"}
      readonly: true
""")
    r = main("run", p, "--inventory", inventory(write, sshd, known, ssh={"host_key_policy": "accept-new"}))
    assert r.returncode == 1
    out = " ".join(r.stdout.split())
    assert "has CHANGED" in out and sshd.host_fingerprint in out and f"{known} line 1" in out, out


def test_failure_follows_on_failure_with_failed_hosts(write, main, sshd, ssh_known_hosts):
    p = book(write, """
  diagnose:
    - id: check
      ssh: {hosts: [h1, h2], command: "test -e /nonexistent-file", forks: 2}
      readonly: true
      on_failure: report
    - id: fine
      end: "no failure?"
    - id: report
      end: {status: escalated, message: "failed on {{ steps.check.failed_hosts | join(',') }} with {{ steps.check.hosts.h1.exit_code }}"}
""")
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts, names=("h1", "h2")))
    assert r.returncode == 1 and "failed on h1,h2 with 1" in r.stdout


def test_timeout_kills_the_remote_command(write, main, sshd, ssh_known_hosts, tmp_path):
    pidfile = tmp_path / "remote.pid"
    p = book(write, f"""
  diagnose:
    - id: hang
      ssh: {{hosts: h1, command: "sleep 300 & echo $! > {pidfile}; wait"}}
      readonly: true
      timeout: 2s
""")
    started = time.monotonic()
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts))
    assert r.returncode == 1 and "timed out after 2s" in r.stdout
    assert time.monotonic() - started < 20
    time.sleep(0.5)
    assert not alive(int(pidfile.read_text()))


def test_fan_out_to_twenty_inventory_hosts_keyed_by_name(write, main, sshd, ssh_known_hosts):
    names = tuple(f"web-{i:02d}" for i in range(20))
    inv = inventory(write, sshd, ssh_known_hosts, names=names, groups={"web": {"hosts": list(names)}})
    p = book(write, """
  diagnose:
    - id: all
      ssh: {hosts: web, command: "echo up", forks: 5}
      readonly: true
    - id: done
      end: "{{ steps.all.ok_count }} ok, first {{ steps.all.ok_hosts[0] }}, last {{ steps.all.ok_hosts[-1] }}"
""")
    before = sshd.connections()
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "20 ok, first web-00, last web-19" in r.stdout
    assert sshd.connections() - before == 20  # one connection per inventory name, not collapsed


def test_unreachable_hosts_fail_fast_and_clearly(write, main, sshd, ssh_known_hosts):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts TCP, never says a word
    try:
        extra = {
            "refused": {"address": "127.0.0.1", "port": 1, "user": sshd.user},
            "mute": {"address": "127.0.0.1", "port": silent.getsockname()[1], "user": sshd.user},
        }
        inv = inventory(write, sshd, ssh_known_hosts, extra_hosts=extra)
        p = book(write, """
  diagnose:
    - id: try
      ssh: {hosts: [refused, mute, h1], command: "true", forks: 3}
      readonly: true
""")
        started = time.monotonic()
        r = main("run", p, "--inventory", inv)
        took = time.monotonic() - started
    finally:
        silent.close()
    assert r.returncode == 1
    assert "refused (cannot connect to 'refused' (127.0.0.1:1): connection refused)" in r.stdout
    assert "mute (cannot connect to 'mute'" in r.stdout
    assert "failed on 2 of 3 hosts" in r.stdout
    assert took < 15


def test_parameter_is_passed_literally(write, main, sshd, ssh_known_hosts, tmp_path):
    pwned = tmp_path / "pwned"
    out = tmp_path / "out"
    p = book(write, f"""
  diagnose:
    - id: echo
      ssh: {{hosts: h1, command: "printf %s {{{{ params.v }}}} > {out}"}}
      readonly: true
""", head="params:\n  v: {}\n")
    value = f"$(touch {pwned}); `touch {pwned}`"
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts), "-p", f"v={value}")
    assert r.returncode == 0, r.stdout
    assert not pwned.exists() and out.read_text() == value


def test_one_connection_reused_by_every_step_and_secrets_not_in_argv(write, main, sshd, ssh_known_hosts, tmp_path, audit_dir):
    argv, got = tmp_path / "argv", tmp_path / "got"
    p = book(write, f"""
  diagnose:
    - id: one
      ssh: {{hosts: h1, command: "true"}}
      readonly: true
    - id: two
      ssh: {{hosts: h1, command: "tr '\\\\0' ' ' < /proc/$$/cmdline > {argv}; printf %s {{{{ params.token }}}} > {got}"}}
      readonly: true
    - id: three
      ssh: {{hosts: h1, command: "echo {{{{ params.token }}}}"}}
      readonly: true
""", head="params:\n  token: {secret: true}\n")
    before = sshd.connections()
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts), env={"RUNBOOK_PARAM_TOKEN": "tok-99"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert sshd.connections() - before == 1
    assert got.read_text() == "tok-99" and "tok-99" not in argv.read_text()
    assert "tok-99" not in r.stdout and b"tok-99" not in (audit_dir / "audit.jsonl").read_bytes()


def test_jump_host_from_the_inventory(write, main, sshd, sshd_bastion, ssh_known_hosts):
    extra = {
        "bastion": {"address": sshd_bastion.host, "port": sshd_bastion.port, "user": sshd_bastion.user},
        "inner": {"address": sshd.host, "port": sshd.port, "user": sshd.user, "jump_host": "bastion"},
    }
    inv = inventory(write, sshd, ssh_known_hosts, names=(), extra_hosts=extra)
    p = book(write, """
  diagnose:
    - id: via
      ssh: {hosts: inner, command: "echo through"}
      readonly: true
""")
    r = main("run", p, "--inventory", inv, "--dry-run")
    assert f"inner ({sshd.user}@{sshd.host}:{sshd.port} via bastion)" in r.stdout
    b_before, i_before = sshd_bastion.connections(), sshd.connections()
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "through" in r.stdout
    assert sshd_bastion.connections() - b_before == 1 and sshd.connections() - i_before == 1


def test_dry_run_contacts_no_host_and_shows_the_exact_command(write, main, sshd, ssh_known_hosts):
    p = book(write, """
  mitigate:
    - id: restart
      ssh: {hosts: h1, command: "systemctl restart {{ params.svc }}", sudo: true, cwd: /tmp, forks: 1}
      timeout: 30s
  verify:
    - id: ok
      end: done
""", head="params:\n  svc: {default: 'api; reboot'}\n")
    before = sshd.connections()
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert sshd.connections() == before
    assert "$ sudo -n -- timeout -k 5 30 sh -c 'cd /tmp && { systemctl restart '\"'\"'api; reboot'\"'\"'" in r.stdout
    assert f"on h1 ({sshd.user}@{sshd.host}:{sshd.port})" in r.stdout
    r = main("validate", p, "--inventory", write("other.yaml", "hosts:\n  h2: {address: 127.0.0.1}\n"))
    assert r.returncode == 1 and "host 'h1' is not in" in r.stdout


def test_ssh_config_alias_without_an_inventory(write, main, sshd, tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host db-primary\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key_path}\n  ProxyJump none\n")
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line())
    p = book(write, """
  diagnose:
    - id: who
      ssh: {hosts: db-primary, command: "echo via-alias"}
      readonly: true
""")
    r = main("run", p, env={"HOME": str(home), "SSH_AUTH_SOCK": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "via-alias" in r.stdout


def test_reviewed_edge_cases(write, main, sshd, ssh_known_hosts, tmp_path, audit_dir):
    """env secrets over stdin, retries only for failed hosts, fail_fast, a TERM-proof command timing out."""
    argv, runs = tmp_path / "argv", tmp_path / "runs"
    inv = inventory(write, sshd, ssh_known_hosts, names=("h1", "h2", "h3"))
    p = book(write, f"""
  diagnose:
    - id: env
      ssh:
        hosts: h1
        command: "tr '\\\\0' ' ' < /proc/$$/cmdline > {argv}; printf %s \\"$AUTH\\" > {tmp_path / 'auth'}"
        env: {{AUTH: "Bearer {{{{ params.token }}}}"}}
      readonly: true
    - id: flaky
      ssh: {{hosts: [h1, h2], command: "echo r >> {runs}; test $(wc -l < {runs}) -ne 2", forks: 1}}
      readonly: true
      retries: 2
      retry_delay: 0.1s
    - id: stubborn
      ssh: {{hosts: h1, command: "trap '' TERM; sleep 300"}}
      readonly: true
      timeout: 1s
      on_failure: next-one
    - id: never
      end: {{status: failed, message: "should have timed out"}}
    - id: next-one
      ssh: {{hosts: [h1, h2, h3], command: "exit 3", forks: 1, fail_fast: true}}
      readonly: true
      on_failure: report
    - id: unreached
      end: {{status: failed, message: "fail_fast step passed?"}}
    - id: report
      end: {{status: escalated, message: "status={{{{ steps.stubborn.status }}}} failed={{{{ steps['next-one'].failed_hosts | join(',') }}}} skipped={{{{ steps['next-one'].skipped_hosts | join(',') }}}}"}}
""", head="params:\n  token: {secret: true}\n")
    r = main("run", p, "--inventory", inv, env={"RUNBOOK_PARAM_TOKEN": "tok-77"}, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "status=timeout failed=h1 skipped=h2,h3" in r.stdout
    assert "tok-77" not in argv.read_text() and (tmp_path / "auth").read_text() == "Bearer tok-77"
    lines = runs.read_text().split()
    assert len(lines) == 3  # h1 and h2, then h2 alone on the retry (h1 had succeeded)


def test_proxyjump_from_ssh_config_and_host_wildcards(write, main, sshd, sshd_bastion, tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host bastion\n  HostName {sshd_bastion.host}\n  Port {sshd_bastion.port}\n  User {sshd_bastion.user}\n  ProxyJump none\n"
        f"Host inner\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"Host *\n  IdentityFile {sshd.client_key_path}\n  ProxyJump bastion\n")
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line() + sshd_bastion.known_hosts_line())
    p = book(write, """
  diagnose:
    - id: via
      ssh: {hosts: inner, command: "echo through-config"}
      readonly: true
""")
    r = main("run", p, "--dry-run", env={"HOME": str(home), "SSH_AUTH_SOCK": ""})
    assert r.returncode == 0 and f"inner ({sshd.user}@{sshd.host}:{sshd.port} via bastion)" in r.stdout, r.stdout + r.stderr
    before = sshd_bastion.connections()
    r = main("run", p, env={"HOME": str(home), "SSH_AUTH_SOCK": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "through-config" in r.stdout and sshd_bastion.connections() - before == 1


RELAY = """\
import os, socket, sys, threading
open(sys.argv[3], "a").write(f"{sys.argv[1]}:{sys.argv[2]}\\n")
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while (b := os.read(0, 65536)):
        s.sendall(b)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while (b := s.recv(65536)):
    os.write(1, b)
"""


def test_proxycommand_from_ssh_config(write, main, sshd, tmp_path):
    """~/.ssh/config's ProxyCommand carries the connection (%h and %p expanded); its HostName, Port,
    User and IdentityFile apply; the host key is still checked against known_hosts."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    relay, used = tmp_path / "relay.py", tmp_path / "relay.log"
    relay.write_text(RELAY)
    (home / ".ssh" / "config").write_text(
        f"Host piped\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key_path}\n  ProxyCommand {sys.executable} {relay} %h %p {used}\n")
    p = book(write, """
  diagnose:
    - id: who
      ssh: {hosts: piped, command: "echo through-proxycommand"}
      readonly: true
""")
    r = main("run", p, env={"HOME": str(home), "SSH_AUTH_SOCK": ""})
    assert r.returncode == 1 and "host key" in r.stdout + r.stderr, r.stdout + r.stderr  # not in known_hosts yet
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line())
    before = sshd.connections()
    r = main("run", p, env={"HOME": str(home), "SSH_AUTH_SOCK": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "through-proxycommand" in r.stdout and sshd.connections() - before == 1
    assert used.read_text().splitlines()[-1] == f"{sshd.host}:{sshd.port}"
    # a ProxyCommand that dies: the host fails in one line, no traceback
    (home / ".ssh" / "config").write_text(f"Host piped\n  ProxyCommand {sys.executable} -c 'raise SystemExit(3)'\n")
    r = main("run", p, env={"HOME": str(home), "SSH_AUTH_SOCK": ""})
    assert r.returncode == 1 and "cannot connect to 'piped'" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_accept_new_never_writes_past_lines_it_cannot_judge(write, main, sshd, tmp_path):
    known = tmp_path / "known_wild"
    known.write_text(f"[127.0.0.*]:{sshd.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKb1Yy0kqHk5x0nq8Q2D6l4d7zq8ZB2b8c6Xe3y1m3kX\n")
    p = book(write, """
  diagnose:
    - id: who
      ssh: {hosts: h1, command: "true"}
      readonly: true
""")
    r = main("run", p, "--inventory", inventory(write, sshd, known, ssh={"host_key_policy": "accept-new"}))
    assert r.returncode == 1 and "wildcard lines" in r.stdout and "line 1" in r.stdout
    assert len(known.read_text().splitlines()) == 1


def test_a_failed_cd_never_runs_the_command_elsewhere(write, main, sshd, ssh_known_hosts, tmp_path):
    marker = tmp_path / "ran"
    p = book(write, f"""
  diagnose:
    - id: there
      ssh: {{hosts: h1, command: "touch {marker}", cwd: /nonexistent-dir, env: {{X: "1"}}}}
      readonly: true
""")
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts))
    assert r.returncode == 1 and not marker.exists()


def test_ssh_step_static_problems(write, main, sshd, ssh_known_hosts):
    p = book(write, """
  diagnose:
    - id: who
      ssh: {hosts: h1, command: "id -un", user: nobody}
      readonly: true
""")
    r = main("validate", p)
    assert r.returncode == 1 and "user applies with sudo" in r.stdout
    inv = inventory(write, sshd, ssh_known_hosts, groups={"empty": {"hosts": []}})
    p = book(write, """
  diagnose:
    - id: none
      ssh: {hosts: empty, command: "true", forks: 2}
      readonly: true
""", name="e.yaml")
    r = main("run", p, "--inventory", inv, "--dry-run")
    assert r.returncode == 1 and "no hosts in empty" in r.stderr and "Traceback" not in r.stderr


def test_sudo_runs_as_the_named_user_with_a_timeout(write, main, sshd, ssh_known_hosts):
    p = book(write, """
  mitigate:
    - id: as-nobody
      ssh: {hosts: h1, command: "id -un", sudo: true, user: nobody}
      timeout: 30s
  verify:
    - id: done
      end: "ran as {{ steps['as-nobody'].stdout | trim }}"
""")
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran as nobody" in r.stdout


ONE_STEP = """
  diagnose:
    - id: who
      ssh: {hosts: h1, command: "touch %s"}
      readonly: true
"""


def test_revoked_key_is_refused_even_when_also_listed_normally(write, main, sshd, tmp_path, audit_dir):
    ran = tmp_path / "ran"
    p = book(write, ONE_STEP % ran)
    known = tmp_path / "known_revoked"
    # OpenSSH refuses a revoked key wherever else it is listed; the order of the lines does not matter
    known.write_text(sshd.known_hosts_line() + f"# retired\n@revoked * {sshd.host_public_key}\n")
    r = main("run", p, "--inventory", inventory(write, sshd, known))
    assert r.returncode == 1 and not ran.exists()
    out = " ".join(r.stdout.split())
    assert "is REVOKED" in out and sshd.host_fingerprint in out and f"{known} line 3" in out, out
    # accept-new never adds (or accepts) a revoked key either
    known.write_text(f"@revoked [{sshd.host}]:{sshd.port} {sshd.host_public_key}\n")
    r = main("run", p, "--inventory", inventory(write, sshd, known, ssh={"host_key_policy": "accept-new"}))
    assert r.returncode == 1 and not ran.exists() and "is REVOKED" in r.stdout
    assert len(known.read_text().splitlines()) == 1
    assert not [x for x in audit.read_records(audit_dir / "audit.jsonl") if x["type"] == "host_key_added"]
    # revoked while another key of its type is listed for the host (paramiko's "bad host key" path)
    other = Path(f"{sshd.client_key_path}.pub").read_text().split()
    known.write_text(f"[{sshd.host}]:{sshd.port} {other[0]} {other[1]}\n@revoked * {sshd.host_public_key}\n")
    r = main("run", p, "--inventory", inventory(write, sshd, known))
    out = " ".join(r.stdout.split())
    assert r.returncode == 1 and not ran.exists() and "is REVOKED" in out and f"{known} line 2" in out, out
    # a revoked line for other hosts does not concern this one
    known.write_text(f"@revoked other.example {sshd.host_public_key}\n" + sshd.known_hosts_line())
    r = main("run", p, "--inventory", inventory(write, sshd, known))
    assert r.returncode == 0 and ran.exists(), r.stdout


def test_cert_authority_lines_are_refused_as_unsupported_when_needed(write, main, sshd, tmp_path, ssh_client_key):
    ran = tmp_path / "ran"
    p = book(write, ONE_STEP % ran)
    known = tmp_path / "known_ca"
    ca = Path(f"{ssh_client_key}.pub").read_text().split()  # any key will do as the "CA"
    known.write_text(f"@cert-authority *.example.org,[{sshd.host}]:* {ca[0]} {ca[1]}\n")
    for policy in ("strict", "accept-new"):
        r = main("run", p, "--inventory", inventory(write, sshd, known, ssh={"host_key_policy": policy}))
        out = " ".join(r.stdout.split())
        assert r.returncode == 1 and not ran.exists()
        assert "does not support host certificates (@cert-authority lines)" in out and f"{known} line 1" in out, out
        assert len(known.read_text().splitlines()) == 1
    # not needed when the host's own key is listed
    known.write_text(known.read_text() + sshd.known_hosts_line())
    r = main("run", p, "--inventory", inventory(write, sshd, known))
    assert r.returncode == 0 and ran.exists(), r.stdout


def test_a_jump_hosts_changed_or_unknown_key_is_named_as_the_jump_hosts(write, main, sshd, sshd_bastion, tmp_path):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "fake")], check=True)
    fake = (tmp_path / "fake.pub").read_text().split()
    extra = {
        "bastion": {"address": sshd_bastion.host, "port": sshd_bastion.port, "user": sshd_bastion.user},
        "inner": {"address": sshd.host, "port": sshd.port, "user": sshd.user, "jump_host": "bastion"},
    }
    p = book(write, """
  diagnose:
    - id: via
      ssh: {hosts: inner, command: "echo through"}
      readonly: true
""")
    known = tmp_path / "known_jump"
    known.write_text(sshd.known_hosts_line() + f"[{sshd_bastion.host}]:{sshd_bastion.port} {fake[0]} {fake[1]}\n")
    r = main("run", p, "--inventory", inventory(write, sshd, known, names=(), extra_hosts=extra))
    out = " ".join(r.stdout.split())
    assert r.returncode == 1
    assert (f"jump host 'bastion' (for 'inner'): host key of 'bastion' ([{sshd_bastion.host}]:{sshd_bastion.port}) "
            f"has CHANGED") in out, out
    assert sshd_bastion.host_fingerprint in out and f"{known} line 2" in out and "host key of 'inner'" not in out
    known.write_text(sshd.known_hosts_line())
    r = main("run", p, "--inventory", inventory(write, sshd, known, names=(), extra_hosts=extra))
    out = " ".join(r.stdout.split())
    assert r.returncode == 1 and "jump host 'bastion' (for 'inner'): host 'bastion'" in out and "unknown" in out, out


def test_accept_new_under_fan_out_adds_each_new_key_once(write, main, sshd, tmp_path, audit_dir):
    known = tmp_path / "known_fanout"
    known.write_text(f"# no newline at the end: ours must not be glued to it\n[other]:2222 {sshd.host_public_key}")
    names = tuple(f"alias-{i}" for i in range(10))  # ten names for the one sshd: one key, one line
    inv = inventory(write, sshd, known, names=names, groups={"all10": {"hosts": list(names)}},
                    ssh={"host_key_policy": "accept-new"})
    p = book(write, """
  diagnose:
    - id: all
      ssh: {hosts: all10, command: "true", forks: 10}
      readonly: true
""")
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 0, r.stdout
    lines = known.read_text().splitlines()
    assert lines[1:] == [f"[other]:2222 {sshd.host_public_key}", f"[{sshd.host}]:{sshd.port} {sshd.host_public_key}"]
    added = [x for x in audit.read_records(audit_dir / "audit.jsonl") if x["type"] == "host_key_added"]
    assert len(added) == 1 and added[0]["fingerprint"] == sshd.host_fingerprint


def test_shell_bash_runs_the_command_under_bash_quoted_safely(write, main, sshd, ssh_known_hosts, tmp_path):
    pwned, out = tmp_path / "pwned", tmp_path / "out"
    value = f"$(touch {pwned}); `touch {pwned}` 'q' \"dq\""
    p = book(write, f"""
  diagnose:
    - id: plain
      ssh: {{hosts: h1, command: "echo wrapped=$0", env: {{X: "1"}}}}
      readonly: true
    - id: login
      ssh: {{hosts: h1, command: "echo login=$0"}}
      readonly: true
    - id: bash
      ssh: {{hosts: h1, command: "[[ -n $BASH_VERSION ]] && printf %s {{{{ params.v }}}} > {out}", shell: bash}}
      readonly: true
    - id: bash-wrapped
      ssh: {{hosts: h1, command: "echo bash=$0${{BASH_VERSION:+-yes}}", shell: bash, cwd: /tmp}}
      readonly: true
      timeout: 30s
    - id: done
      end: "{{{{ steps.login.stdout | trim }}}} {{{{ steps.plain.stdout | trim }}}} {{{{ steps['bash-wrapped'].stdout | trim }}}}"
""", head="params:\n  v: {}\n")
    inv = inventory(write, sshd, ssh_known_hosts)
    r = main("run", p, "--inventory", inv, "-p", f"v={value}", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "$ bash -c '[[ -n $BASH_VERSION ]] && printf %s" in r.stdout
    assert "$ timeout -k 5 30 bash -c 'cd /tmp && { echo bash=" in r.stdout
    r = main("run", p, "--inventory", inv, "-p", f"v={value}")
    assert r.returncode == 0, r.stdout + r.stderr
    login = os.path.basename(pwd.getpwnam(sshd.user).pw_shell)
    # the login shell when not wrapped, sh -c when wrapped without `shell`, bash when asked
    assert f"login={login} wrapped=sh bash=bash-yes" in r.stdout
    assert out.read_text() == value and not pwned.exists()
    r = main("validate", write("bad.yaml", p.read_text().replace("shell: bash,", "shell: zsh,", 1)))
    assert r.returncode == 1 and "'zsh' is not one of sh, bash" in r.stdout, r.stdout


def test_a_missing_identity_file_is_named(write, main, sshd, ssh_known_hosts, tmp_path):
    missing = tmp_path / "no-such-key"
    p = book(write, ONE_STEP % (tmp_path / "ran"))
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts, key=missing))
    out = " ".join(r.stdout.split())
    assert r.returncode == 1 and f"ssh.identity_file {missing} does not exist" in out, out


def test_hashed_known_hosts_lines_still_match(write, main, sshd, tmp_path):
    import subprocess

    known = tmp_path / "known_hashed"
    known.write_text(sshd.known_hosts_line())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert known.read_text().startswith("|1|")
    ran = tmp_path / "ran"
    r = main("run", book(write, ONE_STEP % ran), "--inventory", inventory(write, sshd, known))
    assert r.returncode == 0 and ran.exists(), r.stdout


def test_the_inventory_chooses_bash_for_every_ssh_step(write, main, sshd, ssh_known_hosts):
    p = book(write, """
  diagnose:
    - id: which
      ssh: {hosts: h1, command: "echo shell=$0${BASH_VERSION:+-bash}"}
      readonly: true
    - id: asked
      ssh: {hosts: h1, command: "echo step=$0", shell: sh}
      readonly: true
""")
    inv = inventory(write, sshd, ssh_known_hosts, ssh={"shell": "bash"})
    r = main("run", p, "--inventory", inv, "--dry-run")
    assert r.returncode == 0 and "$ bash -c 'echo shell=" in r.stdout and "$ sh -c 'echo step=" in r.stdout, r.stdout
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 0 and "shell=bash-bash" in r.stdout and "step=sh" in r.stdout, r.stdout + r.stderr


def _two_hosts(write, sshd, sshd_bastion, known_hosts) -> Path:
    """Group `web`: web-1 on one real sshd, web-2 on another, so each host prints its own values."""
    extra = {"web-1": {"address": sshd.host, "port": sshd.port, "user": sshd.user},
             "web-2": {"address": sshd_bastion.host, "port": sshd_bastion.port, "user": sshd_bastion.user}}
    return inventory(write, sshd, known_hosts, names=(), extra_hosts=extra, groups={"web": {"hosts": ["web-1", "web-2"]}})


def _by_server(sshd, low: str, high: str) -> str:
    """A command printing `low` on `sshd` and `high` on any other server (by the port sshd answers on)."""
    return f'case "${{SSH_CONNECTION##* }}" in {sshd.port}) echo "{low}";; *) echo "{high}";; esac'


def test_a_group_step_decides_from_every_hosts_value_not_the_first(write, main, sshd, sshd_bastion, ssh_known_hosts, audit_dir):
    """Two real hosts print 29% and 70%: the disk-full branch must see 70 (the first host alone would skip it)."""
    inv = _two_hosts(write, sshd, sshd_bastion, ssh_known_hosts)
    cmd = _by_server(sshd, "/dev/sda1 29% false", "/dev/sda1 70% true")
    p = book(write, f"""
  diagnose:
    - id: disk
      ssh: {{hosts: web, command: {json.dumps(cmd)}, forks: 2}}
      readonly: true
      outputs:
        use: {{regex: '(\\d+)%', type: integer, aggregate: max}}
        low: {{regex: '(\\d+)%', type: integer, aggregate: min}}
        total: {{regex: '(\\d+)%', type: integer, aggregate: sum}}
        mean: {{regex: '(\\d+)%', type: number, aggregate: avg}}
        each: {{regex: '(\\d+)%', type: integer, aggregate: list}}
        full: {{regex: '(true|false)', type: boolean, aggregate: any}}
        all_full: {{regex: '(true|false)', type: boolean, aggregate: all}}
        n_full: {{regex: '(true|false)', type: boolean, aggregate: count}}
    - id: decide
      choose:
        - when: "steps.disk.outputs.use > 50"
          goto: full
    - id: fine
      end: {{status: failed, message: "decided from one host: {{{{ steps.disk.outputs.use }}}}"}}
    - id: full
      end: >-
        full on {{{{ steps.disk.aggregates.use.host }}}} ({{{{ steps.disk.outputs.use }}}});
        emptiest {{{{ steps.disk.aggregates.low.host }}}} ({{{{ steps.disk.outputs.low }}}});
        sum {{{{ steps.disk.outputs.total }}}} avg {{{{ steps.disk.outputs.mean }}}} each {{{{ steps.disk.outputs.each }}}};
        any {{{{ steps.disk.outputs.full }}}} all {{{{ steps.disk.outputs.all_full }}}} count {{{{ steps.disk.outputs.n_full }}}};
        web-1 says {{{{ steps.disk.hosts['web-1'].outputs.use }}}}
""")
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "full on web-2 (70); emptiest web-1 (29);" in out, out
    assert "sum 99 avg 49.5 each [29, 70]; any True all False count 1; web-1 says 29" in out, out
    assert "use=70 (max of 2 hosts, from web-2)" in out, out
    # the audit log keeps the step-level values, how they were combined and each host's own
    recs = [r for r in audit.read_records(audit_dir / "audit.jsonl") if r.get("type") == "step_result" and r.get("step") == "disk"]
    assert recs[0]["outputs"]["use"] == 70 and recs[0]["outputs"]["each"] == [29, 70]
    assert recs[0]["data"]["aggregates"]["use"] == {"aggregate": "max", "hosts": 2, "host": "web-2"}
    assert recs[0]["data"]["hosts"]["web-2"]["outputs"]["full"] is True


def test_a_group_steps_output_without_an_aggregate_is_refused_before_anything_runs(write, main, sshd, sshd_bastion, ssh_known_hosts):
    inv = _two_hosts(write, sshd, sshd_bastion, ssh_known_hosts)
    p = book(write, """
  diagnose:
    - id: disk
      ssh: {hosts: web, command: "df -h /", forks: 2}
      readonly: true
      outputs:
        use: {regex: '(\\d+)%', type: integer}
""")
    r = main("validate", p, "--inventory", inv)
    assert r.returncode == 1
    assert "t.yaml:10:9: error: step 'disk' runs on every host of group web, so output 'use' must say how the hosts' values combine" in r.stdout
    assert "add aggregate: one of max, min, sum, avg, count, any, all or list" in r.stdout
    # a host list is a fan-out too; a template is judged once rendered (the plan, then the run)
    for hosts in ("[web-1, web-2]", "'{{ params.where }}'"):
        p = book(write, f"""
  diagnose:
    - id: disk
      ssh: {{hosts: {hosts}, command: "df -h /", forks: 2}}
      readonly: true
      outputs:
        use: {{regex: '(\\d+)%', type: integer}}
""", head="params:\n  where: {type: string, default: web}\n")
        before = (sshd.connections(), sshd_bastion.connections())
        r = main("run", p, "--inventory", inv, "--dry-run")
        assert r.returncode != 0 and "must say how the hosts' values combine" in r.stderr + r.stdout, r.stdout + r.stderr
        r = main("run", p, "--inventory", inv)
        assert r.returncode == 1 and "must say how the hosts' values combine" in r.stdout + r.stderr, r.stdout + r.stderr
        assert (sshd.connections(), sshd_bastion.connections()) == before  # refused before contacting a host


def test_an_aggregate_must_fit_its_type(write, main):
    p = book(write, """
  diagnose:
    - id: disk
      ssh: {hosts: [a, b], command: "df -h /", forks: 2}
      readonly: true
      outputs:
        use: {regex: '(\\d+)%', aggregate: max}
        bad: {regex: '(yes|no)', type: integer, aggregate: any}
""")
    r = main("validate", p)
    assert r.returncode == 1
    assert "t.yaml:10:14: error: step 'disk': output 'use': aggregate: max compares numbers; add type: integer or type: number" in r.stdout
    assert "t.yaml:11:14: error: step 'disk': output 'bad': aggregate: any counts true values; add type: boolean" in r.stdout
    p.write_text(p.read_text().replace("aggregate: max", "aggregate: median"))
    r = main("validate", p)
    assert r.returncode == 1 and "'median' is not one of max, min, sum, avg, count, any, all, list" in r.stdout


def test_a_one_host_ssh_step_whose_until_holds_on_a_failed_command_still_reads_its_output(write, main, sshd, ssh_known_hosts):
    """`until` decides whatever the exit code: the outputs of a host whose command exited 3 are still read."""
    p = book(write, """
  diagnose:
    - id: probe
      ssh: {hosts: h1, command: "echo 'active=0'; exit 3"}
      readonly: true
      until: "exit_code == 3"
      every: 1s
      timeout: 10s
      outputs:
        active: {regex: 'active=(\\d+)', type: integer}
    - id: done
      end: "active {{ steps.probe.outputs.active }}"
""")
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts))
    assert "0 hosts" not in r.stdout, r.stdout
    assert r.returncode == 0 and "active 0" in r.stdout, r.stdout + r.stderr


def test_which_host_gave_the_max_survives_a_pause_and_resume(write, main, sshd, sshd_bastion, ssh_known_hosts, audit_dir):
    """The hosts' outputs are large (40 KB each): over the audit log's 64 KB restore limit, the
    outputs are cut, not the structure: a resume still knows which host gave the max."""
    inv = _two_hosts(write, sshd, sshd_bastion, ssh_known_hosts)
    cmd = _by_server(sshd, "29%", "70%") + "; head -c 40000 /dev/zero | tr '\\\\0' x; echo"
    p = book(write, f"""
  diagnose:
    - id: disk
      ssh: {{hosts: web, command: {json.dumps(cmd)}, forks: 2}}
      readonly: true
      outputs:
        use: {{regex: '(\\d+)%', type: integer, aggregate: max}}
  mitigate:
    - id: clean
      shell: "echo cleaning {{{{ steps.disk.aggregates.use.host }}}}"
      timeout: 5s
  verify:
    - id: fine
      shell: "true"
      readonly: true
""")
    r = main("run", p, "--inventory", inv)  # no terminal, no --yes: pauses before the write
    assert r.returncode == 3, r.stdout + r.stderr
    run_id = [x for x in audit.read_records(audit_dir / "audit.jsonl") if x["type"] == "run_started"][0]["run"]
    r = main("resume", run_id, "--yes", "--inventory", inv)
    assert r.returncode == 0 and "cleaning web-2" in r.stdout, r.stdout + r.stderr


# --- runbook list's cache --------------------------------------------------------------------


def test_max_over_hosts_is_never_decided_by_a_nan():
    """A probe printing "nan" (awk's 0/0) on the first host would make max() keep NaN, and every
    `> 90` false: NaN is refused as a number, so the step fails instead of deciding wrongly."""
    import pytest

    from runbook import outputs

    with pytest.raises(ValueError, match="not a number"):
        outputs.convert(" NaN ", "number")
    assert outputs.combine("max", {"web-1": 29.0, "web-2": 70.0, "web-3": 70.0}) == (70.0, "web-2")  # first on a tie


def test_fan_out_records_every_host_before_its_command_and_the_log_stays_sealed(write, main, sshd, ssh_known_hosts,
                                                                                audit_dir):
    names = tuple(f"web-{i:02d}" for i in range(20))
    inv = inventory(write, sshd, ssh_known_hosts, names=names, groups={"web": {"hosts": list(names)}})
    p = book(write, """
  diagnose:
    - id: first
      ssh: {hosts: web, command: "echo one", forks: 20}
      readonly: true
      timeout: 30s
    - id: second
      ssh: {hosts: web, command: "echo two", forks: 20}
      readonly: true
""")
    before = sshd.connections()
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sshd.connections() - before == 20  # the second step reuses the connections (and the workers)
    recs = list(audit.read_records(audit_dir / "audit.jsonl"))
    for step in ("first", "second"):
        intent = next(i for i, x in enumerate(recs) if x["type"] == "step_intent" and x["step"] == step)
        result = next(i for i, x in enumerate(recs) if x["type"] == "step_result" and x["step"] == step)
        procs = [x for x in recs[intent:result] if x["type"] == "step_process"]
        # several hosts may share a record (group commit), but every host is in exactly one
        assert sorted(h for x in procs for h in x["hosts"]) == list(names)
        assert all((x["deadline"] is not None) == (step == "first") for x in procs)
        assert sorted(recs[result]["data"]["hosts"]) == list(names)
        if step == "second":  # the connections are open: one record for all, before any is dispatched
            assert len(procs) == 1
    assert audit.verify(audit_dir / "audit.jsonl").ok


def test_a_host_sent_later_than_its_early_record_covers_is_recorded_again(write, main, sshd, ssh_known_hosts,
                                                                           audit_dir, monkeypatch):
    """The record written before a later step's dispatch bounds only the sends that follow it
    closely; a late host gets a record of its own at its send (here every host is "late")."""
    from runbook.steps import ssh

    monkeypatch.setattr(ssh, "_PRE_ANNOUNCED", -1.0)
    names = ("a", "b", "c")
    inv = inventory(write, sshd, ssh_known_hosts, names=names)
    p = book(write, """
  diagnose:
    - id: first
      ssh: {hosts: [a, b, c], command: "true", forks: 3}
      readonly: true
    - id: second
      ssh: {hosts: [a, b, c], command: "true", forks: 3}
      readonly: true
      timeout: 20s
""")
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 0, r.stdout + r.stderr
    recs = list(audit.read_records(audit_dir / "audit.jsonl"))
    intent = next(i for i, x in enumerate(recs) if x["type"] == "step_intent" and x["step"] == "second")
    procs = [x for x in recs[intent:] if x["type"] == "step_process"]
    assert sorted(procs[0]["hosts"]) == list(names)  # the early record
    assert sorted(h for x in procs[1:] for h in x["hosts"]) == list(names)  # and each host again at its send
    assert all(x["deadline"] is not None for x in procs)


def test_group_commit_writes_waiting_hosts_together_and_fails_them_together():
    import threading

    from runbook.steps.ssh import _GroupCommit

    writes: list[list[str]] = []
    release = threading.Event()
    fail = {"on": None}

    def write(names):
        writes.append(list(names))
        if len(writes) == 1:
            release.wait(10)  # the first record is slow: the other hosts queue meanwhile
        if fail["on"] == len(writes):
            raise OSError("disk full")

    commit = _GroupCommit(write)
    errors: dict[str, BaseException] = {}

    def host(name):
        try:
            commit(name)
        except BaseException as exc:  # noqa: BLE001
            errors[name] = exc

    first = threading.Thread(target=host, args=("h0",))
    first.start()
    while not writes:
        time.sleep(0.01)
    others = [threading.Thread(target=host, args=(f"h{i}",)) for i in range(1, 10)]
    for t in others:
        t.start()
    while len(commit._pending) < 9:
        time.sleep(0.01)
    fail["on"] = 2  # the second record fails: none of its hosts may go on
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert writes[0] == ["h0"] and sorted(writes[1]) == [f"h{i}" for i in range(1, 10)] and len(writes) == 2
    assert "h0" not in errors and sorted(errors) == [f"h{i}" for i in range(1, 10)]
    assert all(isinstance(e, OSError) for e in errors.values())
    commit("alone")  # a lone host is written at once
    assert writes[-1] == ["alone"]


def test_output_after_the_exit_status_is_kept_and_a_background_holder_is_not_waited_for(write, main, sshd,
                                                                                       ssh_known_hosts, audit_dir):
    # sshd may send the exit status before it has forwarded the command's last output: the output is
    # read until EOF. A background process holding the output open only delays the step by a grace period.
    p = book(write, """
  diagnose:
    - id: late
      ssh: {hosts: h1, command: "exec 3>&1; (sleep 0.5; echo late-output >&3) & exit 0"}
      readonly: true
    - id: holder
      ssh: {hosts: h1, command: "(sleep 30 &); echo done"}
      readonly: true
""")
    started = time.monotonic()
    r = main("run", p, "--inventory", inventory(write, sshd, ssh_known_hosts))
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - started < 20
    results = {x["step"]: x for x in audit.read_records(audit_dir / "audit.jsonl") if x["type"] == "step_result"}
    assert results["late"]["data"]["hosts"]["h1"]["stdout"] == "late-output\n"
    assert results["holder"]["data"]["hosts"]["h1"]["stdout"] == "done\n"


def test_connections_prefer_aes_gcm(sshd, ssh_known_hosts, tmp_path, monkeypatch):
    """An AEAD cipher first: paramiko's default (aes128-ctr + hmac-sha2-256) checks every packet's MAC in Python."""
    import paramiko

    from runbook.steps.ssh_conn import Connection

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config of this machine's
    conn = Connection(sshd.host, user=sshd.user, port=sshd.port, connect_timeout=5,
                      connect_kwargs={"key_filename": [str(sshd.client_key_path)], "allow_agent": False,
                                      "look_for_keys": False})
    conn.client.load_host_keys(str(ssh_known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        conn.open()
        assert conn.is_connected
        assert conn.transport.local_cipher == conn.transport.remote_cipher == "aes128-gcm@openssh.com"
        _, out, _ = conn.client.exec_command("echo gcm-ok")
        assert out.read() == b"gcm-ok\n"
    finally:
        conn.close()
    assert not conn.is_connected


def test_invoke_is_imported_only_for_match_exec(tmp_path):
    """paramiko imports invoke for ~/.ssh/config's `Match exec` alone (~50 ms of every run): the ssh
    step's connections import it only when a config has one, and `Match exec` still works then."""
    import subprocess

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    probe = ("import sys; from runbook.steps import ssh_conn; before = 'invoke' in sys.modules; "
             "found = ssh_conn.ssh_config().lookup('matched'); "
             "print(before, 'invoke' in sys.modules, found.get('port'))")
    env = {**os.environ, "HOME": str(home)}
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["False", "False", "None"], r.stdout + r.stderr
    (home / ".ssh" / "config").write_text(f"Match host matched exec \"test -d {home}\"\n  Port 2222\n")
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["False", "True", "2222"], r.stdout + r.stderr
