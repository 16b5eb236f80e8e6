"""What identifies a step's running work, and whether it may still be running.

A local ``shell`` step records its process with :func:`identity` in a
``step_process`` audit record (pid, process group, start time in clock ticks
since boot, the boot id and the host name); an ``ssh`` step records the hosts
its command was sent to and the time by which the remote ``timeout`` has
certainly ended it (``deadline``, epoch seconds; ``None`` without a timeout).
:func:`still_running` reads such a record back — after a crash, on resume,
in a report — and says in one line what may still be running, or ``None``.

Linux only in full (``/proc``); elsewhere a process group is looked up with
``killpg(pgid, 0)``, which cannot tell a reused group id from ours.
Standard library only, and cheap to import.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

_PROC = "/proc"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _stat(pid: int, proc: str = _PROC) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: [0] is field 3
    (state), [2] field 5 (process group), [19] field 22 (start time in ticks)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[-1].split()
    return [x.decode("ascii", "replace") for x in fields] if len(fields) >= 20 else None


def _comm(pid: int, proc: str = _PROC) -> str:
    try:
        with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def boot_id() -> str | None:
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def identity(pid: int) -> dict[str, Any]:
    """``{pid, pgid, start_ticks, boot_id, host}`` of a running process (``None`` where unknowable).

    ``start_ticks`` (field 22 of /proc/PID/stat) tells this process from a
    later one given the same pid; ``boot_id`` tells this boot from the next.
    """
    try:
        pgid: int | None = os.getpgid(pid)
    except OSError:
        pgid = None
    fields = _stat(pid)
    start = int(fields[19]) if fields and fields[19].isdigit() else None
    return {"pid": pid, "pgid": pgid, "start_ticks": start, "boot_id": boot_id(), "host": socket.gethostname()}


def group_members(pgid: int, proc: str = _PROC) -> list[int] | None:
    """Live (not zombie) processes whose process group is ``pgid``; ``None`` without /proc."""
    try:
        names = os.listdir(proc)
    except OSError:
        return None
    found = []
    for name in names:
        if name.isdigit():
            fields = _stat(int(name), proc)
            if fields and fields[0] != "Z" and fields[2] == str(pgid):
                found.append(int(name))
    return sorted(found)


# The argument runbook's shell step gives its guard (runbook.steps.shell): a process whose
# arguments hold it and that is a shell or `timeout` is a supervisor, not the step's work.
GUARD_MARK = "runbook-guard"


def _supervisor(pid: int, proc: str = _PROC) -> bool:
    """A process of runbook's supervision (the guard, `timeout`, the guard's grace ``sleep``,
    marked by RUNBOOK_GUARD=1 in its environment), not of the step's work."""
    comm = _comm(pid, proc)
    try:
        if comm == "sleep":
            with open(f"{proc}/{pid}/environ", "rb") as f:
                return b"RUNBOOK_GUARD=1" in f.read().split(b"\0")
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return comm in ("sh", "dash", "timeout", "setpriv") and GUARD_MARK.encode() in argv[1:]


def _started_at(start_ticks: int | None) -> str | None:
    """The wall-clock time (UTC) of a start time in ticks since this boot."""
    if start_ticks is None:
        return None
    try:
        with open(f"{_PROC}/stat", encoding="ascii") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return None
    return _utc(btime + start_ticks / hz)


def _utc(epoch: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(epoch))


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def still_running(record: dict[str, Any], now: float | None = None) -> str | None:
    """``None`` when nothing of the recorded work can still be running, else one line saying what may run.

    ``record`` is a ``step_process`` record: local (``pid``, ``pgid``,
    ``start_ticks``, ``boot_id``, ``host``) or remote (``hosts``, ``deadline``).
    """
    if "hosts" in record:
        return _remote(record, time.time() if now is None else now)
    return _local(record)


def _remote(record: dict[str, Any], now: float) -> str | None:
    hosts = record.get("hosts")
    names = ", ".join(str(h) for h in hosts) if isinstance(hosts, list) and hosts else "its hosts"
    deadline = record.get("deadline")
    if deadline is None:
        return f"its remote command on {names} has no timeout and may still be running"
    try:
        deadline = float(deadline)
    except (TypeError, ValueError):
        return f"its remote command on {names} may still be running (its deadline {deadline!r} cannot be read)"
    if deadline <= now:
        return None
    return f"its remote command on {names} may run until {_utc(deadline)} (its timeout)"


def _local(record: dict[str, Any]) -> str | None:
    pid, pgid, start = _int(record.get("pid")), _int(record.get("pgid")), _int(record.get("start_ticks"))
    pgid = pgid if pgid is not None else pid
    if pgid is None:
        return None  # nothing identifies it
    host, here = record.get("host"), socket.gethostname()
    what = f"process group {pgid}" + (f" (pid {pid})" if pid is not None else "")
    if host and host != here:
        return f"{what} ran on host {host}, not this one ({here}): whether it still runs cannot be checked from here"
    boot, this_boot = record.get("boot_id"), boot_id()
    if boot and this_boot and boot != this_boot:
        return None  # the machine has rebooted since: nothing of that boot runs
    members = group_members(pgid)
    if members is None:  # no /proc: ask the kernel about the group, which cannot tell a reused id
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return f"{what} may still be running on host {host or here} (a process group with its id exists)"
    if all(_supervisor(p) for p in members):
        return None  # only runbook's supervisors (`timeout`, the guard) are left, ending the group
    # A group id is not reused while the group has a member. If a process with the leader's pid
    # lives but started at another time, the pid (and so the group id) was reused: ours is gone.
    # (Every member of a reused group having outlived its own leader is not told apart.)
    if pid is not None and pid == pgid and start is not None:
        fields = _stat(pid)
        if fields and fields[0] != "Z" and fields[19] != str(start):
            return None
    when = _started_at(start) if boot and boot == this_boot else None
    detail = f"pid {pid}" if pid is not None else ""
    if when:
        detail += (", " if detail else "") + f"started {when}"
    names = sorted({_comm(p) for p in members})
    return (f"process group {pgid}" + (f" ({detail})" if detail else "") + f" is still running on host {host or here}"
            f": {len(members)} process{'es' if len(members) != 1 else ''} ({', '.join(names[:5])}"
            f"{', …' if len(names) > 5 else ''})")


def running_lines(records: list[dict[str, Any]], now: float | None = None) -> list[str]:
    """What may still run of several ``step_process`` records (e.g. all of one run), one line each,
    prefixed ``step ID:``; the remote records of one step (one per host) are merged into one line."""
    now = time.time() if now is None else now
    lines: list[str] = []
    remote: dict[Any, dict[str, Any]] = {}
    for r in records:
        if r.get("type", "step_process") != "step_process":
            continue
        if "hosts" in r:
            merged = remote.setdefault(r.get("step"), {"step": r.get("step"), "hosts": [], "running": [], "open": []})
            line = _remote(r, now)
            if line is None:
                continue
            hosts = [str(h) for h in r.get("hosts") or []]
            if r.get("deadline") is None:
                merged["open"] += hosts
                continue
            try:
                merged["running"].append((float(r["deadline"]), hosts))
            except (TypeError, ValueError):  # a deadline that cannot be read: said as it is, not merged
                lines.append(f"step {r.get('step')}: {line}")
            continue
        line = _local(r)
        if line is not None:
            lines.append(f"step {r.get('step')}: {line}")
    for step, m in remote.items():
        if m["open"]:
            lines.append(f"step {step}: " + _remote({"hosts": list(dict.fromkeys(m["open"])), "deadline": None}, now))
        if m["running"]:
            last = max(d for d, _ in m["running"])
            hosts = list(dict.fromkeys(h for _, hs in m["running"] for h in hs))
            lines.append(f"step {step}: " + _remote({"hosts": hosts, "deadline": last}, now))
    return lines
