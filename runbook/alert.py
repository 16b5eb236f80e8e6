"""Starting a run from an Alertmanager alert (``runbook run --alert FILE``).

Alertmanager's webhook receiver posts a JSON document (version 4) holding a
group of alerts; each has ``status``, ``labels``, ``annotations``,
``startsAt``, ``endsAt``, ``generatorURL`` and ``fingerprint``.  From it we

* choose the runbook: the alert's ``runbook`` annotation (a name or a file),
  else the ``runbook_url`` annotation when its last path segment names a
  runbook, else the runbooks whose ``alerts:`` list names the alert;
* map labels to parameters through the runbook's ``params_from_labels``
  (``service: job`` sets the parameter ``service`` from the label ``job``);
  the values then pass the parameter's type, pattern and enum like any
  ``-p`` value, since labels are data from elsewhere.  A mapping form
  (``deployment: {from_pod: pod}``) names a label whose value a step kind
  turns into the parameter when a live run starts (:func:`label_forms`: the
  kinds' ``LABEL_FORMS`` hook), e.g. the Deployment that owns a pod;
* tell resolved alerts apart from firing ones: a resolved alert starts
  nothing, and its resolution is recorded (in the run handling it, when one
  is open);
* keep one run per alert at a time: a lock file per fingerprint, held (flock)
  for the run's life, so that two people paged at once do not both mitigate.
  A crashed run's lock is released by the kernel.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError, UsageError


@dataclass
class Alert:
    name: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str | None
    fingerprint: str
    generator_url: str | None = None
    ends_at: str | None = None  # a resolved alert's endsAt (a firing one's is a guess or the zero time)
    others: list[str] = field(default_factory=list)  # fingerprints of the group's other alerts handled by this run
    others_starts: dict[str, str] = field(default_factory=dict)  # their startsAt, by fingerprint (which incident)

    def record(self) -> dict[str, Any]:
        """What the audit log keeps of the alert (``also``: the group's other alerts this
        run handles; ``also_startsAt``: when each started, so that a resolution of a later
        incident of one of them is not taken for this run's)."""
        d = {"name": self.name, "status": self.status, "labels": self.labels, "startsAt": self.starts_at,
             "fingerprint": self.fingerprint, "generatorURL": self.generator_url,
             "endsAt": self.ends_at if self.resolved else None}
        if self.others:
            d["also"] = self.others
            starts = {fp: self.others_starts[fp] for fp in self.others if self.others_starts.get(fp)}
            if starts:
                d["also_startsAt"] = starts
        return {k: v for k, v in d.items() if v is not None}

    @property
    def resolved(self) -> bool:
        return self.status == "resolved"


def read_payload(source: str) -> dict:
    """The webhook document from a file or ``-`` (standard input)."""
    where = "standard input" if source == "-" else source
    from runbook.yamlload import MAX_FILE_BYTES, size_problem, text_size

    try:  # never more than the limit (and one character) into memory
        if source == "-":
            text = sys.stdin.read(MAX_FILE_BYTES + 1)
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--alert {source}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--alert {where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if (too_big := size_problem(where, text_size(text))) is not None:
        raise UsageError(f"--alert {where}: {too_big.message}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--alert {where}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         "expected an Alertmanager webhook payload") from None
    except RecursionError:  # arrays or objects nested deeper than Python's parser goes: no webhook is like that
        raise UsageError(f"--alert {where}: nested too deeply to read (arrays or objects within each other "
                         "hundreds of levels down); expected an Alertmanager webhook payload") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("alerts"), list):
        raise UsageError(f"--alert {where}: not an Alertmanager webhook payload (no 'alerts' list)")
    return doc


def _fingerprint(alert: dict) -> str:
    fp = alert.get("fingerprint")
    if fp:
        return str(fp)
    # Alertmanager always sends one; for hand-written payloads, derive a stable one from the labels
    import hashlib

    labels = json.dumps(alert.get("labels") or {}, sort_keys=True)
    return hashlib.sha256(labels.encode()).hexdigest()[:16]


def _mapping(a: dict, key: str) -> dict[str, str]:
    value = a.get(key) or {}
    if not isinstance(value, dict):
        raise UsageError(f"--alert: an alert's '{key}' must be a mapping of names to values, not {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def _alert(a: dict) -> Alert:
    labels = _mapping(a, "labels")
    starts, ends = a.get("startsAt"), a.get("endsAt")
    return Alert(
        name=labels.get("alertname", "?"), status=str(a.get("status", "firing")), labels=labels,
        annotations=_mapping(a, "annotations"), starts_at=str(starts) if starts else None,
        fingerprint=_fingerprint(a), generator_url=str(a.get("generatorURL") or "") or None,
        ends_at=str(ends) if ends and not str(ends).startswith("0001-") else None,
    )


def alerts_of(doc: dict, fingerprint: str | None = None) -> tuple[list[Alert], list[Alert]]:
    """(firing, resolved) alerts of the payload, or only the one ``--fingerprint`` names."""
    alerts = [_alert(a) for a in doc["alerts"] if isinstance(a, dict)]
    if fingerprint:
        chosen = [a for a in alerts if a.fingerprint == fingerprint]
        if not chosen:
            raise UsageError(f"--fingerprint {fingerprint}: no such alert in the payload "
                             f"(it has: {', '.join(a.fingerprint for a in alerts) or 'none'})")
        alerts = chosen
    if not alerts:
        raise UsageError("--alert: the payload's 'alerts' list is empty: nothing to run")
    return [a for a in alerts if not a.resolved], [a for a in alerts if a.resolved]


def by_annotation(alert: Alert, runbooks: dict[str, str]) -> tuple[str, str] | None:
    """(runbook reference, how it was found) from the alert's annotations."""
    ref = alert.annotations.get("runbook", "").strip()
    if ref:
        # a name only: an annotation (data from elsewhere) never picks a file outside the runbook path
        name = Path(ref).stem if ref.endswith((".yaml", ".yml")) else ref
        if name not in runbooks:
            raise UsageError(f"alert {alert.name}'s 'runbook' annotation names '{ref}', which is not a runbook on the "
                               f"runbook path (runbook list shows them)")
        return name, f"its 'runbook' annotation ({ref})"
    url = alert.annotations.get("runbook_url")
    if url:
        last = url.rstrip("/").rsplit("/", 1)[-1].split("#")[0].split("?")[0]
        for ext in (".yaml", ".yml", ".md", ".html"):
            if last.endswith(ext):
                last = last[: -len(ext)]
        if last in runbooks:
            return last, f"its 'runbook_url' annotation ({url})"
    return None


def runbook_index(files: list[Path], broken: list[str] | None = None) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(runbook name or file stem -> path, alert name -> runbook names) of the runbook files;
    a file that cannot be read or loaded is left out (and named in ``broken``, when given)."""
    from runbook import spec

    index: dict[str, str] = {}
    answers: dict[str, list[str]] = {}
    for f in files:
        try:
            rb, _ = spec.load_text(f.read_text(encoding="utf-8"), str(f))
        except (OSError, UnicodeDecodeError):
            rb = None
        if rb is None:
            if broken is not None:
                broken.append(str(f))
            continue
        index.setdefault(rb.name, str(f))
        index.setdefault(f.stem, str(f))
        for name in rb.alerts:
            answers.setdefault(name, []).append(rb.name)
    return index, answers


def choose_for(a: Alert, index: dict[str, str], answers: dict[str, list[str]]) -> tuple[str, str]:
    """(runbook, why) for one alert: its annotation, else the one runbook listing it; refused
    when none or several do."""
    found = by_annotation(a, index)
    if found is not None:
        return found
    names = sorted(set(answers.get(a.name, [])))
    if not names:
        raise UsageError(f"no runbook answers alert {a.name}: none has it in its 'alerts:' list and the alert has no "
                         f"'runbook' annotation; add {a.name} to a runbook's alerts, or name the runbook: "
                         f"runbook run NAME --alert …")
    if len(names) > 1:
        raise RunbookError(f"alert {a.name} is answered by {len(names)} runbooks ({', '.join(names)}); "
                           f"choose one: runbook run NAME --alert …, or set the alert's 'runbook' annotation")
    return names[0], f"its name is in the 'alerts:' list of {names[0]}"


def choose_runbook(alerts: list[Alert], paths: list[Path]) -> tuple[str, str]:
    """The runbook reference (name or file) for these alerts, and why it was chosen.

    Refuses when no runbook or more than one matches, and when the group's
    alerts would need different runbooks."""
    from runbook import spec

    index, answers = runbook_index(spec.runbook_files(paths))
    choices: dict[str, str] = {}
    for a in alerts:
        found = choose_for(a, index, answers)
        choices.setdefault(found[0], found[1])
    if len(choices) > 1:
        raise RunbookError(f"the payload's firing alerts need different runbooks ({', '.join(sorted(choices))}); "
                           "run them one at a time with --fingerprint FP")
    ref, why = next(iter(choices.items()))
    return ref, why


def label_forms() -> dict:
    """Form key of ``params_from_labels`` (``from_pod``) -> the step-kind module
    that resolves it (its ``LABEL_FORMS`` and ``label_value`` hooks)."""
    from runbook import steps

    out: dict = {}
    for kind in steps.KINDS:
        mod = steps.get(kind)
        for form in mod.LABEL_FORMS:
            out.setdefault(form, mod)
    return out


@dataclass
class LabelSource:
    """A parameter that comes from a label through a form (``deployment: {from_pod: pod}``):
    the label's value is known now, the parameter only once the kind resolves it."""

    param: str
    form: str  # from_pod
    spec: dict  # the whole mapping from the runbook
    label: str
    value: str  # the label's value (the pod's name)

    def describe(self) -> str:
        return f"{self.param} {self.form.replace('_', ' ')} {self.value} (label {self.label})"


def form_of(entry) -> str | None:
    """The form key of a ``params_from_labels`` mapping entry (None for a plain label name)."""
    if not isinstance(entry, dict):
        return None
    return next((k for k in entry if k in label_forms()), None)


def label_params(rb, alert: Alert) -> dict[str, str]:
    """Parameters from the alert's labels, through the runbook's ``params_from_labels``
    (plain label names; the forms are :func:`label_sources`)."""
    out: dict[str, str] = {}
    for param, label in rb.params_from_labels.items():
        if isinstance(label, str) and label in alert.labels:
            out[param] = alert.labels[label]
    return out


def label_sources(rb, alert: Alert) -> list[LabelSource]:
    """The parameters a step kind resolves from one of the alert's labels."""
    out = []
    for param, entry in rb.params_from_labels.items():
        form = form_of(entry)
        if form is not None and str(entry[form]) in alert.labels:
            out.append(LabelSource(param, form, dict(entry), str(entry[form]), alert.labels[str(entry[form])]))
    return out


def group_params(rb, alerts: list[Alert]) -> tuple[Alert, dict[str, str]]:
    """The alert a run is for, and its parameters; several firing alerts of one
    group are one run only when they give the same parameters (and the same
    labels for the parameters resolved later: two pods may belong to two
    Deployments)."""
    distinct: dict[tuple, list[Alert]] = {}
    for a in alerts:
        key = sorted(label_params(rb, a).items()) + sorted((s.param, f"{s.form} {s.value}") for s in label_sources(rb, a))
        distinct.setdefault(tuple(key), []).append(a)
    if len(distinct) > 1:
        lines = "; ".join(f"{a[0].fingerprint} ({', '.join(f'{k}={v}' for k, v in key) or 'no parameters'})"
                          for key, a in distinct.items())
        raise RunbookError(f"the payload holds {len(alerts)} firing alerts that give different parameters: {lines}; "
                           "run one with --fingerprint FP")
    group = sorted(alerts, key=lambda a: a.starts_at or "")
    first = group[0]
    first.others = [a.fingerprint for a in group[1:]]
    first.others_starts = {a.fingerprint: a.starts_at for a in group[1:] if a.starts_at}
    return first, label_params(rb, first)


def held_by(what: str, holder: dict[str, Any], force: bool) -> str:
    """A lock's refusal naming its ``holder`` (run, who, started, host, pid): RunbookError (exit 3),
    or with ``force`` the warning to show instead.  Shared by every kind of :class:`runbook.store.Lock`."""
    desc = (f"run {holder.get('run', '?')} started by {holder.get('who', '?')} at {holder.get('started', '?')}"
            f" on {holder.get('host', '?')} (pid {holder.get('pid', '?')})")
    if not force:
        raise RunbookError(f"{what}: {desc}; follow that run (runbook audit show "
                           f"{holder.get('run', 'RUN_ID')}) or pass --force to run anyway", exit_code=3) from None
    return f"warning: --force: {what} by {desc}"


class RunLock:
    """A named lock held (flock) for a run's life, across the processes of this
    machine; the kernel drops it when the process dies.  Used per alert
    fingerprint (one run per alert) and per run id (no resume while the run
    still goes, no two resumes at once)."""

    def __init__(self, directory: Path, name: str, what: str = "this alert is already being handled"):
        safe = "".join(c for c in name if c.isalnum() or c in "-_")[:80] or "lock"
        self.path = directory / "locks" / f"{safe}.lock"
        self.name = safe
        self.what = what
        self.fd: int | None = None

    def acquire(self, run_id: str, who: str, started: str, force: bool = False) -> str | None:
        """Take the lock; returns a warning when --force overrode a holder.
        Raises RunbookError (exit 3) naming the holder otherwise."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._held(fd, force)
            try:  # a releasing holder may have removed the file between our open and flock
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # we locked a file no longer there: lock the one that is
        from runbook.audit import hostname

        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"run": run_id, "who": who, "started": started, "host": hostname(),
                                  "pid": os.getpid()}).encode(), 0)
        self.fd = fd
        return None

    def _held(self, fd: int, force: bool) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (ValueError, OSError):
            holder = {}
        os.close(fd)
        return held_by(self.what, holder if isinstance(holder, dict) else {}, force)

    def check(self) -> None:
        """A flock is held until this process closes it: it cannot be lost."""

    def held(self) -> bool:
        """Whether a live process holds this lock now (without taking it, or creating its file)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock we took
        return False

    def release(self) -> None:
        """Remove the file while still holding it (a waiter that opened it
        notices and retries on a new file), then close, which unlocks."""
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
