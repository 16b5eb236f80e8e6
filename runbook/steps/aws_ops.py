"""Running ``aws`` steps: the boto3 session (credentials from the standard
chain, as the inventory's ``aws:`` selects them), the API calls, their
results as data and tables, and their errors as one line.  Imported only
when an ``aws`` step runs (it imports boto3)."""

from __future__ import annotations

import datetime
import random
import time
from typing import Any

from runbook.errors import RunbookError
from runbook.schema import parse_duration
from runbook.secrets import Secret
from runbook.steps import Action, StepResult
from runbook.text import plural

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
THROTTLE_RETRIES = 4  # after the first attempt
THROTTLE_BASE = 0.25  # seconds; doubled each time, with jitter
QUERY_POLL = (0.2, 0.5, 1.0, 2.0)  # Logs Insights: seconds between GetQueryResults (then every 2 s)
QUERY_DEFAULT_TIMEOUT = 300.0
MAX_TASKS = 100  # DescribeTasks takes 100 at most
MAX_EVENTS_SHOWN = 10
THROTTLING = {"Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
              "TooManyRequestsException", "RequestThrottled", "RequestThrottledException", "SlowDown",
              "ProvisionedThroughputExceededException", "LimitExceededException"}
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError",
          "UnauthorizedException", "AccessDeniedFault"}
BAD_CREDENTIALS = {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch", "ExpiredToken",
                   "ExpiredTokenException", "InvalidAccessKeyId", "InvalidSignatureException", "IncompleteSignature",
                   "MissingAuthenticationToken", "RequestExpired"}


class AwsError(RunbookError):
    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


# --- the session -------------------------------------------------------------------------


class Aws:
    """One AWS session for the run (kept in ctx.connections): its clients by service."""

    def __init__(self, target: dict, ctx):
        import boto3
        import botocore.exceptions as bx

        self.target, self.ctx = target, ctx
        self.region = target["region"]
        self.where = f"region {self.region}" + (f", profile {target['profile']}" if target["profile"] else "")
        self.clients: dict[str, Any] = {}
        try:
            session = boto3.session.Session(profile_name=target["profile"] or None, region_name=self.region)
        except bx.ProfileNotFound:
            raise AwsError(f"AWS profile '{target['profile']}' is not in the shared config or credentials files "
                           "(~/.aws/config, ~/.aws/credentials): check aws.profile in the inventory") from None
        self._protect(session)
        if target["role_arn"]:
            session = self._assume(session, target["role_arn"])
        self.session = session

    def _protect(self, session) -> None:
        """Every credential this session holds is masked from here on (output, errors, the audit log)."""
        import botocore.exceptions as bx

        try:
            creds = session.get_credentials()
        except bx.BotoCoreError:
            return
        if creds is None:
            return
        try:
            frozen = creds.get_frozen_credentials()
        except bx.BotoCoreError:
            return
        for name, value in (("aws access key id", frozen.access_key), ("aws secret access key", frozen.secret_key),
                            ("aws session token", frozen.token)):
            if value:
                self.ctx.redactor.add(Secret(value, name=name), name=name)

    def _assume(self, session, role_arn: str):
        import boto3

        sts = self._client_of(session, "sts")
        who = f"runbook-{self.ctx.run_id}"[:64]
        got = self.call("sts", "AssumeRole", {"RoleArn": role_arn, "RoleSessionName": _session_name(who)},
                        client=sts)
        c = got["Credentials"]
        for name, key in (("aws access key id", "AccessKeyId"), ("aws secret access key", "SecretAccessKey"),
                          ("aws session token", "SessionToken")):
            self.ctx.redactor.add(Secret(c[key], name=name), name=name)
        return boto3.session.Session(aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                                     aws_session_token=c["SessionToken"], region_name=self.region)

    def _read_timeout(self) -> float:
        """One request's limit: a minute, or what is left of the step's time."""
        timeout = self.ctx.timeout
        return READ_TIMEOUT if timeout is None else float(max(1, min(int(READ_TIMEOUT), int(timeout + 0.999))))

    def _client_of(self, session, service: str):
        from botocore.config import Config

        read = self._read_timeout()
        config = Config(region_name=self.region, connect_timeout=min(CONNECT_TIMEOUT, read), read_timeout=read,
                        retries={"total_max_attempts": 1, "mode": "standard"},  # throttling is retried here, said
                        user_agent_extra="runbook")
        kw = {"config": config}
        if self.target["endpoint_url"]:
            kw["endpoint_url"] = self.target["endpoint_url"]
        return session.client(service, **kw)

    def client(self, service: str):
        key = f"{service}/{self._read_timeout():g}"  # a later step with more time gets a client that waits longer
        if key not in self.clients:
            self.clients[key] = self._client_of(self.session, service)
        return self.clients[key]

    def close(self) -> None:
        for c in self.clients.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing never fails a run
                pass

    def call(self, service: str, operation: str, params: dict, client=None, what: dict | None = None) -> dict:
        """One API call; throttling retried with backoff (bounded by the step's time), every error one line."""
        import botocore.exceptions as bx

        client = client or self.client(service)
        method = getattr(client, _snake(operation))
        params = {k: v for k, v in params.items() if v is not None}
        started = time.monotonic()
        deadline = started + self.ctx.timeout if self.ctx.timeout is not None else None
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(**params)
            except bx.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code") or "")
                if code in THROTTLING and attempt <= THROTTLE_RETRIES:
                    delay = THROTTLE_BASE * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
                    if deadline is None or time.monotonic() + delay < deadline:
                        time.sleep(delay)
                        continue
                raise AwsError(self._client_error(exc, service, operation, params, what or {}, attempt,
                                                  time.monotonic() - started)) from None
            except bx.NoCredentialsError:
                raise AwsError("no AWS credentials found (environment, shared credentials files, SSO, instance or task "
                               f"role) for {self.where}: set aws.profile in the inventory, or log in "
                               "(aws sso login / aws configure)") from None
            except bx.NoRegionError:
                raise AwsError("no AWS region: set aws.region in the inventory, --region on the step, or AWS_REGION") from None
            except (bx.EndpointConnectionError, bx.ConnectTimeoutError) as exc:
                raise AwsError(f"cannot reach AWS {service} ({_endpoint(exc)}) in {self.region}: "
                               f"{'no answer in time' if isinstance(exc, bx.ConnectTimeoutError) else 'connection failed'}",
                               timeout=isinstance(exc, bx.ConnectTimeoutError)) from None
            except bx.ReadTimeoutError:
                raise AwsError(f"AWS {service} {operation} did not answer in time ({self.region})", timeout=True) from None
            except bx.ParamValidationError as exc:
                first = str(exc).strip().splitlines()
                raise AwsError(f"{service} {operation}: invalid parameters: {first[-1] if first else exc}") from None
            except bx.BotoCoreError as exc:
                first = str(exc).strip().splitlines()
                raise AwsError(f"AWS {service} {operation} failed: {first[0] if first else type(exc).__name__}") from None

    def _client_error(self, exc, service: str, operation: str, params: dict, what: dict, attempts: int,
                      spent: float) -> str:
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        message = " ".join(str(err.get("Message") or "").split())[:300]
        action = f"{_iam_prefix(service)}:{operation}"
        if code in THROTTLING:
            return (f"AWS throttled {action} ({code}) in {self.region}: still throttled after "
                    f"{plural(attempts, 'attempt')} over {spent:.1f}s with backoff; wait a minute and run the step again")
        if code in DENIED or "not authorized" in message.lower():
            return (f"access denied: the credentials of {self.where} may not call {action}"
                    f"{' on ' + what['on'] if what.get('on') else ''} ({code}); ask for that permission or use "
                    "another profile/role")
        if code in BAD_CREDENTIALS:
            return (f"AWS rejected the credentials of {self.where} ({code}): they are invalid or expired; log in again "
                    "(aws sso login, or renew the keys)")
        if code == "ClusterNotFoundException":
            return f"ECS cluster '{params.get('cluster')}' not found in {self.region}"
        if code in ("ServiceNotFoundException", "ServiceNotActiveException"):
            return (f"ECS service '{params.get('service')}' "
                    f"{'not found' if code == 'ServiceNotFoundException' else 'is not active'} in cluster "
                    f"'{params.get('cluster')}' ({self.region})")
        if code in ("DBInstanceNotFound", "DBInstanceNotFoundFault"):
            return f"RDS instance '{params.get('DBInstanceIdentifier')}' not found in {self.region}"
        if code == "InvalidDBInstanceState":
            return f"RDS instance '{params.get('DBInstanceIdentifier')}' cannot be rebooted now ({message})"
        if code in ("TargetGroupNotFound", "TargetGroupNotFoundException"):
            name = (params.get("Names") or [params.get("TargetGroupArn")])[0]
            return f"target group '{name}' not found in {self.region}"
        if code == "ResourceNotFoundException" and service == "logs":
            group = params.get("logGroupName") or ", ".join(params.get("logGroupNames") or [])
            return f"log group '{group}' not found in {self.region} ({message})"
        if code == "ResourceNotFound" and service == "cloudwatch":
            return f"CloudWatch: {message or 'not found'} ({self.region})"
        return f"AWS {action} failed in {self.region}: {code or 'error'}: {message or 'no message'}"


def _iam_prefix(service: str) -> str:
    return {"cloudwatch": "cloudwatch", "logs": "logs", "elbv2": "elasticloadbalancing"}.get(service, service)


def _snake(operation: str) -> str:
    import re

    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", operation)).lower()


def _session_name(text: str) -> str:
    import re

    return re.sub(r"[^\w+=,.@-]", "-", text)[:64] or "runbook"


def _endpoint(exc) -> str:
    return str(getattr(exc, "kwargs", {}).get("endpoint_url") or "its endpoint")


def session(ctx, target: dict) -> Aws:
    key = ("aws", target["region"], target["profile"], target["role_arn"], target["endpoint_url"],
           target.get("endpoint_from_env"))
    conn = ctx.connections.get(key)
    if conn is None:
        conn = ctx.connections[key] = Aws(target, ctx)
    return conn


# --- running a step ------------------------------------------------------------------------


def run(step, act: Action, ctx) -> StepResult:
    d = act.detail
    started = time.monotonic()
    from runbook.steps.aws import RESULT_FIELDS

    base = {**dict.fromkeys(RESULT_FIELDS),  # a failed step's fields read as none, never as undefined
            "aws_service": d["aws_service"], "operation": d["operation"], "region": d["target"]["region"],
            "calls": [c["service"] + " " + c["operation"] for c in d["calls"]]}
    try:
        aws = session(ctx, d["target"])
        handler = HANDLERS[(d["aws_service"], d["operation"])]
        data, text = handler(aws, d["params"], ctx)
    except AwsError as exc:
        msg = ctx.redactor.text(str(exc))
        return StepResult("timeout" if exc.timeout else "failed", error=msg, data=base,
                          stderr=msg + "\n" if exc.timeout else "",  # the engine words a timeout its own way
                          duration=time.monotonic() - started)
    return StepResult("ok", stdout=ctx.redactor.text(text), data=ctx.redactor.data({**base, **data}),
                      duration=time.monotonic() - started)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _since(p: dict) -> datetime.datetime:
    return _now() - datetime.timedelta(seconds=parse_duration(p["since"]))


def _iso(t) -> str | None:
    if t is None:
        return None
    if isinstance(t, (int, float)):  # epoch milliseconds (CloudWatch Logs)
        t = datetime.datetime.fromtimestamp(t / 1000, datetime.timezone.utc)
    if isinstance(t, datetime.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=datetime.timezone.utc)
        return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(t)


def table(columns: list[str], rows: list[list], width: int = 80) -> str:
    """A plain-text table: long cells cut, columns aligned."""
    if not rows:
        return ""
    cells = [[_cell(v, width) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def _cell(v, width: int) -> str:
    if v is None:
        return "-"
    s = " ".join(str(v).split())
    return s if len(s) <= width else s[:width - 1] + "…"


def _name(arn: str | None) -> str:
    return str(arn or "").rsplit("/", 1)[-1]


# --- ECS ---------------------------------------------------------------------------------------


def _service(s: dict) -> dict:
    primary = next((x for x in s.get("deployments") or [] if x.get("status") == "PRIMARY"), None)
    return {
        "name": s.get("serviceName"), "status": s.get("status"),
        "desired": s.get("desiredCount"), "running": s.get("runningCount"), "pending": s.get("pendingCount"),
        "task_definition": _name(s.get("taskDefinition")),
        "rollout_state": (primary or {}).get("rolloutState"),
        "deployments": [{"id": x.get("id"), "status": x.get("status"), "desired": x.get("desiredCount"),
                         "running": x.get("runningCount"), "pending": x.get("pendingCount"),
                         "failed_tasks": x.get("failedTasks"), "rollout_state": x.get("rolloutState"),
                         "task_definition": _name(x.get("taskDefinition")), "updated": _iso(x.get("updatedAt"))}
                        for x in s.get("deployments") or []],
        "events": [{"time": _iso(e.get("createdAt")), "message": e.get("message")}
                   for e in (s.get("events") or [])[:MAX_EVENTS_SHOWN]],
    }


def _missing(failures: list, kind: str, where: str) -> str | None:
    for f in failures or []:
        return f"ECS {kind} '{_name(f.get('arn'))}' {'not found' if f.get('reason') == 'MISSING' else f.get('reason')} {where}"
    return None


def describe_services(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    got = aws.call("ecs", "DescribeServices", {"cluster": p["cluster"], "services": p["services"]})
    if (why := _missing(got.get("failures"), "service", f"in cluster '{p['cluster']}' ({aws.region})")) is not None:
        raise AwsError(why)
    services = [_service(s) for s in got.get("services") or []]
    data: dict[str, Any] = {"services": services, "count": len(services)}
    if len(services) == 1:
        s = services[0]
        data.update(desired_count=s["desired"], running_count=s["running"], pending_count=s["pending"],
                    rollout_state=s["rollout_state"], deployments=s["deployments"], service_events=s["events"])
    text = table(["service", "status", "desired", "running", "pending", "rollout", "task definition"],
                 [[s["name"], s["status"], s["desired"], s["running"], s["pending"], s["rollout_state"],
                   s["task_definition"]] for s in services])
    for s in services:
        if len(s["deployments"]) > 1:
            text += f"\n{s['name']}: {plural(len(s['deployments']), 'deployment')}\n" + table(
                ["deployment", "status", "desired", "running", "failed", "rollout"],
                [[x["id"], x["status"], x["desired"], x["running"], x["failed_tasks"], x["rollout_state"]]
                 for x in s["deployments"]])
        if s["events"]:
            text += f"\n{s['name']}: recent events\n" + table(["time", "message"],
                                                             [[e["time"], e["message"]] for e in s["events"][:5]], 120)
    return data, text


def list_tasks(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    arns = _task_arns(aws, p)
    return {"task_arns": arns, "count": len(arns)}, "".join(f"{a}\n" for a in arns) or "no tasks\n"


def _task_arns(aws: Aws, p: dict) -> list[str]:
    params = {"cluster": p["cluster"], "serviceName": p.get("service_name"), "desiredStatus": p.get("desired_status")}
    arns: list[str] = []
    while True:
        got = aws.call("ecs", "ListTasks", params)
        arns += got.get("taskArns") or []
        if not got.get("nextToken") or len(arns) >= MAX_TASKS:
            return arns[:MAX_TASKS]
        params["nextToken"] = got["nextToken"]


def _task(t: dict) -> dict:
    return {
        "id": _name(t.get("taskArn")), "arn": t.get("taskArn"), "last_status": t.get("lastStatus"),
        "desired_status": t.get("desiredStatus"), "stopped_reason": t.get("stoppedReason") or None,
        "stop_code": t.get("stopCode"), "task_definition": _name(t.get("taskDefinitionArn")),
        "group": t.get("group"), "started": _iso(t.get("startedAt")), "stopped": _iso(t.get("stoppedAt")),
        "containers": [{"name": c.get("name"), "last_status": c.get("lastStatus"), "exit_code": c.get("exitCode"),
                        "reason": c.get("reason")} for c in t.get("containers") or []],
    }


def describe_tasks(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    arns = p.get("tasks") or _task_arns(aws, p)
    tasks: list[dict] = []
    if arns:
        got = aws.call("ecs", "DescribeTasks", {"cluster": p["cluster"], "tasks": arns[:MAX_TASKS]})
        if not got.get("tasks") and (why := _missing(got.get("failures"), "task", f"in cluster '{p['cluster']}'")):
            raise AwsError(why)
        tasks = [_task(t) for t in got.get("tasks") or []]
    tasks.sort(key=lambda t: t["stopped"] or t["started"] or "", reverse=True)
    reasons = [t["stopped_reason"] for t in tasks if t["stopped_reason"]]
    container_reasons = list(dict.fromkeys(c["reason"] for t in tasks for c in t["containers"] if c["reason"]))
    data = {"tasks": tasks, "count": len(tasks), "stopped_reasons": reasons, "container_reasons": container_reasons,
            "stopped_count": sum(1 for t in tasks if t["last_status"] == "STOPPED")}
    text = table(["task", "status", "stopped", "stop code", "stopped reason", "exit codes"],
                 [[t["id"], t["last_status"], t["stopped"], t["stop_code"], t["stopped_reason"],
                   ", ".join(f"{c['name']}={c['exit_code']}" for c in t["containers"] if c["exit_code"] is not None)]
                  for t in tasks]) or "no tasks\n"
    return data, text


def update_service(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    params: dict[str, Any] = {"cluster": p["cluster"], "service": p["service"]}
    notes = []
    current = None
    if p.get("desired_count") is not None:
        got = aws.call("ecs", "DescribeServices", {"cluster": p["cluster"], "services": [p["service"]]})
        if (why := _missing(got.get("failures"), "service", f"in cluster '{p['cluster']}' ({aws.region})")) is not None:
            raise AwsError(why)
        current = int(got["services"][0]["desiredCount"])
        want = p["desired_count"]
        asked = current + int(want[1:]) if isinstance(want, str) and want.startswith("+") else int(want)
        params["desiredCount"] = max(asked, current)
        if asked < current:
            notes.append(f"asked for {asked} tasks, but the service wants {current} now: a scale-up never lowers the "
                         f"desired count, so it stays {current}")
    if p.get("force_new_deployment"):
        params["forceNewDeployment"] = True
    got = aws.call("ecs", "UpdateService", params, what={"on": f"service {p['service']} of cluster {p['cluster']}"})
    s = _service(got["service"])
    data = {"desired_count": s["desired"], "running_count": s["running"], "pending_count": s["pending"],
            "previous_desired_count": current, "rollout_state": s["rollout_state"], "deployments": s["deployments"],
            "services": [s], "count": 1}
    change = []
    if current is not None:
        change.append(f"desired count {current} -> {s['desired']}" if current != s["desired"]
                      else f"desired count stays {current}")
    if p.get("force_new_deployment"):
        change.append("new deployment started")
    text = f"service {s['name']} in cluster {p['cluster']}: {', '.join(change)}\n" + "".join(f"note: {n}\n" for n in notes)
    text += table(["service", "desired", "running", "pending", "rollout"],
                  [[s["name"], s["desired"], s["running"], s["pending"], s["rollout_state"]]])
    return data, text


# --- CloudWatch --------------------------------------------------------------------------------


def get_metric_data(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    query = {"Id": "m0", "MetricStat": {
        "Metric": {"Namespace": p["namespace"], "MetricName": p["metric_name"],
                   "Dimensions": [{"Name": k, "Value": v} for k, v in (p.get("dimensions") or {}).items()]},
        "Period": int(p["period"]), "Stat": p["statistic"]}, "ReturnData": True}
    params = {"MetricDataQueries": [query], "StartTime": _since(p), "EndTime": _now(), "ScanBy": "TimestampAscending"}
    times: list = []
    values: list = []
    while True:
        got = aws.call("cloudwatch", "GetMetricData", params)
        for r in got.get("MetricDataResults") or []:
            times += r.get("Timestamps") or []
            values += r.get("Values") or []
        if not got.get("NextToken"):
            break
        params["NextToken"] = got["NextToken"]
    points = sorted(({"timestamp": _iso(t), "value": v} for t, v in zip(times, values)), key=lambda x: x["timestamp"])
    data = {"datapoints": points, "values": [x["value"] for x in points], "count": len(points),
            "value": points[-1]["value"] if points else None}
    dims = ",".join(f"{k}={v}" for k, v in (p.get("dimensions") or {}).items())
    head = f"{p['namespace']} {p['metric_name']}{' ' + dims if dims else ''} {p['statistic']} per {p['period']}s, last {p['since']}\n"
    body = table(["time", "value"], [[x["timestamp"], _num(x["value"])] for x in points[-30:]]) or "no datapoints\n"
    return data, head + body


def _num(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def describe_alarms(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    params = {"AlarmNames": p.get("alarm_names"), "AlarmNamePrefix": p.get("alarm_name_prefix"),
              "StateValue": p.get("state_value")}
    alarms = []
    while True:
        got = aws.call("cloudwatch", "DescribeAlarms", params)
        for a in got.get("MetricAlarms") or []:
            alarms.append({"name": a.get("AlarmName"), "state": a.get("StateValue"), "reason": a.get("StateReason"),
                           "metric": f"{a.get('Namespace')} {a.get('MetricName')}", "threshold": a.get("Threshold"),
                           "updated": _iso(a.get("StateUpdatedTimestamp"))})
        for a in got.get("CompositeAlarms") or []:
            alarms.append({"name": a.get("AlarmName"), "state": a.get("StateValue"), "reason": a.get("StateReason"),
                           "metric": "(composite)", "threshold": None, "updated": _iso(a.get("StateUpdatedTimestamp"))})
        if not got.get("NextToken"):
            break
        params["NextToken"] = got["NextToken"]
    if p.get("alarm_names"):
        missing = [n for n in p["alarm_names"] if n not in {a["name"] for a in alarms}]
        if missing and not p.get("state_value"):
            raise AwsError(f"CloudWatch alarm{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found in {aws.region}")
    in_alarm = [a["name"] for a in alarms if a["state"] == "ALARM"]
    data = {"alarms": alarms, "in_alarm": in_alarm, "count": len(alarms)}
    text = table(["alarm", "state", "metric", "updated", "reason"],
                 [[a["name"], a["state"], a["metric"], a["updated"], a["reason"]] for a in alarms]) or "no alarms\n"
    return data, text


# --- CloudWatch Logs ----------------------------------------------------------------------------


def filter_log_events(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    limit = int(p["limit"])
    params = {"logGroupName": p["log_group_name"], "filterPattern": p.get("filter_pattern"),
              "logStreamNamePrefix": p.get("log_stream_name_prefix"),
              "startTime": int(_since(p).timestamp() * 1000), "limit": limit}
    events: list[dict] = []
    while True:
        got = aws.call("logs", "FilterLogEvents", params)
        events += [{"time": _iso(e.get("timestamp")), "stream": e.get("logStreamName"),
                    "message": str(e.get("message") or "").rstrip("\n")} for e in got.get("events") or []]
        if not got.get("nextToken") or len(events) >= limit:
            break
        params["nextToken"] = got["nextToken"]
        params["limit"] = limit - len(events)
    events = events[:limit]
    data = {"log_events": events, "messages": [e["message"] for e in events], "count": len(events)}
    text = "".join(f"{e['time']} {e['stream']} {e['message']}\n" for e in events) or (
        f"no events in {p['log_group_name']} matching {p.get('filter_pattern')!r} in the last {p['since']}\n"
        if p.get("filter_pattern") else f"no events in {p['log_group_name']} in the last {p['since']}\n")
    return data, text


def start_query(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    started = aws.call("logs", "StartQuery", {
        "logGroupNames": p["log_group_name"], "queryString": p["query_string"],
        "startTime": int(_since(p).timestamp()), "endTime": int(_now().timestamp()), "limit": int(p["limit"])})
    qid = started["queryId"]
    budget = ctx.timeout if ctx.timeout is not None else QUERY_DEFAULT_TIMEOUT
    deadline = time.monotonic() + budget
    polls = 0
    while True:
        got = aws.call("logs", "GetQueryResults", {"queryId": qid})
        status = got.get("status")
        if status in ("Complete", "Failed", "Cancelled", "Timeout", "Unknown"):
            break
        wait = QUERY_POLL[min(polls, len(QUERY_POLL) - 1)]
        polls += 1
        if time.monotonic() + wait >= deadline:
            try:
                aws.call("logs", "StopQuery", {"queryId": qid})
            except AwsError:
                pass
            raise AwsError(f"the Logs Insights query did not complete within {budget:g}s (status {status}); it was "
                           "stopped: narrow it (a shorter since, a filter) or give the step more time", timeout=True)
        time.sleep(wait)
    if status != "Complete":
        raise AwsError(f"the Logs Insights query ended {status}: check the query string")
    rows = [{f.get("field"): f.get("value") for f in row if not str(f.get("field", "")).startswith("@ptr")}
            for row in got.get("results") or []]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    stats = got.get("statistics") or {}
    data = {"rows": rows, "count": len(rows), "query_status": status}
    text = table(columns, [[r.get(c) for c in columns] for r in rows], 120) or "no rows\n"
    if stats:
        text += (f"({plural(len(rows), 'row')}; {stats.get('recordsMatched', 0):g} records matched of "
                 f"{stats.get('recordsScanned', 0):g} scanned)\n")
    return data, text


# --- RDS -----------------------------------------------------------------------------------


def describe_db_instances(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    params = {"DBInstanceIdentifier": p.get("db_instance_identifier")}
    got = aws.call("rds", "DescribeDBInstances", params)
    instances = [{"id": i.get("DBInstanceIdentifier"), "status": i.get("DBInstanceStatus"), "engine": i.get("Engine"),
                  "engine_version": i.get("EngineVersion"), "class": i.get("DBInstanceClass"),
                  "endpoint": (i.get("Endpoint") or {}).get("Address"), "port": (i.get("Endpoint") or {}).get("Port"),
                  "multi_az": i.get("MultiAZ"), "az": i.get("AvailabilityZone"),
                  "secondary_az": i.get("SecondaryAvailabilityZone"),
                  "pending_modified": bool(i.get("PendingModifiedValues"))}
                 for i in got.get("DBInstances") or []]
    data: dict[str, Any] = {"instances": instances, "count": len(instances)}
    if len(instances) == 1:
        data["db_status"] = instances[0]["status"]
    text = table(["instance", "status", "engine", "class", "multi-az", "az", "endpoint"],
                 [[i["id"], i["status"], f"{i['engine']} {i['engine_version']}", i["class"], i["multi_az"], i["az"],
                   f"{i['endpoint']}:{i['port']}" if i["endpoint"] else None] for i in instances]) or "no instances\n"
    return data, text


def describe_events(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    params = {"SourceIdentifier": p.get("source_identifier"), "SourceType": p["source_type"],
              "Duration": max(1, int(parse_duration(p["since"]) // 60))}
    events = []
    while True:
        got = aws.call("rds", "DescribeEvents", params)
        events += [{"time": _iso(e.get("Date")), "source": e.get("SourceIdentifier"), "message": e.get("Message"),
                    "categories": e.get("EventCategories") or []} for e in got.get("Events") or []]
        if not got.get("Marker"):
            break
        params["Marker"] = got["Marker"]
    events.sort(key=lambda e: e["time"] or "", reverse=True)
    data = {"events": events, "messages": [e["message"] for e in events], "count": len(events)}
    text = table(["time", "source", "categories", "message"],
                 [[e["time"], e["source"], ",".join(e["categories"]), e["message"]] for e in events], 120) or \
        f"no RDS events in the last {p['since']}\n"
    return data, text


def reboot_db_instance(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    params = {"DBInstanceIdentifier": p["db_instance_identifier"]}
    if p.get("force_failover"):
        params["ForceFailover"] = True
    got = aws.call("rds", "RebootDBInstance", params, what={"on": f"instance {p['db_instance_identifier']}"})
    i = got.get("DBInstance") or {}
    status = i.get("DBInstanceStatus")
    data = {"db_status": status, "instances": [{"id": i.get("DBInstanceIdentifier"), "status": status}], "count": 1}
    return data, (f"RDS instance {p['db_instance_identifier']}: reboot{' with failover' if p.get('force_failover') else ''} "
                  f"requested (status {status})\n")


# --- ELBv2 -------------------------------------------------------------------------------------


def describe_target_health(aws: Aws, p: dict, ctx) -> tuple[dict, str]:
    arn = p.get("target_group_arn")
    if not arn:
        got = aws.call("elbv2", "DescribeTargetGroups", {"Names": [p["target_group_name"]]})
        groups = got.get("TargetGroups") or []
        if not groups:
            raise AwsError(f"target group '{p['target_group_name']}' not found in {aws.region}")
        arn = groups[0]["TargetGroupArn"]
    got = aws.call("elbv2", "DescribeTargetHealth", {"TargetGroupArn": arn})
    targets = [{"id": (t.get("Target") or {}).get("Id"), "port": (t.get("Target") or {}).get("Port"),
                "state": (t.get("TargetHealth") or {}).get("State"), "reason": (t.get("TargetHealth") or {}).get("Reason"),
                "description": (t.get("TargetHealth") or {}).get("Description")}
               for t in got.get("TargetHealthDescriptions") or []]
    healthy = sum(1 for t in targets if t["state"] == "healthy")
    data = {"targets": targets, "healthy": healthy, "unhealthy": len(targets) - healthy, "count": len(targets)}
    text = table(["target", "port", "state", "reason", "description"],
                 [[t["id"], t["port"], t["state"], t["reason"], t["description"]] for t in targets]) or "no targets\n"
    return data, text + f"{healthy} of {plural(len(targets), 'target')} healthy\n"


HANDLERS = {
    ("ecs", "describe-services"): describe_services,
    ("ecs", "list-tasks"): list_tasks,
    ("ecs", "describe-tasks"): describe_tasks,
    ("ecs", "update-service"): update_service,
    ("cloudwatch", "get-metric-data"): get_metric_data,
    ("cloudwatch", "describe-alarms"): describe_alarms,
    ("logs", "filter-log-events"): filter_log_events,
    ("logs", "start-query"): start_query,
    ("rds", "describe-db-instances"): describe_db_instances,
    ("rds", "describe-events"): describe_events,
    ("rds", "reboot-db-instance"): reboot_db_instance,
    ("elbv2", "describe-target-health"): describe_target_health,
}
