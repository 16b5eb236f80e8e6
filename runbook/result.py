"""The result of a run as one JSON document (``runbook run --format json``,
``runbook resume --format json``, ``runbook audit show --format result``).

Built from the run's audit records only, so it says what the log says: the
parameters as recorded (secret ones are never stored, so they show as masked),
every execution of a step (its intent, the decision before it, its result and
per-host results) and every decision with who made it.  ``json_schema()`` is its
JSON Schema (``runbook schema --result``).
"""

from __future__ import annotations

from typing import Any

VERSION = 1


def _decision(d: dict[str, Any]) -> dict[str, Any]:
    from runbook.report import chosen

    return {"step": d.get("step"), "choice": chosen(d), "approved": bool(d.get("approved")),
            "by": d.get("by"), "how": d.get("how"), "at": d.get("ts")}


def _hosts(result: dict[str, Any]) -> dict[str, Any] | None:
    data = result.get("data") if isinstance(result.get("data"), dict) else {}
    hosts = data.get("hosts")
    if not isinstance(hosts, dict):
        return None
    out = {}
    for name, h in hosts.items():
        h = h if isinstance(h, dict) else {}
        out[str(name)] = {k: h.get(k) for k in ("status", "exit_code", "duration", "error", "outputs") if k in h}
        for stream in ("stdout", "stderr"):
            if stream in h:
                out[str(name)][stream] = h[stream]
    return out


def _status(ex) -> str:
    if ex.result is not None:
        return str(ex.result.get("status"))
    if ex.decision is not None and not ex.decision.get("approved"):
        from runbook.report import chosen

        return chosen(ex.decision)  # declined, skipped, paused for a person
    if ex.in_doubt:
        return "in doubt"
    if ex.cut_short:
        return "cut short"
    return "not run"


def _declared(started: dict[str, Any]) -> dict[str, Any]:
    """The steps of the runbook that ran (id -> step), when its file still has the sha256 the
    run recorded: a step that never started (declined) has no intent to say its kind and effect."""
    from runbook import spec

    path, sha = started.get("path"), started.get("sha256")
    if not isinstance(path, str) or not isinstance(sha, str):
        return {}
    try:
        rb, _ = spec.load_runbook(path)
    except Exception:  # noqa: BLE001 - a nicety: the result stands on the log alone
        return {}
    if rb is None or rb.sha256 != sha:
        return {}
    return {s.id: s for s in rb.steps}


def _step(ex, declared: dict[str, Any]) -> dict[str, Any]:
    intent, result = ex.intent or {}, ex.result or {}
    known = declared.get(ex.id) if not intent else None
    step: dict[str, Any] = {
        "id": ex.id,
        "kind": intent.get("kind") or getattr(known, "kind", None),
        "stage": intent.get("stage") or getattr(known, "stage", None),
        "effect": intent.get("effect") or getattr(known, "effect", None),
        "targets": list(intent.get("targets") or []),
        "status": _status(ex),
        "exit_code": result.get("exit_code"),
        "duration": result.get("duration"),
        "attempt": intent.get("attempt", result.get("attempt", 1)),
        "attempts": result.get("attempts", 1 if result else 0),
        "started": intent.get("ts"),
        "finished": result.get("ts"),
        "outputs": result.get("outputs") or {},
        "error": result.get("error"),
        "output_excerpt": result.get("output_excerpt"),
        "output_bytes": result.get("output_bytes"),
        "hosts": _hosts(result),
        "decision": _decision(ex.decision) if ex.decision else None,
        "after_failure": _decision(ex.after) if ex.after else None,
    }
    if ex.marked_by:
        step["marked_done_by"] = ex.marked_by
    return step


def _end_message(executions) -> str | None:
    """The message of the end step the run finished at, if it did."""
    from runbook import steps

    last = executions[-1] if executions else None
    kind = (last.intent or {}).get("kind") if last is not None else None
    if last is None or last.result is None or kind not in steps.KINDS or not steps.get(kind).ENDS_RUN:
        return None
    return str(last.result.get("output_excerpt") or "").strip() or None


def build(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The result document of one run from its records (in log order)."""
    from runbook import audit
    from runbook.report import _Run

    run = _Run.of(records)
    s, fin = run.started, run.finished
    declared = _declared(s) if any(ex.intent is None for ex in run.executions) else {}
    summary = audit.summarize(records)
    return {
        "version": VERSION,
        "run_id": summary["run"],
        "runbook": s.get("runbook"),
        "title": s.get("title"),
        "path": s.get("path"),
        "sha256": s.get("sha256"),
        "dry_run": bool(s.get("dry_run")),
        "who": s.get("who"),
        "host": s.get("host"),
        "started": summary["started"],
        "finished": summary["finished"],
        "params": dict(s.get("params") or {}),  # as logged: secrets masked (never stored)
        "status": summary["status"],
        "exit_code": summary["exit_code"],
        "message": (fin or {}).get("message") or _end_message(run.executions),
        "in_doubt": list(summary["in_doubt"]),
        "steps": [_step(ex, declared) for ex in run.executions],
        "decisions": [_decision(r) for r in records if r.get("type") == "decision"],
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :func:`build`'s document."""
    str_or_null = {"type": ["string", "null"]}
    num_or_null = {"type": ["number", "null"]}
    int_or_null = {"type": ["integer", "null"]}
    decision = {
        "type": "object",
        "required": ["step", "choice", "approved", "by", "how"],
        "properties": {
            "step": {"type": "string"},
            "choice": {"type": "string", "description": "approved, skipped, declined before a step; retry, skip, "
                                                        "follow on_failure, abort after a failure; mark-done, rerun"},
            "approved": {"type": "boolean"},
            "by": str_or_null,
            "how": {"type": ["string", "null"], "description": "prompt, --yes, no-terminal, answer-flag, step-mode, ..."},
            "at": str_or_null,
        },
        "additionalProperties": False,
    }
    host = {
        "type": "object",
        "properties": {
            "status": {"type": "string"},
            "exit_code": int_or_null,
            "duration": num_or_null,
            "error": str_or_null,
            "outputs": {"type": ["object", "null"]},
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
        },
        "additionalProperties": False,
    }
    step = {
        "type": "object",
        "required": ["id", "kind", "effect", "targets", "status", "duration", "outputs", "hosts", "decision"],
        "properties": {
            "id": {"type": "string"},
            "kind": str_or_null,
            "stage": str_or_null,
            "effect": {"enum": ["read", "write", None]},
            "targets": {"type": "array", "items": {"type": "string"}},
            "status": {"type": "string", "description": "the result's status (ok, failed, timeout, refused, "
                                                        "skipped, ...), or declined, skipped, in doubt, cut short"},
            "exit_code": int_or_null,
            "duration": num_or_null,
            "attempt": {"type": "integer"},
            "attempts": {"type": "integer"},
            "started": str_or_null,
            "finished": str_or_null,
            "outputs": {"type": "object"},
            "error": str_or_null,
            "output_excerpt": str_or_null,
            "output_bytes": int_or_null,
            "hosts": {"oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": host}],
                      "description": "per-host results of a step on several hosts (ssh), else null"},
            "decision": {"oneOf": [{"type": "null"}, decision], "description": "the decision before the step"},
            "after_failure": {"oneOf": [{"type": "null"}, decision],
                              "description": "the operator's choice after the step failed"},
            "marked_done_by": {"type": "string"},
        },
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/runbook-executor/runbook/result.schema.json",
        "title": "runbook run result",
        "description": "The result of one run (runbook run/resume --format json, runbook audit show --format result), "
                       "built from its audit records.",
        "type": "object",
        "required": ["version", "run_id", "runbook", "params", "status", "exit_code", "steps", "decisions"],
        "properties": {
            "version": {"const": VERSION},
            "run_id": {"type": "string"},
            "runbook": str_or_null,
            "title": str_or_null,
            "path": str_or_null,
            "sha256": str_or_null,
            "dry_run": {"type": "boolean"},
            "who": str_or_null,
            "host": str_or_null,
            "started": str_or_null,
            "finished": str_or_null,
            "params": {"type": "object", "description": "as recorded; secret parameters are shown as \"***\""},
            "status": {"type": "string", "description": "resolved, completed, escalated, failed, refused, "
                                                        "interrupted, aborted, paused, ...; in progress or in doubt "
                                                        "when the run has not finished"},
            "exit_code": int_or_null,
            "message": str_or_null,
            "in_doubt": {"type": "array", "items": {"type": "string"}},
            "steps": {"type": "array", "items": step, "description": "every execution of a step, in order"},
            "decisions": {"type": "array", "items": decision, "description": "every decision, in order"},
        },
        "additionalProperties": False,
    }
