"""The ``aws`` step's two forms — the aws CLI's words as shorthand and a
mapping — parsed into one normalized body, without importing boto3.

Normalized body (every string may be a template source, rendered later one
value at a time)::

    {"service": "ecs", "operation": "describe-services",
     "params": {"cluster": "nano", "services": ["{{ params.service }}"]},
     "region": None, "shorthand": "the source string" | None, "problems": [(key, message), ...]}

The shorthand is split into tokens *before* any rendering, as the ``k8s``
shorthand is (:func:`runbook.steps.k8s_parse.tokenize`): the service, the
operation and flag names must be literal, and each template token renders
later to exactly one value, so a parameter holding ``api --force-new-deployment``
stays one (invalid) service name and never becomes a flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runbook.steps.k8s_parse import ShorthandError, is_template, tokenize

# parameter types: how a value is written and checked
#   name: one AWS identifier or ARN; names: one or more of them; text: free text (a filter pattern, a query);
#   int: a whole number; count: a whole number or +N (added to the current value); bool: a flag;
#   duration: 15m, 1h; dims: Name=Value pairs (a mapping in the mapping form); state: one of a few words
NAME, NAMES, TEXT, INT, COUNT, BOOL, DURATION, DIMS, CHOICE = "name", "names", "text", "int", "count", "bool", \
    "duration", "dims", "choice"


@dataclass(frozen=True)
class P:
    type: str
    doc: str
    required: bool = False
    choices: tuple[str, ...] = ()
    default: object = None


@dataclass(frozen=True)
class Op:
    api: str  # the API operation (DescribeServices)
    doc: str
    params: dict = field(default_factory=dict)
    write: bool = False
    one_of: tuple[tuple[str, ...], ...] = ()  # exactly one of these parameters (groups of alternatives)


_SINCE = P(DURATION, "how far back to look (default 15m)", default="15m")
OPS: dict[tuple[str, str], Op] = {
    # --- CloudWatch metrics and alarms
    ("cloudwatch", "get-metric-data"): Op(
        "GetMetricData", "one metric's datapoints over the last `since` (GetMetricData)",
        {"namespace": P(NAME, "the metric namespace, e.g. AWS/ECS, AWS/ApplicationELB, AWS/RDS", True),
         "metric_name": P(NAME, "e.g. CPUUtilization, HTTPCode_Target_5XX_Count, TargetResponseTime", True),
         "dimensions": P(DIMS, "Name=Value pairs (ClusterName=nano,ServiceName=api); a mapping in the mapping form"),
         "statistic": P(CHOICE, "default Average", choices=("Average", "Sum", "Minimum", "Maximum", "SampleCount",
                                                             "p50", "p90", "p95", "p99"), default="Average"),
         "period": P(INT, "seconds per datapoint (default 60)", default=60),
         "since": _SINCE}),
    ("cloudwatch", "describe-alarms"): Op(
        "DescribeAlarms", "CloudWatch alarms and their states (DescribeAlarms)",
        {"alarm_names": P(NAMES, "the alarms (default: all, or those of the prefix)"),
         "alarm_name_prefix": P(NAME, "alarms whose name starts with this"),
         "state_value": P(CHOICE, "only alarms in this state", choices=("OK", "ALARM", "INSUFFICIENT_DATA"))}),
    # --- CloudWatch Logs
    ("logs", "filter-log-events"): Op(
        "FilterLogEvents", "log events of a group matching a filter pattern (FilterLogEvents)",
        {"log_group_name": P(NAME, "e.g. /aws/ecs/nano-api", True),
         "filter_pattern": P(TEXT, "CloudWatch Logs filter syntax, e.g. '?ERROR ?CRITICAL'"),
         "log_stream_name_prefix": P(NAME, "only streams whose name starts with this"),
         "since": _SINCE,
         "limit": P(INT, "at most this many events (default 100)", default=100)}),
    ("logs", "start-query"): Op(
        "StartQuery", "a Logs Insights query, polled (GetQueryResults) until complete within the step's timeout",
        {"log_group_name": P(NAMES, "the log groups to query", True),
         "query_string": P(TEXT, "Logs Insights query, e.g. 'fields @timestamp, @message | filter @message like /ERROR/'",
                           True),
         "since": _SINCE,
         "limit": P(INT, "at most this many rows (default 100)", default=100)}),
    # --- ECS
    ("ecs", "describe-services"): Op(
        "DescribeServices", "services: desired, running and pending counts, deployments, recent events",
        {"cluster": P(NAME, "the ECS cluster", True), "services": P(NAMES, "one or more services", True)}),
    ("ecs", "list-tasks"): Op(
        "ListTasks", "the task ARNs of a service (ListTasks)",
        {"cluster": P(NAME, "the ECS cluster", True), "service_name": P(NAME, "the service"),
         "desired_status": P(CHOICE, "RUNNING (default), PENDING or STOPPED", choices=("RUNNING", "PENDING", "STOPPED"))}),
    ("ecs", "describe-tasks"): Op(
        "DescribeTasks", "tasks with their stopped reasons and container exit codes: the tasks named, or a "
                         "service's (ListTasks, then DescribeTasks)",
        {"cluster": P(NAME, "the ECS cluster", True), "tasks": P(NAMES, "task ids or ARNs"),
         "service_name": P(NAME, "instead of tasks: the service whose tasks to read"),
         "desired_status": P(CHOICE, "with service_name: RUNNING, PENDING or STOPPED (default: STOPPED, the crashed "
                                     "ones)", choices=("RUNNING", "PENDING", "STOPPED"))},
        one_of=(("tasks", "service_name"),)),
    ("ecs", "update-service"): Op(
        "UpdateService", "a write: desired count (N, or +N from the current one; never lowered: the current count is "
                         "read first) and/or a new deployment",
        {"cluster": P(NAME, "the ECS cluster", True), "service": P(NAME, "the service", True),
         "desired_count": P(COUNT, "at least this many tasks, or +N: N more than now; never lower than the current"),
         "force_new_deployment": P(BOOL, "replace the service's tasks (same task definition)")},
        write=True),
    # --- RDS
    ("rds", "describe-db-instances"): Op(
        "DescribeDBInstances", "an instance's status, class, engine, endpoint and Multi-AZ",
        {"db_instance_identifier": P(NAME, "the instance (default: all)")}),
    ("rds", "describe-events"): Op(
        "DescribeEvents", "recent RDS events of an instance (failovers, reboots, storage, connection problems)",
        {"source_identifier": P(NAME, "the instance (default: every source)"),
         "source_type": P(CHOICE, "default db-instance", choices=("db-instance", "db-cluster", "db-parameter-group",
                                                                  "db-security-group", "db-snapshot"),
                          default="db-instance"),
         "since": P(DURATION, "how far back to look (default 1h)", default="1h")}),
    ("rds", "reboot-db-instance"): Op(
        "RebootDBInstance", "a write: reboot an instance (force_failover: fail over to the standby of a Multi-AZ one)",
        {"db_instance_identifier": P(NAME, "the instance", True),
         "force_failover": P(BOOL, "reboot with a failover (Multi-AZ only)")},
        write=True),
    # --- ELBv2
    ("elbv2", "describe-target-health"): Op(
        "DescribeTargetHealth", "the health of a target group's targets (by ARN, or by name: DescribeTargetGroups first)",
        {"target_group_arn": P(NAME, "the target group's ARN"),
         "target_group_name": P(NAME, "instead of the ARN: its name")},
        one_of=(("target_group_arn", "target_group_name"),)),
}
SERVICES = tuple(dict.fromkeys(s for s, _ in OPS))
COMMON = {"region": P(NAME, "the AWS region (default: the inventory's aws.region, else AWS_REGION)")}
WRITE_OPS = tuple(f"{s} {o}" for (s, o), op in OPS.items() if op.write)
FIELDS = ("service", "operation", "params", "region", "shorthand", "problems")
_INT = re.compile(r"\d+")
_COUNT = re.compile(r"\+?\d+")


def op_of(body: dict) -> Op | None:
    return OPS.get((body.get("service"), body.get("operation")))


def empty() -> dict:
    return {"service": None, "operation": None, "params": {}, "region": None, "shorthand": None, "problems": []}


def _ops_of(service: str) -> str:
    return ", ".join(o for s, o in OPS if s == service)


def _operation(body: dict, service, operation, key: str) -> Op | None:
    probs = body["problems"]
    if is_template(service) or is_template(operation):
        probs.append((key, "the service and operation must be written literally, not as templates"))
        return None
    if service not in SERVICES:
        probs.append((key, f"unsupported AWS service '{service}'{_close(service, SERVICES)} (supported: "
                           f"{', '.join(SERVICES)})"))
        return None
    op = OPS.get((service, operation))
    if op is None:
        probs.append((key, f"unsupported {service} operation '{operation}'{_close(operation, [o for s, o in OPS if s == service])}"
                           f" (supported: {_ops_of(service)})"))
        return None
    body["service"], body["operation"] = service, operation
    return op


def _close(word, choices) -> str:
    import difflib

    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --- the mapping form ---------------------------------------------------------------


def from_mapping(value: dict) -> dict:
    """``{ecs: describe-services, cluster: nano, services: [api]}``: the service as the key, the operation as its value."""
    body = empty()
    services = [k for k in value if k in SERVICES]
    if len(services) != 1:
        body["problems"].append(("service", "give exactly one service with its operation, e.g. ecs: describe-services "
                                            f"(services: {', '.join(SERVICES)})"))
        return body
    service = services[0]
    op = _operation(body, service, value[service], service)
    if op is None:
        return body
    for key, v in value.items():
        if key == service:
            continue
        if key == "region":
            body["region"] = v
        elif key in op.params:
            p = op.params[key]
            if p.type == NAMES and not isinstance(v, list):
                v = [v]
            if p.type == DIMS and isinstance(v, str):
                v = _dims(v, key, body)
            body["params"][key] = v
        else:
            body["problems"].append((key, f"{service} {body['operation']} takes no '{key}'"
                                          f"{_close(key, op.params)} (it takes {', '.join(op.params) or 'nothing'}, region)"))
    _check(body, op, None)
    return body


def _dims(text: str, key: str, body: dict) -> dict:
    """``ClusterName=nano,ServiceName={{ params.service }}``: names literal, values may be templates
    (a comma inside ``{{ … }}`` does not split)."""
    parts, cur, depth, i = [], "", 0, 0
    while i < len(text):
        two = text[i:i + 2]
        if two in ("{{", "{%"):
            depth += 1
            cur += two
            i += 2
            continue
        if two in ("}}", "%}") and depth:
            depth -= 1
            cur += two
            i += 2
            continue
        if text[i] == "," and not depth:
            parts.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    parts.append(cur)
    out = {}
    for part in parts:
        name, eq, value = part.strip().partition("=")
        if not eq or not name or is_template(name) or not re.fullmatch(r"[A-Za-z0-9_.:/-]+", name):
            body["problems"].append((key, f"dimensions are Name=Value pairs separated by commas, the names written "
                                          f"literally, got {text!r}"))
            return {}
        out[name] = value
    return out


def _check(body: dict, op: Op, shorthand: str | None) -> None:
    """Rules shared by both forms; problems are (key, message)."""
    probs = body["problems"]
    params = body["params"]
    where = (lambda k: "shorthand") if shorthand is not None else (lambda k: k)
    flag = (lambda k: "--" + k.replace("_", "-")) if shorthand is not None else (lambda k: k)
    for name, p in op.params.items():
        if p.required and params.get(name) in (None, [], ""):
            probs.append((where(name), f"{body['service']} {body['operation']} needs {flag(name)}"))
    for group in op.one_of:
        given = [k for k in group if params.get(k) is not None]
        if len(given) != 1:
            probs.append((where(group[0]), f"{body['service']} {body['operation']} needs exactly one of "
                                           f"{' or '.join(map(flag, group))}"))
    for name, v in params.items():
        p = op.params[name]
        if is_template(v) and p.type not in (BOOL, NAMES, DIMS):
            continue  # checked when it renders
        if p.type in (INT, COUNT) and not (isinstance(v, int) and not isinstance(v, bool)) and not (
                isinstance(v, str) and (_COUNT if p.type == COUNT else _INT).fullmatch(v)):
            probs.append((where(name), f"{flag(name)} takes a whole number{' or +N' if p.type == COUNT else ''}, got {v!r}"))
        elif p.type == BOOL and not isinstance(v, bool):
            probs.append((where(name), f"{flag(name)} is true or false, got {v!r}"))
        elif p.type == CHOICE and v not in p.choices:
            probs.append((where(name), f"{flag(name)} is one of {', '.join(p.choices)}, got {v!r}"))
        elif p.type == DURATION and not isinstance(v, str):
            probs.append((where(name), f"{flag(name)} takes a duration such as 15m or 1h, got {v!r}"))
        elif p.type == DIMS and not isinstance(v, dict):
            probs.append((where(name), f"{flag(name)} takes Name=Value pairs (a mapping), got {v!r}"))
        elif p.type == NAMES and (not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v)):
            probs.append((where(name), f"{flag(name)} takes one or more names, got {v!r}"))
        elif p.type in (NAME, TEXT) and not isinstance(v, str):
            probs.append((where(name), f"{flag(name)} takes a string, got {v!r}"))
    if body["operation"] == "describe-tasks" and params.get("desired_status") and params.get("tasks"):
        probs.append((where("desired_status"), f"{flag('desired_status')} applies with {flag('service_name')}, not with "
                                               f"{flag('tasks')}"))
    if body["operation"] == "update-service" and params.get("desired_count") is None \
            and not params.get("force_new_deployment"):
        probs.append((where("desired_count"), f"ecs update-service needs {flag('desired_count')} and/or "
                                              f"{flag('force_new_deployment')} (nothing else is changed here)"))


# --- the shorthand -----------------------------------------------------------------------


def from_shorthand(text: str) -> dict:
    body = empty()
    body["shorthand"] = text
    try:
        _parse(text, body)
    except ShorthandError as exc:
        body["problems"].append(("shorthand", f"{exc} (in {text!r})"))
    return body


def _parse(text: str, body: dict) -> None:
    tokens = tokenize(text)
    if tokens and tokens[0].source == "aws":
        tokens = tokens[1:]  # a pasted `aws …` line: the aws CLI does not run either way
    if len(tokens) < 2:
        raise ShorthandError("expected SERVICE OPERATION [--flag value …], e.g. ecs describe-services --cluster nano "
                             "--services api")
    op = _operation(body, tokens[0].source, tokens[1].source, "shorthand")
    if op is None:
        return
    flags = {"--" + k.replace("_", "-"): k for k in [*op.params, "region"]}
    rest = tokens[2:]
    i = 0
    while i < len(rest):
        t = rest[i]
        name, eq, value = t.source.partition("=")
        if t.quoted or not name.startswith("--") or is_template(name):
            raise ShorthandError(f"unexpected argument '{t.source}': every value follows its flag "
                                 f"(flags: {', '.join(flags)})")
        if name not in flags:
            raise ShorthandError(f"unsupported flag '{name}' for {body['service']} {body['operation']}"
                                 f"{_close(name, flags)} (supported: {', '.join(flags)})")
        key = flags[name]
        p = COMMON["region"] if key == "region" else op.params[key]
        if key in body["params"] or (key == "region" and body["region"] is not None):
            raise ShorthandError(f"flag '{name}' is given twice")
        if p.type == BOOL:
            if eq and value not in ("true", "false"):
                raise ShorthandError(f"flag '{name}' takes no value (or =true / =false)")
            body["params"][key] = value != "false"
            i += 1
            continue
        values = [value] if eq else []
        j = i + 1
        if not eq:
            while j < len(rest) and not (rest[j].source.startswith("--") and not rest[j].quoted):
                values.append(rest[j].source)
                j += 1
                if p.type != NAMES:
                    break
        if not values or values == [""]:
            raise ShorthandError(f"flag '{name}' needs a value")
        if key == "region":
            body["region"] = values[0]
        elif p.type == NAMES:
            body["params"][key] = values
        elif p.type == DIMS:
            body["params"][key] = _dims(values[0], "shorthand", body)
        elif p.type in (INT, COUNT) and not is_template(values[0]) and (_COUNT if p.type == COUNT else _INT).fullmatch(values[0]):
            body["params"][key] = values[0] if values[0].startswith("+") else int(values[0])
        else:
            body["params"][key] = values[0]
        i = j
    _check(body, op, text)


def cli_words(service: str, operation: str, params: dict, region: str | None = None) -> str:
    """The aws CLI's words for a rendered call (shown in plans and prompts)."""
    words = [service, operation]
    for key, v in params.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(v, bool):
            if v:
                words.append(flag)
        elif isinstance(v, list):
            words += [flag, *(_quote(str(x)) for x in v)]
        elif isinstance(v, dict):
            words += [flag, ",".join(f"{k}={x}" for k, x in v.items())]
        elif v is not None:
            words += [flag, _quote(str(v))]
    if region:
        words += ["--region", region]
    return " ".join(words)


def _quote(s: str) -> str:
    if s and re.fullmatch(r"[A-Za-z0-9_./:@+=,-]+", s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"
