"""Running ``k8s`` steps: the connection to a cluster, the API calls and
their errors as one line.  Imported only when a ``k8s`` step runs (it
imports the kubernetes client)."""

from __future__ import annotations

import base64
import json
import os
import time

import yaml

from runbook import __version__
from runbook.errors import RunbookError
from runbook.steps import Action, StepResult
from runbook.steps import k8s as K
from runbook.steps import k8s_parse as P
from runbook.steps import k8s_show as V

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
POLL = (0.5, 1.0, 2.0)  # rollout status: seconds between reads (then every 2 s)
REVISION = "deployment.kubernetes.io/revision"
# annotations kubectl keeps from the Deployment, not from the ReplicaSet, on rollback
SKIP_ANNOTATIONS = {"kubectl.kubernetes.io/last-applied-configuration", REVISION, "deployment.kubernetes.io/revision-history",
                    "deployment.kubernetes.io/desired-replicas", "deployment.kubernetes.io/max-replicas",
                    "deprecated.deployment.rollback.to"}


class KubeError(RunbookError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Kube:
    """One cluster's API client for the run (kept in ctx.connections)."""

    def __init__(self, name: str, api, where: str):
        self.name, self.api, self.where = name, api, where
        self.server = api.configuration.host
        self.plain_http = _plain_http(self.server)
        self.timeout: float | None = None
        self.dry_run = False

    def close(self) -> None:
        self.api.close()

    def request(self, method: str, path: str, query: dict | None = None, body=None, content_type: str | None = None,
                text: bool = False, what: tuple | None = None, write: bool = False):
        import urllib3
        from kubernetes.client.exceptions import ApiException

        query = dict(query or {})
        if write and self.dry_run:
            query["dryRun"] = "All"
        if write and method != "DELETE":  # every write says who made it (managedFields)
            query.setdefault("fieldManager", K.FIELD_MANAGER)
        headers = {"Accept": "text/plain, */*" if text else "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        read = READ_TIMEOUT if self.timeout is None else max(1.0, min(READ_TIMEOUT, self.timeout))
        try:
            req = self.api.param_serialize(method=method, resource_path=path,
                                           query_params=[(k, str(v)) for k, v in query.items()],
                                           header_params=headers, body=body,
                                           auth_settings=[] if self.plain_http else ["BearerToken"])
            resp = self.api.call_api(*req, _request_timeout=(min(CONNECT_TIMEOUT, read), read))
            raw = resp.read()
        except urllib3.exceptions.HTTPError as exc:
            raise KubeError(self._unreachable(exc)) from None
        except ApiException as exc:  # TLS problems surface here
            first = str(exc.reason or exc).strip().splitlines()
            raise KubeError(f"cannot talk to cluster '{self.name}' at {self.server}: {first[-1] if first else exc}") from None
        except OSError as exc:
            raise KubeError(f"cannot reach cluster '{self.name}' at {self.server}: {exc}") from None
        if not 200 <= resp.status < 300:
            raise KubeError(self._status_error(resp.status, raw, method, path, what), resp.status)
        if text:
            return raw.decode("utf-8", "replace")
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            raise KubeError(f"cluster '{self.name}' answered {method} {path} with something that is not JSON") from None
        if not isinstance(doc, dict):
            raise KubeError(f"cluster '{self.name}' answered {method} {path} with JSON that is not an API object "
                            "(a proxy in the way?)")
        return doc

    def _unreachable(self, exc) -> str:
        reason = getattr(exc, "reason", None) or exc
        text = str(reason)
        low = text.lower()
        if "refused" in low:
            why = "connection refused (is the API server up, and is this the right kubeconfig context?)"
        elif "timed out" in low or "timeout" in low:
            why = "no answer in time"
        elif "name or service not known" in low or "failed to resolve" in low or "nodename nor servname" in low:
            why = "unknown host (DNS lookup failed)"
        elif "certificate" in low or "ssl" in low:
            why = "TLS failed: " + text.split(":")[-1].strip()
        else:
            why = text.splitlines()[0] if text else type(exc).__name__
        return f"cannot reach cluster '{self.name}' at {self.server}: {why}"

    def _status_error(self, code: int, raw: bytes, method: str, path: str, what) -> str:
        try:
            status = json.loads(raw)
        except ValueError:
            status = {}
        message = status.get("message") if isinstance(status, dict) else None
        if not message:
            lines = raw.decode("utf-8", "replace").strip().splitlines()
            message = lines[0][:200] if lines else "no message"
        verb, res, name, ns = what or (method.lower(), path, None, None)
        base, _, sub = res.partition("/")
        obj = f"{base}{'/' + name if name else ''}{f' ({sub})' if sub else ''}"
        in_ns = f" in namespace '{ns}'" if ns else ""
        if code == 401:
            return (f"cluster '{self.name}' rejected the credentials (401 Unauthorized): the token or certificate of "
                    f"{self.where} is expired, invalid or missing; log in again / renew the credentials")
        if code == 403:
            return f"403 Forbidden: not allowed to {verb} {obj}{in_ns} on cluster '{self.name}' ({message})"
        if code == 404:
            if path.startswith("/apis/metrics.k8s.io"):
                return (f"cluster '{self.name}' has no metrics API (metrics.k8s.io, 404): top needs metrics-server "
                        "installed in the cluster")
            return f"404 Not Found: {obj}{in_ns} does not exist on cluster '{self.name}' ({message})"
        if code == 409:
            return (f"409 Conflict: {obj}{in_ns} was changed by someone else since it was read; nothing was changed, "
                    f"look again and re-run the step ({message})")
        if code == 503 and path.startswith("/apis/metrics.k8s.io"):
            return f"the metrics API of cluster '{self.name}' is unavailable (503): is metrics-server running? ({message})"
        reason = status.get("reason") if isinstance(status, dict) else None
        return f"cluster '{self.name}' refused {verb} {obj}{in_ns}: {code}{' ' + reason if reason else ''}: {message}"


# --- connecting -----------------------------------------------------------------


def _plain_http(server) -> bool:
    return str(server or "").strip().lower().startswith("http://")


def _shown(server: str) -> str:
    """The server's address without any user:password@ in it."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(server)
        return f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}{u.path}" if u.hostname else server
    except ValueError:
        return server


def _server_and_credentials(merged, current: dict) -> tuple[str, list[str]]:
    """The server of a kubeconfig context and the credentials its user would
    send, read from the kubeconfig itself (nothing run, nothing fetched)."""
    context = current.get("context") or {}

    def entry(section: str, key: str) -> dict:
        items = merged[section] if merged.safe_get(section) else None
        found = items.get_with_name(context[key], safe=True) if items and context.get(key) else None
        value = found.safe_get(key) if found is not None else None
        return value if isinstance(value, dict) else {}

    server, user = str(entry("clusters", "cluster").get("server") or ""), entry("users", "user")
    kinds = []
    if user.get("token") or user.get("tokenFile"):
        kinds.append("a bearer token")
    if user.get("username") or user.get("password"):
        kinds.append("a username and password")
    if user.get("exec"):
        kinds.append("a token from an exec credential plugin")
    if user.get("auth-provider"):
        kinds.append("a token from an auth-provider")
    try:
        from urllib.parse import urlsplit

        if urlsplit(server).password is not None:
            kinds.append("a password in the server address")
    except ValueError:
        pass
    return server, kinds


def _configured_credentials(cfg) -> list[str]:
    kinds = []
    for value in (cfg.api_key or {}).values():
        kinds.append("a username and password" if str(value).lower().startswith("basic ") else "a bearer token")
    if cfg.username or cfg.password:
        kinds.append("a username and password")
    if cfg.refresh_api_key_hook is not None and not kinds:
        kinds.append("a token from an exec credential plugin")
    return kinds


def _refuse_credentials_over_http(name: str, where: str, server, kinds: list[str]) -> None:
    """kubectl sends no credentials to an http:// server; a run refuses, in one
    line that names the cluster and never the credential."""
    if kinds and _plain_http(server):
        raise KubeError(f"cluster '{name}' ({where}): refusing to send {kinds[0]} to {_shown(str(server))}: it is plain "
                        "http://, which would carry it unencrypted (kubectl does not send credentials over http:// "
                        "either); use the API server's https:// address")


def connect(ctx, cluster_name: str, where: str) -> Kube:
    key = ("k8s", cluster_name)
    kube = ctx.connections.get(key)
    if kube is not None:
        return kube
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cluster = ctx.inventory.lookup("cluster", cluster_name)
    cfg = type.__call__(client.Configuration)
    try:
        if cluster.in_cluster:
            config.load_incluster_config(client_configuration=cfg)
        else:
            path = ctx.reveal(cluster.kubeconfig) if cluster.kubeconfig is not None else None
            path = os.path.expanduser(str(path)) if path else None
            if path and not os.path.exists(path):
                raise KubeError(f"cluster '{cluster_name}': kubeconfig {path} does not exist (inventory kubeconfig:)")
            context = str(ctx.reveal(cluster.context)) if cluster.context is not None else None
            # as load_kube_config(persist_config=False), in two halves: the credentials are looked at before
            # anything runs (an exec plugin, a token refresh), so none is made for a plain-http server
            from kubernetes.config import kube_config as kc

            merged = kc.KubeConfigMerger(path or kc.KUBE_CONFIG_DEFAULT_LOCATION).config
            if merged is None:
                raise ConfigException("Invalid kube-config file. No configuration found.")
            loader = kc.KubeConfigLoader(config_dict=merged, active_context=context, config_base_path=None)
            _refuse_credentials_over_http(cluster_name, where, *_server_and_credentials(merged, loader.current_context))
            loader.load_and_set(cfg)
    except ConfigException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "context" in first.lower() and cluster.context is not None:
            first = f"context '{cluster.context}' is not in the kubeconfig ({first})"
        raise KubeError(f"cluster '{cluster_name}' ({where}): cannot load its configuration: {first}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise KubeError(f"cluster '{cluster_name}' ({where}): cannot load its configuration: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise KubeError(f"cluster '{cluster_name}' ({where}): its kubeconfig is not valid YAML{at}: "
                        f"{getattr(exc, 'problem', None) or type(exc).__name__}") from None
    cfg.retries = False  # one attempt: the step's retries decide, and a write is never sent twice by accident
    # whatever configured it: no credential leaves for a plain-http server
    _refuse_credentials_over_http(cluster_name, where, cfg.host, _configured_credentials(cfg))

    label = f"the credentials of cluster '{cluster_name}'"

    def redact(c) -> None:
        for value in (c.api_key or {}).values():
            if value:
                secret = str(value).split(" ", 1)[-1]
                ctx.redactor.add(secret, name=label)
                if str(value).lower().startswith("basic "):  # the password inside, too
                    try:
                        for part in base64.b64decode(secret).decode("utf-8", "replace").split(":", 1)[1:]:
                            ctx.redactor.add(part, name=label)
                    except ValueError:
                        pass

    redact(cfg)
    hook = cfg.refresh_api_key_hook
    if hook is not None:  # an expiring exec/auth-provider token is fetched again: masked as well

        def refresh(c, _hook=hook) -> None:
            _hook(c)
            redact(c)

        cfg.refresh_api_key_hook = refresh
    api = client.ApiClient(cfg)
    api.user_agent = f"runbook/{__version__}"
    kube = Kube(cluster_name, api, where)
    ctx.connections[key] = kube
    return kube


# --- running ----------------------------------------------------------------------


def _empty() -> dict:
    return {
        "items": [], "object": None, "names": [], "count": 0, "pods": [], "not_ready": [], "restarts": 0,
        "reasons": [], "oom_killed": [], "node_pressure": [], "nodes": [], "events": [], "warnings": 0,
        "containers": [], "replicas": None, "ready_replicas": None, "updated_replicas": None,
        "available_replicas": None, "done": False, "revision": None, "usage": [], "pod": None, "container": None,
        "dry_run": False, "message": "",
    }


def run(step, act: Action, ctx) -> StepResult:
    spec = act.detail["spec"]
    started = time.monotonic()
    data = _empty()
    data.update(verb=spec["verb"], resource=spec["resource"], namespace=spec["namespace"], cluster=spec["cluster"])
    try:
        kube = connect(ctx, spec["cluster"], act.detail["where"])
        kube.timeout = ctx.timeout
        kube.dry_run = bool(ctx.server_dry_run) and act.detail.get("effect") == "write"
        data["dry_run"] = kube.dry_run
        out = VERB_RUNNERS[spec["verb"]](kube, spec, data, ctx)
    except _Timeout as exc:
        # "failed", not "timeout": the message says what the rollout was waiting for
        return StepResult("failed", stdout=exc.stdout, error=str(exc), data=data, duration=time.monotonic() - started)
    except RunbookError as exc:
        return StepResult("failed", error=ctx.redactor.text(str(exc)), data=data, duration=time.monotonic() - started)
    if kube.dry_run:
        out = "(server dry run: dryRun=All — the API server validated and admitted this, nothing was persisted)\n" + out
    return StepResult("ok", stdout=out, data=data, duration=time.monotonic() - started)


class _Timeout(RunbookError):
    def __init__(self, message: str, stdout: str):
        super().__init__(message)
        self.stdout = stdout


def _what(verb: str, plural: str, name: str | None, ns: str | None) -> tuple:
    return (verb, plural, name, ns)


def _get(kube: Kube, plural: str, ns: str | None, name: str) -> dict:
    return kube.request("GET", K.object_path(plural, ns, name), what=_what("get", plural, name, ns))


def _list(kube: Kube, plural: str, ns: str | None, query: dict | None = None) -> list[dict]:
    got = kube.request("GET", K.collection_path(plural, ns), query, what=_what("list", plural, None, ns))
    return got.get("items") or []


def _set_items(data: dict, items: list[dict]) -> None:
    data["items"] = items
    data["names"] = [V.name_of(o) for o in items]
    data["count"] = len(items)


def run_get(kube: Kube, spec: dict, data: dict, ctx) -> str:
    plural, ns, name = spec["resource"], spec["namespace"], spec["name"]
    if name is not None:
        items = [_get(kube, plural, ns, name)]
    else:
        c = K.plan_calls(spec)[0]
        got = kube.request("GET", c["path"], c.get("query"), what=_what("list", plural, None, ns))
        items = got.get("items") or []
        kind = (got.get("kind") or "").removesuffix("List")
        for o in items:  # list items carry no kind/apiVersion; put them back for conditions and json
            o.setdefault("kind", kind)
            o.setdefault("apiVersion", got.get("apiVersion"))
    if plural == "secrets":
        items = [V.mask_secret(o) for o in items]
    _set_items(data, items)
    if name is not None:
        data["object"] = items[0]
    if plural == "pods":
        data.update(V.pod_facts(items))
    if plural == "nodes":
        data["node_pressure"] = V.node_pressure(items)
    if plural in ("deployments", "statefulsets", "daemonsets") and name is not None:
        data.update(V.replicas(items[0]))
        data["containers"] = V.containers_of(items[0])
    if plural == "events":
        data["events"] = [V.event_row(e) for e in V.sort_events(items)]
        data["warnings"] = sum(1 for e in data["events"] if e["type"] == "Warning")
    if spec["output"] == "json":
        return json.dumps(items[0] if name is not None else {"items": items}, indent=2) + "\n"
    if spec["output"] == "name":
        return "".join(f"{P.RESOURCES[plural][2].lower()}/{n}\n" for n in data["names"])
    return V.list_table(plural, items, spec["output"] == "wide", spec["all_namespaces"])


def _workload_pods(kube: Kube, plural: str, ns: str, name: str) -> tuple[dict, list[dict]]:
    obj = _get(kube, plural, ns, name)
    selector = V.selector_string((obj.get("spec") or {}).get("selector"))
    if not selector:
        raise KubeError(f"{plural[:-1]}/{name} has no selector: cannot find its pods")
    pods = _list(kube, "pods", ns, {"labelSelector": selector})
    return obj, pods


def _first_pod(pods: list[dict], previous: bool = False) -> dict | None:
    """kubectl's choice (running, ready, most restarts, oldest); for the
    previous container's logs, pods that have one come first."""
    def key(p):
        r = V.pod_row(p)
        running = (p.get("status") or {}).get("phase") == "Running"
        first = (not r["last_termination"],) if previous else ()
        return first + (not running, not r["is_ready"], -r["restarts"], (p.get("metadata") or {}).get("creationTimestamp") or "")

    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")] or pods
    return sorted(live, key=key)[0] if live else None


def run_logs(kube: Kube, spec: dict, data: dict, ctx) -> str:
    plural, ns, name = spec["resource"], spec["namespace"], spec["name"]
    header = ""
    if plural == "pods":
        pod = None if spec["container"] else _get(kube, "pods", ns, name)
        pod_name = name
    else:
        _, pods = _workload_pods(kube, plural, ns, name)
        pod = _first_pod(pods, spec["previous"])
        if pod is None:
            raise KubeError(f"{plural[:-1]}/{name} in namespace '{ns}' has no pods to read logs from")
        pod_name = V.name_of(pod)
        header = f"pod/{pod_name} ({len(pods)} pod{'s' if len(pods) != 1 else ''} of {plural[:-1]}/{name})"
    container = spec["container"]
    if container is None and pod is not None:
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        default = ((pod.get("metadata") or {}).get("annotations") or {}).get("kubectl.kubernetes.io/default-container")
        container = default if default in names else (names[0] if names else None)
        if len(names) > 1:
            header = (header + "; " if header else "") + f"container {container} (of {', '.join(names)})"
    if container is None:
        raise KubeError(f"pod/{pod_name} has no containers")
    text = kube.request("GET", K.object_path("pods", ns, pod_name) + "/log", K.log_query(spec, container), text=True,
                        what=_what("get", "pods/log", pod_name, ns))
    data.update(pod=pod_name, container=container, count=len(text.splitlines()))
    return (f"==> {header} <==\n" if header else "") + text + ("" if not text or text.endswith("\n") else "\n")


def run_events(kube: Kube, spec: dict, data: dict, ctx) -> str:
    c = K.plan_calls(spec)[0]
    got = kube.request("GET", c["path"], c.get("query"), what=_what("list", "events", None, spec["namespace"]))
    items = V.sort_events(got.get("items") or [])
    _set_items(data, items)
    data["events"] = [V.event_row(e) for e in items]
    data["warnings"] = sum(1 for e in data["events"] if e["type"] == "Warning")
    return V.events_table(data["events"], spec["all_namespaces"])


def run_summary(kube: Kube, spec: dict, data: dict, ctx) -> str:
    plural, ns, name = spec["resource"], spec["namespace"], spec["name"]
    obj, pods = _workload_pods(kube, plural, ns, name)
    data["object"] = obj
    _set_items(data, pods)
    data.update(V.pod_facts(pods))
    data.update(V.replicas(obj))
    data["containers"] = V.containers_of(obj)
    node_names = sorted({(p.get("spec") or {}).get("nodeName") for p in pods} - {None})
    nodes_note = ""
    if node_names:
        try:
            nodes = [n for n in _list(kube, "nodes", None) if V.name_of(n) in node_names]
        except KubeError as exc:
            if exc.status != 403:
                raise
            nodes, nodes_note = [], "node conditions: not readable with these credentials (403 Forbidden on nodes)\n"
        data["nodes"] = [{"name": V.name_of(n), "status": V.node_status(n)} for n in nodes]
        data["node_pressure"] = V.node_pressure(nodes)
    kind = P.RESOURCES[plural][2]
    r = V.replicas(obj)
    lines = [f"{kind.lower()}/{name} in {ns}: {r['ready_replicas']}/{r['replicas']} ready, {r['updated_replicas']} up to date, "
             f"{r['available_replicas']} available"]
    for c in data["containers"]:
        lines.append(f"  container {c['name']}: image {c['image']}, memory limit {c['memory_limit'] or 'none'}, "
                     f"request {c['memory_request'] or 'none'}")
    out = "\n".join(lines) + "\n" + V.list_table("pods", pods, wide=True)
    for p in data["pods"]:
        for t in p["last_termination"]:
            out += (f"  {p['name']} container {t['container']}: last terminated {t['reason'] or '?'} "
                    f"(exit code {t['exit_code']}, {V.age(t['finished'])} ago)\n")
    if data["not_ready"]:
        out += f"not ready: {', '.join(data['not_ready'])}\n"
    if data["oom_killed"]:
        out += f"OOMKilled: {', '.join(data['oom_killed'])}\n"
    for np_ in data["node_pressure"]:
        out += f"node {np_['node']}: {np_['condition']}" + (f" ({np_['message']})" if np_["message"] else "") + "\n"
    if node_names and not data["node_pressure"] and not nodes_note:
        out += f"nodes {', '.join(node_names)}: no pressure conditions\n"
    return out + nodes_note


def run_top(kube: Kube, spec: dict, data: dict, ctx) -> str:
    c = K.plan_calls(spec)[0]
    got = kube.request("GET", c["path"], c.get("query"), what=_what("list", f"{spec['resource']}.metrics.k8s.io", None, spec["namespace"]))
    rows = []
    for item in got.get("items") or []:
        if spec["resource"] == "pods":
            conts = [{"name": x.get("name"), "cpu": V.quantity((x.get("usage") or {}).get("cpu")),
                      "memory": V.quantity((x.get("usage") or {}).get("memory"))} for x in item.get("containers") or []]
            cpu, mem = sum(x["cpu"] for x in conts), sum(x["memory"] for x in conts)
        else:
            conts = []
            cpu, mem = V.quantity((item.get("usage") or {}).get("cpu")), V.quantity((item.get("usage") or {}).get("memory"))
        rows.append({"name": V.name_of(item), "namespace": (item.get("metadata") or {}).get("namespace"),
                     "cpu": cpu, "memory": mem, "containers": conts})
    rows.sort(key=lambda x: -x["memory"])
    data["usage"] = rows
    data["names"] = [x["name"] for x in rows]
    data["count"] = len(rows)
    headers = (["NAMESPACE"] if spec["all_namespaces"] else []) + ["NAME", "CPU(cores)", "MEMORY(bytes)"]
    return V.table(headers, [([x["namespace"]] if spec["all_namespaces"] else []) +
                             [x["name"], V.cpu_text(x["cpu"]), V.mem_text(x["memory"])] for x in rows],
                   "No metrics found.")


def rollout_message(d: dict) -> tuple[bool, str]:
    """kubectl's rollout status for a Deployment (and ready replicas too)."""
    spec, status, md = d.get("spec") or {}, d.get("status") or {}, d.get("metadata") or {}
    name = md.get("name")
    if int(md.get("generation") or 0) > int(status.get("observedGeneration") or 0):
        return False, "waiting for the deployment spec update to be observed…"
    for c in status.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            raise KubeError(f"deployment/{name} exceeded its progress deadline ({c.get('message', '')})")
    want = int(spec.get("replicas", 1))
    updated, total = int(status.get("updatedReplicas") or 0), int(status.get("replicas") or 0)
    ready, available = int(status.get("readyReplicas") or 0), int(status.get("availableReplicas") or 0)
    if updated < want:
        return False, f"waiting for deployment/{name} rollout: {updated} out of {want} new replicas have been updated…"
    if total > updated:
        return False, f"waiting for deployment/{name} rollout: {total - updated} old replicas are pending termination…"
    if ready < updated:
        return False, f"waiting for deployment/{name} rollout: {ready} of {updated} updated replicas are ready…"
    if available < updated:
        return False, f"waiting for deployment/{name} rollout: {available} of {updated} updated replicas are available…"
    return True, f"deployment/{name} successfully rolled out"


def run_rollout_status(kube: Kube, spec: dict, data: dict, ctx) -> str:
    plural, ns, name = spec["resource"], spec["namespace"], spec["name"]
    limit = spec["timeout"] or K.DEFAULT_ROLLOUT_TIMEOUT
    if ctx.timeout is not None:  # the step's own timeout bounds it too
        limit = min(limit, ctx.timeout) if spec["timeout"] else ctx.timeout
    deadline = time.monotonic() + limit
    seen: list[str] = []
    polls = 0
    while True:
        d = _get(kube, plural, ns, name)
        done, msg = rollout_message(d)
        if not seen or seen[-1] != msg:
            seen.append(msg)
        data["object"] = d
        data.update(V.replicas(d))
        data.update(done=done, message=msg)
        if done:
            return "\n".join(seen) + "\n"
        pause = POLL[min(polls, len(POLL) - 1)]
        polls += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout(f"deployment/{name} not rolled out after {limit:g}s: {msg}", "\n".join(seen) + "\n")
        time.sleep(min(pause, remaining))


def _written(data: dict, obj: dict) -> None:
    data["object"] = obj
    _set_items(data, [obj])


def run_rollout_restart(kube: Kube, spec: dict, data: dict, ctx) -> str:
    c = K.plan_calls(spec)[0]
    if spec["resource"] == "deployments":  # as kubectl: a paused rollout would not restart anything
        d = _get(kube, "deployments", spec["namespace"], spec["name"])
        if (d.get("spec") or {}).get("paused"):
            raise KubeError(f"deployment/{spec['name']} is paused: a restart would change nothing until it is resumed "
                            "(rollout resume), so nothing was sent")
    obj = kube.request("PATCH", c["path"], c.get("query"), body=c["body"], content_type=c["content_type"], write=True,
                       what=_what("patch", spec["resource"], spec["name"], spec["namespace"]))
    _written(data, obj)
    group = P.RESOURCES[spec["resource"]][1]
    return f"{P.RESOURCES[spec['resource']][2].lower()}.{group}/{spec['name']} restarted (restartedAt {spec['restarted_at']})\n"


def _revision(obj: dict) -> int:
    try:
        return int(((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION) or 0)
    except ValueError:
        return 0


def run_rollout_undo(kube: Kube, spec: dict, data: dict, ctx) -> str:
    ns, name = spec["namespace"], spec["name"]
    d = _get(kube, "deployments", ns, name)
    if (d.get("spec") or {}).get("paused"):
        raise KubeError(f"deployment/{name} is paused: resume it first (rollout resume), then undo")
    selector = V.selector_string((d.get("spec") or {}).get("selector"))
    uid = (d.get("metadata") or {}).get("uid")
    rss = [rs for rs in _list(kube, "replicasets", ns, {"labelSelector": selector})
           if any(o.get("uid") == uid for o in (rs.get("metadata") or {}).get("ownerReferences") or [])]
    current = _revision(d)
    by_rev = {_revision(rs): rs for rs in rss}
    history = sorted(r for r in by_rev if r)
    if spec["to_revision"]:
        target = spec["to_revision"]
        if target not in by_rev:
            raise KubeError(f"deployment/{name} has no revision {target} (revisions: {', '.join(map(str, history)) or 'none'})")
    else:
        older = [r for r in history if r < current]
        if not older:
            raise KubeError(f"deployment/{name} has no previous revision to roll back to "
                            f"(revisions: {', '.join(map(str, history)) or 'none'}, current {current})")
        target = older[-1]
    rs = by_rev[target]
    template = json.loads(json.dumps((rs.get("spec") or {}).get("template") or {}))
    labels = (template.get("metadata") or {}).get("labels") or {}
    labels.pop("pod-template-hash", None)
    data["revision"] = target
    if _same_template(template, (d.get("spec") or {}).get("template") or {}):
        data["object"] = d
        return f"deployment.apps/{name}: skipped rollback (the current template already matches revision {target})\n"
    annotations = {k: v for k, v in ((d.get("metadata") or {}).get("annotations") or {}).items() if k in SKIP_ANNOTATIONS}
    annotations.update({k: v for k, v in ((rs.get("metadata") or {}).get("annotations") or {}).items() if k not in SKIP_ANNOTATIONS})
    patch = [{"op": "replace", "path": "/spec/template", "value": template},
             {"op": "replace", "path": "/metadata/annotations", "value": annotations}]
    obj = kube.request("PATCH", K.object_path("deployments", ns, name), K.field_manager("rollout_undo"), body=patch,
                       content_type=P.PATCH_TYPES["json"], write=True, what=_what("patch", "deployments", name, ns))
    _written(data, obj)
    return f"deployment.apps/{name} rolled back to revision {target} (was {current})\n"


def _same_template(a: dict, b: dict) -> bool:
    def clean(t):
        t = json.loads(json.dumps(t))
        ((t.get("metadata") or {}).get("labels") or {}).pop("pod-template-hash", None)
        return t

    return clean(a) == clean(b)


def run_scale(kube: Kube, spec: dict, data: dict, ctx) -> str:
    c = K.plan_calls(spec)[0]
    obj = kube.request("PATCH", c["path"], c.get("query"), body=c["body"], content_type=c["content_type"], write=True,
                       what=_what("patch", f"{spec['resource']}/scale", spec["name"], spec["namespace"]))
    _written(data, obj)
    data["replicas"] = (obj.get("spec") or {}).get("replicas")
    current = (obj.get("status") or {}).get("replicas")
    group = P.RESOURCES[spec["resource"]][1]
    return (f"{P.RESOURCES[spec['resource']][2].lower()}.{group}/{spec['name']} scaled to {data['replicas']}"
            f"{f' ({current} running now)' if current is not None else ''}\n")


def run_delete(kube: Kube, spec: dict, data: dict, ctx) -> str:
    c = K.plan_calls(spec)[0]
    obj = kube.request("DELETE", c["path"], c.get("query"), write=True,
                       what=_what("delete", spec["resource"], spec["name"], spec["namespace"]))
    _written(data, obj)
    return f'pod "{spec["name"]}" deleted\n'


def run_cordon(kube: Kube, spec: dict, data: dict, ctx) -> str:
    c = K.plan_calls(spec)[0]
    obj = kube.request("PATCH", c["path"], c.get("query"), body=c["body"], content_type=c["content_type"], write=True,
                       what=_what("patch", "nodes", spec["name"], None))
    _written(data, obj)
    data["nodes"] = [{"name": V.name_of(obj), "status": V.node_status(obj)}]
    return f"node/{spec['name']} {spec['verb']}ed\n" + V.list_table("nodes", [obj])


def run_patch(kube: Kube, spec: dict, data: dict, ctx) -> str:
    c = K.plan_calls(spec)[0]
    obj = kube.request("PATCH", c["path"], c.get("query"), body=c["body"], content_type=c["content_type"], write=True,
                       what=_what("patch", spec["resource"] + (f"/{spec['subresource']}" if spec["subresource"] else ""),
                                  spec["name"], spec["namespace"]))
    if spec["resource"] == "secrets":
        obj = V.mask_secret(obj)
    _written(data, obj)
    kind = P.RESOURCES[spec["resource"]][2].lower()
    group = P.RESOURCES[spec["resource"]][1]
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return f"{kind}{'.' + group if group else ''}/{spec['name']} patched (resourceVersion {rv})\n"


VERB_RUNNERS = {
    "get": run_get, "logs": run_logs, "events": run_events, "summary": run_summary, "top": run_top,
    "rollout_status": run_rollout_status, "rollout_restart": run_rollout_restart, "rollout_undo": run_rollout_undo,
    "scale": run_scale, "delete": run_delete, "cordon": run_cordon, "uncordon": run_cordon, "patch": run_patch,
}
