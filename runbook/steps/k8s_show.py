"""The ``k8s`` step's results: plain data for conditions and kubectl-like
tables for people.  No kubernetes import: objects are the API's JSON."""

from __future__ import annotations

import datetime
import re
from typing import Any

from runbook.audit import parse_time

TABLE_ROWS, TABLE_CELL = 100, 80
SECRET_MASK = "***"
PRESSURE = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
REASONS_OF_NOTE = ("OOMKilled", "Error", "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                   "ContainerCannotRun", "Evicted")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def age(text: str | None) -> str:
    """kubectl's short durations: 45s, 12m, 3h, 5d."""
    t = parse_time(text)
    if t is None:
        return "<unknown>"
    s = max(0, int((_now() - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 3600 * 2:
        return f"{s // 60}m"
    if s < 86400 * 2:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def meta(obj: dict) -> dict:
    return obj.get("metadata") or {}


def name_of(obj: dict) -> str:
    return meta(obj).get("name", "")


# --- pods ----------------------------------------------------------------------


def _containers(statuses: list[dict], reasons: list, last: list, oom: list) -> int:
    """Collect termination reasons, last terminations and OOM kills; returns the restarts."""
    restarts = 0
    for c in statuses:
        restarts += int(c.get("restartCount") or 0)
        state, last_state = c.get("state") or {}, c.get("lastState") or {}
        for st in (state.get("waiting"), state.get("terminated")):
            if st and st.get("reason") and st.get("reason") not in ("PodInitializing", "Completed"):
                reasons.append(st["reason"])
        term = last_state.get("terminated")
        if term:
            last.append({"container": c.get("name"), "reason": term.get("reason") or "", "exit_code": term.get("exitCode"),
                         "finished": term.get("finishedAt")})
            if term.get("reason"):
                reasons.append(term["reason"])
        if (term or {}).get("reason") == "OOMKilled" or (state.get("terminated") or {}).get("reason") == "OOMKilled":
            oom.append(c.get("name"))
    return restarts


def _init_status(spec: dict, init: list[dict]) -> str | None:
    """kubectl's Init:… status while init containers have not all finished, else None."""
    total = len(spec.get("initContainers") or []) or len(init)
    for i, c in enumerate(init):
        state = c.get("state") or {}
        term, waiting = state.get("terminated"), state.get("waiting")
        if term and term.get("exitCode") == 0:
            continue
        if c.get("started") and (spec.get("initContainers") or [{}] * (i + 1))[i].get("restartPolicy") == "Always":
            continue  # a native sidecar that is running counts as done
        if term:
            return f"Init:{term.get('reason') or 'Error'}" if term.get("reason") else f"Init:ExitCode:{term.get('exitCode')}"
        if waiting and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            return f"Init:{waiting['reason']}"
        return f"Init:{i}/{total}"
    return None


def pod_row(pod: dict) -> dict:
    """A pod as kubectl shows it, plus what a condition needs (init containers included)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    init = status.get("initContainerStatuses") or []
    total = len(spec.get("containers") or []) or len(statuses)
    ready = sum(1 for c in statuses if c.get("ready"))
    shown = status.get("reason") or status.get("phase") or "Unknown"
    reasons: list = []
    last: list = []
    oom: list = []
    restarts = _containers(init, reasons, last, oom) + _containers(statuses, reasons, last, oom)
    initializing = _init_status(spec, init)
    if initializing:
        shown = initializing
    else:
        for c in statuses:
            state = c.get("state") or {}
            if "waiting" in state and state["waiting"].get("reason"):
                shown = state["waiting"]["reason"]
            elif "terminated" in state and state["terminated"].get("reason"):
                shown = state["terminated"]["reason"]
    if meta(pod).get("deletionTimestamp"):
        shown = "Terminating"
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    is_ready = conditions.get("Ready") == "True" if conditions else (total > 0 and ready == total)
    return {
        "name": name_of(pod), "namespace": meta(pod).get("namespace"), "ready": f"{ready}/{total}",
        "is_ready": bool(is_ready), "status": shown, "restarts": restarts, "last_termination": last,
        "reasons": list(dict.fromkeys(reasons)), "oom_killed": list(dict.fromkeys(oom)), "node": spec.get("nodeName"),
        "ip": status.get("podIP"), "age": age(meta(pod).get("creationTimestamp")),
    }


def _restarts_text(row: dict, pod: dict) -> str:
    text = str(row["restarts"])
    last = row["last_termination"]
    if row["restarts"] and last and last[0].get("finished"):
        text += f" ({age(last[0]['finished'])} ago)"
    return text


def pod_facts(pods: list[dict]) -> dict:
    rows = [pod_row(p) for p in pods]
    reasons: list[str] = []
    for r in rows:
        reasons += r["reasons"]
    return {
        "pods": rows,
        "not_ready": [r["name"] for r in rows if not r["is_ready"]],
        "restarts": sum(r["restarts"] for r in rows),
        "reasons": list(dict.fromkeys(reasons)),
        "oom_killed": [r["name"] for r in rows if r["oom_killed"]],
    }


def node_pressure(nodes: list[dict]) -> list[dict]:
    out = []
    for n in nodes:
        for c in (n.get("status") or {}).get("conditions") or []:
            if c.get("type") in PRESSURE and c.get("status") == "True":
                out.append({"node": name_of(n), "condition": c["type"], "message": c.get("message", "")})
            elif c.get("type") == "Ready" and c.get("status") != "True":
                out.append({"node": name_of(n), "condition": "NotReady", "message": c.get("message", "")})
    return out


def node_status(n: dict) -> str:
    ready = next((c.get("status") for c in (n.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    text = "Ready" if ready == "True" else "NotReady" if ready else "Unknown"
    if (n.get("spec") or {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    return text


def node_roles(n: dict) -> str:
    roles = [k.split("/", 1)[1] for k in (meta(n).get("labels") or {}) if k.startswith("node-role.kubernetes.io/")]
    return ",".join(sorted(roles)) or "<none>"


# --- workloads -------------------------------------------------------------------


def replicas(obj: dict) -> dict:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "replicas": spec.get("replicas", 1) if "replicas" in spec or obj.get("kind") != "DaemonSet" else status.get("desiredNumberScheduled", 0),
        "ready_replicas": int(status.get("readyReplicas") or status.get("numberReady") or 0),
        "updated_replicas": int(status.get("updatedReplicas") or status.get("updatedNumberScheduled") or 0),
        "available_replicas": int(status.get("availableReplicas") or status.get("numberAvailable") or 0),
    }


def selector_string(sel: dict | None) -> str:
    """A LabelSelector (matchLabels, matchExpressions) as a selector string."""
    if not sel:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op, key, values = e.get("operator"), e.get("key"), e.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def containers_of(obj: dict) -> list[dict]:
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or obj.get("spec") or {}
    out = []
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        out.append({"name": c.get("name"), "image": c.get("image"),
                    "memory_limit": (res.get("limits") or {}).get("memory"),
                    "memory_request": (res.get("requests") or {}).get("memory"),
                    "cpu_limit": (res.get("limits") or {}).get("cpu"),
                    "cpu_request": (res.get("requests") or {}).get("cpu")})
    return out


# --- quantities (metrics) -----------------------------------------------------------

_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DEC = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def quantity(text: str | None) -> float:
    """A Kubernetes quantity (`250m`, `512Mi`, `1.5`) as a number."""
    if text is None:
        return 0.0
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)", str(text).strip())
    if not m:
        return 0.0
    n, unit = float(m.group(1)), m.group(2)
    return n * (_BIN[unit] if unit in _BIN else _DEC[unit])


def cpu_text(cores: float) -> str:
    return f"{round(cores * 1000)}m"


def mem_text(b: float) -> str:
    return f"{round(b / 2**20)}Mi"


# --- tables ---------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[Any]], empty_text: str = "No resources found.") -> str:
    if not rows:
        return empty_text + "\n"

    def cell(v) -> str:
        t = "<none>" if v is None or v == "" else str(v).replace("\n", " ")
        return t if len(t) <= TABLE_CELL else t[: TABLE_CELL - 1] + "…"

    shown = [[cell(v) for v in r] for r in rows[:TABLE_ROWS]]
    widths = [max([len(h)] + [len(r[i]) for r in shown]) for i, h in enumerate(headers)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in shown]
    if len(rows) > TABLE_ROWS:
        lines.append(f"… {len(rows) - TABLE_ROWS} more not shown ({len(rows)} in all)")
    return "\n".join(lines) + "\n"


def list_table(plural: str, items: list[dict], wide: bool = False, all_namespaces: bool = False) -> str:
    ns_col = ["NAMESPACE"] if all_namespaces else []

    def ns(o):
        return [meta(o).get("namespace")] if all_namespaces else []

    if plural == "pods":
        headers = ns_col + ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE"] if wide else [])
        rows = []
        for p in items:
            r = pod_row(p)
            rows.append(ns(p) + [r["name"], r["ready"], r["status"], _restarts_text(r, p), r["age"]]
                        + ([r["ip"], r["node"]] if wide else []))
        return table(headers, rows)
    if plural in ("deployments", "statefulsets"):
        headers = ns_col + (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"] if plural == "deployments"
                            else ["NAME", "READY", "AGE"])
        rows = []
        for d in items:
            r = replicas(d)
            row = [name_of(d), f"{r['ready_replicas']}/{r['replicas']}"]
            row += [r["updated_replicas"], r["available_replicas"]] if plural == "deployments" else []
            rows.append(ns(d) + row + [age(meta(d).get("creationTimestamp"))])
        if wide and plural == "deployments":
            headers += ["CONTAINERS", "IMAGES", "SELECTOR"]
            for row, d in zip(rows, items):
                cs = containers_of(d)
                row += [",".join(c["name"] or "" for c in cs), ",".join(c["image"] or "" for c in cs),
                        selector_string((d.get("spec") or {}).get("selector"))]
        return table(headers, rows)
    if plural == "replicasets":
        headers = ns_col + ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
        return table(headers, [ns(o) + [name_of(o), (o.get("spec") or {}).get("replicas", 0),
                                        (o.get("status") or {}).get("replicas", 0),
                                        (o.get("status") or {}).get("readyReplicas", 0),
                                        age(meta(o).get("creationTimestamp"))] for o in items])
    if plural == "nodes":
        headers = ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
        return table(headers, [[name_of(n), node_status(n), node_roles(n), age(meta(n).get("creationTimestamp")),
                                ((n.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion")] for n in items])
    if plural == "services":
        headers = ns_col + ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"]
        rows = []
        for s in items:
            spec = s.get("spec") or {}
            ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
            rows.append(ns(s) + [name_of(s), spec.get("type", "ClusterIP"), spec.get("clusterIP"), ports,
                                 age(meta(s).get("creationTimestamp"))])
        return table(headers, rows)
    if plural == "events":
        return events_table([event_row(e) for e in items], all_namespaces)
    return table(ns_col + ["NAME", "AGE"], [ns(o) + [name_of(o), age(meta(o).get("creationTimestamp"))] for o in items])


def event_row(e: dict) -> dict:
    inv = e.get("involvedObject") or e.get("regarding") or {}
    last = e.get("lastTimestamp") or e.get("eventTime") or (e.get("series") or {}).get("lastObservedTime") \
        or e.get("firstTimestamp") or meta(e).get("creationTimestamp")
    return {"type": e.get("type"), "reason": e.get("reason"), "message": (e.get("message") or e.get("note") or "").strip(),
            "count": int(e.get("count") or 1), "last_seen": last, "namespace": meta(e).get("namespace"),
            "object": f"{(inv.get('kind') or '').lower()}/{inv.get('name', '')}"}


def events_table(rows: list[dict], all_namespaces: bool = False) -> str:
    headers = (["NAMESPACE"] if all_namespaces else []) + ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    return table(headers, [([r["namespace"]] if all_namespaces else []) +
                           [age(r["last_seen"]) + (f" (x{r['count']})" if r["count"] > 1 else ""), r["type"], r["reason"],
                            r["object"], r["message"]] for r in rows], "No events found.")


def sort_events(items: list[dict]) -> list[dict]:
    return sorted(items, key=lambda e: event_row(e)["last_seen"] or "")


def mask_secret(obj: dict) -> dict:
    """A Secret's values never reach the screen, the audit log or a condition."""
    if obj.get("kind") == "Secret" or "data" in obj and obj.get("type") and "apiVersion" in obj and obj.get("kind") in (None, "Secret"):
        obj = dict(obj)
        for key in ("data", "stringData"):
            if isinstance(obj.get(key), dict):
                obj[key] = {k: SECRET_MASK for k in obj[key]}
        md = dict(meta(obj))
        ann = dict(md.get("annotations") or {})
        if "kubectl.kubernetes.io/last-applied-configuration" in ann:
            ann["kubectl.kubernetes.io/last-applied-configuration"] = SECRET_MASK
            md["annotations"] = ann
            obj["metadata"] = md
    return obj
