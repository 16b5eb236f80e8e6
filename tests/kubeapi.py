"""A Kubernetes API server subset for the k8s step's tests (a pytest plugin).

No real API server can run here, so this one answers the part of the API the
``k8s`` step uses the way kube-apiserver does: the same URL paths (core
``/api/v1``, ``/apis/GROUP/VERSION``, ``/apis/metrics.k8s.io/v1beta1`` when
enabled), JSON objects with ``kind``/``apiVersion``/``metadata.resourceVersion``,
``…List`` kinds whose items carry no kind (as the real server sends them),
``Status`` objects for errors (401, 403, 404, 409, 400, 415, 422 with reason
and details), resourceVersion bumps on writes, generation bumps on spec
changes, strategic-merge (with the merge keys we need), merge and JSON
patches, ``dryRun=All`` (validated; nothing stored), the ``scale`` and
``status`` subresources, pod logs as text/plain (``container``,
``tailLines``, ``sinceSeconds``, ``previous``), events with field selectors,
label selectors, and bearer-token authentication.

A small Deployment "controller" runs on reads: after a template change the
server creates (or, for a rollback, re-numbers) the ReplicaSet and, on the
following reads of the Deployment, moves its status along — observed
generation, then updated, ready and available replicas — and replaces its
pods, as the real controllers would.

It serves HTTPS with a certificate for 127.0.0.1 made for the test session
(its CA is in the kubeconfig, as ``certificate-authority-data``), because
credentials are only ever sent over TLS; ``kubeapi_http`` serves plain HTTP
with anonymous access.  Every request is recorded with its Authorization and
User-Agent headers; writes record ``managedFields`` manager names from the
``fieldManager`` query parameter (or the User-Agent prefix, as the real
server does).

Fixtures: ``kubeapi`` (a running server with an empty store), ``kubeapi_http``
(the same over plain HTTP, no authentication) and ``kube_inventory`` (an
inventory file whose cluster ``main`` points at ``kubeapi``).
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import ipaddress
import json
import re
import secrets
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

# (prefix, plural) -> (Kind, namespaced)
RESOURCES = {
    ("/api/v1", "pods"): ("Pod", True),
    ("/api/v1", "services"): ("Service", True),
    ("/api/v1", "configmaps"): ("ConfigMap", True),
    ("/api/v1", "secrets"): ("Secret", True),
    ("/api/v1", "events"): ("Event", True),
    ("/api/v1", "namespaces"): ("Namespace", False),
    ("/api/v1", "nodes"): ("Node", False),
    ("/apis/apps/v1", "deployments"): ("Deployment", True),
    ("/apis/apps/v1", "replicasets"): ("ReplicaSet", True),
    ("/apis/apps/v1", "statefulsets"): ("StatefulSet", True),
    ("/apis/apps/v1", "daemonsets"): ("DaemonSet", True),
}
METRICS = "/apis/metrics.k8s.io/v1beta1"
SCALABLE = {"deployments", "replicasets", "statefulsets"}
WITH_GENERATION = {"deployments", "replicasets", "statefulsets", "daemonsets"}
# strategic merge patch: list fields merged by key (the rest are replaced)
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
              "ports": "containerPort", "volumes": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name",
              "conditions": "type", "hostAliases": "ip", "volumeDevices": "devicePath"}
REVISION = "deployment.kubernetes.io/revision"
PATCH_TYPES = ("application/strategic-merge-patch+json", "application/merge-patch+json", "application/json-patch+json")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def stamp(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def group_of(prefix: str) -> str:
    return "" if prefix == "/api/v1" else prefix.split("/")[2]


def api_version(prefix: str) -> str:
    return "v1" if prefix == "/api/v1" else "/".join(prefix.split("/")[2:4])


def qualified(prefix: str, plural: str) -> str:
    g = group_of(prefix)
    return f"{plural}.{g}" if g else plural


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
             "reason": self.reason, "code": self.code}
        if self.details is not None:
            s["details"] = self.details
        return s


def not_found(prefix: str, plural: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(prefix, plural)} "{name}" not found',
                    {"name": name, "group": group_of(prefix), "kind": plural})


NO_RESOURCE = ApiError(404, "NotFound", "the server could not find the requested resource", {})


# --- patches ------------------------------------------------------------------


def merge_patch(orig, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(orig) if isinstance(orig, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge_patch(orig, patch, key: str | None = None):
    """Enough of Kubernetes' strategic merge patch: maps merge, null deletes,
    lists with a merge key (containers by name, env by name, …) merge by that
    key (``$patch: delete`` removes an item), other lists are replaced."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = copy.deepcopy(orig) if isinstance(orig, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict):
            out[k] = strategic_merge_patch(out.get(k), v, k)
        elif isinstance(v, list) and MERGE_KEYS.get(k) and isinstance(out.get(k), list):
            mk = MERGE_KEYS[k]
            items = copy.deepcopy(out[k])
            for item in v:
                if not isinstance(item, dict) or mk not in item:
                    raise ApiError(422, "Invalid", f"map: {item!r} does not contain declared merge key: {mk}")
                at = next((i for i, x in enumerate(items) if isinstance(x, dict) and x.get(mk) == item[mk]), None)
                if item.get("$patch") == "delete":
                    if at is not None:
                        items.pop(at)
                elif at is None:
                    items.append({a: b for a, b in item.items() if not a.startswith("$")})
                else:
                    items[at] = strategic_merge_patch(items[at], item, k)
            out[k] = items
        else:
            out[k] = copy.deepcopy(v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"jsonpatch: invalid path {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, ops):
    """RFC 6902: add, remove, replace, test, copy, move."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)

    def parent(parts):
        cur = doc
        for p in parts[:-1]:
            if isinstance(cur, list):
                cur = cur[int(p)]
            elif isinstance(cur, dict) and p in cur:
                cur = cur[p]
            else:
                raise ApiError(422, "Invalid", f"jsonpatch: doc is missing path: /{'/'.join(parts)}")
        return cur

    def get(parts):
        cur = doc
        for p in parts:
            try:
                cur = cur[int(p)] if isinstance(cur, list) else cur[p]
            except (KeyError, IndexError, ValueError, TypeError):
                raise ApiError(422, "Invalid", f"jsonpatch: doc is missing path: /{'/'.join(parts)}") from None
        return cur

    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        if kind == "test":
            if get(parts) != op.get("value"):
                raise ApiError(422, "Invalid", f"jsonpatch: testing value {op.get('path')} failed")
            continue
        if kind in ("copy", "move"):
            value = copy.deepcopy(get(_pointer(op.get("from", ""))))
            if kind == "move":
                src = _pointer(op["from"])
                p = parent(src)
                p.pop(int(src[-1]) if isinstance(p, list) else src[-1])
            kind, op = "add", {"value": value}
        if not parts:
            doc = copy.deepcopy(op.get("value"))
            continue
        p = parent(parts)
        last = parts[-1]
        if kind == "add":
            if isinstance(p, list):
                p.insert(len(p) if last == "-" else int(last), copy.deepcopy(op.get("value")))
            else:
                p[last] = copy.deepcopy(op.get("value"))
        elif kind in ("remove", "replace"):
            if isinstance(p, list):
                i = int(last)
                if i >= len(p):
                    raise ApiError(422, "Invalid", f"jsonpatch {kind} operation does not apply: doc is missing key: {op.get('path')}")
                if kind == "remove":
                    p.pop(i)
                else:
                    p[i] = copy.deepcopy(op.get("value"))
            else:
                if last not in p:
                    raise ApiError(422, "Invalid", f"jsonpatch {kind} operation does not apply: doc is missing key: {op.get('path')}")
                if kind == "remove":
                    del p[last]
                else:
                    p[last] = copy.deepcopy(op.get("value"))
        else:
            raise ApiError(422, "Invalid", f"Unexpected kind: {kind}")
    return doc


# --- selectors -------------------------------------------------------------------


def _split_requirements(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for c in text:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_LABEL_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"


def label_matcher(selector: str):
    reqs = []
    for r in _split_requirements(selector or ""):
        m = re.fullmatch(rf"({_LABEL_KEY})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)", r)
        if m:
            reqs.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
            continue
        m = re.fullmatch(rf"({_LABEL_KEY})\s+(in|notin)\s+\(([^)]*)\)", r)
        if m:
            reqs.append((m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}))
            continue
        m = re.fullmatch(rf"(!?)({_LABEL_KEY})", r)
        if m:
            reqs.append((m.group(2), "!exists" if m.group(1) else "exists", None))
            continue
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {r!r}")

    def match(labels: dict) -> bool:
        for key, op, v in reqs:
            has, val = key in labels, labels.get(key)
            if op == "=" and val != v or op == "!=" and has and val == v or op == "in" and val not in v \
                    or op == "notin" and has and val in v or op == "exists" and not has or op == "!exists" and has:
                return False
        return True

    return match


FIELDS = {
    "pods": ("metadata.name", "metadata.namespace", "status.phase", "spec.nodeName", "spec.restartPolicy"),
    "events": ("metadata.name", "metadata.namespace", "involvedObject.kind", "involvedObject.name",
               "involvedObject.namespace", "involvedObject.uid", "involvedObject.apiVersion", "reason", "type", "source"),
    "nodes": ("metadata.name", "spec.unschedulable"),
}


def field_matcher(plural: str, selector: str):
    reqs = []
    for r in _split_requirements(selector or ""):
        m = re.fullmatch(r"([A-Za-z.]+)\s*(==|=|!=)\s*(.*)", r)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid selector: {r!r}")
        if m.group(1) not in FIELDS.get(plural, ("metadata.name", "metadata.namespace")):
            raise ApiError(400, "BadRequest", f'field label not supported: {m.group(1)}')
        reqs.append((m.group(1).split("."), m.group(2) == "!=", m.group(3)))

    def match(obj: dict) -> bool:
        for path, negate, v in reqs:
            cur = obj
            for p in path:
                cur = cur.get(p) if isinstance(cur, dict) else None
            text = "" if cur is None else (str(cur).lower() if isinstance(cur, bool) else str(cur))
            if (text == v) == negate:
                return False
        return True

    return match


# --- the server --------------------------------------------------------------------


class FakeKube:
    """State and behaviour; the HTTP handler below only translates."""

    def __init__(self):
        self.lock = threading.RLock()
        self.objects: dict[tuple, dict] = {}  # (prefix, plural, namespace or "", name) -> object
        self.rv = 1000
        self.token: str | None = "tok-" + secrets.token_hex(8)  # None: anonymous access (kubeapi_http)
        self.user = "runbook-test"
        self.forbidden: set[tuple] = set()  # (verb, resource, namespace or None)
        self.requests: list[dict] = []
        self.metrics_enabled = False
        self.pod_metrics: dict[tuple, dict] = {}  # (ns, pod) -> {container: {"cpu": "250m", "memory": "300Mi"}}
        self.node_metrics: dict[str, dict] = {}
        self.logs: dict[tuple, list] = {}  # (ns, pod, container, previous) -> [(datetime, line)]
        self.rollouts: dict[tuple, int] = {}  # (ns, deployment) -> stage of a rollout in progress
        self.progress = True  # the Deployment "controller" moves rollouts along on reads
        self.url = ""
        self.ca: str | None = None  # the PEM of the server's certificate (https only)
        self.kubeconfig: Path | None = None
        self._write: tuple[str, str | None] = ("", None)  # (manager, subresource) of the write being handled

    # -- storage helpers (for tests) --

    def put(self, obj: dict) -> dict:
        """Store an object as the server would have created it."""
        with self.lock:
            obj = copy.deepcopy(obj)
            prefix, plural = self._resource_of(obj)
            md = obj.setdefault("metadata", {})
            md.setdefault("uid", str(uuid.uuid4()))
            md.setdefault("creationTimestamp", stamp(now() - datetime.timedelta(hours=3)))
            if plural in WITH_GENERATION:
                md.setdefault("generation", 1)
            md["resourceVersion"] = self._bump()
            self.objects[(prefix, plural, md.get("namespace", ""), md["name"])] = obj
            return copy.deepcopy(obj)

    def get(self, plural: str, name: str, namespace: str = "") -> dict | None:
        with self.lock:
            for (prefix, p, ns, n), obj in self.objects.items():
                if p == plural and n == name and ns == namespace:
                    return copy.deepcopy(obj)
        return None

    def all(self, plural: str, namespace: str | None = None) -> list[dict]:
        with self.lock:
            return [copy.deepcopy(o) for (_, p, ns, _), o in sorted(self.objects.items())
                    if p == plural and (namespace is None or ns == namespace)]

    def forbid(self, verb: str, resource: str, namespace: str | None = None) -> None:
        self.forbidden.add((verb, resource, namespace))

    def add_log(self, ns: str, pod: str, container: str, lines: list[str], previous: bool = False,
                age_seconds: float = 60) -> None:
        start = now() - datetime.timedelta(seconds=age_seconds)  # the first line; the last one is now
        step = age_seconds / max(1, len(lines) - 1)
        self.logs[(ns, pod, container, previous)] = [(start + datetime.timedelta(seconds=i * step), line)
                                                     for i, line in enumerate(lines)]

    def writes(self) -> list[dict]:
        return [r for r in self.requests if r["method"] not in ("GET",)]

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    @staticmethod
    def _resource_of(obj: dict) -> tuple[str, str]:
        api = obj.get("apiVersion", "v1")
        prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
        for (p, plural), (kind, _) in RESOURCES.items():
            if p == prefix and kind == obj.get("kind"):
                return p, plural
        raise ValueError(f"unknown kind {obj.get('kind')} {api}")

    # -- request handling --

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, str, bytes]:
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            parsed_body = json.loads(body) if body else None
        except ValueError:
            parsed_body = "<not json>"
        agent = headers.get("User-Agent") or ""
        self.requests.append({"method": method, "path": url.path, "query": query, "content_type": ctype or None,
                              "body": parsed_body, "authorization": headers.get("Authorization"), "user_agent": agent})
        try:
            if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if method in ("PATCH", "PUT", "POST") and "fieldManager" in query \
                    and not 0 < len(query["fieldManager"]) <= 128:  # as the server validates it
                raise ApiError(400, "BadRequest", f'fieldManager: Invalid value: "{query["fieldManager"]}"')
            with self.lock:
                # as the real server: without fieldManager, the User-Agent up to its first "/" names the manager
                self._write = (query.get("fieldManager") or agent.split("/")[0][:128], None)
                result = self._route(method, url.path, query, ctype, body)
        except ApiError as exc:
            return exc.code, "application/json", json.dumps(exc.status()).encode()
        if isinstance(result, str):
            return 200, "text/plain", result.encode()
        return 200, "application/json", json.dumps(result).encode()

    def _route(self, method, path, query, ctype, body):
        if path.startswith(METRICS):
            return self._metrics(method, path[len(METRICS):], query)
        m = re.match(r"^(/api/v1|/apis/[^/]+/[^/]+)(/.*)?$", path)
        if not m:
            raise NO_RESOURCE
        prefix, rest = m.group(1), [p for p in (m.group(2) or "").split("/") if p]
        ns = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        plural = rest[0] if rest else None
        if (prefix, plural) not in RESOURCES:
            raise NO_RESOURCE
        kind, namespaced = RESOURCES[(prefix, plural)]
        if ns and not namespaced:
            raise NO_RESOURCE
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if len(rest) > 3 or sub not in (None, "status", "scale", "log") or sub == "scale" and plural not in SCALABLE \
                or sub == "log" and plural != "pods":
            raise NO_RESOURCE
        verb = {"GET": "get" if name else "list", "PATCH": "patch", "DELETE": "delete", "PUT": "update",
                "POST": "create"}.get(method)
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource")
        if method != "GET" and name is None:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        self._authorize(verb, prefix, plural + (f"/{sub}" if sub else ""), ns or None, name)
        if "dryRun" in query and (method == "GET" or query["dryRun"] != "All"):
            raise ApiError(400, "BadRequest", f'dryRun: Unsupported value: "{query["dryRun"]}": supported values: "All"')
        dry = query.get("dryRun") == "All"
        if method == "GET" and name is None:
            return self._list(prefix, plural, kind, ns, query)
        key = (prefix, plural, ns, name)
        if plural == "deployments" and method == "GET":
            self._progress(key)
        obj = self.objects.get(key)
        if obj is None:
            raise not_found(prefix, plural, name)
        self._write = (self._write[0], sub)
        if sub == "log":
            return self._log(obj, query)
        if method == "GET":
            return self._scale_of(prefix, obj) if sub == "scale" else copy.deepcopy(obj)
        if method == "DELETE":
            return self._delete(key, obj, query, dry)
        if method == "PATCH":
            return self._patch(key, obj, sub, ctype, body, dry)
        if method == "PUT":
            return self._put(key, obj, sub, body, dry)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _authorize(self, verb, prefix, resource, ns, name):
        if (verb, resource, ns) in self.forbidden or (verb, resource, None) in self.forbidden:
            group = group_of(prefix)
            where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
            subject = f'{qualified(prefix, resource.split("/")[0])} "{name}"' if name else qualified(prefix, resource.split("/")[0])
            raise ApiError(403, "Forbidden", f'{subject} is forbidden: User "{self.user}" cannot {verb} resource '
                                             f'"{resource}" in API group "{group}" {where}',
                           {"name": name, "group": group, "kind": resource.split("/")[0]} if name else
                           {"group": group, "kind": resource.split("/")[0]})

    def _list(self, prefix, plural, kind, ns, query):
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(plural, query.get("fieldSelector", ""))
        if plural == "deployments":
            for key in [k for k in self.objects if k[0] == prefix and k[1] == plural and (not ns or k[2] == ns)]:
                self._progress(key)
        items = []
        for (p, pl, ons, _), obj in sorted(self.objects.items()):
            if p == prefix and pl == plural and (not ns or ons == ns) \
                    and labels((obj.get("metadata") or {}).get("labels") or {}) and fields(obj):
                item = copy.deepcopy(obj)
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        return {"kind": f"{kind}List", "apiVersion": api_version(prefix),
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    # -- writes --

    def _apply_patch(self, target, ctype, body):
        if ctype not in PATCH_TYPES:
            raise ApiError(415, "UnsupportedMediaType", f'the body of the request was in an unknown format - accepted '
                                                        f'media types include: {", ".join(PATCH_TYPES)}, application/apply-patch+yaml')
        try:
            patch = json.loads(body or b"null")
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"error decoding patch: {exc}") from None
        if ctype == PATCH_TYPES[2]:
            return json_patch(target, patch)
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "json: cannot unmarshal array into Go value of type map[string]interface {}")
        if ctype == PATCH_TYPES[1]:
            return merge_patch(target, patch)
        return strategic_merge_patch(target, patch)

    def _precondition(self, prefix, plural, name, old, new):
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified(prefix, plural)} "{name}": the object '
                                            f'has been modified; please apply your changes to the latest version and try again',
                           {"name": name, "group": group_of(prefix), "kind": plural})

    def _validate(self, prefix, plural, obj):
        kind = RESOURCES[(prefix, plural)][0]
        name = obj["metadata"]["name"]
        causes = []
        spec = obj.get("spec") or {}
        if plural in SCALABLE:
            r = spec.get("replicas")
            if r is not None and (not isinstance(r, int) or isinstance(r, bool) or r < 0):
                causes.append(f"spec.replicas: Invalid value: {json.dumps(r)}: must be greater than or equal to 0")
        if plural in WITH_GENERATION:
            for i, c in enumerate(((spec.get("template") or {}).get("spec") or {}).get("containers") or []):
                if not c.get("image"):
                    causes.append(f"spec.template.spec.containers[{i}].image: Required value")
                limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
                if limit is not None and not re.fullmatch(r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?", str(limit)):
                    causes.append(f"spec.template.spec.containers[{i}].resources.limits[memory]: Invalid value: "
                                  f"{json.dumps(limit)}: quantities must match the regular expression "
                                  "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
        if causes:
            raise ApiError(422, "Invalid", f'{kind}.{group_of(prefix) or "core"} "{name}" is invalid: {"; ".join(causes)}'
                           .replace(".core ", " "), {"name": name, "group": group_of(prefix), "kind": kind,
                                                      "causes": [{"message": c} for c in causes]})

    def _store(self, key, old, new, dry, status_only=False):
        prefix, plural, ns, name = key
        for field in ("name", "namespace", "uid", "creationTimestamp"):
            if new.get("metadata", {}).get(field) != old["metadata"].get(field):
                raise ApiError(422, "Invalid", f"metadata.{field}: Invalid value: field is immutable")
        new.setdefault("metadata", {})
        new["kind"], new["apiVersion"] = old["kind"], old["apiVersion"]
        if status_only:
            new = dict(copy.deepcopy(old), status=new.get("status"))
        else:
            new["status"] = copy.deepcopy(old.get("status"))
            self._validate(prefix, plural, new)
        if plural in WITH_GENERATION and new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if dry:
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return new
        if new == old:
            return copy.deepcopy(old)  # a no-op write keeps its resourceVersion, as the real server
        new["metadata"]["resourceVersion"] = self._bump()
        self._managed(prefix, new)
        self.objects[key] = new
        if plural == "deployments":
            self._controller(key, old, new)
        return copy.deepcopy(new)

    def _managed(self, prefix, obj):
        """managedFields: one Update entry per manager (and subresource), fields not tracked."""
        manager, sub = self._write
        entries = [e for e in obj["metadata"].get("managedFields") or []
                   if (e.get("manager"), e.get("subresource")) != (manager, sub)]
        entry = {"manager": manager, "operation": "Update", "apiVersion": api_version(prefix), "time": stamp(now()),
                 "fieldsType": "FieldsV1", "fieldsV1": {}}
        if sub:
            entry["subresource"] = sub
        obj["metadata"]["managedFields"] = entries + [entry]

    def managers(self, plural: str, name: str, namespace: str = "") -> list[str]:
        """The manager names in an object's managedFields, in order."""
        obj = self.get(plural, name, namespace) or {}
        return [e["manager"] for e in (obj.get("metadata") or {}).get("managedFields") or []]

    def _patch(self, key, obj, sub, ctype, body, dry):
        prefix, plural, ns, name = key
        if sub == "scale":
            scale = self._scale_of(prefix, obj)
            patched = self._apply_patch(scale, ctype, body)
            self._precondition(prefix, plural, name, obj, patched)
            new = copy.deepcopy(obj)
            new["spec"]["replicas"] = (patched.get("spec") or {}).get("replicas")
            new["metadata"].pop("resourceVersion", None)
            return self._scale_of(prefix, self._store(key, obj, dict(new, metadata=dict(new["metadata"], resourceVersion=obj["metadata"]["resourceVersion"])), dry))
        patched = self._apply_patch(obj, ctype, body)
        self._precondition(prefix, plural, name, obj, patched)
        patched.setdefault("metadata", {})["resourceVersion"] = obj["metadata"]["resourceVersion"]
        return self._store(key, obj, patched, dry, status_only=sub == "status")

    def _put(self, key, obj, sub, body, dry):
        prefix, plural, ns, name = key
        try:
            new = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"error decoding body: {exc}") from None
        self._precondition(prefix, plural, name, obj, new)
        if sub == "scale":
            nd = copy.deepcopy(obj)
            nd["spec"]["replicas"] = (new.get("spec") or {}).get("replicas")
            return self._scale_of(prefix, self._store(key, obj, nd, dry))
        new.setdefault("metadata", {})["resourceVersion"] = obj["metadata"]["resourceVersion"]
        return self._store(key, obj, new, dry, status_only=sub == "status")

    def _delete(self, key, obj, query, dry):
        out = copy.deepcopy(obj)
        grace = int(query.get("gracePeriodSeconds", 30))
        if key[1] == "pods" and grace > 0:
            out["metadata"]["deletionTimestamp"] = stamp(now() + datetime.timedelta(seconds=grace))
            out["metadata"]["deletionGracePeriodSeconds"] = grace
        if not dry:
            del self.objects[key]
            self._bump()
        return out

    def _scale_of(self, prefix, obj):
        md = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in md},
                "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
                "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                           "selector": ",".join(f"{k}={v}" for k, v in sorted(
                               (((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}).items()))}}

    # -- logs and metrics --

    def _log(self, pod, query):
        name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
        containers = [c["name"] for c in pod["spec"].get("containers") or []]
        container = query.get("container")
        if not container:
            if len(containers) != 1:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: "
                                                  f"[{' '.join(containers)}]")
            container = containers[0]
        if container not in containers:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        previous = query.get("previous") == "true"
        if previous:
            st = next((s for s in (pod.get("status") or {}).get("containerStatuses") or [] if s.get("name") == container), {})
            if not (st.get("lastState") or {}).get("terminated"):
                raise ApiError(400, "BadRequest", f'previous terminated container "{container}" in pod "{name}" not found')
        lines = list(self.logs.get((ns, name, container, previous), []))
        if "sinceSeconds" in query:
            cutoff = now() - datetime.timedelta(seconds=int(query["sinceSeconds"]))
            lines = [x for x in lines if x[0] >= cutoff]
        if "tailLines" in query:
            n = int(query["tailLines"])
            lines = lines[-n:] if n > 0 else []
        return "".join(line + "\n" for _, line in lines)

    def _metrics(self, method, rest, query):
        if not self.metrics_enabled:
            raise NO_RESOURCE
        m = re.fullmatch(r"(?:/namespaces/([^/]+))?/(pods|nodes)", rest)
        if not m or method != "GET":
            raise NO_RESOURCE
        ns, plural = m.group(1), m.group(2)
        self._authorize("list", METRICS, plural, ns, None)
        labels = label_matcher(query.get("labelSelector", ""))
        items = []
        if plural == "pods":
            for (pns, pod), conts in sorted(self.pod_metrics.items()):
                obj = self.get("pods", pod, pns)
                if (ns is None or pns == ns) and obj is not None and labels(obj["metadata"].get("labels") or {}):
                    items.append({"metadata": {"name": pod, "namespace": pns, "creationTimestamp": stamp(now())},
                                  "timestamp": stamp(now()), "window": "30s",
                                  "containers": [{"name": c, "usage": u} for c, u in conts.items()]})
        else:
            for node, usage in sorted(self.node_metrics.items()):
                items.append({"metadata": {"name": node, "creationTimestamp": stamp(now())}, "timestamp": stamp(now()),
                              "window": "30s", "usage": usage})
        return {"kind": "PodMetricsList" if plural == "pods" else "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {}, "items": items}

    # -- the Deployment controller --

    @staticmethod
    def _template_hash(template: dict) -> str:
        t = copy.deepcopy(template)
        ((t.get("metadata") or {}).get("labels") or {}).pop("pod-template-hash", None)
        return hashlib.sha256(json.dumps(t, sort_keys=True).encode()).hexdigest()[:10]

    def _owned_rs(self, dep) -> list[tuple]:
        uid = dep["metadata"]["uid"]
        return [k for k, o in self.objects.items() if k[1] == "replicasets" and k[2] == dep["metadata"]["namespace"]
                and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]

    def _controller(self, key, old, new):
        if new["spec"].get("template") != old["spec"].get("template"):
            h = self._template_hash(new["spec"]["template"])
            revs = [int(self.objects[k]["metadata"].get("annotations", {}).get(REVISION, 0)) for k in self._owned_rs(new)]
            rev = str(max(revs + [0]) + 1)
            match = next((k for k in self._owned_rs(new) if self._template_hash(self.objects[k]["spec"]["template"]) == h), None)
            if match is None:
                rs = self._make_rs(new, h, rev)
                self.objects[("/apis/apps/v1", "replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"])] = rs
            else:
                self.objects[match]["metadata"].setdefault("annotations", {})[REVISION] = rev
                self.objects[match]["metadata"]["resourceVersion"] = self._bump()
            new["metadata"].setdefault("annotations", {})[REVISION] = rev
            self.rollouts[(key[2], key[3])] = 0
        elif new["spec"].get("replicas") != old["spec"].get("replicas"):
            self.rollouts[(key[2], key[3])] = 1

    def _make_rs(self, dep, h, rev):
        t = copy.deepcopy(dep["spec"]["template"])
        t.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = h
        sel = copy.deepcopy(dep["spec"]["selector"])
        sel.setdefault("matchLabels", {})["pod-template-hash"] = h
        return {"kind": "ReplicaSet", "apiVersion": "apps/v1",
                "metadata": {"name": f"{dep['metadata']['name']}-{h}", "namespace": dep["metadata"]["namespace"],
                             "uid": str(uuid.uuid4()), "resourceVersion": self._bump(), "generation": 1,
                             "creationTimestamp": stamp(now()), "labels": dict(t["metadata"]["labels"]),
                             "annotations": {REVISION: rev},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"],
                                                  "uid": dep["metadata"]["uid"], "controller": True}]},
                "spec": {"replicas": dep["spec"].get("replicas", 1), "selector": sel, "template": t},
                "status": {"replicas": 0}}

    def _progress(self, key):
        """One step of a rollout in progress, as the controllers would make it between two reads."""
        dep = self.objects.get(key)
        rk = (key[2], key[3])
        if dep is None or rk not in self.rollouts or not self.progress:
            return
        if dep["spec"].get("paused"):  # as the real controller: a paused Deployment does not roll out
            st = dep.setdefault("status", {})
            st["observedGeneration"] = dep["metadata"]["generation"]
            return
        stage = self.rollouts[rk]
        want = dep["spec"].get("replicas", 1)
        st = dep.setdefault("status", {})
        if stage == 0:  # the new ReplicaSet is scaled up; old pods still there
            st.update(observedGeneration=dep["metadata"]["generation"], updatedReplicas=want,
                      replicas=want + (1 if st.get("replicas") else 0))
            self.rollouts[rk] = 1
        else:  # done: new pods ready, old ones gone
            self._replace_pods(dep)
            st.update(observedGeneration=dep["metadata"]["generation"], replicas=want, updatedReplicas=want,
                      readyReplicas=want, availableReplicas=want,
                      conditions=[{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                                  {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}])
            del self.rollouts[rk]
        dep["metadata"]["resourceVersion"] = self._bump()

    def _replace_pods(self, dep):
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        match = label_matcher(",".join(f"{k}={v}" for k, v in dep["spec"]["selector"].get("matchLabels", {}).items()))
        for k in [k for k, o in self.objects.items() if k[1] == "pods" and k[2] == ns
                  and match(o["metadata"].get("labels") or {})]:
            del self.objects[k]
        h = self._template_hash(dep["spec"]["template"])
        rs = self.objects.get(("/apis/apps/v1", "replicasets", ns, f"{name}-{h}"))
        for i in range(dep["spec"].get("replicas", 1)):
            self.put(make_pod(f"{name}-{h}-{i}", ns, dep["spec"]["template"], h, owner=rs))


# --- object builders (for tests) ---------------------------------------------------------


def owner_reference(owner: dict) -> dict:
    """The ``ownerReferences`` entry a controller puts on what it creates."""
    md = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": md["name"], "uid": md["uid"],
            "controller": True, "blockOwnerDeletion": True}


def make_pod(name, ns, template, h="0", node="node-1", oom=False, restarts=0, crashloop=False, age_hours=3,
             owner: dict | None = None):
    """A pod of ``template``; ``owner`` (a ReplicaSet, StatefulSet, …) becomes its controller owner reference."""
    t = copy.deepcopy(template)
    labels = dict((t.get("metadata") or {}).get("labels") or {}, **{"pod-template-hash": h})
    statuses = []
    for c in t["spec"]["containers"]:
        s = {"name": c["name"], "image": c["image"], "imageID": f"{c['image'].split(':')[0]}@sha256:{hashlib.sha256(c['image'].encode()).hexdigest()}",
             "containerID": f"containerd://{secrets.token_hex(32)}", "started": not crashloop,
             "ready": not crashloop, "restartCount": restarts,
             "state": {"running": {"startedAt": stamp(now() - datetime.timedelta(minutes=5))}}}
        if oom:
            s["lastState"] = {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                             "finishedAt": stamp(now() - datetime.timedelta(minutes=2))}}
        if crashloop:
            s["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}
        statuses.append(s)
    ready = "False" if crashloop else "True"
    md = {"name": name, "namespace": ns, "labels": labels,
          "creationTimestamp": stamp(now() - datetime.timedelta(hours=age_hours))}
    if owner is not None:
        md["ownerReferences"] = [owner_reference(owner)]
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": md,
            "spec": dict(t["spec"], nodeName=node),
            "status": {"phase": "Running", "podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": ready}],
                       "containerStatuses": statuses}}


def deployment(kube: FakeKube, name="api", ns="production", replicas=2, image="registry.example/api:1.4.2",
               memory="256Mi", oom=False, container=None, revisions=1, node="node-1", pods: list | None = None) -> dict:
    """A Deployment with its ReplicaSets (revision history) and pods, each owned
    by what made it (ownerReferences: pod → ReplicaSet → Deployment).  With
    ``oom``, its first pod's container last terminated OOMKilled and is in
    CrashLoopBackOff.  ``pods``: the pods' names (default NAME-HASH-I)."""
    container = container or name
    labels = {"app": name}
    template = {"metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": container, "image": image,
                                         "resources": {"limits": {"memory": memory}, "requests": {"memory": memory}}}]}}
    dep = kube.put({"kind": "Deployment", "apiVersion": "apps/v1",
                    "metadata": {"name": name, "namespace": ns, "labels": dict(labels), "annotations": {REVISION: str(revisions)}},
                    "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)}, "template": template,
                             "strategy": {"type": "RollingUpdate"}},
                    "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                               "readyReplicas": replicas - (1 if oom else 0), "availableReplicas": replicas - (1 if oom else 0),
                               "conditions": [{"type": "Available", "status": "True"},
                                              {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}})
    with kube.lock:
        for rev in range(1, revisions + 1):
            t = copy.deepcopy(template)
            if rev < revisions:  # older revisions ran older images
                t["spec"]["containers"][0]["image"] = image.rsplit(":", 1)[0] + f":0.{rev}"
            h = kube._template_hash(t)
            rs = kube._make_rs(dep, h, str(rev))
            rs["spec"]["template"] = dict(t, metadata=dict(t["metadata"], labels=dict(labels, **{"pod-template-hash": h})))
            rs["spec"]["replicas"] = replicas if rev == revisions else 0
            kube.objects[("/apis/apps/v1", "replicasets", ns, rs["metadata"]["name"])] = rs
    h = kube._template_hash(template)
    rs = kube.get("replicasets", f"{name}-{h}", ns)
    for i in range(replicas):
        bad = oom and i == 0
        kube.put(make_pod(pods[i] if pods else f"{name}-{h}-{i}", ns, template, h, node=node, oom=bad,
                          restarts=4 if bad else 0, crashloop=bad, owner=rs))
    return kube.get("deployments", name, ns)


def statefulset(kube: FakeKube, name="db", ns="production", replicas=1, image="registry.example/db:16") -> dict:
    """A StatefulSet and its pods NAME-0…, owned by it directly (no ReplicaSet)."""
    labels = {"app": name}
    template = {"metadata": {"labels": dict(labels)}, "spec": {"containers": [{"name": name, "image": image}]}}
    sts = kube.put({"kind": "StatefulSet", "apiVersion": "apps/v1", "metadata": {"name": name, "namespace": ns,
                                                                                 "labels": dict(labels)},
                    "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)}, "template": template,
                             "serviceName": name},
                    "status": {"replicas": replicas, "readyReplicas": replicas}})
    for i in range(replicas):
        kube.put(make_pod(f"{name}-{i}", ns, template, owner=sts))
    return sts


def node(kube: FakeKube, name="node-1", pressure: tuple[str, ...] = (), ready=True) -> dict:
    conds = [{"type": c, "status": "True" if c in pressure else "False",
              "message": f"kubelet has {'' if c in pressure else 'no '}{c.lower()}"}
             for c in ("MemoryPressure", "DiskPressure", "PIDPressure")]
    conds.append({"type": "Ready", "status": "True" if ready else "False", "message": "kubelet is posting ready status"})
    return kube.put({"kind": "Node", "apiVersion": "v1",
                     "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "node-role.kubernetes.io/worker": ""}},
                     "spec": {}, "status": {"conditions": conds, "nodeInfo": {"kubeletVersion": "v1.30.2"}}})


def event(kube: FakeKube, obj: dict, reason: str, message: str, type_="Warning", count=1, age_seconds=30) -> dict:
    md = obj["metadata"]
    t = stamp(now() - datetime.timedelta(seconds=age_seconds))
    return kube.put({"kind": "Event", "apiVersion": "v1",
                     "metadata": {"name": f"{md['name']}.{secrets.token_hex(6)}", "namespace": md.get("namespace", "default")},
                     "involvedObject": {"kind": obj["kind"], "name": md["name"], "namespace": md.get("namespace"),
                                        "uid": md.get("uid"), "apiVersion": obj["apiVersion"]},
                     "reason": reason, "message": message, "type": type_, "count": count,
                     "firstTimestamp": t, "lastTimestamp": t, "source": {"component": "kubelet"}})


# --- HTTP -----------------------------------------------------------------------------


def _handler(kube: FakeKube):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _do(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            code, ctype, out = kube.handle(self.command, self.path, self.headers, body)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(out)))
            self.send_header("Audit-Id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_PATCH = do_DELETE = do_PUT = do_POST = _do

        def log_message(self, *args):  # quiet
            pass

    return Handler


def write_kubeconfig(path: Path, url: str, token: str | None = None, namespace: str = "default",
                     ca: str | None = None, user: dict | None = None) -> Path:
    """A kubeconfig with one context: ``token`` (or the ``user`` entry as given,
    or no credentials at all) for the server at ``url``, trusting ``ca``."""
    cluster: dict = {"server": url}
    if ca:
        cluster["certificate-authority-data"] = base64.b64encode(ca.encode()).decode()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "test", "user": user if user is not None else ({"token": token} if token else {})}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
    }, indent=2))
    return path


_CERT: dict[str, str] = {}


def server_certificate(tmp_dir: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1 and localhost (made once per session)."""
    if not _CERT:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeapi test CA")])
        t = now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(t - datetime.timedelta(days=1)).not_valid_after(t + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                .sign(key, hashes.SHA256()))
        _CERT["cert"] = cert.public_bytes(serialization.Encoding.PEM).decode()
        _CERT["key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode()
    cert_file, key_file = tmp_dir / "kubeapi.crt", tmp_dir / "kubeapi.key"
    cert_file.write_text(_CERT["cert"])
    key_file.write_text(_CERT["key"])
    return cert_file, key_file, _CERT["cert"]


class _TLSServer(ThreadingHTTPServer):
    """Handshakes in the request's thread, so one slow client blocks nobody."""

    context: ssl.SSLContext

    def finish_request(self, request, client_address):
        try:
            request = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


def _serve(kube: FakeKube, tmp_path: Path, tls: bool):
    if tls:
        cert_file, key_file, kube.ca = server_certificate(tmp_path)
        server = _TLSServer(("127.0.0.1", 0), _handler(kube))
        server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.context.load_cert_chain(cert_file, key_file)
    else:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(kube))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    kube.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    return server, thread


@pytest.fixture
def kubeapi(tmp_path):
    """A running fake API server on https://127.0.0.1 (a free port), bearer
    token required; stopped afterwards."""
    kube = FakeKube()
    server, thread = _serve(kube, tmp_path, tls=True)
    kube.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.token, ca=kube.ca)
    try:
        yield kube
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def kubeapi_http(tmp_path):
    """A running fake API server on plain http://127.0.0.1, anonymous access
    (its kubeconfig has no credentials); it still records any Authorization
    header it is sent."""
    kube = FakeKube()
    kube.token = None
    server, thread = _serve(kube, tmp_path, tls=False)
    kube.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig-http", kube.url)
    try:
        yield kube
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def kube_inventory(kubeapi, tmp_path):
    """kube_inventory(**cluster fields) -> an inventory file with cluster `main` on the fake server."""

    def _inv(**fields):
        entry = {"kubeconfig": str(kubeapi.kubeconfig), "namespace": "production", **fields}
        p = tmp_path / "kube-inventory.yaml"
        p.write_text("clusters:\n  main: " + json.dumps(entry) + "\n")
        return p

    return _inv
