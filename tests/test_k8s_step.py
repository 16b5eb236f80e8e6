"""The k8s step against a Kubernetes API server subset (tests/kubeapi.py),
through the real kubernetes client over HTTP and, mostly, the real CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, book
from kubeapi import deployment, event, node, write_kubeconfig
from runbook.steps import k8s, k8s_parse


@pytest.fixture
def run_k8s(write, main, kube_inventory):
    """run_k8s(stages, *cli args, head=..., inventory=...) -> CompletedProcess of `runbook run --yes`."""

    def _run(steps: str, *args, head: str = "", inventory=None, yes=True, env_token=None):
        p = book(write, steps, head)
        return main("run", p, "--inventory", inventory or kube_inventory(), *(["--yes"] if yes else []), *args,
                   env={"RUNBOOK_PARAM_TOKEN": env_token} if env_token else None)

    return _run


def ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return r.stdout


# --- the shorthand --------------------------------------------------------------


@pytest.mark.parametrize("shorthand, structured", [
    ("get pods -l app=api -o wide", {"get": "pods", "selector": "app=api", "output": "wide"}),
    ("get deployment api -n production", {"get": "deployment/api", "namespace": "production"}),
    ("get po -A --field-selector=status.phase!=Running", {"get": "pods", "all_namespaces": True, "field_selector": "status.phase!=Running"}),
    ("logs deployment/api -n production --tail=100", {"logs": "deployment/api", "namespace": "production", "tail": 100}),
    ("logs api-7c9-x2 -c sidecar --since 5m -p", {"logs": "pod/api-7c9-x2", "container": "sidecar", "since": "5m", "previous": True}),
    ("events --for deployment/api", {"events": "deployment/api"}),
    ("top pod -n production", {"top": "pods", "namespace": "production"}),
    ("rollout restart deployment/api -n production", {"rollout_restart": "deployment/api", "namespace": "production"}),
    ("rollout undo deploy api --to-revision=3", {"rollout_undo": "deployment/api", "to_revision": 3}),
    ("rollout status deployment/api --timeout 2m", {"rollout_status": "deployment/api", "timeout": "2m"}),
    ("scale deployment/api --replicas=5", {"scale": "deployment/api", "replicas": 5}),
    ("delete pod api-1 --grace-period=0", {"delete": "pod/api-1", "grace_period": 0}),
    ("cordon node-1", {"cordon": "node-1"}),
    ("uncordon node/node-1", {"uncordon": "node-1"}),
    ("patch deployment api --type merge -p '{\"spec\": {\"paused\": true}}'",
     {"patch": "deployment/api", "type": "merge", "body": {"spec": {"paused": True}}}),
    ("kubectl get pods/{{ params.pod }} -n {{ params.ns }}", {"get": "pods", "name": "{{ params.pod }}", "namespace": "{{ params.ns }}"}),
])
def test_shorthand_becomes_the_structured_form(shorthand, structured):
    a, b = k8s.normalize(shorthand), k8s.normalize(structured)
    assert a["problems"] == [] and b["problems"] == []
    a.pop("shorthand"), b.pop("shorthand")
    assert a == b


def test_tokens_keep_templates_whole_and_render_one_value_each():
    tokens = k8s_parse.tokenize("logs deployment/{{ params.svc | default('a b') }} -n '{{ params.ns }}' --tail=5")
    assert [t.source for t in tokens] == ["logs", "deployment/{{ params.svc | default('a b') }}", "-n", "{{ params.ns }}", "--tail=5"]
    body = k8s.normalize("get pods {% if params.x %}a{% else %}b c{% endif %}")
    assert body["name"] == "{% if params.x %}a{% else %}b c{% endif %}"


def test_shorthand_injection_stays_one_value(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production")
    r = run_k8s("""
  mitigate:
    - id: restart
      k8s: "rollout restart deployment/{{ params.service }}"
      timeout: 1m
  verify:
    - id: done
      end: done
""", "-p", "service=api -n kube-system", head="params:\n  service: {type: string}\n")
    assert r.returncode == 1
    assert "invalid deployment name 'api -n kube-system'" in r.stdout
    assert "a template value is always one name, never more words or flags" in r.stdout
    assert kubeapi.requests == []  # nothing was sent anywhere, kube-system least of all


def test_validator_rejects_bad_shorthand_and_bodies_precisely(write, main):
    p = book(write, """
  diagnose:
    - id: verb
      k8s: "exec api -- sh"
    - id: flag
      k8s: "logs deployment/api --follow"
    - id: tverb
      k8s: "{{ params.verb }} pods"
    - id: tkind
      k8s: "get {{ params.kind }}/api"
    - id: kind
      k8s: "get deploymnets"
    - id: noname
      k8s: "summary deployment"
    - id: shell
      k8s: "get pods; rm -rf /"
    - id: pjson
      k8s: {get: pods, replicas: 3}
    - id: ro
      k8s: "get pods"
  mitigate:
    - id: delsvc
      k8s: "delete service/api"
      timeout: 1m
    - id: tpatch
      k8s: "patch deployment/api -p '{\\"spec\\": {{ params.spec }}}'"
      timeout: 1m
    - id: claimsro
      k8s: "scale deployment/api --replicas=3"
      readonly: true
      timeout: 1m
    - id: jsonpatch
      k8s: {patch: deployment/api, type: json, body: {spec: {}}}
      timeout: 1m
  verify:
    - id: fine
      k8s: "rollout status deployment/api"
""", head="params:\n  verb: {type: string}\n  kind: {type: string}\n  spec: {type: string}\n")
    r = main("validate", p)
    out = r.stdout
    assert r.returncode == 1
    expect = [
        ("11:12", "step 'verb' k8s.shorthand: unsupported verb 'exec'"),
        ("13:12", "step 'flag' k8s.shorthand: unsupported flag '--follow' for logs (supported: --cluster, --container, --namespace, --previous, --since, --tail, -c, -n, -p)"),
        ("15:12", "step 'tverb' k8s.shorthand: the verb must be written literally"),
        ("17:12", "step 'tkind' k8s.shorthand: the resource kind must be written literally"),
        ("19:12", "step 'kind' k8s.shorthand: unknown resource kind 'deploymnets' (did you mean 'deployments'?)"),
        ("21:12", "step 'noname' k8s.shorthand: summary needs a name"),
        ("23:12", "step 'shell' k8s.shorthand: character ';' at 9 is not allowed"),
        ("25:34", "step 'pjson' k8s.replicas: replicas applies to scale, not get"),
        ("30:12", "step 'delsvc' k8s.shorthand: delete works on pods, not services"),
        ("33:12", "step 'tpatch' k8s.shorthand: the patch document of the shorthand must be literal JSON"),
        ("36:12", "step 'claimsro' k8s.shorthand: readonly: true, but scale changes the cluster"),
        ("40:54", "step 'jsonpatch' k8s.body: a JSON patch is a list of operations"),
    ]
    for where, message in expect:
        assert any(f"t.yaml:{where}" in line and message in line for line in out.splitlines()), (where, message, out)
    assert "step 'ro'" not in out and "step 'fine'" not in out
    # reads are reads, whatever the default; a step whose verb cannot be read counts as a write
    assert "step 'flag' writes" not in out and "step 'kind' writes" not in out and "step 'verb' writes" in out


def test_effects():
    for verb in ("get pods", "logs pod/x", "events", "summary deployment/x", "top pods", "rollout status deployment/x"):
        assert k8s.effect_of(k8s.normalize(verb)) == "read", verb
    for verb in ("rollout restart deployment/x", "rollout undo deployment/x", "scale deployment/x --replicas=1",
                 "delete pod x", "cordon n", "uncordon n", "patch deployment x -p {}"):
        assert k8s.effect_of(k8s.normalize(verb)) == "write", verb
    assert k8s.effect_of(k8s.normalize("nonsense")) is None  # a broken step counts as a write


def test_write_in_diagnose_is_a_safety_problem(write, main):
    p = book(write, """
  diagnose:
    - id: restart
      k8s: "rollout restart deployment/api"
      timeout: 1m
""")
    r = main("validate", p)
    assert r.returncode == 1 and "step 'restart' writes in the diagnose stage" in r.stdout and "[RB101]" in r.stdout


# --- dry-run ------------------------------------------------------------------


def test_dry_run_shows_the_exact_api_calls_and_contacts_nothing(write, main, kubeapi, kube_inventory):
    p = book(write, """
  diagnose:
    - id: pods
      k8s: "get pods -l app={{ params.service }} -o wide"
  mitigate:
    - id: limit
      k8s:
        patch: "deployment/{{ params.service }}"
        body: {spec: {replicas: "{{ params.n }}", template: {spec: {containers: [{name: api, resources: {limits: {memory: 1Gi}}}]}}}}
      timeout: 1m
    - id: restart
      k8s: "rollout restart deployment/{{ params.service }}"
      timeout: 1m
    - id: undo
      k8s: "rollout undo deployment/{{ params.service }}"
      timeout: 1m
    - id: cordon
      k8s: "cordon node-1"
      timeout: 1m
  verify:
    - id: done
      end: done
""", head="params:\n  service: {type: string, default: api}\n  n: {type: integer, default: 3}\n")
    r = main("run", p, "--dry-run", "--format", "json", "--inventory", kube_inventory())
    assert r.returncode == 0, r.stderr
    steps = {s["id"]: s for s in json.loads(r.stdout)["steps"]}
    assert steps["pods"]["detail"]["calls"] == [
        {"method": "GET", "path": "/api/v1/namespaces/production/pods", "query": {"labelSelector": "app=api"}}]
    assert steps["limit"]["detail"]["calls"] == [{
        "method": "PATCH", "path": "/apis/apps/v1/namespaces/production/deployments/api",
        "query": {"fieldManager": "kubectl-patch"}, "content_type": "application/strategic-merge-patch+json",
        "body": {"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "api", "resources": {"limits": {"memory": "1Gi"}}}]}}}}}]
    restart = steps["restart"]["detail"]["calls"][0]
    assert restart["method"] == "PATCH" and "kubectl.kubernetes.io/restartedAt" in json.dumps(restart["body"])
    undo = steps["undo"]["detail"]["calls"]
    assert [c["method"] for c in undo] == ["GET", "GET", "PATCH"]
    assert undo[2]["content_type"] == "application/json-patch+json" and "known only when the step runs" in undo[2]["note"]
    assert steps["cordon"]["detail"]["calls"] == [{"method": "PATCH", "path": "/api/v1/nodes/node-1",
                                                   "query": {"fieldManager": "kubectl-cordon"},
                                                   "body": {"spec": {"unschedulable": True}},
                                                   "content_type": "application/strategic-merge-patch+json"}]
    assert steps["restart"]["effect"] == "write" and steps["pods"]["effect"] == "read"
    r = main("run", p, "--dry-run", "--inventory", kube_inventory())
    assert "rollout restart deployment/api -n production  (PATCH /apis/apps/v1/namespaces/production/deployments/api)" in r.stdout
    assert kubeapi.requests == []


# --- reads ------------------------------------------------------------------------


def test_get_lists_and_reads_with_fields_usable_in_conditions(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production", replicas=3, oom=True)
    deployment(kubeapi, "web", "staging", replicas=1)
    kubeapi.put({"kind": "Secret", "apiVersion": "v1", "type": "Opaque",
                 "metadata": {"name": "db", "namespace": "production"}, "data": {"password": "aHVudGVyMg=="}})
    out = ok(run_k8s("""
  diagnose:
    - id: pods
      k8s: "get pods -l app=api -o wide"
    - id: running
      k8s: {get: pods, all_namespaces: true, field_selector: "status.phase=Running", output: name}
    - id: dep
      k8s: "get deploy/api"
    - id: secret
      k8s: "get secret db -o json"
    - id: decide
      choose:
        - when: "steps.pods.count == 3 and steps.pods.not_ready | length == 1 and steps.running.count == 4 and steps.dep.object.spec.replicas == 3 and steps.dep.ready_replicas == 2 and steps.pods.restarts == 4"
          goto: good
    - id: bad
      end: {status: failed, message: "conditions did not hold"}
    - id: good
      end: "not ready: {{ steps.pods.not_ready[0] }}, {{ steps.pods.pods[0].status }}, {{ steps.secret.object.data.password }}"
"""))
    assert "not ready: api-" in out and "CrashLoopBackOff, ***" in out
    assert "NAME" in out and "READY" in out and "STATUS" in out and "RESTARTS" in out and "NODE" in out  # -o wide
    assert "0/1     CrashLoopBackOff   4 (2m ago)" in out
    assert "pod/web-" in out  # -o name, all namespaces
    assert "aHVudGVyMg" not in out  # a secret's data never shows
    lists = [r for r in kubeapi.requests if r["path"] == "/api/v1/pods"]
    assert lists and lists[0]["query"] == {"fieldSelector": "status.phase=Running"}


def test_logs_tail_since_previous_and_containers(run_k8s, kubeapi):
    dep = deployment(kubeapi, "api", "production", replicas=2, oom=True)
    bad = next(p for p in kubeapi.all("pods", "production") if p["status"]["containerStatuses"][0]["restartCount"])
    good = next(p for p in kubeapi.all("pods", "production") if p is not bad and p["metadata"]["name"] != bad["metadata"]["name"])
    kubeapi.add_log("production", bad["metadata"]["name"], "api", [f"line {i}" for i in range(10)] + ["java.lang.OutOfMemoryError: Java heap space"], previous=True)
    kubeapi.add_log("production", good["metadata"]["name"], "api", ["stale-line"] * 3 + ["fresh"], age_seconds=3600)
    two = dict(good, metadata={"name": "two", "namespace": "production", "labels": {"x": "y"}})
    two["spec"] = dict(good["spec"], containers=[{"name": "main", "image": "a"}, {"name": "sidecar", "image": "b"}])
    kubeapi.put(two)
    kubeapi.add_log("production", "two", "main", ["from main"])
    kubeapi.add_log("production", "two", "sidecar", ["from sidecar"])
    out = ok(run_k8s(f"""
  diagnose:
    - id: prev
      k8s: "logs deployment/api --previous --tail=2"
    - id: recent
      k8s: {{logs: "pod/{good['metadata']['name']}", since: 10m}}
    - id: default
      k8s: "logs two"
    - id: side
      k8s: "logs two -c sidecar"
    - id: check
      choose:
        - when: "'OutOfMemoryError' in steps.prev.stdout and steps.prev.count == 2 and steps.prev.pod == '{bad['metadata']['name']}' and steps.default.container == 'main'"
          goto: good
    - id: bad
      end: {{status: failed, message: "no"}}
    - id: good
      end: "ok"
"""))
    assert "  | line 9\n  | java.lang.OutOfMemoryError" in out and "line 8" not in out  # the output, framed
    assert f"==> pod/{bad['metadata']['name']} (2 pods of deployment/api) <==" in out
    assert "fresh" in out and "stale-line" not in out  # since 10m: the last of 4 lines spread over an hour
    assert "from main" in out and "container main (of main, sidecar)" in out and "from sidecar" in out
    q = [r["query"] for r in kubeapi.requests if r["path"].endswith("/log")]
    assert {"container": "api", "tailLines": "2", "previous": "true"} in q and {"container": "api", "sinceSeconds": "600"} in q
    # a previous container that is not there: the server's words, one line
    r = run_k8s(f"""
  diagnose:
    - id: prev
      k8s: "logs {good['metadata']['name']} --previous"
""")
    assert r.returncode == 1
    assert f'400 BadRequest: previous terminated container "api" in pod "{good["metadata"]["name"]}" not found' in r.stdout


def test_summary_events_and_node_pressure(run_k8s, kubeapi):
    dep = deployment(kubeapi, "api", "production", replicas=2, oom=True, node="node-2")
    node(kubeapi, "node-1")
    node(kubeapi, "node-2", pressure=("MemoryPressure",))
    event(kubeapi, dep, "ScalingReplicaSet", "Scaled up replica set api-1 to 2", "Normal", age_seconds=300)
    event(kubeapi, dep, "ProgressDeadlineExceeded", "ReplicaSet has timed out progressing", "Warning", count=3)
    event(kubeapi, kubeapi.all("pods")[0], "BackOff", "Back-off restarting failed container")
    out = ok(run_k8s("""
  diagnose:
    - id: workload
      k8s: {summary: deployment/api}
    - id: events
      k8s: "events deployment/api"
    - id: check
      choose:
        - when: "steps.workload.oom_killed and 'OOMKilled' in steps.workload.reasons and 'CrashLoopBackOff' in steps.workload.reasons and steps.workload.node_pressure[0].condition == 'MemoryPressure' and steps.workload.containers[0].memory_limit == '256Mi' and steps.events.count == 2 and steps.events.warnings == 1"
          goto: good
    - id: bad
      end: {status: failed, message: "no"}
    - id: good
      end: "found {{ steps.workload.oom_killed | length }} OOM-killed, {{ steps.workload.restarts }} restarts"
"""))
    assert "found 1 OOM-killed, 4 restarts" in out
    assert "deployment/api in production: 1/2 ready" in out and "memory limit 256Mi" in out
    assert "container api: last terminated OOMKilled (exit code 137" in out
    assert "node node-2: MemoryPressure" in out and "node-1" not in out.split("node node-2")[0].split("MITIGATE")[0].split("NODE")[-1].split("\n")[0]
    assert "ProgressDeadlineExceeded" in out and "(x3)" in out and "Back-off restarting" not in out  # the Deployment's own events
    # a user who may not read nodes still gets the summary
    kubeapi.forbid("list", "nodes")
    out = ok(run_k8s("""
  diagnose:
    - id: workload
      k8s: {summary: deployment/api}
"""))
    assert "node conditions: not readable with these credentials (403 Forbidden on nodes)" in out


def test_top_with_and_without_the_metrics_api(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production", replicas=2)
    steps = """
  diagnose:
    - id: top
      k8s: "top pod -n production"
    - id: done
      end: "top: {{ steps.top.usage[0].name }} {{ steps.top.usage[0].memory }}"
"""
    r = run_k8s(steps)
    assert r.returncode == 1
    assert "cluster 'main' has no metrics API (metrics.k8s.io, 404): top needs metrics-server installed" in r.stdout
    kubeapi.metrics_enabled = True
    pods = [p["metadata"]["name"] for p in kubeapi.all("pods")]
    kubeapi.pod_metrics[("production", pods[0])] = {"api": {"cpu": "250m", "memory": "300Mi"}}
    kubeapi.pod_metrics[("production", pods[1])] = {"api": {"cpu": "1", "memory": "900Mi"}}
    out = ok(run_k8s(steps))
    assert f"top: {pods[1]} {900 * 2**20}" in out  # the hungriest first, in bytes
    assert "CPU(cores)" in out and "1000m" in out and "900Mi" in out


# --- writes ------------------------------------------------------------------------------


def test_writes_change_the_cluster_as_kubectl_would(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production", replicas=2, revisions=3)
    node(kubeapi, "node-1")
    before = kubeapi.get("deployments", "api", "production")
    victim = kubeapi.all("pods")[0]["metadata"]["name"]
    out = ok(run_k8s(f"""
  mitigate:
    - id: undo
      k8s: "rollout undo deployment/api"
      timeout: 1m
    - id: restart
      k8s: "rollout restart deployment/api"
      timeout: 1m
    - id: scale
      k8s: {{scale: deployment/api, replicas: "{{{{ params.n }}}}"}}
      timeout: 1m
    - id: delete
      k8s: "delete pod {victim} --grace-period=0"
      timeout: 1m
    - id: cordon
      k8s: "cordon node-1"
      timeout: 1m
    - id: merge
      k8s: {{patch: deployment/api, type: merge, body: {{metadata: {{labels: {{team: sre}}}}}}}}
      timeout: 1m
    - id: json
      k8s: {{patch: deployment/api, type: json, body: [{{op: add, path: /metadata/labels/tier, value: "{{{{ params.tier }}}}"}}]}}
      timeout: 1m
  verify:
    - id: done
      end: "revision {{{{ steps.undo.revision }}}}, replicas {{{{ steps.scale.replicas }}}}"
""", head="params:\n  n: {type: integer, default: 5}\n  tier: {type: string, default: backend}\n"))
    d = kubeapi.get("deployments", "api", "production")
    # undo: the template of revision 2 (its image), kubectl's JSON patch
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/api:0.2"
    assert "revision 2, replicas 5" in out and "rolled back to revision 2 (was 3)" in out
    # restart: kubectl's annotation on the pod template
    assert "kubectl.kubernetes.io/restartedAt" in d["spec"]["template"]["metadata"]["annotations"]
    assert d["spec"]["replicas"] == 5 and "deployment.apps/api scaled to 5" in out
    assert kubeapi.get("pods", victim, "production") is None and f'pod "{victim}" deleted' in out
    assert kubeapi.get("nodes", "node-1")["spec"]["unschedulable"] is True and "node/node-1 cordoned" in out
    assert d["metadata"]["labels"] == {"app": "api", "team": "sre", "tier": "backend"}
    assert int(d["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert int(d["metadata"]["generation"]) > int(before["metadata"]["generation"])
    sent = [(r["method"], r["path"], r["content_type"]) for r in kubeapi.writes()]
    assert sent == [
        ("PATCH", "/apis/apps/v1/namespaces/production/deployments/api", "application/json-patch+json"),
        ("PATCH", "/apis/apps/v1/namespaces/production/deployments/api", "application/strategic-merge-patch+json"),
        ("PATCH", "/apis/apps/v1/namespaces/production/deployments/api/scale", "application/merge-patch+json"),
        ("DELETE", f"/api/v1/namespaces/production/pods/{victim}", None),
        ("PATCH", "/api/v1/nodes/node-1", "application/strategic-merge-patch+json"),
        ("PATCH", "/apis/apps/v1/namespaces/production/deployments/api", "application/merge-patch+json"),
        ("PATCH", "/apis/apps/v1/namespaces/production/deployments/api", "application/json-patch+json"),
    ]
    assert kubeapi.writes()[3]["query"] == {"gracePeriodSeconds": "1"}  # 0 without --force is 1, as in kubectl
    ok(run_k8s("""
  mitigate:
    - id: uncordon
      k8s: "uncordon node-1"
      timeout: 1m
  verify:
    - id: done
      end: done
"""))
    assert "unschedulable" not in kubeapi.get("nodes", "node-1")["spec"]


def test_write_steps_need_approval(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production")
    r = run_k8s("""
  mitigate:
    - id: restart
      k8s: "rollout restart deployment/api"
      timeout: 1m
  verify:
    - id: done
      end: done
""", yes=False)
    assert r.returncode == 3 and "needs approval" in r.stdout
    assert kubeapi.writes() == []


def test_rollout_status_waits_for_the_rollout_and_times_out_when_stuck(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production", replicas=2)
    steps = """
  mitigate:
    - id: image
      k8s: {patch: deployment/api, body: {spec: {template: {spec: {containers: [{name: api, image: "registry.example/api:1.5.0"}]}}}}}
      timeout: 1m
  verify:
    - id: status
      k8s: {rollout_status: deployment/api, timeout: 3s}
    - id: done
      end: "{{ steps.status.message }}; {{ steps.status.updated_replicas }}/{{ steps.status.ready_replicas }}/{{ steps.status.available_replicas }}"
"""
    out = ok(run_k8s(steps))
    assert "old replicas are pending termination" in out  # it waited, as kubectl says
    assert "deployment/api successfully rolled out; 2/2/2" in out
    pods = kubeapi.all("pods", "production")
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"registry.example/api:1.5.0"}
    kubeapi.progress = False  # the controller is stuck
    started = time.monotonic()
    r = run_k8s(steps.replace("1.5.0", "1.6.0"))
    assert r.returncode == 1
    assert "deployment/api not rolled out after 3s: waiting for the deployment spec update to be observed" in r.stdout
    assert time.monotonic() - started < 20


# --- server dry-run -----------------------------------------------------------------------------


def test_server_dry_run_sends_dry_run_all_and_stores_nothing(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production", replicas=2, revisions=2)
    node(kubeapi, "node-1")
    pod = kubeapi.all("pods")[0]["metadata"]["name"]
    snapshot = copy.deepcopy(kubeapi.objects)
    out = ok(run_k8s(f"""
  diagnose:
    - id: pods
      k8s: "get pods"
  mitigate:
    - id: restart
      k8s: "rollout restart deployment/api"
      timeout: 1m
    - id: undo
      k8s: "rollout undo deployment/api"
      timeout: 1m
    - id: scale
      k8s: "scale deployment/api --replicas=7"
      timeout: 1m
    - id: delete
      k8s: "delete pod {pod}"
      timeout: 1m
    - id: cordon
      k8s: "cordon node-1"
      timeout: 1m
    - id: patch
      k8s: {{patch: deployment/api, body: {{spec: {{template: {{spec: {{containers: [{{name: api, resources: {{limits: {{memory: 2Gi}}}}}}]}}}}}}}}}}
      timeout: 1m
  verify:
    - id: done
      end: "answered: generation {{{{ steps.patch.object.metadata.generation }}}}, limit {{{{ steps.patch.object.spec.template.spec.containers[0].resources.limits.memory }}}}, replicas {{{{ steps.scale.replicas }}}}, dry {{{{ steps.patch.dry_run }}}}"
""", "--server-dry-run"))
    writes = kubeapi.writes()
    assert len(writes) == 6 and all(w["query"].get("dryRun") == "All" for w in writes)
    assert [r for r in kubeapi.requests if r["method"] == "GET"]  # reads ran for real
    assert kubeapi.objects == snapshot  # nothing stored
    # the steps carry the server's answers (the verify stage is not run in a rehearsal: nothing was stored)
    assert "deployment.apps/api scaled to 7" in out
    patched = [w for w in writes if w["path"] == "/apis/apps/v1/namespaces/production/deployments/api"][-1]
    assert patched["body"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2Gi"
    assert out.count("(server dry run: dryRun=All") == 6
    # the server validates: a bad value is refused without anything stored
    r = run_k8s("""
  mitigate:
    - id: patch
      k8s: {patch: deployment/api, body: {spec: {template: {spec: {containers: [{name: api, resources: {limits: {memory: lots}}}]}}}}}
      timeout: 1m
  verify:
    - id: done
      end: done
""", "--server-dry-run")
    assert r.returncode == 1 and "422 Invalid" in r.stdout and "quantities must match" in r.stdout
    assert kubeapi.objects == snapshot


# --- errors --------------------------------------------------------------------------------------


def test_errors_are_one_clear_line(run_k8s, kubeapi, write, tmp_path):
    deployment(kubeapi, "api", "production")
    restart = """
  mitigate:
    - id: restart
      k8s: "rollout restart deployment/{{ params.d }}"
      timeout: 1m
  verify:
    - id: done
      end: done
"""
    head = "params:\n  d: {type: string, default: api}\n"

    def fails(r, text):
        assert r.returncode == 1, r.stdout
        assert " ".join(text.split()) in " ".join(r.stdout.split()), r.stdout  # (the terminal wraps long lines)
        assert "Traceback" not in r.stdout + r.stderr

    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = write_kubeconfig(tmp_path / "down.json", f"https://127.0.0.1:{closed}", kubeapi.token, ca=kubeapi.ca)
    down_inv = write("down.yaml", f"clusters:\n  main: {{kubeconfig: {down}, namespace: production}}\n")
    fails(run_k8s(restart, head=head, inventory=down_inv),
          f"cannot reach cluster 'main' at https://127.0.0.1:{closed}: connection refused")
    expired = write_kubeconfig(tmp_path / "expired.json", kubeapi.url, "expired-token", ca=kubeapi.ca)
    exp_inv = write("expired.yaml", f"clusters:\n  main: {{kubeconfig: {expired}, namespace: production}}\n")
    fails(run_k8s(restart, head=head, inventory=exp_inv),
          "cluster 'main' rejected the credentials (401 Unauthorized)")
    missing_inv = write("missing.yaml", f"clusters:\n  main: {{kubeconfig: {tmp_path}/nope.json}}\n")
    fails(run_k8s(restart, head=head, inventory=missing_inv), f"kubeconfig {tmp_path}/nope.json does not exist")
    ctx_inv = write("ctx.yaml", f"clusters:\n  main: {{kubeconfig: {kubeapi.kubeconfig}, context: prod-eu}}\n")
    fails(run_k8s(restart, head=head, inventory=ctx_inv), "context 'prod-eu' is not in the kubeconfig")
    fails(run_k8s(restart, "-p", "d=nope", head=head),
          "404 Not Found: deployments/nope in namespace 'production' does not exist on cluster 'main'")
    kubeapi.forbid("patch", "deployments", "production")
    fails(run_k8s(restart, head=head),
          "403 Forbidden: not allowed to patch deployments/api in namespace 'production' on cluster 'main' "
          "(deployments.apps \"api\" is forbidden: User \"runbook-test\" cannot patch resource \"deployments\" "
          "in API group \"apps\" in the namespace \"production\")")
    kubeapi.forbidden.clear()
    stale = kubeapi.get("deployments", "api", "production")["metadata"]["resourceVersion"]
    kubeapi.put(kubeapi.get("deployments", "api", "production"))  # someone else wrote meanwhile
    fails(run_k8s(f"""
  mitigate:
    - id: careful
      k8s: {{patch: deployment/api, type: merge, body: {{metadata: {{resourceVersion: "{stale}"}}, spec: {{replicas: 4}}}}}}
      timeout: 1m
  verify:
    - id: done
      end: done
"""), "409 Conflict: deployments/api in namespace 'production' was changed by someone else since it was read; nothing was changed")
    assert kubeapi.get("deployments", "api", "production")["spec"]["replicas"] == 2
    r = run_k8s("""
  diagnose:
    - id: get
      k8s: "get pods"
""", inventory=write("none.yaml", "hosts: {a: {address: 127.0.0.1}}\n"))
    fails(r, "a k8s step needs a cluster, and")


# --- imports, CLI and the shipped playbooks -------------------------------------------------------


def test_validate_and_dry_run_import_no_kubernetes(tmp_path, kube_inventory):
    code = (
        "import sys\n"
        "from runbook.cli import main\n"
        "for args in (['validate', 'playbooks'], ['run', 'pod-oom-killed', '--dry-run', '-p', 'deployment=api'],\n"
        "             ['run', 'service-unavailable', '--dry-run', '-p', 'service=api']):\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
        "print('HEAVY', [m for m in sys.modules if m.split('.')[0] == 'kubernetes'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), RUNBOOK_AUDIT_DIR=str(tmp_path / "audit")))
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr


def test_shipped_playbooks_validate_and_dry_run(main):
    r = main("validate", ROOT / "playbooks/pod-oom-killed.yaml", ROOT / "playbooks/service-unavailable.yaml",
            "--inventory", ROOT / "inventory/production.yaml")
    assert r.returncode == 0 and "2 files checked: all valid" in r.stdout + r.stderr, r.stdout + r.stderr
    r = main("run", "service-unavailable", "--dry-run", "-p", "service=api", cwd=ROOT)  # the README's command
    assert r.returncode == 0, r.stderr
    assert "rollout restart deployment/api -n production  (PATCH /apis/apps/v1/namespaces/production/deployments/api)" in r.stdout
    r = main("run", "pod-oom-killed", "--dry-run", "-p", "deployment=valeo-app", "--env", "production", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "top pod -n valeo-erp  (GET /apis/metrics.k8s.io/v1beta1/namespaces/valeo-erp/pods)" in r.stdout
    assert "cluster main (kubeconfig ~/.kube/config, context prod-eu)" in r.stdout


def test_pod_oom_killed_runbook_end_to_end(main, kubeapi, kube_inventory):
    deployment(kubeapi, "api", "production", replicas=2, oom=True, memory="256Mi")
    node(kubeapi, "node-1")
    bad = next(p for p in kubeapi.all("pods") if p["status"]["containerStatuses"][0]["restartCount"])
    kubeapi.add_log("production", bad["metadata"]["name"], "api", ["GC overhead", "java.lang.OutOfMemoryError"], previous=True)
    kubeapi.metrics_enabled = True
    kubeapi.pod_metrics[("production", bad["metadata"]["name"])] = {"api": {"cpu": "900m", "memory": "255Mi"}}
    run = ("run", "pod-oom-killed", "--path", ROOT / "playbooks", "--inventory", kube_inventory(), "--yes",
           "-p", "deployment=api", "-p", "namespace=production")
    # "increase" never lowers the limit, and never patches a container the Deployment does not have
    r = main(*run, "-p", "memory_limit=128Mi", timeout=120)
    assert r.returncode == 1 and "run escalated" in r.stdout, r.stdout + r.stderr
    assert "128Mi is not larger than the current memory limit of container api (256Mi)" in r.stdout, r.stdout
    r = main(*run, "--answer", "new-limit=256Mi", timeout=120)  # no -p memory_limit: asked, after the diagnosis
    assert r.returncode == 1 and "Not patched: 256Mi is not larger" in r.stdout, r.stdout + r.stderr
    r = main(*run, "-p", "memory_limit=1Gi", "-p", "container=sidecar", timeout=120)
    assert r.returncode == 1 and "api has no container 'sidecar' (it has: api)" in r.stdout, r.stdout + r.stderr
    assert kubeapi.writes() == []
    # a rehearsal: the patch goes with dryRun=All, nothing is stored, and the run ends `rehearsed` where
    # verify begins instead of waiting 5 minutes for a rollout that was never stored
    snapshot = copy.deepcopy(kubeapi.objects)
    started = time.monotonic()
    r = main(*run, "-p", "memory_limit=1Gi", "--server-dry-run", timeout=120)
    assert r.returncode == 0 and time.monotonic() - started < 20, r.stdout + r.stderr
    assert "run rehearsed" in r.stdout and "the servers accepted 1 write step (raise-limit)" in r.stdout, r.stdout
    assert [w["query"].get("dryRun") for w in kubeapi.writes()] == ["All"] and kubeapi.objects == snapshot
    kubeapi.requests.clear()
    r = main(*run, "-p", "memory_limit=1Gi", timeout=120)
    out = ok(r)
    assert "OOMKilled: " + bad["metadata"]["name"] in out
    assert "java.lang.OutOfMemoryError" in out and "255Mi" in out
    d = kubeapi.get("deployments", "api", "production")
    container = d["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "1Gi" and container["resources"]["requests"]["memory"] == "256Mi"
    # the changed template rolls the pods out by itself: no second rollout from a restart
    assert "kubectl.kubernetes.io/restartedAt" not in (d["spec"]["template"]["metadata"].get("annotations") or {})
    assert "deployment/api successfully rolled out" in out
    assert "run resolved (exit 0)" in out and "api runs with a 1Gi memory limit" in out
    assert all(p["spec"]["containers"][0]["resources"]["limits"]["memory"] == "1Gi" for p in kubeapi.all("pods"))
    assert [w["method"] for w in kubeapi.writes()] == ["PATCH"]


def test_the_fake_server_answers_the_typed_client_like_the_real_one(kubeapi, tmp_path):
    """The typed API of the official client deserializes our answers (so they
    have the real shapes), and the server's rules hold: dryRun, subresources,
    auth, Status objects."""
    from kubernetes import client, config

    deployment(kubeapi, "api", "production", replicas=2)
    api_client = config.new_client_from_config(str(kubeapi.kubeconfig), persist_config=False)
    try:
        core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
        pods = core.list_namespaced_pod("production", label_selector="app=api")
        assert pods.kind == "PodList" and len(pods.items) == 2 and pods.metadata.resource_version
        d = apps.read_namespaced_deployment("api", "production")
        assert d.spec.replicas == 2 and d.metadata.generation == 1
        scale = apps.read_namespaced_deployment_scale("api", "production")
        assert scale.kind == "Scale" and scale.spec.replicas == 2 and scale.status.selector == "app=api"
        dry = apps.patch_namespaced_deployment_scale("api", "production", {"spec": {"replicas": 9}}, dry_run="All")
        assert dry.spec.replicas == 9 and apps.read_namespaced_deployment("api", "production").spec.replicas == 2
        status = apps.patch_namespaced_deployment_status("api", "production", {"status": {"readyReplicas": 1}})
        assert status.status.ready_replicas == 1 and status.metadata.generation == 1  # status writes keep the generation
        with pytest.raises(client.ApiException) as exc:
            apps.patch_namespaced_deployment("api", "production", {"spec": {"replicas": 3}}, dry_run="Some")
        assert exc.value.status == 400 and "Unsupported value" in exc.value.body
        with pytest.raises(client.ApiException) as exc:
            core.read_namespaced_pod("nope", "production")
        body = json.loads(exc.value.body)
        assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["details"] == {"name": "nope", "group": "", "kind": "pods"}
    finally:
        api_client.close()
    wrong = write_kubeconfig(tmp_path / "wrong.json", kubeapi.url, "wrong-token", ca=kubeapi.ca)
    with config.new_client_from_config(str(wrong), persist_config=False) as api_client:
        with pytest.raises(client.ApiException) as exc:
            client.CoreV1Api(api_client).list_node()
        assert exc.value.status == 401 and json.loads(exc.value.body)["reason"] == "Unauthorized"


# --- found by a security review ---------------------------------------------------------


def test_a_value_that_looks_like_a_dry_run_placeholder_is_still_checked(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production")
    deployment(kubeapi, "coredns", "kube-system")
    for value in ("api#<steps.x>", "x/../../../../../../apis/apps/v1/namespaces/kube-system/deployments/coredns#<steps.x>",
                  "api\n"):
        r = run_k8s("""
  mitigate:
    - id: restart
      k8s: "rollout restart deployment/{{ params.service }} -n production"
      timeout: 1m
  verify:
    - id: done
      end: done
""", "-p", f"service={value}", "--server-dry-run", head="params:\n  service: {type: string}\n")
        assert r.returncode == 1 and "invalid deployment name" in r.stdout, r.stdout
    assert kubeapi.writes() == []
    assert kubeapi.get("deployments", "coredns", "kube-system") is not None


def test_names_are_one_path_segment_even_without_the_checks():
    assert k8s.object_path("pods", "prod", "a/../b?x#y") == "/api/v1/namespaces/prod/pods/a%2F..%2Fb%3Fx%23y"


def test_json_patch_paths_and_ops_are_not_templated(write, main):
    p = book(write, """
  mitigate:
    - id: p
      k8s:
        patch: deployment/api
        type: json
        body: [{op: replace, path: "/spec/template/spec/containers/0/{{ params.field }}", value: x}]
      timeout: 1m
  verify:
    - id: done
      end: done
""", "params:\n  field: {type: string, default: image}\n")
    r = main("validate", p)
    assert r.returncode == 1 and "op, path and from must be written out, not templated" in r.stdout


def test_a_secret_inside_a_patch_string_is_refused(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production")
    r = run_k8s("""
  mitigate:
    - id: p
      k8s:
        patch: deployment/api
        namespace: production
        type: merge
        body: {metadata: {annotations: {auth: "Bearer {{ params.token }}"}}}
      timeout: 1m
  verify:
    - id: done
      end: done
""", head="params:\n  token: {type: string, secret: true}\n", env_token="tok-123456")
    assert r.returncode == 1 and "a secret cannot be sent in a patch" in r.stdout
    assert kubeapi.writes() == []


def test_restart_of_a_paused_deployment_is_refused(run_k8s, kubeapi):
    dep = deployment(kubeapi, "api", "production")
    dep["spec"]["paused"] = True
    kubeapi.put(dep)
    r = run_k8s("""
  mitigate:
    - id: restart
      k8s: "rollout restart deployment/api -n production"
      timeout: 1m
  verify:
    - id: done
      end: done
""")
    assert r.returncode == 1 and "deployment/api is paused" in r.stdout
    assert kubeapi.writes() == []


def test_init_containers_count_in_status_restarts_and_oom():
    from runbook.steps import k8s_show

    pod = {"metadata": {"name": "api-1", "namespace": "p"},
           "spec": {"initContainers": [{"name": "migrate"}], "containers": [{"name": "api"}]},
           "status": {"phase": "Pending",
                      "initContainerStatuses": [{"name": "migrate", "restartCount": 5,
                                                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                                 "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}],
                      "containerStatuses": [{"name": "api", "restartCount": 0, "ready": False,
                                             "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    row = k8s_show.pod_row(pod)
    assert row["status"] == "Init:CrashLoopBackOff"
    assert row["restarts"] == 5 and row["oom_killed"] == ["migrate"]
    assert "OOMKilled" in row["reasons"] and "CrashLoopBackOff" in row["reasons"]


def test_a_kubeconfig_that_is_not_yaml_is_one_line(run_k8s, write, tmp_path):
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text("apiVersion: v1\nclusters: [\n  - name: x\n")
    inv = write("inv-bad.yaml", f"clusters:\n  main: {{kubeconfig: {bad}}}\n")
    r = run_k8s("""
  diagnose:
    - id: g
      k8s: "get pods"
""", inventory=inv)
    assert r.returncode == 1 and "is not valid YAML" in r.stdout and "internal error" not in r.stdout


# --- credentials only over TLS; who wrote what (issue 16) -----------------------------------


def _exec_plugin(tmp_path, token: str):
    """An exec credential plugin that leaves a mark when it runs."""
    mark = tmp_path / "exec-plugin-ran"
    script = tmp_path / "plugin.py"
    script.write_text(f"import json, pathlib\npathlib.Path({str(mark)!r}).write_text('ran')\n"
                      f"print(json.dumps({{'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential', "
                      f"'status': {{'token': {token!r}}}}}))\n")
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable, "args": [str(script)],
                     "interactiveMode": "Never"}}
    return user, mark


@pytest.mark.parametrize("kind", ["token", "basic", "exec", "auth-provider"])
def test_credentials_are_never_sent_to_a_plain_http_api_server(kind, run_k8s, kubeapi_http, write, tmp_path, audit_dir):
    deployment(kubeapi_http, "api", "production")
    secret = "s3cr3t-" + kind + "-9f8e7d6c5b4a"
    mark = None
    if kind == "token":
        user, what = {"token": secret}, "a bearer token"
    elif kind == "basic":
        user, what = {"username": "admin", "password": secret}, "a username and password"
    elif kind == "exec":
        user, mark = _exec_plugin(tmp_path, secret)
        what = "a token from an exec credential plugin"
    else:
        user = {"auth-provider": {"name": "oidc", "config": {"id-token": secret, "idp-issuer-url": "https://idp.example"}}}
        what = "a token from an auth-provider"
    cfg = write_kubeconfig(tmp_path / "creds.json", kubeapi_http.url, user=user)
    inv = write("creds.yaml", f"clusters:\n  main: {{kubeconfig: {cfg}, namespace: production}}\n")
    r = run_k8s("""
  diagnose:
    - id: pods
      k8s: "get pods"
  mitigate:
    - id: restart
      k8s: "rollout restart deployment/api"
      timeout: 1m
  verify:
    - id: done
      end: done
""", inventory=inv)
    assert r.returncode == 1, r.stdout
    line = (f"cluster 'main' (kubeconfig {cfg}, current context): refusing to send {what} to {kubeapi_http.url}: "
            "it is plain http://, which would carry it unencrypted (kubectl does not send credentials over "
            "http:// either); use the API server's https:// address")
    assert " ".join(line.split()) in " ".join(r.stdout.split()), r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert kubeapi_http.requests == []  # nothing was sent at all, Authorization least of all
    assert mark is None or not mark.exists()  # the exec plugin was not even run
    assert secret not in r.stdout + r.stderr
    for f in audit_dir.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    for f in tmp_path.rglob("*.md"):
        assert secret not in f.read_text(errors="replace"), f


def test_no_credentials_over_http_still_work(run_k8s, kubeapi_http, write):
    deployment(kubeapi_http, "api", "production", replicas=2)
    inv = write("anon.yaml", f"clusters:\n  main: {{kubeconfig: {kubeapi_http.kubeconfig}, namespace: production}}\n")
    out = ok(run_k8s("""
  mitigate:
    - id: scale
      k8s: "scale deployment/api --replicas=3"
      timeout: 1m
  verify:
    - id: pods
      k8s: "get pods"
""", inventory=inv))
    assert "deployment.apps/api scaled to 3" in out
    assert kubeapi_http.requests and all(r["authorization"] is None for r in kubeapi_http.requests)


def test_the_token_goes_over_https(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production")
    ok(run_k8s("""
  diagnose:
    - id: pods
      k8s: "get pods"
"""))
    assert kubeapi.url.startswith("https://")
    assert kubeapi.requests and all(r["authorization"] == f"Bearer {kubeapi.token}" for r in kubeapi.requests)


def test_every_write_names_its_field_manager_and_every_request_runbook(run_k8s, kubeapi, write, main):
    import runbook

    deployment(kubeapi, "api", "production", replicas=2, revisions=3)
    node(kubeapi, "node-1")
    victim = kubeapi.all("pods")[0]["metadata"]["name"]
    steps = f"""
  mitigate:
    - id: undo
      k8s: "rollout undo deployment/api"
      timeout: 1m
    - id: restart
      k8s: "rollout restart deployment/api"
      timeout: 1m
    - id: scale
      k8s: "scale deployment/api --replicas=4"
      timeout: 1m
    - id: delete
      k8s: "delete pod {victim}"
      timeout: 1m
    - id: cordon
      k8s: "cordon node-1"
      timeout: 1m
    - id: uncordon
      k8s: "uncordon node-1"
      timeout: 1m
    - id: patch
      k8s: {{patch: deployment/api, type: merge, body: {{metadata: {{labels: {{team: sre}}}}}}}}
      timeout: 1m
  verify:
    - id: done
      end: done
"""
    ok(run_k8s(steps))
    managers = [(w["method"], w["path"].rsplit("/", 1)[-1], w["query"].get("fieldManager")) for w in kubeapi.writes()]
    assert managers == [
        ("PATCH", "api", "kubectl-rollout"),  # undo
        ("PATCH", "api", "kubectl-rollout"),  # restart
        ("PATCH", "scale", "kubectl-scale"),
        ("DELETE", victim, None),  # a delete has no field manager
        ("PATCH", "node-1", "kubectl-cordon"),
        ("PATCH", "node-1", "kubectl-cordon"),  # uncordon: kubectl's helper is the same
        ("PATCH", "api", "kubectl-patch"),
    ]
    agent = f"runbook/{runbook.__version__}"
    assert kubeapi.requests and {r["user_agent"] for r in kubeapi.requests} == {agent}
    # who wrote what, as `kubectl get -o yaml --show-managed-fields` would show it
    assert kubeapi.managers("deployments", "api", "production") == ["kubectl-rollout", "kubectl-scale", "kubectl-patch"]
    assert kubeapi.managers("nodes", "node-1") == ["kubectl-cordon"]
    assert not any("OpenAPI-Generator" in m for m in kubeapi.managers("deployments", "api", "production"))
    # the plan shows the same calls
    r = main("run", book(write, steps), "--dry-run", "--format", "json", "--inventory",
             write("plan.yaml", f"clusters:\n  main: {{kubeconfig: {kubeapi.kubeconfig}, namespace: production}}\n"))
    assert r.returncode == 0, r.stderr
    planned = {s["id"]: [c.get("query", {}).get("fieldManager") for c in s["detail"]["calls"] if c["method"] != "GET"]
               for s in json.loads(r.stdout)["steps"] if s.get("detail", {}).get("calls")}
    assert planned == {"undo": ["kubectl-rollout"], "restart": ["kubectl-rollout"], "scale": ["kubectl-scale"],
                       "delete": [None], "cordon": ["kubectl-cordon"], "uncordon": ["kubectl-cordon"],
                       "patch": ["kubectl-patch"]}


def test_writes_under_server_dry_run_name_their_manager_too(run_k8s, kubeapi):
    deployment(kubeapi, "api", "production")
    snapshot = copy.deepcopy(kubeapi.objects)
    ok(run_k8s("""
  mitigate:
    - id: scale
      k8s: "scale deployment/api --replicas=3"
      timeout: 1m
  verify:
    - id: done
      end: done
""", "--server-dry-run"))
    (w,) = kubeapi.writes()
    assert w["query"] == {"dryRun": "All", "fieldManager": "kubectl-scale"}
    assert kubeapi.objects == snapshot


def test_an_exec_plugin_token_goes_over_https_and_is_masked(run_k8s, kubeapi, write, tmp_path, audit_dir):
    deployment(kubeapi, "api", "production", replicas=1)
    pod = kubeapi.all("pods", "production")[0]["metadata"]["name"]
    kubeapi.add_log("production", pod, "api", [f"debug: sending Authorization: Bearer {kubeapi.token}"])
    user, mark = _exec_plugin(tmp_path, kubeapi.token)
    cfg = write_kubeconfig(tmp_path / "exec.json", kubeapi.url, ca=kubeapi.ca, user=user)
    inv = write("exec.yaml", f"clusters:\n  main: {{kubeconfig: {cfg}, namespace: production}}\n")
    r = run_k8s("""
  diagnose:
    - id: pods
      k8s: "get pods"
    - id: logs
      k8s: "logs deployment/api"
""", inventory=inv)
    assert mark.exists()  # the plugin ran (the server is https)
    assert kubeapi.requests and all(x["authorization"] == f"Bearer {kubeapi.token}" for x in kubeapi.requests)
    assert kubeapi.token not in r.stdout + r.stderr  # the plugin's token is masked like any secret
    assert "Authorization: Bearer ***" in r.stdout, r.stdout
    records = [f for f in audit_dir.rglob("*") if f.is_file()]
    assert records and not any(kubeapi.token.encode() in f.read_bytes() for f in records)
