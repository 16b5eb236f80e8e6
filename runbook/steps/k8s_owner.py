"""From a pod to the Deployment that owns it (``params_from_labels:
{deployment: {from_pod: pod}}``): an OOM alert names a pod, a runbook acts on
its Deployment.

A Deployment's pods are owned by a ReplicaSet (``metadata.ownerReferences``,
the one with ``controller: true``) which the Deployment owns in turn; the
names are read from the cluster, never guessed from the pod's name.  A pod
owned by anything else (a StatefulSet, a DaemonSet, a Job) or by nothing is
refused in one line naming the pod and its owner.  The cluster is the one a
``k8s`` step would use (the form's ``cluster``, else the only one, else
``main``) with the same client and checks (``k8s_ops.connect``: no
credentials over plain http, tokens masked); the kubernetes client is
imported only for a live lookup.
"""

from __future__ import annotations

from runbook.errors import RunbookError
from runbook.steps import k8s as K

LOOKUP_TIMEOUT = 30.0  # seconds for each of the (at most two) reads


class _Plain:
    """What ``k8s._cluster`` reads of a step's renderer, for a name that is no template."""

    context: dict = {}

    def __init__(self, inventory):
        self.inventory = inventory

    @staticmethod
    def value(src):
        return src

    @staticmethod
    def text(src):
        return str(src)


def _namespace(spec: dict, params: dict, cluster) -> tuple[str, str]:
    """(namespace, where it came from)."""
    param = spec.get("namespace")
    if param is None and "namespace" in params:
        param = "namespace"
    if param is not None and params.get(param):
        ns = str(params[param])
        if not K._DNS_LABEL.fullmatch(ns) or len(ns) > 63:
            raise RunbookError(f"from_pod: the namespace {ns!r} (parameter '{param}') is not a namespace name")
        return ns, f"parameter {param}"
    if cluster is not None and cluster.namespace:
        return str(cluster.namespace), "the inventory cluster's namespace"
    return "default", "default"


def _controller(obj: dict) -> dict | None:
    refs = [r for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if isinstance(r, dict)]
    return next((r for r in refs if r.get("controller")), refs[0] if refs else None)


def deployment_of_pod(spec: dict, pod: str, params: dict, inventory, live: bool) -> tuple:
    """(Deployment name, record, words) for the pod ``pod`` (the label's value)."""
    if not isinstance(pod, str) or not K._DNS_SUBDOMAIN.fullmatch(pod) or len(pod) > 253:
        raise RunbookError(f"from_pod: the alert's label '{spec.get('from_pod')}' is {pod!r}, which is not a pod name "
                           "(lower-case letters, digits, '-' and '.'); give the parameter with -p")
    if inventory is None:
        if not live:
            return None, {"from_pod": pod}, f"comes from pod {pod}: its ReplicaSet's Deployment, read from the cluster when the run is live"
        raise RunbookError(f"from_pod: finding the Deployment of pod {pod} needs an inventory with a cluster "
                           "(use --inventory FILE or --env NAME), or give the parameter with -p")
    cname, cluster = K._cluster(_Plain(inventory), {"cluster": spec.get("cluster")})
    ns, ns_from = _namespace(spec, params, cluster)
    record = {"from_pod": pod, "namespace": ns, "cluster": cname}
    if not live:
        return None, record, (f"comes from pod {pod} in namespace {ns} (its ReplicaSet's Deployment), read from "
                              f"cluster {cname} when the run is live")
    from runbook.engine import StepContext
    from runbook.secrets import Redactor
    from runbook.steps import k8s_ops

    redactor = Redactor()
    for v in inventory.secret_values():
        redactor.watch(v)
    ctx = StepContext(run_id="", context={}, interactive=False, ui=None, answers={}, inventory=inventory,
                      redactor=redactor)
    try:
        kube = k8s_ops.connect(ctx, cname, K._where(cluster))
        kube.timeout = LOOKUP_TIMEOUT
        try:
            obj = kube.request("GET", K.object_path("pods", ns, pod), what=("get", "pods", pod, ns))
        except k8s_ops.KubeError as exc:
            if exc.status == 404:
                raise RunbookError(f"from_pod: pod {pod} is not in namespace {ns} on cluster '{cname}' (gone since the "
                                   "alert fired? a rollout renames pods): give the Deployment with -p") from None
            raise
        owner = _controller(obj)
        if owner is None:
            raise RunbookError(f"from_pod: pod {pod} (namespace {ns}) has no owner: no Deployment runs it, so this "
                               "runbook has nothing to act on; give the parameter with -p if you know better")
        if owner.get("kind") != "ReplicaSet":
            raise RunbookError(f"from_pod: pod {pod} (namespace {ns}) is owned by {owner.get('kind', '?')} "
                               f"{owner.get('name', '?')}, not by a Deployment's ReplicaSet: this runbook acts on "
                               "Deployments; use the runbook for that kind, or give the parameter with -p")
        rs_name = str(owner.get("name") or "")
        if not K._DNS_SUBDOMAIN.fullmatch(rs_name):
            raise RunbookError(f"from_pod: pod {pod} names an owner ReplicaSet {rs_name!r} that is not a name")
        rs = kube.request("GET", K.object_path("replicasets", ns, rs_name), what=("get", "replicasets", rs_name, ns))
        top = _controller(rs)
        if top is None or top.get("kind") != "Deployment":
            by = f"is owned by {top.get('kind', '?')} {top.get('name', '?')}" if top else "has no owner"
            raise RunbookError(f"from_pod: pod {pod} (namespace {ns}) belongs to ReplicaSet {rs_name}, which {by}, "
                               "not a Deployment: give the parameter with -p")
        name = str(top.get("name") or "")
        if not K._DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
            raise RunbookError(f"from_pod: ReplicaSet {rs_name} names an owner Deployment {name!r} that is not a name")
    finally:
        for conn in ctx.connections.values():
            conn.close()
    record.update(via=[f"ReplicaSet {rs_name}"], namespace_from=ns_from)
    return name, record, f"from pod {pod} via ReplicaSet {rs_name}"
