"""``aws``: AWS API calls over boto3 (imported only when such a step runs) —
ECS, RDS, CloudWatch metrics, alarms and logs, ELBv2 target health.

    - id: service
      aws: "ecs describe-services --cluster nano --services {{ params.service }}"
      # steps.service.running_count, steps.service.desired_count
    - id: crashed
      aws: "ecs describe-tasks --cluster nano --service-name {{ params.service }} --desired-status STOPPED"
      # steps.crashed.stopped_reasons
    - id: errors
      aws: {logs: filter-log-events, log_group_name: "/aws/ecs/nano-{{ params.service }}",
            filter_pattern: "?ERROR ?CRITICAL", since: 15m}
    - id: scale-up
      aws: "ecs update-service --cluster nano --service {{ params.service }} --desired-count +1"
      timeout: 2m

The shorthand takes the aws CLI's words (``SERVICE OPERATION --flag value``;
a leading ``aws`` is dropped; no aws binary runs); the mapping form has the
service as key and the operation as its value, the flags as keys
(``--desired-count`` is ``desired_count``).  The shorthand is split into tokens
before rendering, as the ``k8s`` one is: each template token renders to exactly
one value.

Operations: ``cloudwatch get-metric-data`` (one metric: namespace, metric_name,
dimensions, statistic, period, since), ``cloudwatch describe-alarms``; ``logs
filter-log-events``, ``logs start-query`` (Logs Insights, polled until complete
within the step's timeout); ``ecs describe-services``, ``ecs list-tasks``,
``ecs describe-tasks`` (the tasks named, or a service's: ListTasks then
DescribeTasks; with their stopped reasons); ``rds describe-db-instances``,
``rds describe-events``; ``elbv2 describe-target-health``.  Writes, confirmed
first: ``ecs update-service`` (``desired_count`` N or +N, ``force_new_deployment``)
and ``rds reboot-db-instance``.  A desired count is a scale-up: the service's
current count is read first and never lowered (asking for fewer keeps the
current count, and says so).

Results, for conditions (``steps.ID.FIELD``, or the bare names in an ``until``):
ECS ``describe-services`` gives ``services`` (name, status, desired, running,
pending, rollout_state, deployments, events) and, for one service,
``desired_count``, ``running_count``, ``pending_count``, ``rollout_state``,
``deployments``, ``service_events``; ``describe-tasks`` gives ``tasks`` (id,
last_status, stopped_reason, stop_code, containers with exit_code and reason),
``stopped_reasons``, ``container_reasons``, ``stopped_count``; ``list-tasks``
``task_arns``; ``update-service`` ``previous_desired_count`` and the new
counts.  ``get-metric-data`` gives ``datapoints`` (timestamp, value, oldest
first), ``values`` and ``value`` (the latest; none without datapoints: test
``count`` first); ``describe-alarms`` ``alarms`` and ``in_alarm`` (names);
``filter-log-events`` ``log_events`` and ``messages``; ``start-query`` ``rows``
(a mapping per row) and ``query_status``; RDS ``instances``, ``db_status`` (one
instance), ``events`` and ``messages``; ELBv2 ``targets``, ``healthy``,
``unhealthy``.  Every operation gives ``count``; the output is a table.  In the
mapping form write ``desired_count: "+1"`` quoted (YAML reads +1 as 1).

Credentials: the standard chain (environment, shared files, SSO, instance or
task role), selected by the inventory's ``aws:`` section (``profile``,
``region``, ``role_arn`` assumed through STS, ``endpoint_url``; else
``AWS_ENDPOINT_URL`` as boto3 reads it).  They never appear in the output, the
errors or the audit log.  ``--dry-run`` shows each API call (service,
operation, parameters) and contacts nothing.  ``--server-dry-run``: none of
these writes has AWS's ``DryRun`` parameter (UpdateService and
RebootDBInstance do not), so aws write steps are skipped then.

Errors in one line: no credentials, rejected credentials, access denied
(naming the action, e.g. ``ecs:UpdateService``), throttling (retried with
backoff, then said), unknown cluster, service, instance, log group or target
group, region missing.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from pathlib import Path
from typing import Any

from runbook import expr
from runbook import schema as S
from runbook.errors import RunbookError
from runbook.secrets import LazySecret, Secret
from runbook.steps import Action, StepResult
from runbook.steps import aws_parse as P


def _param_node(p: P.P) -> S.Node:
    if p.type == P.NAMES:
        return S.OneOf(((str, S.Str()), (list, S.List(S.Str(), min_items=1))), doc=p.doc,
                       expect_text="a name or a list of names")
    if p.type in (P.INT, P.COUNT):
        return S.OneOf(((int, S.Int(minimum=0)), (str, S.Str())), doc=p.doc,
                       expect_text="a whole number" + (", +N" if p.type == P.COUNT else "") + " or a template")
    if p.type == P.BOOL:
        return S.Bool(doc=p.doc)
    if p.type == P.DURATION:
        return S.Str(doc=p.doc)
    if p.type == P.DIMS:
        return S.OneOf(((str, S.Str()), (dict, S.MapOf(S.Str()))), doc=p.doc,
                       expect_text="Name=Value pairs or a mapping")
    if p.type == P.CHOICE:
        return S.Str(doc=p.doc + " (" + ", ".join(p.choices) + ")")
    return S.Str(doc=p.doc)


def _mapping_fields() -> dict:
    fields: dict[str, S.Node] = {}
    for service in P.SERVICES:
        ops = [o for s, o in P.OPS if s == service]
        fields[service] = S.Str(enum=tuple(ops), doc=f"the {service} operation")
    for (service, operation), op in P.OPS.items():
        for name, p in op.params.items():
            if name not in fields or p.type == P.NAMES:  # a name here, several there (log_group_name): both
                fields[name] = _param_node(p)
    fields["region"] = S.Str(doc=P.COMMON["region"].doc)
    return fields


SCHEMA = S.OneOf(
    ((str, S.Str(doc="the aws CLI's words: ecs describe-services --cluster nano --services api, logs filter-log-events "
                     "--log-group-name /aws/ecs/nano-api --filter-pattern ERROR …")),
     (dict, S.Obj(_mapping_fields(), doc="the service as key, the operation as its value, the flags as keys "
                                         "(ecs: update-service, cluster: nano, service: api, desired_count: '+1')"))),
    doc="An AWS API call (ECS, RDS, CloudWatch, Logs, ELBv2) over boto3",
    expect_text="the aws CLI's words (ecs describe-services --cluster nano --services api) or a mapping "
                "(ecs: describe-services, cluster: nano, services: [api])",
)
DEFAULT_READONLY = False
SERVER_DRY_RUN = False  # no supported write has AWS's DryRun parameter: skipped under --server-dry-run
RESULT_FIELDS = (
    "aws_service", "operation", "region", "calls",
    # ECS
    "services", "desired_count", "running_count", "pending_count", "rollout_state", "deployments", "service_events",
    "previous_desired_count", "task_arns", "tasks", "stopped_reasons", "container_reasons", "stopped_count",
    # CloudWatch
    "datapoints", "value", "values", "alarms", "in_alarm",
    # Logs
    "log_events", "messages", "rows", "query_status",
    # RDS
    "instances", "db_status", "events",
    # ELBv2
    "targets", "healthy", "unhealthy",
    "count",
)
SHOW_OUTPUT = "head"
SHOW_LINES = 40

_NAME_TEXT = re.compile(r"[A-Za-z0-9_./:@+=,#*$\[\]-]{1,1600}")  # identifiers, log group names, ARNs
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_UNKNOWN = re.compile(r"<(steps|inventory)\.[^>]*>")


def normalize(value) -> dict:
    if isinstance(value, str):
        return P.from_shorthand(value)
    return P.from_mapping(value)


def effect_of(body: dict) -> str | None:
    op = P.op_of(body)
    if op is None:  # not a call at all (its problem is reported): no second warning that it "writes"
        return "read" if body.get("problems") else None
    return "write" if op.write else "read"


def templates(body: dict) -> list[tuple[str, str, str]]:
    out = []
    for key, v in body["params"].items():
        if isinstance(v, str):
            out.append((key, v, "text"))
        elif isinstance(v, list):
            out += [(f"{key}[{i}]", x, "text") for i, x in enumerate(v) if isinstance(x, str)]
        elif isinstance(v, dict):
            out += [(f"{key}.{k}", x, "text") for k, x in v.items() if isinstance(x, str)]
    if isinstance(body.get("region"), str):
        out.append(("region", body["region"], "text"))
    return out


def static_problems(step) -> list[tuple[str, str, str]]:
    body = step.body
    problems = [(key, msg, "schema") for key, msg in body["problems"]]
    op = P.op_of(body)
    if op is not None and op.write and step.readonly is True:
        problems.append(("shorthand" if body["shorthand"] is not None else body["service"],
                         f"readonly: true, but {body['service']} {body['operation']} changes things: drop readonly "
                         "(write steps are confirmed before they run)", "schema"))
    for key, v in body["params"].items():
        if op is not None and op.params[key].type == P.DURATION and isinstance(v, str) and not expr.is_template(v) \
                and S.parse_duration(v) is None:
            problems.append((key, f"{key} takes a duration such as 15m or 1h, got {v!r}", "schema"))
    return problems


def outline(body: dict) -> str:
    if body.get("shorthand"):
        return str(body["shorthand"]).strip().splitlines()[0]
    return f"aws {body.get('service')} {body.get('operation')}"


# --- rendering -----------------------------------------------------------------------


def _planning(r) -> bool:
    run = r.context.get("run") if isinstance(getattr(r, "context", None), dict) else None
    return bool(run and run.get("dry_run"))


def _one(r, src, what: str, pattern=_NAME_TEXT) -> str:
    """One token rendered as one value, and checked (a secret is refused)."""
    if isinstance(src, (Secret, LazySecret)):
        raise RunbookError(f"{what}: a secret cannot be used here")
    if not isinstance(src, str):
        return str(src)
    value = r.value(src) if expr.is_template(src) else src
    if isinstance(value, (Secret, LazySecret)):
        raise RunbookError(f"{what}: a secret cannot be sent in an AWS call (it would be shown and logged)")
    if isinstance(value, expr.Unknown):
        return str(value)
    text = r.text(src) if expr.is_template(src) else src
    if pattern is not None and not (_planning(r) and _UNKNOWN.search(text)) and not pattern.fullmatch(text):
        raise RunbookError(f"invalid {what} {text!r}: one name or ARN (letters, digits and ._-/:@+=,#)"
                           f"{' (a template value is always one value, never more words or flags)' if expr.is_template(src) else ''}")
    return text


def _int(r, src, what: str, count: bool = False):
    if isinstance(src, int) and not isinstance(src, bool):
        return src
    text = _one(r, src, what, None).strip()
    if _UNKNOWN.search(text) and _planning(r):
        return text
    if count and re.fullmatch(r"\+\d+", text):
        return text
    if not re.fullmatch(r"\d+", text):
        raise RunbookError(f"{what} must be a whole number{' or +N' if count else ''}, got {text!r}")
    return int(text)


def render_params(step, r) -> dict:
    body = step.body
    op = P.op_of(body)
    out: dict[str, Any] = {}
    for key, v in body["params"].items():
        p = op.params[key]
        what = "--" + key.replace("_", "-")
        if p.type == P.NAMES:
            out[key] = [_one(r, x, what) for x in v]
        elif p.type == P.TEXT:
            out[key] = _one(r, v, what, None)
        elif p.type in (P.INT, P.COUNT):
            out[key] = _int(r, v, what, p.type == P.COUNT)
        elif p.type == P.BOOL:
            out[key] = bool(v)
        elif p.type == P.DIMS:
            out[key] = {str(k): _one(r, x, f"dimension {k}", None) for k, x in v.items()}
        elif p.type == P.CHOICE:
            text = _one(r, v, what, None)
            if text not in p.choices and not _UNKNOWN.search(text):
                raise RunbookError(f"{what} is one of {', '.join(p.choices)}, got {text!r}")
            out[key] = text
        elif p.type == P.DURATION:
            text = _one(r, v, what, None)
            if S.parse_duration(text) is None and not _UNKNOWN.search(text):
                raise RunbookError(f"{what} takes a duration such as 15m or 1h, got {text!r}")
            out[key] = text
        else:
            out[key] = _one(r, v, what)
    for key, p in op.params.items():  # defaults, so that the plan shows what is sent
        if key not in out and p.default is not None and not (key == "desired_status"):
            out[key] = p.default
    if body["operation"] == "describe-tasks" and "service_name" in out:
        out.setdefault("desired_status", "STOPPED")
    return out


# --- where: the inventory's aws section ------------------------------------------------


def _profile_region(profile: str | None) -> str | None:
    """The region of a profile in the shared config file (read, nothing contacted)."""
    path = Path(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser()
    try:
        cp = configparser.ConfigParser()
        cp.read(path)
    except (OSError, configparser.Error):
        return None
    name = profile or os.environ.get("AWS_PROFILE") or "default"
    section = "default" if name == "default" else f"profile {name}"
    return cp.get(section, "region", fallback=None) or None


def target(r, body: dict) -> dict:
    """Where the calls go: region, profile, role, endpoint (no credentials: they are read when the step runs)."""
    inventory = getattr(r, "inventory", None)
    settings = getattr(inventory, "aws", None) if inventory is not None else None

    def setting(name):
        v = getattr(settings, name, None) if settings is not None else None
        if isinstance(v, (Secret, LazySecret)):
            raise RunbookError(f"aws.{name} in {inventory.path} is a secret source; it is a name, not a secret: "
                               "write it out")
        return str(v) if v is not None else None

    profile, role_arn = setting("profile"), setting("role_arn")
    endpoint = setting("endpoint_url")
    # without one in the inventory boto3 reads AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>) itself: shown here
    from_env = None if endpoint else (os.environ.get("AWS_ENDPOINT_URL") or None)
    if body.get("region") is not None:
        region = _one(r, body["region"], "region", _REGION)
        origin = "the step"
    elif setting("region"):
        region, origin = setting("region"), f"aws.region of {inventory.path}"
    elif os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        origin = "AWS_REGION" if os.environ.get("AWS_REGION") else "AWS_DEFAULT_REGION"
    elif _profile_region(profile):
        region, origin = _profile_region(profile), f"profile {profile or os.environ.get('AWS_PROFILE') or 'default'}"
    else:
        where = f"aws: {{region: …}} in {inventory.path}" if inventory is not None else "an inventory's aws: {region: …}"
        raise RunbookError(f"no AWS region for this aws step: set {where}, --region on the step, or AWS_REGION")
    return {"region": region, "region_from": origin, "profile": profile, "role_arn": role_arn, "endpoint_url": endpoint,
            "endpoint_from_env": from_env}


def _where(t: dict) -> str:
    parts = [t["region"]]
    parts.append(f"profile {t['profile']}" if t["profile"] else "default credentials")
    if t["role_arn"]:
        parts.append(f"role {t['role_arn']}")
    if t["endpoint_url"]:
        parts.append(f"endpoint {t['endpoint_url']}")
    elif t.get("endpoint_from_env"):
        parts.append(f"endpoint {t['endpoint_from_env']} (AWS_ENDPOINT_URL)")
    return ", ".join(parts)


# --- the API calls ----------------------------------------------------------------------


def _since_note(since: str) -> str:
    return f"<now - {since}>"


def plan_calls(service: str, operation: str, p: dict) -> list[dict]:
    """The API calls the step makes, in order, with their parameters as sent
    (times relative to now written <now - 15m>); what depends on an answer is in the call's note."""
    def c(svc, op, params, note=None):
        d = {"service": svc, "operation": op, "params": {k: v for k, v in params.items() if v is not None}}
        if note:
            d["note"] = note
        return d

    if (service, operation) == ("cloudwatch", "get-metric-data"):
        query = {"Id": "m0", "MetricStat": {
            "Metric": {"Namespace": p["namespace"], "MetricName": p["metric_name"],
                       "Dimensions": [{"Name": k, "Value": v} for k, v in (p.get("dimensions") or {}).items()]},
            "Period": p["period"], "Stat": p["statistic"]}, "ReturnData": True}
        return [c("cloudwatch", "GetMetricData", {"MetricDataQueries": [query], "StartTime": _since_note(p["since"]),
                                                  "EndTime": "<now>", "ScanBy": "TimestampAscending"})]
    if (service, operation) == ("cloudwatch", "describe-alarms"):
        return [c("cloudwatch", "DescribeAlarms", {"AlarmNames": p.get("alarm_names"),
                                                   "AlarmNamePrefix": p.get("alarm_name_prefix"),
                                                   "StateValue": p.get("state_value")})]
    if (service, operation) == ("logs", "filter-log-events"):
        return [c("logs", "FilterLogEvents", {"logGroupName": p["log_group_name"], "filterPattern": p.get("filter_pattern"),
                                              "logStreamNamePrefix": p.get("log_stream_name_prefix"),
                                              "startTime": _since_note(p["since"]), "limit": p["limit"]},
                  note="following nextToken until limit events")]
    if (service, operation) == ("logs", "start-query"):
        return [c("logs", "StartQuery", {"logGroupNames": p["log_group_name"], "queryString": p["query_string"],
                                         "startTime": _since_note(p["since"]), "endTime": "<now>", "limit": p["limit"]}),
                c("logs", "GetQueryResults", {"queryId": "<from StartQuery>"},
                  note="repeated until the query is Complete (bounded by the step's timeout, else 5m; StopQuery then)")]
    if (service, operation) == ("ecs", "describe-services"):
        return [c("ecs", "DescribeServices", {"cluster": p["cluster"], "services": p["services"]})]
    if (service, operation) == ("ecs", "list-tasks"):
        return [c("ecs", "ListTasks", {"cluster": p["cluster"], "serviceName": p.get("service_name"),
                                       "desiredStatus": p.get("desired_status")})]
    if (service, operation) == ("ecs", "describe-tasks"):
        if p.get("tasks"):
            return [c("ecs", "DescribeTasks", {"cluster": p["cluster"], "tasks": p["tasks"]})]
        return [c("ecs", "ListTasks", {"cluster": p["cluster"], "serviceName": p["service_name"],
                                       "desiredStatus": p["desired_status"]}),
                c("ecs", "DescribeTasks", {"cluster": p["cluster"], "tasks": "<the task ARNs from ListTasks (100 at most)>"})]
    if (service, operation) == ("ecs", "update-service"):
        calls = []
        update: dict[str, Any] = {"cluster": p["cluster"], "service": p["service"]}
        if p.get("desired_count") is not None:
            want = p["desired_count"]
            calls.append(c("ecs", "DescribeServices", {"cluster": p["cluster"], "services": [p["service"]]},
                           note="the current desired count, read first: a scale-up never lowers it"))
            update["desiredCount"] = (f"<the current desired count {want}>" if str(want).startswith("+")
                                      else f"<max({want}, the current desired count)>")
        if p.get("force_new_deployment"):
            update["forceNewDeployment"] = True
        return calls + [c("ecs", "UpdateService", update)]
    if (service, operation) == ("rds", "describe-db-instances"):
        return [c("rds", "DescribeDBInstances", {"DBInstanceIdentifier": p.get("db_instance_identifier")})]
    if (service, operation) == ("rds", "describe-events"):
        minutes = max(1, int(S.parse_duration(p["since"]) // 60)) if S.parse_duration(p["since"]) else p["since"]
        return [c("rds", "DescribeEvents", {"SourceIdentifier": p.get("source_identifier"),
                                            "SourceType": p["source_type"], "Duration": minutes})]
    if (service, operation) == ("rds", "reboot-db-instance"):
        return [c("rds", "RebootDBInstance", {"DBInstanceIdentifier": p["db_instance_identifier"],
                                              "ForceFailover": True if p.get("force_failover") else None})]
    if (service, operation) == ("elbv2", "describe-target-health"):
        if p.get("target_group_arn"):
            return [c("elbv2", "DescribeTargetHealth", {"TargetGroupArn": p["target_group_arn"]})]
        return [c("elbv2", "DescribeTargetGroups", {"Names": [p["target_group_name"]]}),
                c("elbv2", "DescribeTargetHealth", {"TargetGroupArn": "<the ARN from DescribeTargetGroups>"})]
    raise RunbookError(f"unsupported operation {service} {operation}")  # pragma: no cover - parse refuses it


def call_text(call: dict) -> str:
    return f"{call['service']} {call['operation']} {json.dumps(call['params'], separators=(', ', ': '), default=str)}"


def action(step, r) -> Action:
    body = step.body
    if body["problems"]:
        raise RunbookError(body["problems"][0][1])
    params = render_params(step, r)
    t = target(r, body)
    calls = plan_calls(body["service"], body["operation"], params)
    words = P.cli_words(body["service"], body["operation"], params)
    summary = f"aws {words}  → {'; '.join(call_text(c) for c in calls)} in {t['region']}"
    detail = {"aws_service": body["service"], "operation": body["operation"], "params": params, "calls": calls,
              "target": t, "effect": effect_of(body)}
    return Action(summary=summary, targets=[f"AWS {_where(t)}"], detail=detail)


def details(action: Action) -> list[tuple[str, str]]:
    """The aws CLI's words, then every API call as it will be sent (service, operation, parameters)."""
    d = action.detail
    calls = []
    for c in d.get("calls") or []:
        text = f"{c['service']} {c['operation']}\n" + json.dumps(c["params"], indent=2, ensure_ascii=False, default=str)
        if c.get("note"):
            text += f"\n({c['note']})"
        calls.append(text)
    t = d["target"]
    return [("as the aws CLI", "aws " + P.cli_words(d["aws_service"], d["operation"], d["params"], t["region"])),
            ("API calls", "\n".join(calls)),
            ("region", f"{t['region']} (from {t['region_from']})")]


def observed(step, result: StepResult) -> str | None:
    """Running vs desired tasks for a service, else the latest datapoint, alarms in alarm, targets healthy."""
    d = result.data
    if result.outputs:
        from runbook.steps import base

        return base.observed(step, result)
    if d.get("desired_count") is not None and d.get("running_count") is not None:
        return (f"{d['running_count']}/{d['desired_count']} running, {d.get('pending_count') or 0} pending"
                + (f", rollout {d['rollout_state']}" if d.get("rollout_state") else ""))
    if d.get("datapoints") is not None:
        return f"{len(d['datapoints'])} datapoints, latest {d.get('value')}"
    if d.get("alarms") is not None:
        return f"{len(d.get('in_alarm') or [])} of {len(d['alarms'])} alarms in ALARM"
    if d.get("targets") is not None:
        return f"{d.get('healthy')} of {len(d['targets'])} targets healthy"
    if d.get("db_status") is not None:
        return f"status {d['db_status']}"
    if d.get("count") is not None:
        return f"{d['count']} found"
    return None


def run(step, act: Action, ctx) -> StepResult:
    try:
        import boto3  # noqa: F401 - the aws extra; said in one line when it is missing
    except ImportError:
        return StepResult("failed", error="the aws step needs boto3: pip install 'runbook-executor[aws]'")
    from runbook.steps import aws_ops

    return aws_ops.run(step, act, ctx)
