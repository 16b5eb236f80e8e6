"""scripts/test, the README's test command: on a machine without the Debian packages the
tests need, it names them in one apt-get line (and installs them when run as root)."""

from __future__ import annotations

import os
import subprocess

from conftest import ROOT


def test_without_the_packages_it_prints_the_one_apt_get_line_and_stops(tmp_path):
    # an empty stand-in for / : nothing is installed (RUNBOOK_TEST_SYSROOT never installs)
    r = subprocess.run([str(ROOT / "scripts" / "test"), "--co"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "RUNBOOK_TEST_SYSROOT": str(tmp_path)})
    assert r.returncode == 1, r.stdout + r.stderr
    line = [x.strip() for x in r.stderr.splitlines() if "apt-get install" in x]
    assert line == ["apt-get update && apt-get install -y --no-install-recommends openssh-server openssh-client sudo "
                    "postgresql prometheus openssl redis-server redis-tools chromium chromium-driver zsh fish "
                    "rabbitmq-server"], r.stderr
    assert r.stdout == ""  # pytest never started


def test_it_names_only_what_is_missing(tmp_path):
    for exe in ("usr/sbin/sshd", "usr/bin/ssh-keygen", "usr/bin/sudo", "usr/lib/postgresql/16/bin/initdb",
                "usr/bin/prometheus", "usr/bin/openssl", "usr/bin/redis-server"):
        (tmp_path / exe).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / exe).write_text("#!/bin/sh\n")
        (tmp_path / exe).chmod(0o755)
    r = subprocess.run([str(ROOT / "scripts" / "test"), "--co"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "RUNBOOK_TEST_SYSROOT": str(tmp_path)})
    assert r.returncode == 1 and "redis-tools" in r.stderr and "openssh-server" not in r.stderr  # only what is missing
