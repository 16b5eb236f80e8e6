"""The real-sshd fixtures of tests/sshserver.py do what the `ssh` step tests rely on."""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest

from sshserver import SshServerError, make_key, start_sshd


def run_ssh(*args, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def paramiko_client(known_hosts) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if known_hosts is not None:
        client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def exec_out(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, _ = client.exec_command(command, timeout=20)
    out = stdout.read().decode()
    return stdout.channel.recv_exit_status(), out


@pytest.fixture
def own_sshd(tmp_path):
    """A server of the test's own (for counting and stopping)."""
    srv = start_sshd(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


def test_server_attributes(sshd, ssh_client_key):
    assert sshd.host == "127.0.0.1" and sshd.running
    assert sshd.user == pwd.getpwuid(os.geteuid()).pw_name
    assert sshd.client_key_path == ssh_client_key
    assert stat.S_IMODE(ssh_client_key.stat().st_mode) == 0o600
    assert ssh_client_key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert sshd.host_public_key.startswith("ssh-ed25519 AAAA")
    printed = subprocess.run(["ssh-keygen", "-lf", f"{sshd.host_key_path}.pub"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert printed[1] == sshd.host_fingerprint and sshd.host_fingerprint.startswith("SHA256:")
    assert sshd.known_hosts_path.read_text() == f"[127.0.0.1]:{sshd.port} {sshd.host_public_key}\n"
    assert sshd.known_hosts_line(["localhost", "db1"]) == (
        f"[localhost]:{sshd.port},[db1]:{sshd.port} {sshd.host_public_key}\n")
    assert sshd.known_hosts_line("alias", bracket=False) == f"alias {sshd.host_public_key}\n"
    config = sshd.config_path.read_text()
    for line in ("ListenAddress 127.0.0.1", "PasswordAuthentication no", "UsePAM no",
                 "AllowTcpForwarding no", "PermitUserEnvironment no", "Subsystem sftp internal-sftp"):
        assert line in config.splitlines()


def test_openssh_client_with_strict_host_key_checking(sshd, ssh_known_hosts, ssh_client_key):
    res = run_ssh("-F", "/dev/null", "-i", ssh_client_key, "-o", f"UserKnownHostsFile={ssh_known_hosts}",
                  "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", sshd.port,
                  f"{sshd.user}@127.0.0.1", "true")
    assert res.returncode == 0, res.stderr + sshd.log_tail()
    res = run_ssh(*sshd.ssh_options(known_hosts=ssh_known_hosts), sshd.destination,
                  "echo out; echo err >&2; echo SHLVL=$SHLVL; exit 3")
    assert res.returncode == 3, res.stderr + sshd.log_tail()
    assert res.stdout == "out\nSHLVL=2\n" and res.stderr == "err\n"


def test_openssh_client_refuses_unknown_host(sshd, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    res = run_ssh(*sshd.ssh_options(known_hosts=empty), sshd.destination, "true")
    assert res.returncode == 255 and "Host key verification failed" in res.stderr


def test_paramiko_reject_policy_runs_command(sshd, ssh_known_hosts):
    with paramiko_client(ssh_known_hosts) as client:
        client.connect("127.0.0.1", port=sshd.port, username=sshd.user, key_filename=str(sshd.client_key_path),
                       look_for_keys=False, allow_agent=False, timeout=10)
        assert exec_out(client, "echo hi") == (0, "hi\n")
        with client.open_sftp() as sftp:  # Subsystem sftp internal-sftp
            assert sftp.stat(str(sshd.base_dir)).st_mode is not None


def test_wrong_client_key_is_refused(sshd, ssh_known_hosts, tmp_path):
    stranger = make_key(tmp_path / "stranger")
    with paramiko_client(ssh_known_hosts) as client:
        with pytest.raises(paramiko.AuthenticationException):
            client.connect(**sshd.paramiko_kwargs(identity=stranger))
    res = run_ssh(*sshd.ssh_options(identity=stranger, known_hosts=ssh_known_hosts), sshd.destination, "true")
    assert res.returncode == 255 and "Permission denied" in res.stderr


def test_unknown_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with paramiko_client(empty) as client:
        with pytest.raises(paramiko.SSHException) as exc:
            client.connect(**sshd.paramiko_kwargs())
        assert not isinstance(exc.value, paramiko.AuthenticationException)
    # A known_hosts entry with another key for the name is a mismatch, not a login.
    other = start_sshd(tmp_path)
    try:
        liar = tmp_path / "liar_known_hosts"
        liar.write_text(f"[127.0.0.1]:{sshd.port} {other.host_public_key}\n")
        with paramiko_client(liar) as client:
            with pytest.raises(paramiko.BadHostKeyException):
                client.connect(**sshd.paramiko_kwargs())
    finally:
        other.stop()


def test_alias_from_known_hosts_line(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line(["localhost"]))
    with paramiko_client(kh) as client:
        client.connect(**sshd.paramiko_kwargs(hostname="localhost"))
        assert exec_out(client, "echo alias") == (0, "alias\n")


def test_connections_counts_logins(own_sshd):
    assert own_sshd.connections() == 0  # the readiness probe is no login
    for _ in range(2):
        with paramiko_client(own_sshd.known_hosts_path) as client:
            client.connect(**own_sshd.paramiko_kwargs())
            assert exec_out(client, "true")[0] == 0
    assert own_sshd.connections() == 2, own_sshd.log_tail()
    res = run_ssh(*own_sshd.ssh_options(identity=make_key(own_sshd.base_dir / "nope")), own_sshd.destination,
                  "true")
    assert res.returncode == 255
    assert own_sshd.connections() == 2  # refused logins do not count


def test_fifty_parallel_connections(sshd, ssh_known_hosts):
    def one(i: int) -> str:
        with paramiko_client(ssh_known_hosts) as client:
            client.connect(**sshd.paramiko_kwargs(timeout=30, banner_timeout=30, auth_timeout=30))
            return exec_out(client, f"echo {i}")[1]

    before = sshd.connections()
    with ThreadPoolExecutor(50) as pool:
        assert list(pool.map(one, range(50))) == [f"{i}\n" for i in range(50)]
    assert sshd.connections() - before == 50


def test_jump_through_bastion_with_openssh(sshd, sshd_bastion, ssh_known_hosts, tmp_path):
    # ssh_known_hosts trusts both because this test requested the bastion.
    assert str(sshd_bastion.port) in ssh_known_hosts.read_text()
    before = (sshd_bastion.connections(), sshd.connections())
    proxy = sshd_bastion.proxy_command(known_hosts=ssh_known_hosts)
    res = run_ssh(*sshd.ssh_options(known_hosts=ssh_known_hosts), "-o", f"ProxyCommand={proxy}",
                  sshd.destination, "echo via-proxycommand")
    assert res.returncode == 0, res.stderr + sshd_bastion.log_tail()
    assert res.stdout == "via-proxycommand\n"

    # -J with a config file: ProxyJump hands `-F FILE` on to the jump connection.
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        "Host *\n"
        f"  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key_path}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {ssh_known_hosts}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  LogLevel ERROR\n"
    )
    res = run_ssh("-F", cfg, "-J", f"{sshd_bastion.user}@127.0.0.1:{sshd_bastion.port}", "-p", sshd.port,
                  "127.0.0.1", "echo via-J")
    assert res.returncode == 0, res.stderr + sshd_bastion.log_tail()
    assert res.stdout == "via-J\n"
    assert (sshd_bastion.connections(), sshd.connections()) == (before[0] + 2, before[1] + 2)


def test_forwarding_only_on_bastion_paramiko(sshd, sshd_bastion, ssh_known_hosts):
    with paramiko_client(ssh_known_hosts) as jump:
        jump.connect(**sshd_bastion.paramiko_kwargs())
        chan = jump.get_transport().open_channel("direct-tcpip", ("127.0.0.1", sshd.port), ("127.0.0.1", 0))
        with paramiko_client(ssh_known_hosts) as target:
            target.connect(**sshd.paramiko_kwargs(sock=chan))
            assert exec_out(target, "echo through")[1] == "through\n"
    with paramiko_client(ssh_known_hosts) as no_jump:
        no_jump.connect(**sshd.paramiko_kwargs())
        with pytest.raises(paramiko.ChannelException):  # AllowTcpForwarding no
            no_jump.get_transport().open_channel("direct-tcpip", ("127.0.0.1", sshd_bastion.port),
                                                 ("127.0.0.1", 0))


def test_stop_ends_every_process_and_frees_the_port(tmp_path):
    srv = start_sshd(tmp_path)
    try:
        with paramiko_client(srv.known_hosts_path) as client:
            client.connect(**srv.paramiko_kwargs())
            client.exec_command("sleep 60")  # a login shell left running
            deadline = time.monotonic() + 5
            while len(srv.pids()) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            pids = srv.pids()
            assert len(pids) >= 3, pids  # listener, connection handler(s), sleep
            srv.stop()
        assert not srv.running and srv.pids() == []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                continue
            assert state == "Z", f"pid {pid} still alive after stop()"
        leftovers = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if str(srv.config_path).encode() in (entry / "cmdline").read_bytes():
                        leftovers.append(entry.name)
                except OSError:
                    pass
        assert leftovers == []
        with pytest.raises(OSError) as exc:
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        assert exc.value.errno == errno.ECONNREFUSED
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", srv.port))
            s.listen()
        srv.stop()  # idempotent
    finally:
        srv.stop()


def test_bad_config_reports_sshd_error(tmp_path):
    with pytest.raises(SshServerError, match="NoSuchOption"):
        start_sshd(tmp_path, extra_config=[("NoSuchOption", "yes")])


def test_port_taken_between_probe_and_bind_is_retried(tmp_path, monkeypatch):
    import sshserver

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real = sshserver._free_port
        monkeypatch.setattr(sshserver, "_free_port", lambda: next(ports, None) or real())
        srv = start_sshd(tmp_path)
        try:
            assert srv.port != taken and srv.running
            assert "Address already in use" in srv.log_path.with_suffix(".attempt0.log").read_text()
            res = run_ssh(*srv.ssh_options(), srv.destination, "true")
            assert res.returncode == 0, res.stderr + srv.log_tail()
        finally:
            srv.stop()
