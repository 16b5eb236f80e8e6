"""The ``aws`` step kind against an AWS API emulator: moto's server on
127.0.0.1 (tests/awsserver.py), which boto3 reaches over HTTP as it would
reach AWS — boto3 itself is never patched.  What reached the emulator is
read at the wire (``aws_emulator.wire``)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, book

from runbook import audit, session, spec
from runbook.errors import RunbookError
from runbook.steps import aws_parse as P

REGION = "eu-west-1"
KEY_ID = "AKIAEXAMPLEONCALLKEY1"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYONCALLSECRET"
PLAYBOOK = ROOT / "playbooks" / "ecs-task-crash-loop.yaml"


# --- the emulator and the account ---------------------------------------------------------------


class Account:
    """boto3 clients on the emulator for setting the scene (the step under test makes its own)."""

    def __init__(self, emu):
        import boto3

        self.emu, self.url = emu, emu.url
        kw = {"region_name": REGION, "endpoint_url": emu.url, "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        self.ecs, self.ec2, self.logs, self.cw, self.rds, self.elb = (
            boto3.client(s, **kw) for s in ("ecs", "ec2", "logs", "cloudwatch", "rds", "elbv2"))

    def ecs_service(self, desired: int = 1, crashed: int = 3, reason: str = "Essential container in task exited",
                    healthy: bool = False):
        """Cluster nano, service api wanting ``desired`` tasks with none running (the emulator starts
        none), and ``crashed`` stopped tasks of it with their reason."""
        ami = self.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        inst = self.ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]
        self.ecs.create_cluster(clusterName="nano")
        self.ecs.register_container_instance(cluster="nano", instanceIdentityDocument=json.dumps(
            {"instanceId": inst["InstanceId"], "region": REGION, "availabilityZone": f"{REGION}a",
             "instanceType": "t3.micro", "privateIp": "10.0.0.4", "accountId": "123456789012", "imageId": ami}))
        self.ecs.register_task_definition(family="api", containerDefinitions=[
            {"name": "api", "image": "nano/api:1", "memory": 128}])
        self.ecs.create_service(cluster="nano", serviceName="api", taskDefinition="api", desiredCount=desired)
        if healthy:  # the emulator starts a service's tasks on an update only
            self.ecs.update_service(cluster="nano", service="api", desiredCount=desired)
        if crashed:
            tasks = self.ecs.run_task(cluster="nano", taskDefinition="api", count=crashed, group="service:api",
                                      startedBy="ecs-svc/1")["tasks"]
            for t in tasks:
                self.ecs.stop_task(cluster="nano", task=t["taskArn"], reason=reason)

    def log_group(self, name="/aws/ecs/nano-api", lines=("INFO started", "ERROR db connection refused",
                                                         "CRITICAL exiting"), age: int = 0):
        self.logs.create_log_group(logGroupName=name)
        self.logs.create_log_stream(logGroupName=name, logStreamName="api/api/1")
        now = int(time.time() * 1000)
        self.logs.put_log_events(logGroupName=name, logStreamName="api/api/1", logEvents=[
            {"timestamp": now - 1000 * (age + (len(lines) - i) * 10), "message": m} for i, m in enumerate(lines)])

    def metrics(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        for minutes, value in ((3, 40.0), (2, 75.5), (1, 91.5)):
            self.cw.put_metric_data(Namespace="AWS/ECS", MetricData=[
                {"MetricName": "CPUUtilization", "Dimensions": [{"Name": "ClusterName", "Value": "nano"},
                                                                {"Name": "ServiceName", "Value": "api"}],
                 "Timestamp": now - datetime.timedelta(minutes=minutes), "Value": value}])
        for name, state in (("api-5xx", "ALARM"), ("api-latency", "OK")):
            self.cw.put_metric_alarm(AlarmName=name, Namespace="AWS/ApplicationELB", MetricName="HTTPCode_Target_5XX_Count",
                                     Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=5,
                                     ComparisonOperator="GreaterThanThreshold")
            self.cw.set_alarm_state(AlarmName=name, StateValue=state, StateReason=f"{state} for the test")

    def database(self):
        self.rds.create_db_instance(DBInstanceIdentifier="nano-db", DBInstanceClass="db.t3.micro", Engine="postgres",
                                    MasterUsername="nano", MasterUserPassword="not-a-real-password-1",
                                    AllocatedStorage=20)

    def target_group(self) -> str:
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        arn = self.elb.create_target_group(Name="nano-api", Protocol="HTTP", Port=8080, VpcId=vpc,
                                           TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
        self.elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": "10.0.0.5", "Port": 8080},
                                                                {"Id": "10.0.0.6", "Port": 8080}])
        return arn

    def service(self) -> dict:
        return self.ecs.describe_services(cluster="nano", services=["api"])["services"][0]


@pytest.fixture
def account(aws_emulator, monkeypatch, tmp_path):
    """A fresh emulated account; the run's credentials in the environment, nothing read from ~/.aws."""
    aws_emulator.reset()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_ENDPOINT_URL", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    acct = Account(aws_emulator)
    yield acct
    aws_emulator.wire.clear()


@pytest.fixture
def inv(write, aws_emulator):
    def _inv(extra: str = "", endpoint: bool = True) -> str:
        body = f"aws:\n  region: {REGION}\n" + (f"  endpoint_url: {aws_emulator.url}\n" if endpoint else "") + extra
        return str(write("inv.yaml", body))
    return _inv


def results(audit_dir) -> dict:
    return {r["step"]: r for r in audit.read_records(audit_dir / "audit.jsonl") if r["type"] == "step_result"}


def calls(emu) -> list[str]:
    """The operations that reached the emulator, setup requests left out."""
    return [r["operation"] for r in emu.wire.requests if "Credential=setup/" not in r["authorization"]]


def _ready(emu) -> None:
    emu.wire.requests.clear()  # what the scene's setup sent is not the step's


# --- the two forms ------------------------------------------------------------------------------


def test_shorthand_and_mapping_give_the_same_body():
    short = P.from_shorthand("aws ecs describe-services --cluster nano --services api web")
    mapped = P.from_mapping({"ecs": "describe-services", "cluster": "nano", "services": ["api", "web"]})
    assert short["problems"] == [] and mapped["problems"] == []
    assert (short["service"], short["operation"], short["params"]) == (mapped["service"], mapped["operation"], mapped["params"])
    b = P.from_shorthand("ecs update-service --cluster nano --service api --desired-count +1 --force-new-deployment")
    assert b["params"] == {"cluster": "nano", "service": "api", "desired_count": "+1", "force_new_deployment": True}
    b = P.from_shorthand("cloudwatch get-metric-data --namespace AWS/ECS --metric-name CPUUtilization "
                         "--dimensions ClusterName=nano,ServiceName=api --region us-east-1")
    assert b["params"]["dimensions"] == {"ClusterName": "nano", "ServiceName": "api"} and b["region"] == "us-east-1"
    b = P.from_shorthand("cloudwatch get-metric-data --namespace AWS/RDS --metric-name CPUUtilization "
                         "--dimensions DBInstanceIdentifier={{ params.db | default('a,b') }},Role=writer")
    assert b["params"]["dimensions"] == {"DBInstanceIdentifier": "{{ params.db | default('a,b') }}", "Role": "writer"}
    assert P.from_shorthand("cloudwatch get-metric-data --namespace A --metric-name M --dimensions {{ x }}=1")["problems"]
    b = P.from_shorthand("logs filter-log-events --log-group-name /aws/ecs/nano-api --filter-pattern '?ERROR ?CRITICAL'")
    assert b["params"]["filter_pattern"] == "?ERROR ?CRITICAL"


@pytest.mark.parametrize("text, words", [
    ("ecs describe-service --cluster nano --services api", "did you mean 'describe-services'"),
    ("ec2 describe-instances", "unsupported AWS service 'ec2'"),
    ("ecs describe-services --cluster nano", "needs --services"),
    ("ecs describe-services --cluster nano --services api --force", "unsupported flag '--force'"),
    ("ecs describe-tasks --cluster nano", "exactly one of --tasks or --service-name"),
    ("ecs update-service --cluster nano --service api", "needs --desired-count and/or --force-new-deployment"),
    ("ecs update-service --cluster nano --service api --desired-count lots", "takes a whole number or +N"),
    ("{{ params.svc }} describe-services --cluster nano --services api", "written literally"),
    ("ecs describe-services --cluster nano --services api; rm -rf /", "not allowed in the shorthand"),
    ("ecs describe-services --cluster nano api", "unexpected argument 'api'"),
    ("cloudwatch describe-alarms --state-value RED", "one of OK, ALARM, INSUFFICIENT_DATA"),
])
def test_the_shorthand_refuses_in_one_line(text, words):
    problems = P.from_shorthand(text)["problems"]
    assert problems and words in problems[0][1], problems


def test_validate_reports_problems_and_a_readonly_write(write, main):
    p = book(write, """
  diagnose:
    - id: a
      aws: {ecs: describe-services, cluster: nano, service: api}
    - id: b
      aws: "rds reboot-db-instance --db-instance-identifier nano-db"
      readonly: true
      timeout: 1m
""")
    r = main("validate", p)
    assert r.returncode == 1
    assert "takes no 'service'" in r.stdout and "(did you mean 'services'?)" in r.stdout
    assert "readonly: true, but rds reboot-db-instance changes things" in r.stdout


# --- the dry-run: every call shown, nothing contacted -------------------------------------------------


def test_dry_run_shows_every_call_and_the_emulator_sees_nothing(account, inv, main, aws_emulator):
    account.ecs_service()
    _ready(aws_emulator)
    r = main("run", PLAYBOOK, "--dry-run", "--inventory", inv(), "-p", "service=api")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert 'ecs DescribeServices {"cluster": "nano", "services": ["api"]}' in out
    assert 'ecs ListTasks {"cluster": "nano", "serviceName": "api", "desiredStatus": "STOPPED"}' in out
    assert 'logs FilterLogEvents {"logGroupName": "/aws/ecs/nano-api", "filterPattern": "?ERROR ?CRITICAL"' in out
    assert '"desiredCount": "<max(2, the current desired count)>", "forceNewDeployment": true' in out
    assert f"in {REGION}" in out
    assert aws_emulator.wire.requests == []  # not one request reached the emulator


def test_dry_run_and_validate_never_import_boto3(tmp_path, inv):
    """The plan renders every call without boto3: it loads only when an aws step runs."""
    code = ("import sys\nfrom runbook.cli import main\n"
            "for args in (['validate', '--strict', sys.argv[1]], ['run', sys.argv[1], '--dry-run', '--inventory', sys.argv[2]]):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'runbook')"
            " and (m.startswith('bot') or m == 'runbook.steps.aws_ops')))\n")
    r = subprocess.run([sys.executable, "-c", code, str(PLAYBOOK), inv()], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert "LOADED []" in r.stdout, r.stdout + r.stderr


def test_aws_endpoint_url_from_the_environment_as_boto3_reads_it(account, inv, write, main, aws_emulator, monkeypatch):
    account.ecs_service()
    _ready(aws_emulator)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_emulator.url)
    p = book(write, "  diagnose:\n    - id: s\n      aws: 'ecs describe-services --cluster nano --services api'\n")
    r = main("run", p, "--inventory", inv(endpoint=False))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"endpoint {aws_emulator.url} (AWS_ENDPOINT_URL)" in r.stdout
    assert calls(aws_emulator) == ["DescribeServices"]


def test_region_missing_is_one_line(account, write, main):
    p = book(write, "  diagnose:\n    - id: s\n      aws: 'ecs describe-services --cluster nano --services api'\n")
    r = main("run", p, "--dry-run", "--inventory", write("noregion.yaml", "aws: {profile: x}\n"))
    assert r.returncode != 0
    assert "no AWS region for this aws step: set aws: {region: …} in" in r.stderr + r.stdout


def test_a_template_value_stays_one_value(account, inv, write, main, aws_emulator, audit_dir):
    account.ecs_service()
    _ready(aws_emulator)
    p = book(write, "  mitigate:\n    - id: s\n      aws: 'ecs update-service --cluster nano --service {{ params.svc }} "
                    "--desired-count 2'\n      timeout: 1m\n  verify:\n    - id: v\n      aws: "
                    "'ecs describe-services --cluster nano --services {{ params.svc }}'\n",
             head="params:\n  svc: {type: string}\n")
    r = main("run", p, "--inventory", inv(), "-p", "svc=api --force-new-deployment", "--yes")
    assert r.returncode == 1
    assert "invalid --service 'api --force-new-deployment': one name or ARN" in results(audit_dir)["s"]["error"]
    assert calls(aws_emulator) == []


# --- every operation ------------------------------------------------------------------------------------


READS = """
  diagnose:
    - id: svc
      aws: "ecs describe-services --cluster nano --services api"
    - id: listed
      aws: "ecs list-tasks --cluster nano --service-name api --desired-status STOPPED"
    - id: one-task
      aws: {ecs: describe-tasks, cluster: nano, tasks: "{{ steps.listed.task_arns[0] }}"}
    - id: crashed
      aws: "ecs describe-tasks --cluster nano --service-name api"
    - id: cpu
      aws: "cloudwatch get-metric-data --namespace AWS/ECS --metric-name CPUUtilization --dimensions ClusterName=nano,ServiceName=api --statistic Maximum --since 10m"
    - id: alarms
      aws: "cloudwatch describe-alarms --alarm-names api-5xx api-latency"
    - id: errors
      aws: {logs: filter-log-events, log_group_name: /aws/ecs/nano-api, filter_pattern: ERROR, since: 15m}
    - id: insights
      aws: {logs: start-query, log_group_name: /aws/ecs/nano-api, query_string: "fields @timestamp, @message | filter @message like /CRITICAL/", since: 15m}
    - id: db
      aws: "rds describe-db-instances --db-instance-identifier nano-db"
    - id: db-events
      aws: "rds describe-events --source-identifier nano-db --since 1h"
    - id: targets
      aws: "elbv2 describe-target-health --target-group-name nano-api"
    - id: targets-by-arn
      aws: {elbv2: describe-target-health, target_group_arn: "{{ params.tg }}"}
    - id: done
      choose:
        - when: "steps.svc.desired_count == 2 and steps.svc.running_count == 0 and steps.crashed.stopped_count == 3 and steps.cpu.value == 91.5 and steps.alarms.in_alarm == ['api-5xx'] and steps.targets.healthy == 2"
          goto: fine
        - default: wrong
    - id: wrong
      end: {status: failed, message: "the results are not what the emulator holds"}
    - id: fine
      end: "all read"
"""


def test_every_read_operation_with_structured_results_and_tables(account, inv, write, main, aws_emulator, audit_dir):
    account.ecs_service(desired=2, crashed=3)
    account.log_group()
    account.metrics()
    account.database()
    tg = account.target_group()
    _ready(aws_emulator)
    p = book(write, READS, head="params:\n  tg: {type: string}\n")
    r = main("run", p, "--inventory", inv(), "-p", f"tg={tg}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all read" in r.stdout
    res = results(audit_dir)
    svc = res["svc"]["data"]
    assert (svc["desired_count"], svc["running_count"], svc["pending_count"]) == (2, 0, 2)
    assert len(res["listed"]["data"]["task_arns"]) == 3
    assert res["one-task"]["data"]["count"] == 1
    crashed = res["crashed"]["data"]
    assert crashed["stopped_reasons"] == ["Essential container in task exited"] * 3
    assert crashed["tasks"][0]["containers"][0]["name"] == "api"
    cpu = res["cpu"]["data"]
    assert cpu["values"] == [40.0, 75.5, 91.5] and cpu["value"] == 91.5 and len(cpu["datapoints"]) == 3
    assert {a["name"]: a["state"] for a in res["alarms"]["data"]["alarms"]} == {"api-5xx": "ALARM", "api-latency": "OK"}
    assert res["errors"]["data"]["messages"] == ["ERROR db connection refused"]
    assert res["insights"]["data"]["query_status"] == "Complete"
    assert "CRITICAL exiting" in [row["@message"] for row in res["insights"]["data"]["rows"]]  # (moto: no filter)
    assert res["db"]["data"]["db_status"] == "available" and res["db"]["data"]["instances"][0]["engine"] == "postgres"
    assert any("created" in m for m in res["db-events"]["data"]["messages"])
    assert res["targets"]["data"]["healthy"] == 2 and res["targets-by-arn"]["data"]["unhealthy"] == 0
    # readable tables
    assert "SERVICE  STATUS  DESIRED  RUNNING  PENDING" in r.stdout
    assert "Essential container in task exited" in r.stdout
    assert "2 of 2 targets healthy" in r.stdout
    assert calls(aws_emulator) == [
        "DescribeServices", "ListTasks", "DescribeTasks", "ListTasks", "DescribeTasks", "GetMetricData",
        "DescribeAlarms", "FilterLogEvents", "StartQuery", "GetQueryResults", "DescribeDBInstances", "DescribeEvents",
        "DescribeTargetGroups", "DescribeTargetHealth", "DescribeTargetHealth"]


WRITES = """
  mitigate:
    - id: up
      aws: "ecs update-service --cluster nano --service api --desired-count +1"
      timeout: 1m
    - id: fewer
      aws: {ecs: update-service, cluster: nano, service: api, desired_count: 1, force_new_deployment: true}
      timeout: 1m
    - id: reboot
      aws: "rds reboot-db-instance --db-instance-identifier nano-db"
      timeout: 1m
  verify:
    - id: check
      aws: "ecs describe-services --cluster nano --services api"
      until: "desired_count == 4 and running_count == 4"
      every: 1s
      timeout: 10s
"""


def test_writes_scale_up_never_lower_and_reboot(account, inv, write, main, aws_emulator, audit_dir):
    account.ecs_service(desired=3, crashed=0)
    account.database()
    _ready(aws_emulator)
    r = main("run", book(write, WRITES), "--inventory", inv(), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    res = results(audit_dir)
    assert (res["up"]["data"]["previous_desired_count"], res["up"]["data"]["desired_count"]) == (3, 4)
    assert (res["fewer"]["data"]["previous_desired_count"], res["fewer"]["data"]["desired_count"]) == (4, 4)
    assert "a scale-up never lowers the desired count, so it stays 4" in r.stdout
    assert res["reboot"]["data"]["db_status"] is not None
    assert account.service()["desiredCount"] == 4
    sent = [json.loads(x["body"]) for x in aws_emulator.wire.requests if x["operation"] == "UpdateService"]
    assert sent[0] == {"cluster": "nano", "service": "api", "desiredCount": 4}
    assert sent[1] == {"cluster": "nano", "service": "api", "desiredCount": 4, "forceNewDeployment": True}
    assert calls(aws_emulator)[:5] == ["DescribeServices", "UpdateService", "DescribeServices", "UpdateService",
                                       "RebootDBInstance"]


def test_writes_are_confirmed_and_a_declined_one_is_never_sent(account, inv, aws_emulator, audit_dir):
    from fakeui import FakeUI

    account.ecs_service()
    account.log_group()
    _ready(aws_emulator)
    ui = FakeUI(confirm={"redeploy": "abort"})
    out = session.start(session.RunRequest(runbook=spec.find(str(PLAYBOOK), []), params={"service": "api"},
                                           inventory_file=inv(), interactive=True), ui)
    assert out.status == "refused" and "redeploy" in ui.names("confirm"), (out.message, ui.calls)
    assert "UpdateService" not in calls(aws_emulator)
    assert account.service()["desiredCount"] == 1


def test_server_dry_run_reads_and_does_not_send_the_writes(account, inv, main, aws_emulator):
    account.ecs_service()
    account.log_group()
    _ready(aws_emulator)
    r = main("run", PLAYBOOK, "--inventory", inv(), "-p", "service=api", "--server-dry-run", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cannot be dry-run by its server" in r.stdout + r.stderr or "did not send" in r.stdout + r.stderr
    assert "DescribeServices" in calls(aws_emulator) and "UpdateService" not in calls(aws_emulator)


def test_logs_insights_is_polled_until_complete(account, inv, write, main, aws_emulator, audit_dir):
    account.log_group()
    _ready(aws_emulator)
    aws_emulator.wire.json_answer("GetQueryResults", {"status": "Running", "results": []}, times=2)
    p = book(write, """
  diagnose:
    - id: q
      aws: {logs: start-query, log_group_name: /aws/ecs/nano-api, query_string: "fields @message | filter @message like /ERROR/"}
      timeout: 20s
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout + r.stderr
    assert calls(aws_emulator) == ["StartQuery", "GetQueryResults", "GetQueryResults", "GetQueryResults"]
    assert {"@message": "ERROR db connection refused"} in results(audit_dir)["q"]["data"]["rows"]


def test_a_logs_insights_query_that_never_completes_is_stopped_at_the_step_timeout(account, inv, write, main,
                                                                                      aws_emulator, audit_dir):
    account.log_group()
    _ready(aws_emulator)
    aws_emulator.wire.json_answer("GetQueryResults", {"status": "Running", "results": []})
    aws_emulator.wire.json_answer("StopQuery", {"success": True})  # (moto has no StopQuery)
    p = book(write, """
  diagnose:
    - id: q
      aws: {logs: start-query, log_group_name: /aws/ecs/nano-api, query_string: "fields @message"}
      timeout: 2s
""")
    started = time.monotonic()
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 1 and time.monotonic() - started < 10
    res = results(audit_dir)["q"]
    assert res["status"] == "timeout" and "the Logs Insights query did not complete within" in res["output_excerpt"]
    assert calls(aws_emulator)[-1] == "StopQuery"


# --- errors, one line each ------------------------------------------------------------------------------


def _one(write, main, inv_path, aws_text: str, audit_dir, *args) -> str:
    """The error of one aws step run live, as the audit log keeps it."""
    if P.op_of(P.from_shorthand(aws_text)).write:
        stages = (f"  mitigate:\n    - id: s\n      aws: {json.dumps(aws_text)}\n      timeout: 30s\n"
                  "  verify:\n    - id: v\n      aws: 'ecs describe-services --cluster nano --services api'\n")
    else:
        stages = f"  diagnose:\n    - id: s\n      aws: {json.dumps(aws_text)}\n      timeout: 30s\n"
    before = sum(1 for r in audit.read_records(audit_dir / "audit.jsonl") if r.get("step") == "s" and r["type"] == "step_result")
    r = main("run", book(write, stages), "--inventory", inv_path, "--yes", *args)
    assert r.returncode == 1, r.stdout + r.stderr
    mine = [r for r in audit.read_records(audit_dir / "audit.jsonl") if r.get("step") == "s" and r["type"] == "step_result"]
    assert len(mine) == before + 1, r.stdout + r.stderr
    err = mine[-1]["error"]
    assert "\n" not in err and "Traceback" not in r.stdout + r.stderr
    logged = (audit_dir / "audit.jsonl").read_text()
    for secret in (KEY_ID, SECRET_KEY):  # no credential in an error, the output or the log
        assert secret not in r.stdout + r.stderr and secret not in logged
    return err


def test_unknown_cluster_service_instance_log_group_and_target_group(account, inv, write, main, audit_dir):
    account.ecs_service()
    path = inv()
    assert _one(write, main, path, "ecs describe-services --cluster nope --services api", audit_dir) == \
        f"ECS cluster 'nope' not found in {REGION}"
    assert _one(write, main, path, "ecs describe-services --cluster nano --services web", audit_dir) == \
        f"ECS service 'web' not found in cluster 'nano' ({REGION})"
    assert _one(write, main, path, "ecs update-service --cluster nano --service web --force-new-deployment",
                audit_dir) == f"ECS service 'web' not found in cluster 'nano' ({REGION})"
    assert _one(write, main, path, "rds describe-db-instances --db-instance-identifier nope", audit_dir) == \
        f"RDS instance 'nope' not found in {REGION}"
    assert _one(write, main, path, "logs filter-log-events --log-group-name /aws/ecs/nope", audit_dir).startswith(
        f"log group '/aws/ecs/nope' not found in {REGION}")
    assert _one(write, main, path, "elbv2 describe-target-health --target-group-name nope", audit_dir) == \
        f"target group 'nope' not found in {REGION}"


def test_an_unreachable_endpoint_is_one_line(account, write, main, audit_dir):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write("down.yaml", f"aws: {{region: {REGION}, endpoint_url: 'http://127.0.0.1:{port}'}}\n")
    err = _one(write, main, path, "ecs describe-services --cluster nano --services api", audit_dir)
    assert err == f"cannot reach AWS ecs (http://127.0.0.1:{port}/) in {REGION}: connection failed"


def test_details_show_every_call_as_sent(account, inv, write):
    from runbook.engine import Engine, Options
    from runbook.inventory import load_inventory
    from runbook.steps import aws

    rb = spec.find(str(PLAYBOOK), [])
    plan = Engine(rb, {"service": "api", "cluster": "nano", "min_tasks": 2}, inventory=load_inventory(inv()),
                  options=Options(dry_run=True)).plan()
    act = next(e.action for e in plan if e.step.id == "redeploy")
    rows = dict(aws.details(act))
    assert rows["as the aws CLI"] == ("aws ecs update-service --cluster nano --service api --desired-count 2 "
                                      f"--force-new-deployment --region {REGION}")
    assert rows["API calls"].startswith("ecs DescribeServices\n{")
    assert '"forceNewDeployment": true' in rows["API calls"] and "never lowers it" in rows["API calls"]
    assert rows["region"] == f"{REGION} (from aws.region of {inv()})"


def test_access_denied_names_the_action(account, inv, write, main, aws_emulator, audit_dir):
    account.ecs_service()
    aws_emulator.wire.json_error("UpdateService", "AccessDeniedException",
                                 "User: arn:aws:iam::123456789012:user/oncall is not authorized to perform: "
                                 "ecs:UpdateService on resource: service/nano/api")
    err = _one(write, main, inv(), "ecs update-service --cluster nano --service api --force-new-deployment", audit_dir)
    assert err.startswith("access denied: the credentials of region eu-west-1 may not call ecs:UpdateService on "
                          "service api of cluster nano (AccessDeniedException)")


def test_throttling_is_retried_with_backoff_then_said(account, inv, write, main, aws_emulator, audit_dir):
    account.ecs_service()
    account.database()
    _ready(aws_emulator)
    rule = aws_emulator.wire.json_error("DescribeServices", "ThrottlingException", "Rate exceeded", times=2)
    p = book(write, "  diagnose:\n    - id: s\n      aws: 'ecs describe-services --cluster nano --services api'\n")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout + r.stderr
    assert rule.hits == 2 and calls(aws_emulator).count("DescribeServices") == 3  # two throttled, then answered
    aws_emulator.wire.query_error("DescribeDBInstances", "Throttling", "Rate exceeded")  # always
    err = _one(write, main, inv(), "rds describe-db-instances --db-instance-identifier nano-db", audit_dir)
    assert err.startswith("AWS throttled rds:DescribeDBInstances (Throttling) in eu-west-1: still throttled after "
                          "5 attempts over ")


def test_no_credentials_rejected_credentials_and_an_unknown_profile(account, inv, write, main, aws_emulator,
                                                                    audit_dir, monkeypatch):
    account.ecs_service()
    text = "ecs describe-services --cluster nano --services api"
    aws_emulator.wire.json_error("DescribeServices", "UnrecognizedClientException",
                                 "The security token included in the request is invalid.", times=1)
    assert _one(write, main, inv(), text, audit_dir).startswith(
        "AWS rejected the credentials of region eu-west-1 (UnrecognizedClientException): they are invalid or expired")
    assert _one(write, main, inv("  profile: nope\n"), text, audit_dir).startswith(
        "AWS profile 'nope' is not in the shared config or credentials files")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    aws_emulator.wire.requests.clear()
    assert _one(write, main, inv(), text, audit_dir).startswith("no AWS credentials found")
    assert aws_emulator.wire.requests == []


# --- credentials never shown ------------------------------------------------------------------------------


def test_credentials_of_a_profile_and_an_assumed_role_are_never_in_output_or_the_audit_log(
        account, inv, main, aws_emulator, audit_dir, tmp_path, monkeypatch):
    account.ecs_service()
    account.log_group()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / "aws-credentials").write_text(f"[oncall]\naws_access_key_id = {KEY_ID}\n"
                                              f"aws_secret_access_key = {SECRET_KEY}\n")
    _ready(aws_emulator)
    path = inv("  profile: oncall\n  role_arn: arn:aws:iam::123456789012:role/runbook-oncall\n")
    r = main("run", PLAYBOOK, "--inventory", path, "-p", "service=api", "-p", "min_tasks=1", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    wire = aws_emulator.wire.requests
    assert wire[0]["operation"] == "AssumeRole" and f"Credential={KEY_ID}/" in wire[0]["authorization"]
    assumed_key = wire[1]["authorization"].split("Credential=", 1)[1].split("/")[0]
    token = wire[1]["token"]
    assert assumed_key != KEY_ID and token  # every later call signed with the role's session
    logged = (audit_dir / "audit.jsonl").read_text()
    shown = r.stdout + r.stderr
    for secret in (KEY_ID, SECRET_KEY, assumed_key, token):
        assert secret not in shown and secret not in logged
    assert "role arn:aws:iam::123456789012:role/runbook-oncall" in shown  # which role is said, never its keys


# --- the ECS crash-loop playbook, end to end -----------------------------------------------------------------


def test_ecs_crash_loop_playbook_from_failing_service_to_the_desired_count_restored(account, inv, aws_emulator,
                                                                                       audit_dir):
    from fakeui import FakeUI

    account.ecs_service(desired=1, crashed=4)  # scaled down to 1, and that one keeps crashing
    account.log_group()
    _ready(aws_emulator)
    assert (account.service()["desiredCount"], account.service()["runningCount"]) == (1, 0)
    ui = FakeUI()
    out = session.start(session.RunRequest(runbook=spec.find(str(PLAYBOOK), []),
                                           params={"service": "api", "min_tasks": "3"},
                                           inventory_file=inv(), interactive=True, audit_dir=audit_dir), ui)
    assert (out.status, out.exit_code) == ("completed", 0), (out.message, ui.calls)
    assert ui.names("confirm") == ["redeploy"]  # the write, and only it, was confirmed
    svc = account.service()
    assert (svc["desiredCount"], svc["runningCount"]) == (3, 3)
    res = results(audit_dir)
    assert res["crashed"]["data"]["stopped_reasons"] == ["Essential container in task exited"] * 4
    assert res["errors"]["data"]["count"] >= 1
    assert (res["redeploy"]["data"]["previous_desired_count"], res["redeploy"]["data"]["desired_count"]) == (1, 3)
    assert res["running"]["status"] == "ok" and res["running"]["data"]["running_count"] == 3
    assert calls(aws_emulator) == ["DescribeServices", "ListTasks", "DescribeTasks", "FilterLogEvents", "DescribeAlarms",
                                   "DescribeServices", "UpdateService", "DescribeServices"]
    assert audit.verify(audit_dir / "audit.jsonl").ok  # the sealed log holds the whole run


def test_database_unavailable_playbook_reboots_only_when_asked(account, inv, aws_emulator, audit_dir):
    from fakeui import FakeUI

    account.ecs_service(desired=2, crashed=0, healthy=True)
    account.log_group(lines=("ERROR could not connect to server: Connection refused",), age=300)  # 5 minutes ago
    account.database()
    _ready(aws_emulator)
    rb = spec.find(str(ROOT / "playbooks" / "aws-database-unavailable.yaml"), [])
    ui = FakeUI(after_failure={"announce": "on_failure", "resolved": "on_failure"})  # (no webhook here)
    out = session.start(session.RunRequest(runbook=rb, params={"service": "api", "db_instance": "nano-db", "reboot": "true"},
                                           inventory_file=inv(), interactive=True, audit_dir=audit_dir), ui)
    assert "reboot" in ui.names("confirm") and "reconnect" not in ui.names("confirm"), ui.calls
    assert "RebootDBInstance" in calls(aws_emulator) and "UpdateService" not in calls(aws_emulator)
    res = results(audit_dir)
    assert res["db"]["data"]["db_status"] == "available" and res["db-available"]["status"] == "ok"
    assert res["errors"]["data"]["count"] == 1 and res["no-errors"]["status"] == "ok"
    assert (out.status, out.exit_code) == ("completed", 0), out.message
