"""``k8s``: Kubernetes API calls against an inventory cluster (the official
``kubernetes`` client, imported only when a step runs).

    - id: pods
      k8s: "get pods -l app={{ params.service }} -n {{ params.namespace }} -o wide"
    - id: restart
      k8s: {rollout_restart: "deployment/{{ params.service }}", namespace: "{{ params.namespace }}"}
      timeout: 2m

Verbs (structured key / shorthand):

* reads: ``get`` (any core/apps/batch/… kind, by name, ``selector``,
  ``field_selector``, ``all_namespaces``), ``logs`` (``container``, ``tail``,
  ``since``, ``previous``; of a pod, or of the first pod of a workload),
  ``events`` (of an object, or of a namespace), ``summary`` (a workload: pods
  not ready, restarts, last termination reasons, node pressure), ``top``
  (metrics.k8s.io), ``rollout_status`` (waits until updated, ready and
  available replicas match; ``timeout``, else the step's, else 5m);
* writes, confirmed first: ``rollout_restart`` (the pod-template annotation
  ``kubectl.kubernetes.io/restartedAt``, as kubectl), ``rollout_undo``
  (``to_revision``, default the previous one), ``scale`` (``replicas``),
  ``delete`` (pods), ``cordon`` / ``uncordon`` (nodes), ``patch`` (``type``:
  strategic, merge or json; ``body``; ``subresource``).

The shorthand takes kubectl's words and flags (``logs deployment/api -n
production --tail=100``) and becomes the same API calls; no kubectl binary
runs.  It is split into tokens before rendering, templates kept whole, and each
template token renders to exactly one value.

The namespace is the step's, else the inventory cluster's, else ``default``:
never whatever the operator's kubeconfig context happens to point at.
``--dry-run`` shows every API call (method, path, query, body) without
connecting; ``--server-dry-run`` sends write calls with ``dryRun=All``.
Results: ``items``, ``object``, ``names``, ``count``, ``pods``, ``not_ready``,
``restarts``, ``reasons``, ``oom_killed``, ``node_pressure``, ``events``,
replica counts, ``done``, ``revision``, ``usage`` and more (RESULT_FIELDS).
"""

from __future__ import annotations

import datetime
import json
import re
from urllib.parse import quote
from typing import Any

from runbook import expr
from runbook import schema as S
from runbook.errors import RunbookError
from runbook.schema import parse_duration
from runbook.secrets import MASK, LazySecret, Secret
from runbook.steps import Action, StepResult
from runbook.steps import k8s_parse as P

_TARGET = S.Str(doc="KIND/NAME (e.g. deployment/api) or KIND")
_INT_OR_TEMPLATE = S.OneOf(((int, S.Int(minimum=0)), (str, S.Str())), expect_text="a whole number or a template")
_STRUCTURED = S.Obj(
    {
        "get": S.Str(doc="KIND or KIND/NAME to read (pods, deployment/api, nodes, …)"),
        "logs": S.Str(doc="pod/NAME, NAME, or a workload (deployment/api: its first pod)"),
        "events": S.Str(doc="the object whose events to read (deployment/api), or a kind"),
        "summary": S.Str(doc="a workload: pods not ready, restarts, termination reasons, node pressure"),
        "top": S.Str(enum=("pods", "pod", "nodes", "node"), doc="CPU and memory from the metrics API"),
        "rollout_status": _TARGET,
        "rollout_restart": _TARGET,
        "rollout_undo": _TARGET,
        "scale": _TARGET,
        "delete": S.Str(doc="pod/NAME"),
        "cordon": S.Str(doc="a node name"),
        "uncordon": S.Str(doc="a node name"),
        "patch": _TARGET,
        "cluster": S.Str(doc="the inventory cluster (default: the only one, else 'main')"),
        "namespace": S.Str(doc="default: the inventory cluster's namespace, else 'default'"),
        "name": S.Str(doc="the object's name (or give it as KIND/NAME)"),
        "all_namespaces": S.Bool(),
        "selector": S.Str(doc="label selector, e.g. app=api"),
        "field_selector": S.Str(doc="field selector, e.g. status.phase!=Running"),
        "output": S.Str(enum=P.OUTPUTS, doc="wide, name or json (stdout)"),
        "container": S.Str(),
        "tail": _INT_OR_TEMPLATE,
        "since": S.OneOf(((str, S.Str()), (int, S.Int(minimum=1))), doc="logs newer than this (5m, 1h)"),
        "previous": S.Bool(doc="logs of the previous (terminated) container"),
        "replicas": _INT_OR_TEMPLATE,
        "to_revision": _INT_OR_TEMPLATE,
        "type": S.Str(enum=tuple(P.PATCH_TYPES), doc="patch type (default strategic)"),
        "body": S.AnyValue(doc="the patch: a mapping, or a list of operations for type json"),
        "subresource": S.Str(enum=("status", "scale")),
        "grace_period": _INT_OR_TEMPLATE,
        "timeout": S.Duration(positive=True, doc="rollout_status: how long to wait"),
    },
    doc="A Kubernetes API call",
)
SCHEMA = S.OneOf(
    ((str, S.Str(doc="kubectl-style: get pods -l app=api, logs deployment/api --tail=100, rollout restart deployment/api …")),
     (dict, _STRUCTURED)),
    doc="A Kubernetes API call against an inventory cluster",
    expect_text="a kubectl-style command or a mapping with one verb (get, logs, rollout_restart, …)",
)
DEFAULT_READONLY = False
FIXED_EFFECT = None
SERVER_DRY_RUN = True
RESULT_FIELDS = (
    "verb", "resource", "namespace", "cluster", "items", "object", "names", "count", "pods", "not_ready", "restarts",
    "reasons", "oom_killed", "node_pressure", "nodes", "events", "warnings", "containers", "replicas",
    "ready_replicas", "updated_replicas", "available_replicas", "done", "revision", "usage", "pod", "container",
    "dry_run", "message",
)
SHOW_OUTPUT = "head"
SHOW_LINES = 60
DEFAULT_ROLLOUT_TIMEOUT = 300.0
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_UNKNOWN = re.compile(r"<(steps|inventory)\.[^>]*>")


def normalize(value) -> dict:
    if isinstance(value, str):
        return P.from_shorthand(value)
    return P.from_mapping(value)


def effect_of(body: dict) -> str | None:
    verb = body.get("verb")
    if verb in P.READ_VERBS:
        return "read"
    if verb in P.WRITE_VERBS:
        return "write"
    return None


def templates(body: dict) -> list[tuple[str, str, str]]:
    out = []
    for key in ("name", "namespace", "selector", "field_selector", "container", "cluster", "since", "tail",
                "replicas", "to_revision", "grace_period"):
        if isinstance(body.get(key), str):
            out.append((key, body[key], "text"))
    if body.get("patch") is not None and body.get("shorthand") is None:
        out += [(f"body{path}", s, "value") for path, s in expr.iter_strings(body["patch"])]
    return out


def edges(body: dict) -> list[tuple[str, str]]:
    return []


def inventory_targets(body: dict) -> list[tuple[str, str, str]]:
    c = body.get("cluster")
    return [("cluster", c, "cluster")] if isinstance(c, str) else []


def static_problems(step) -> list[tuple[str, str, str]]:
    body = step.body
    problems = [(key if body.get("shorthand") is None else "shorthand", msg, "schema") for key, msg in body["problems"]]
    if step.readonly is True and body.get("verb") in P.WRITE_VERBS:
        problems.append((body["verb"] if body.get("shorthand") is None else "shorthand",
                         f"readonly: true, but {P._show(body['verb'])} changes the cluster: drop readonly "
                         "(write steps are confirmed before they run)", "schema"))
    if body.get("since") is not None and not isinstance(body["since"], int) and not expr.is_template(body["since"]) \
            and parse_duration(body["since"]) is None:
        problems.append(("since", f"since takes a duration such as 5m or 1h, got {body['since']!r}", "schema"))
    if body.get("timeout") is not None and parse_duration(body["timeout"]) is None:
        problems.append(("timeout", f"timeout takes a duration such as 5m, got {body['timeout']!r}", "schema"))
    for key in ("tail", "replicas", "to_revision", "grace_period"):
        if isinstance(body.get(key), int) and body[key] < (1 if key == "to_revision" else 0) and not isinstance(body[key], bool):
            problems.append((key, f"{key} must be {'positive' if key == 'to_revision' else 'zero or more'}", "schema"))
    return problems


# --- rendering ----------------------------------------------------------------


def _unknown(text: str) -> bool:
    return bool(_UNKNOWN.search(text))


def _planning(r) -> bool:
    """A dry-run: values only known at run time render as <steps.…>.  In a live
    run such text is just text (a parameter could hold it) and is checked."""
    run = r.context.get("run") if isinstance(getattr(r, "context", None), dict) else None
    return bool(run and run.get("dry_run"))


def _text(r, src, what: str, pattern=None, max_len: int = 253) -> str:
    """One token, rendered as one value and checked."""
    if isinstance(src, (Secret, LazySecret)):
        raise RunbookError(f"{what}: a secret cannot be used here")
    value = r.value(src) if isinstance(src, str) else src
    if isinstance(value, (Secret, LazySecret)):
        raise RunbookError(f"{what}: a secret cannot be used here")
    if isinstance(value, expr.Unknown):
        return str(value)
    text = r.text(src) if isinstance(src, str) else str(src)
    if pattern is not None and not (_planning(r) and _unknown(text)) and (not pattern.fullmatch(text) or len(text) > max_len):
        raise RunbookError(f"invalid {what} {text!r}: lower-case letters, digits, '-' and '.' only"
                           f"{' (a template value is always one name, never more words or flags)' if expr.is_template(src) else ''}")
    return text


def _int(r, src, what: str, minimum: int = 0):
    if src is None:
        return None
    if isinstance(src, int) and not isinstance(src, bool):
        value: Any = src
    else:
        value = r.value(src)
        if isinstance(value, expr.Unknown):
            return str(value)
        if isinstance(value, str) and _unknown(value) and _planning(r):
            return value
        try:
            value = int(str(value).strip())
        except ValueError:
            raise RunbookError(f"{what} must be a whole number, got {value!r}") from None
    if value < minimum:
        raise RunbookError(f"{what} must be at least {minimum}, got {value}")
    return value


def _grace(value):
    return 1 if value == 0 else value


def _data(r, value, what: str):
    """A patch body: each string renders on its own; `{{ x }}` alone keeps its type."""
    if isinstance(value, str):
        v = r.value(value) if expr.is_template(value) else value
        if isinstance(v, (Secret, LazySecret)) or (expr.is_template(value) and isinstance(v, str)
                                                  and MASK in r.text(value) and MASK not in v):
            raise RunbookError(f"{what}: a secret cannot be sent in a patch (it would be stored on the object, "
                               "shown and logged)")
        return str(v) if isinstance(v, expr.Unknown) else v
    if isinstance(value, dict):
        return {k: _data(r, v, what) for k, v in value.items()}
    if isinstance(value, list):
        return [_data(r, v, what) for v in value]
    return value


def _cluster(r, body) -> tuple[str, Any]:
    inventory = getattr(r, "inventory", None)
    if inventory is None:
        raise RunbookError("a k8s step needs an inventory with a cluster (use --inventory FILE or --env NAME)")
    names = inventory.names("cluster")
    if body.get("cluster") is not None:
        name = _text(r, body["cluster"], "cluster name")
    elif len(names) == 1:
        name = names[0]
    elif "main" in names:
        name = "main"
    elif not names:
        raise RunbookError(f"a k8s step needs a cluster, and {inventory.path} defines none (add clusters: main: {{kubeconfig: …}})")
    else:
        raise RunbookError(f"{inventory.path} defines several clusters ({', '.join(names)}) and none is 'main': "
                           "say which (cluster: NAME, or --cluster NAME in the shorthand)")
    return name, inventory.lookup("cluster", name)


def _where(cluster) -> str:
    if cluster.in_cluster:
        return "in-cluster service account"
    parts = [f"kubeconfig {cluster.kubeconfig}" if cluster.kubeconfig else "default kubeconfig"]
    parts.append(f"context {cluster.context}" if cluster.context else "current context")
    return ", ".join(str(p) for p in parts)


def render_spec(step, r) -> dict:
    body = step.body
    if body["problems"]:
        key, msg = body["problems"][0]
        raise RunbookError(msg)
    cname, cluster = _cluster(r, body)
    verb, plural = body["verb"], body["resource"]
    namespaced = RESOURCE_NAMESPACED(plural) if plural else True
    if verb == "top":
        namespaced = plural == "pods"
    ns = None
    if namespaced and not body["all_namespaces"]:
        if body["namespace"] is not None:
            ns = _text(r, body["namespace"], "namespace", _DNS_LABEL, 63)
        elif cluster.namespace:
            ns = str(cluster.namespace)
        else:
            ns = "default"
    name_pattern = _DNS_LABEL if plural == "namespaces" else _DNS_SUBDOMAIN
    spec = {
        "verb": verb, "resource": plural, "cluster": cname, "namespace": ns,
        "all_namespaces": bool(body["all_namespaces"]),
        "name": _text(r, body["name"], f"{P.RESOURCES[plural][2].lower() if plural else 'object'} name", name_pattern)
        if body["name"] is not None else None,
        "selector": _text(r, body["selector"], "selector") if body["selector"] is not None else None,
        "field_selector": _text(r, body["field_selector"], "field selector") if body["field_selector"] is not None else None,
        "output": body["output"],
        "container": _text(r, body["container"], "container name", _DNS_LABEL, 63) if body["container"] is not None else None,
        "tail": _int(r, body["tail"], "tail"),
        "since": None, "previous": bool(body["previous"]),
        "replicas": _int(r, body["replicas"], "replicas"),
        "to_revision": _int(r, body["to_revision"], "to_revision", 1),
        "patch": _data(r, body["patch"], "patch body") if body["patch"] is not None else None,
        "patch_type": body["patch_type"], "subresource": body["subresource"],
        # as kubectl: 0 without --force means 1 (a force delete can leave a StatefulSet pod running twice)
        "grace_period": _grace(_int(r, body["grace_period"], "grace period")),
        "timeout": parse_duration(body["timeout"]) if body["timeout"] is not None else None,
    }
    if body["since"] is not None:
        since = body["since"] if isinstance(body["since"], int) else _text(r, body["since"], "since")
        seconds = since if isinstance(since, int) else parse_duration(since)
        if seconds is None and not (isinstance(since, str) and _unknown(since)):
            raise RunbookError(f"since takes a duration such as 5m or 1h, got {since!r}")
        spec["since"] = int(seconds) if isinstance(seconds, (int, float)) else since
    if verb == "rollout_restart":
        spec["restarted_at"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return spec


def RESOURCE_NAMESPACED(plural: str) -> bool:
    return P.RESOURCES[plural][3]


# --- the API calls -----------------------------------------------------------------


def _seg(value: str) -> str:
    """One path segment, percent-encoded (a second guard behind the name checks:
    a name can never add segments, a query or a fragment)."""
    placeholder = _unknown(value) or (value.startswith("<") and value.endswith(">"))  # shown in plans only
    return value if placeholder else quote(value, safe="")


def collection_path(plural: str, ns: str | None) -> str:
    prefix = P.RESOURCES[plural][0]
    return f"{prefix}/namespaces/{_seg(ns)}/{plural}" if ns and P.RESOURCES[plural][3] else f"{prefix}/{plural}"


def object_path(plural: str, ns: str | None, name: str) -> str:
    return f"{collection_path(plural, ns)}/{_seg(name)}"


def metrics_path(plural: str, ns: str | None) -> str:
    base = "/apis/metrics.k8s.io/v1beta1"
    return f"{base}/namespaces/{_seg(ns)}/pods" if plural == "pods" and ns else f"{base}/{plural}"


def call(method: str, path: str, query: dict | None = None, body=None, content_type: str | None = None,
         note: str | None = None) -> dict:
    c: dict[str, Any] = {"method": method, "path": path}
    if query:
        c["query"] = query
    if body is not None:
        c["body"] = body
    if content_type:
        c["content_type"] = content_type
    if note:
        c["note"] = note
    return c


def restart_patch(at: str) -> dict:
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}}


def cordon_patch(on: bool) -> dict:
    return {"spec": {"unschedulable": True if on else None}}


# fieldManager of each write verb: kubectl's names, so managedFields say which
# kubectl command's change it was (a delete has none)
FIELD_MANAGERS = {"rollout_restart": "kubectl-rollout", "rollout_undo": "kubectl-rollout", "scale": "kubectl-scale",
                  "cordon": "kubectl-cordon", "uncordon": "kubectl-cordon", "patch": "kubectl-patch"}
FIELD_MANAGER = "runbook"  # any other write


def field_manager(verb: str) -> dict:
    """The query parameter naming the field manager of a write verb's PATCH."""
    return {"fieldManager": FIELD_MANAGERS.get(verb, FIELD_MANAGER)}


def plan_calls(spec: dict) -> list[dict]:
    """The API calls the step makes, in order; what depends on the server's
    answers is said in the call's note."""
    v, plural, ns, name = spec["verb"], spec["resource"], spec["namespace"], spec["name"]
    fm = field_manager(v)
    smp = P.PATCH_TYPES["strategic"]
    if v == "get":
        if name is not None:
            return [call("GET", object_path(plural, ns, name))]
        q = {k: spec[f] for k, f in (("labelSelector", "selector"), ("fieldSelector", "field_selector")) if spec[f]}
        return [call("GET", collection_path(plural, ns), q)]
    if v == "logs":
        q = log_query(spec, spec["container"] or "<default container>")
        if plural == "pods":
            calls = [] if spec["container"] else [call("GET", object_path("pods", ns, name),
                                                       note="read the pod to pick its default container")]
            return calls + [call("GET", object_path("pods", ns, name) + "/log", q)]
        return [call("GET", object_path(plural, ns, name)),
                call("GET", collection_path("pods", ns), {"labelSelector": f"<spec.selector of {plural[:-1]}/{name}>"}),
                call("GET", object_path("pods", ns, "<its first pod>") + "/log", q,
                     note="the first pod: running and ready first, then most restarts, then oldest (as kubectl)")]
    if v == "events":
        q = {}
        if plural is not None and plural != "events":
            q["fieldSelector"] = f"involvedObject.kind={P.RESOURCES[plural][2]}" + (f",involvedObject.name={name}" if name else "")
        if spec["field_selector"]:
            q["fieldSelector"] = ",".join(x for x in (q.get("fieldSelector"), spec["field_selector"]) if x)
        return [call("GET", collection_path("events", ns), q)]
    if v == "summary":
        return [call("GET", object_path(plural, ns, name)),
                call("GET", collection_path("pods", ns), {"labelSelector": f"<spec.selector of {plural[:-1]}/{name}>"}),
                call("GET", "/api/v1/nodes", note="node conditions of the pods' nodes (skipped if forbidden)")]
    if v == "top":
        q = {"labelSelector": spec["selector"]} if spec["selector"] else None
        return [call("GET", metrics_path(plural, spec["namespace"]), q)]
    if v == "rollout_status":
        return [call("GET", object_path(plural, ns, name),
                     note=f"repeated every 2s until updated, ready and available replicas match "
                          f"(timeout {spec['timeout'] or 'the step timeout, else 300'}s)")]
    if v == "rollout_restart":
        return [call("PATCH", object_path(plural, ns, name), fm, body=restart_patch(spec["restarted_at"]), content_type=smp)]
    if v == "rollout_undo":
        to = f"revision {spec['to_revision']}" if spec["to_revision"] else "the previous revision"
        return [call("GET", object_path(plural, ns, name)),
                call("GET", collection_path("replicasets", ns), {"labelSelector": f"<spec.selector of deployment/{name}>"}),
                call("PATCH", object_path(plural, ns, name), fm,
                     body=[{"op": "replace", "path": "/spec/template", "value": f"<pod template of the ReplicaSet of {to}>"},
                           {"op": "replace", "path": "/metadata/annotations", "value": "<annotations with that revision's>"}],
                     content_type=P.PATCH_TYPES["json"],
                     note=f"the pod template comes from the ReplicaSet of {to}, known only when the step runs")]
    if v == "scale":
        return [call("PATCH", object_path(plural, ns, name) + "/scale", fm, body={"spec": {"replicas": spec["replicas"]}},
                     content_type=P.PATCH_TYPES["merge"])]
    if v == "delete":
        q = {"gracePeriodSeconds": spec["grace_period"]} if spec["grace_period"] is not None else None
        return [call("DELETE", object_path(plural, ns, name), q)]
    if v in ("cordon", "uncordon"):
        return [call("PATCH", object_path("nodes", None, name), fm, body=cordon_patch(v == "cordon"), content_type=smp)]
    if v == "patch":
        path = object_path(plural, ns, name) + (f"/{spec['subresource']}" if spec["subresource"] else "")
        return [call("PATCH", path, fm, body=spec["patch"], content_type=P.PATCH_TYPES[spec["patch_type"]])]
    raise RunbookError(f"unsupported verb {v!r}")


def log_query(spec: dict, container: str) -> dict:
    q: dict[str, Any] = {"container": container}
    if spec["tail"] is not None:
        q["tailLines"] = spec["tail"]
    if spec["since"] is not None:
        q["sinceSeconds"] = spec["since"]
    if spec["previous"]:
        q["previous"] = "true"
    return q


def describe(spec: dict) -> str:
    """kubectl-like words for people."""
    v, plural, name = spec["verb"], spec["resource"], spec["name"]
    what = f"{plural[:-1] if plural and plural.endswith('s') else plural}/{name}" if name else (plural or "")
    if v == "top":
        what = plural[:-1]  # kubectl's `top pod` / `top node`
    words = {"rollout_restart": "rollout restart", "rollout_undo": "rollout undo", "rollout_status": "rollout status"}
    text = f"{words.get(v, v)} {what}".strip()
    if v in ("get", "top") and not name and spec["selector"]:
        text += f" -l {spec['selector']}"
    if spec["output"]:
        text += f" -o {spec['output']}"
    if spec["field_selector"]:
        text += f" --field-selector {spec['field_selector']}"
    if v == "logs":
        for flag, key in (("-c", "container"), ("--tail", "tail"), ("--since", "since")):
            if spec[key] is not None:
                text += f" {flag} {spec[key]}{'s' if key == 'since' else ''}"
        if spec["previous"]:
            text += " --previous"
    if v == "scale":
        text += f" --replicas={spec['replicas']}"
    if v == "rollout_undo" and spec["to_revision"]:
        text += f" --to-revision={spec['to_revision']}"
    if v == "delete" and spec["grace_period"] is not None:
        text += f" --grace-period={spec['grace_period']}"
    if v == "patch":
        text += f" --type={spec['patch_type']} -p '{json.dumps(spec['patch'], separators=(',', ':'))}'"
        if spec["subresource"]:
            text += f" --subresource={spec['subresource']}"
    if spec["all_namespaces"]:
        text += " --all-namespaces"
    elif spec["namespace"]:
        text += f" -n {spec['namespace']}"
    return text


def _call_text(c: dict) -> str:
    # (every write's fieldManager is in the JSON plan; the one-line summary leaves it out)
    query = "&".join(f"{k}={v}" for k, v in (c.get("query") or {}).items() if k != "fieldManager")
    return f"{c['method']} {c['path']}{'?' + query if query else ''}"


def action(step, r) -> Action:
    spec = render_spec(step, r)
    cluster = r.inventory.lookup("cluster", spec["cluster"])
    calls = plan_calls(spec)
    summary = f"{describe(spec)}  ({'; '.join(_call_text(c) for c in calls)})"
    detail = {"cluster": spec["cluster"], "where": _where(cluster), "namespace": spec["namespace"], "spec": spec,
              "calls": calls, "effect": effect_of(step.body)}
    return Action(summary=summary, targets=[f"cluster {spec['cluster']} ({_where(cluster)})"], detail=detail)


def details(action: Action) -> list[tuple[str, str]]:
    """What the step does in kubectl's words, then every API call as sent (bodies included)."""
    d = action.detail
    calls = []
    for c in d.get("calls") or []:
        query = "&".join(f"{k}={v}" for k, v in (c.get("query") or {}).items())
        text = f"{c['method']} {c['path']}" + (f"?{query}" if query else "")
        if c.get("body") is not None:
            text += "\n" + json.dumps(c["body"], indent=2, ensure_ascii=False, default=str)
        if c.get("note"):
            text += f"\n({c['note']})"
        calls.append(text)
    return [("as kubectl", describe(d["spec"])), ("API calls", "\n".join(calls))]


def observed(step, result: StepResult) -> str | None:
    """Replicas ready for a Deployment, else how many objects and which are not ready."""
    d = result.data
    if result.outputs:
        from runbook.steps import base

        return base.observed(step, result)
    if d.get("replicas") is not None:
        return (f"{d.get('ready_replicas') or 0}/{d['replicas']} ready, {d.get('updated_replicas') or 0} updated"
                + (", rollout done" if d.get("done") else ""))
    if d.get("not_ready"):
        names = [str(n) for n in d["not_ready"]]
        return f"{len(names)} not ready: {', '.join(names[:5])}" + (" …" if len(names) > 5 else "")
    if d.get("count") is not None and d.get("resource"):
        return f"{d['count']} {d['resource']}"
    return None


def run(step, act: Action, ctx) -> StepResult:
    from runbook.steps import k8s_ops

    return k8s_ops.run(step, act, ctx)


# --- alerts: params_from_labels forms ----------------------------------------------

LABEL_FORMS = {
    "from_pod": S.Obj(
        {"from_pod": S.Str(doc="the alert label naming the pod (e.g. pod)"),
         "namespace": S.Str(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", hint="a parameter name",  # the validator checks such a value names a declared parameter
                            doc="the parameter holding the pod's namespace (default: the parameter 'namespace' when "
                                "the runbook has one, else the inventory cluster's namespace, else 'default')"),
         "cluster": S.Str(doc="the inventory cluster (default: the only one, else 'main')")},
        required=("from_pod",),
        doc="the Deployment that owns the pod the label names (Pod → ReplicaSet → Deployment), read from the cluster "
            "when a live run starts; a dry-run contacts nothing and uses the example value",
    ),
}


def label_value(form: str, spec: dict, value: str, params: dict, inventory, live: bool) -> tuple:
    from runbook.steps import k8s_owner

    return k8s_owner.deployment_of_pod(spec, value, params, inventory, live)
