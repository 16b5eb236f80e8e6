"""runbook validate --alert-rules: alert coverage between Prometheus rule files and runbooks."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import ROOT

SEEDS_RULES = ROOT / "examples" / "alert-rules" / "seeds.rules.yml"


def runbook(write, name: str, alerts: list[str], title: str = "T") -> str:
    path = write(f"rb/{name}.yaml", f"""\
        name: {name}
        title: "{title}"
        alerts: [{", ".join(alerts)}]
        stages:
          diagnose:
            - id: look
              shell: "true"
              readonly: true
        """)
    return str(path)


RULES = """\
groups:
  - name: api
    rules:
      - record: job:http_requests:rate5m
        expr: sum by (job) (rate(http_requests_total[5m]))
      - alert: HighErrorRate
        expr: job:http_errors:ratio5m > 0.05
        for: 5m
      - alert: Unanswered
        expr: up == 0
      - alert: ByAnnotation
        expr: up == 0
        annotations:
          runbook: other
      - alert: ByUrl
        expr: up == 0
        annotations:
          runbook_url: https://wiki.example/runbooks/other.md#steps
      - alert: Missing
        expr: up == 0
        annotations:
          summary: "x"
          runbook: RB-009
      - alert: Shared
        expr: up == 0
"""


@pytest.fixture
def setup(write):
    """Two runbooks and a rule file with one alert of each kind of finding."""
    errors = runbook(write, "errors", ["HighErrorRate", "Shared", "NotARule"])
    other = runbook(write, "other", ["Shared"], title="RB-009: the other one")
    rules = write("rules/api.rules.yml", RULES)
    return {"errors": errors, "other": other, "rules": str(rules), "dir": str(rules.parent.parent / "rb")}


def lines(r):
    return r.stdout.splitlines()


def test_each_finding_kind_in_text_with_its_place(setup, main):
    s = setup
    r = main("validate", s["dir"], "--alert-rules", s["rules"])
    assert r.returncode == 1, r.stdout + r.stderr  # RB203 is an error
    out = lines(r)
    # (b) a runbook's alerts: entry no rule defines: info, at the entry (line 3, the third item)
    assert any(line.startswith(f"{s['errors']}:3:33: info: alert NotARule (alerts:) is defined by no rule")
               and line.endswith("[RB202]") for line in out), out
    # (a) an alert no runbook answers: warning, at the rule's `alert:` key
    assert f"{s['rules']}:9:9: warning: alert Unanswered (group 'api') is answered by no runbook: none lists it " \
           f"in alerts: and it has no 'runbook' annotation naming one [RB201]" in out
    # a runbook annotation naming no runbook: error, at the annotation's value, with the runbook whose title names it
    missing = [line for line in out if "[RB203]" in line]
    assert len(missing) == 1 and missing[0].startswith(f"{s['rules']}:23:20: error: alert Missing: its 'runbook' "
                                                       f"annotation names 'RB-009'"), out
    assert "runbook other's title mentions RB-009: write runbook: other" in missing[0]
    # an alert two runbooks list, with no annotation to choose
    assert any(line.startswith(f"{s['rules']}:24:9: warning: alert Shared is listed by 2 runbooks (errors, other)")
               for line in out), out
    # answered ones say nothing: by alerts:, by the runbook annotation, by runbook_url's last segment
    assert not any(w in r.stdout for w in ("alert HighErrorRate", "alert ByAnnotation", "alert ByUrl"))
    # the recording rule is not an alert
    assert "job:http_requests" not in r.stdout
    assert "6 alerting rules in 1 file, 3 answered by a runbook; runbook alerts no rule defines: NotARule (errors)" in r.stderr
    assert "3 files checked: 1 error in 1 file, 2 warnings, 1 note" in r.stderr


def test_strict_fails_warnings_but_not_notes(write, main):
    rb = runbook(write, "a", ["Defined", "Proposal"])
    rules = write("r.yml", "groups:\n  - name: g\n    rules:\n      - alert: Defined\n        expr: up == 0\n")
    r = main("validate", "--strict", rb, "--alert-rules", rules)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("info:") == 1 and "Proposal" in r.stdout
    write("r.yml", "groups:\n  - name: g\n    rules:\n      - alert: Defined\n        expr: up == 0\n"
                   "      - alert: Lonely\n        expr: up == 0\n")
    assert main("validate", rb, "--alert-rules", rules).returncode == 0  # a warning
    r = main("validate", "--strict", rb, "--alert-rules", rules)
    assert r.returncode == 1 and f"{rules}:6:9: error: alert Lonely" in r.stdout


def test_the_rule_severities_are_tunable(setup, main, write):
    s = setup
    write(".runbook.yaml", "rules:\n  unknown-runbook-annotation: warning\n  RB202: off\n")
    r = main("validate", s["dir"], "--alert-rules", s["rules"])
    assert r.returncode == 0, r.stdout
    assert "[RB202]" not in r.stdout and ": warning: alert Missing" in r.stdout


def test_json(setup, main):
    s = setup
    r = main("validate", s["dir"], "--alert-rules", s["rules"], "--format", "json")
    data = json.loads(r.stdout)
    assert r.returncode == 1 and data["valid"] is False
    assert (data["errors"], data["warnings"], data["infos"]) == (1, 2, 1)
    by_rule = {p["rule"]: p for p in data["problems"]}
    assert by_rule["RB201"]["path"] == s["rules"] and by_rule["RB201"]["line"] == 9
    assert by_rule["RB202"]["path"] == s["errors"] and by_rule["RB202"]["severity"] == "info"
    answers = {a["alert"]: a for a in data["alert_rules"]["alerts"]}
    assert answers["HighErrorRate"]["runbook"] == "errors" and answers["HighErrorRate"]["by"] == "alerts"
    assert answers["ByAnnotation"]["runbook"] == "other" and answers["ByAnnotation"]["by"] == "annotation runbook"
    assert answers["ByUrl"]["runbook"] == "other" and answers["ByUrl"]["by"] == "annotation runbook_url"
    assert answers["Unanswered"]["runbook"] is None and answers["HighErrorRate"]["line"] == 6
    assert data["alert_rules"]["files"] == [s["rules"]]
    assert data["alert_rules"]["not_in_rules"] == [{"alert": "NotARule", "runbook": "errors", "file": s["errors"], "line": 3}]


def test_github_annotations(setup, main):
    s = setup
    r = main("validate", s["dir"], "--alert-rules", s["rules"], "--format", "github")
    out = lines(r)
    # the message escapes only %, CR and LF (a property would escape : and , too)
    assert f"::warning file={s['rules']},line=9,col=9,title=runbook RB201::alert Unanswered (group 'api') is " \
           f"answered by no runbook: none lists it in alerts: and it has no 'runbook' annotation naming one" in out, out
    assert any(line.startswith(f"::error file={s['rules']},line=23,col=20,title=runbook RB203::alert Missing")
               for line in out), out
    assert any(line.startswith(f"::notice file={s['errors']},line=3,col=33,title=runbook RB202::alert NotARule")
               for line in out), out
    assert r.returncode == 1


def test_sarif(setup, main):
    s = setup
    r = main("validate", s["dir"], "--alert-rules", s["rules"], "--format", "sarif")
    sarif = json.loads(r.stdout)
    run = sarif["runs"][0]
    descriptors = {d["id"]: d for d in run["tool"]["driver"]["rules"]}
    for rid in ("RB201", "RB202", "RB203", "RB204", "RB205", "alert-rules"):
        assert rid in descriptors
    assert descriptors["RB202"]["defaultConfiguration"]["level"] == "note"
    assert descriptors["RB203"]["defaultConfiguration"]["level"] == "error"
    found = {(res["ruleId"], res["level"], res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
              res["locations"][0]["physicalLocation"]["region"]["startLine"],
              res["locations"][0]["physicalLocation"]["region"]["startColumn"]) for res in run["results"]}
    assert found == {
        ("RB202", "note", s["errors"], 3, 33),
        ("RB201", "warning", s["rules"], 9, 9),
        ("RB203", "error", s["rules"], 23, 20),
        ("RB204", "warning", s["rules"], 24, 9),
    }


def test_a_prometheus_rule_object_and_several_documents(write, main):
    rb = runbook(write, "redis", ["RedisDown"])
    manifest = write("k8s/rules.yaml", """\
        apiVersion: monitoring.coreos.com/v1
        kind: PrometheusRule
        metadata: {name: redis, namespace: monitoring}
        spec:
          groups:
            - name: redis
              rules:
                - alert: RedisDown
                  expr: redis_up == 0
                  for: 1m
        ---
        apiVersion: monitoring.coreos.com/v1
        kind: PrometheusRule
        metadata: {name: nats}
        spec:
          groups:
            - name: nats
              rules:
                - alert: NATSDown
                  expr: up{job="nats"} == 0
                  annotations:
                    runbook_url: "https://runbooks.example/{{ $labels.alertname }}"
        """)
    r = main("validate", rb, "--alert-rules", manifest, "--format", "json")
    data = json.loads(r.stdout)
    answers = {a["alert"]: a for a in data["alert_rules"]["alerts"]}
    assert answers["RedisDown"]["runbook"] == "redis" and answers["RedisDown"]["line"] == 8
    # the second document's rule is read too; its runbook_url resolves to the alert's own name: no runbook
    assert [(p["rule"], p["line"]) for p in data["problems"]] == [("RB201", 19)]
    assert "runbook_url (https://runbooks.example/NATSDown)" in data["problems"][0]["message"]
    # a kind: List of them (kubectl get -o yaml) and a folder of rule files
    write("k8s/list.yml", """\
        apiVersion: v1
        kind: List
        items:
          - apiVersion: monitoring.coreos.com/v1
            kind: PrometheusRule
            spec:
              groups:
                - name: more
                  rules:
                    - alert: RedisDown
                      expr: redis_up == 0
        """)
    r = main("validate", rb, "--alert-rules", manifest.parent, "--format", "json")
    data = json.loads(r.stdout)
    assert sorted(a["alert"] for a in data["alert_rules"]["alerts"]) == ["NATSDown", "RedisDown", "RedisDown"]


def test_a_manifest_with_a_prometheusrule_beside_other_kinds_is_read_not_an_error(write, main):
    """helm template / kustomize build put a PrometheusRule beside a ServiceMonitor in one file,
    and kubectl get -o yaml a List of several kinds: the others are skipped with a note."""
    rb = runbook(write, "api", ["HighErrorRate", "Other"])
    manifest = write("monitoring.yaml", """\
        apiVersion: monitoring.coreos.com/v1
        kind: PrometheusRule
        metadata: {name: api}
        spec:
          groups:
            - name: g
              rules:
                - alert: HighErrorRate
                  expr: up == 0
        ---
        apiVersion: monitoring.coreos.com/v1
        kind: ServiceMonitor
        metadata: {name: api}
        spec:
          endpoints: [{port: web}]
        ---
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: ConfigMap
            data: {groups: "not read"}
          - apiVersion: monitoring.coreos.com/v1
            kind: PrometheusRule
            spec:
              groups:
                - name: h
                  rules:
                    - alert: Other
                      expr: up == 0
        """)
    r = main("validate", rb, "--alert-rules", manifest, "--strict")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines(r) == [
        f"{manifest}:12:7: info: document 2: skipped: a ServiceMonitor 'api' holds no alerting rules "
        "(only PrometheusRule objects and plain rule files are read) [alert-rules]",
        f"{manifest}:21:11: info: items[0]: skipped: a ConfigMap holds no alerting rules "
        "(only PrometheusRule objects and plain rule files are read) [alert-rules]",
    ], r.stdout
    assert "2 alerting rules in 1 file, 2 answered by a runbook" in r.stderr  # and no RB202: both rules were read


@pytest.mark.parametrize("text, where, what", [
    ("groups:\n  - name: g\n    rules:\n      - alert: \"unclosed\n        expr: x\n", "6:1", "YAML syntax error"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: [x\n", "6:1", "YAML syntax error"),
    ("groups: 3\n", "1:9", "groups must be a list of groups"),
    ("kind: PrometheusRule\nspec: {}\n", "2:7", "a PrometheusRule needs spec.groups"),
    ("foo: 1\n", "1:1", "expected a Prometheus rule file"),
    ("", "1:1", "the file is empty"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        for: 5 minutes\n", "6:14",
     "for must be a duration"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        anotations: {runbook: x}\n", "6:9",
     "unknown rule key 'anotations' (did you mean 'annotations'?)"),
    ("groups:\n  - name: g\n    rules:\n      - expr: up\n", "4:9", "exactly one of 'alert'"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n", "4:9", "needs an expr"),
    ("groups:\n  - name: g\n    rules: []\n  - name: g\n    rules: []\n", "4:11", "group name 'g' is repeated"),
    ("groups:\n  - rules: []\n", "2:5", "a group needs a name"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        annotations: [a]\n", "6:22",
     "annotations must be a mapping"),
])
def test_a_malformed_rule_file_is_one_line_with_its_place(write, main, text, where, what):
    rb = runbook(write, "a", ["A"])
    bad = write("bad.rules.yml", text)
    r = main("validate", rb, "--alert-rules", bad)
    assert r.returncode == 1, r.stdout + r.stderr
    mine = [line for line in lines(r) if line.startswith(str(bad))]
    assert len(mine) == 1, r.stdout
    assert mine[0].startswith(f"{bad}:{where}: error: ") and what in mine[0] and mine[0].endswith("[alert-rules]"), mine[0]
    assert "Traceback" not in r.stdout + r.stderr


def test_an_alert_name_with_a_backslash_is_reported_not_an_internal_error(write, main):
    """The name was given to re.sub as its replacement, a template: Foo\\1 asked for a group the
    pattern does not have (internal error), \\g<0> put the template back.  Prometheus takes any
    text as an alert name; one outside the classic form is a warning at its line (the file's line 4:
    ``write`` drops the text's first newline)."""
    rb = runbook(write, "a", ["A"])
    rules = write("rules.yml", """
groups:
  - name: g
    rules:
      - alert: 'Foo\\1'
        expr: up == 0
        annotations:
          runbook: "{{ $labels.alertname }}"
      - alert: 'x\\g<0>y'
        expr: up == 0
        annotations:
          runbook: "{{ $labels.alertname }}"
      - alert: A
        expr: up == 0
""")
    r = main("validate", rb, "--alert-rules", rules)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stdout + r.stderr  # the annotations name no runbook (RB203)
    mine = [line for line in lines(r) if line.startswith(str(rules))]
    assert mine[0] == (f"{rules}:4:16: warning: alert 'Foo\\1': the name is not a classic Prometheus name "
                       "([a-zA-Z_][a-zA-Z0-9_]*): Prometheus accepts it, but Alertmanager matchers, amtool and URLs "
                       "built from {{ $labels.alertname }} need it quoted or escaped [alert-rules]"), mine
    # the annotation reads as the name itself, not as a template
    assert any(":7:" in line and "names 'Foo\\1', which is none of the runbooks" in line for line in mine), mine
    assert any(":11:" in line and "names 'x\\g<0>y', which is none of the runbooks" in line for line in mine), mine
    assert len(mine) == 4 and not any(":12:" in line for line in mine), mine  # A is a classic name
    # a warning only: Prometheus loads the file
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: 'A-1'\n        expr: up == 0\n")
    r = main("validate", runbook(write, "b", ["A-1"]), "--alert-rules", rules)
    assert r.returncode == 0 and f"{rules}:4:16: warning: alert 'A-1'" in r.stdout, r.stdout + r.stderr


def test_an_unreadable_rule_file_does_not_flood_with_runbook_notes(write, main):
    rb = runbook(write, "a", ["A", "B"])
    bad = write("bad.yml", "groups: [\n")
    r = main("validate", rb, "--alert-rules", bad)
    assert r.returncode == 1 and "[RB202]" not in r.stdout and "YAML syntax error" in r.stdout


def test_a_runbook_given_as_a_rule_file_says_so(write, main, tmp_path):
    rb = runbook(write, "a", ["A"])
    r = main("validate", rb, "--alert-rules", rb)
    assert "this is a runbook, not a rule file: give runbook PATHs before --alert-rules" in r.stdout


def test_usage_errors(write, main):
    rb = runbook(write, "a", ["A"])
    r = main("validate", rb, "--alert-rules", "nope.yml")
    assert r.returncode == 2 and "--alert-rules: no such file or folder: nope.yml" in r.stderr
    empty = write("empty/README", "no rules here\n").parent
    r = main("validate", rb, "--alert-rules", empty)
    assert r.returncode == 2 and "no rule files" in r.stderr
    r = main("validate", rb, "--alert-rules")
    assert r.returncode == 2


def test_an_annotation_naming_a_missing_runbook(write, main):
    rb = runbook(write, "disk", ["DiskFull"])
    rules = write("r.yml", """\
        groups:
          - name: g
            rules:
              - alert: DiskFull
                expr: disk > 0.95
                annotations:
                  runbook: disk-ful
        """)
    r = main("validate", rb, "--alert-rules", rules)
    # run --alert takes the annotation first and refuses it, so the alerts: entry does not answer the alert
    assert r.returncode == 1
    assert lines(r) == [f"{rules}:7:20: error: alert DiskFull: its 'runbook' annotation names 'disk-ful', which is none "
                        f"of the runbooks checked (did you mean 'disk'?); `runbook run --alert` would refuse the alert "
                        f"[RB203]"]
    # a file name works as run --alert reads it: its stem
    write("r.yml", "groups:\n  - name: g\n    rules:\n      - alert: DiskFull\n        expr: x\n"
                   "        annotations: {runbook: disk.yaml}\n")
    assert main("validate", rb, "--alert-rules", rules).returncode == 0


def test_a_runbook_listing_an_alert_that_the_annotation_sends_elsewhere(write, main):
    runbook(write, "a", ["X", "Y"])
    runbook(write, "b", ["Y"])
    rules = write("r.yml", """\
        groups:
          - name: g
            rules:
              - alert: X
                expr: up == 0
                annotations: {runbook: b}
              - alert: Y
                expr: up == 0
                annotations: {runbook: b}
              - alert: Y
                expr: up == 1
        """)
    r = main("validate", write("rb/.keep", "").parent, "--alert-rules", rules)
    out = [line for line in lines(r) if "[RB205]" in line]
    # X: its only rule names b, so a's entry is dead; Y: one rule has no annotation, so the lists still decide
    assert len(out) == 1 and out[0].startswith(f"{r.args[1]}/a.yaml:3:10: warning: alert X (alerts:) is never answered "
                                               f"by this runbook: every rule defining it has a 'runbook' annotation, "
                                               f"naming b"), r.stdout
    assert "[RB204]" in r.stdout  # the second Y rule: listed by a and b, no annotation


def test_validate_agrees_with_run_alert(write, main, tmp_path):
    """What validate calls answered is what run --alert starts; what it calls refused, run --alert refuses."""
    runbook(write, "errors", ["HighErrorRate", "Shared"])
    runbook(write, "other", ["Shared"], title="RB-009: the other one")
    for alert, annotations, started in [("HighErrorRate", {}, "errors"), ("X", {"runbook": "other"}, "other"),
                                        ("X", {"runbook_url": "https://w/other.md#a"}, "other"),
                                        ("X", {"runbook": "RB-009"}, None), ("Shared", {}, None), ("X", {}, None)]:
        payload = write("p.json", json.dumps({"version": "4", "status": "firing", "alerts": [
            {"status": "firing", "labels": {"alertname": alert}, "annotations": annotations,
             "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "f1"}]}))
        r = main("run", "--alert", payload, "--dry-run", env={"RUNBOOK_PATH": str(tmp_path / "rb")})
        rules = write("r.yml", "groups:\n  - name: g\n    rules:\n      - alert: " + alert + "\n        expr: x\n"
                      + ("        annotations: " + json.dumps(annotations) + "\n" if annotations else ""))
        v = main("validate", tmp_path / "rb", "--alert-rules", rules, "--format", "json")
        answer = json.loads(v.stdout)["alert_rules"]["alerts"][0]
        assert answer["runbook"] == started, (alert, annotations, answer)
        if started:
            assert r.returncode == 0, (alert, annotations, r.stdout + r.stderr)
        else:
            assert r.returncode != 0 and "Traceback" not in r.stderr, (alert, annotations, r.stderr)


def test_shipped_playbooks_against_the_shipped_rules(main):
    """The CI line: every seed alert is answered, nothing fails under --strict, and the two shipped
    alert names no seed defines are listed as notes."""
    r = main("validate", ROOT / "playbooks", "--strict", "--alert-rules", SEEDS_RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    notes = lines(r)
    assert len(notes) == 2 and all(": info: " in n and n.endswith("[RB202]") for n in notes), notes
    assert "alert LokiIngestionError" in notes[0] and notes[0].startswith(str(ROOT / "playbooks" / "loki-ingestion-error.yaml"))
    assert "alert ServiceUnavailable" in notes[1]
    r = main("validate", ROOT / "playbooks", "--alert-rules", SEEDS_RULES, "--format", "json")
    data = json.loads(r.stdout)
    answers = data["alert_rules"]["alerts"]
    assert len(answers) == 20 and all(a["runbook"] for a in answers), [a for a in answers if not a["runbook"]]
    by = {a["alert"]: (a["runbook"], a["by"]) for a in answers}
    # seed 003's rules name their runbook (RB-001 → service-unavailable …), seed 004's are in alerts: lists
    assert by["ServiceDown"] == ("service-unavailable", "annotation runbook")
    assert by["PodOOMKilled"] == ("pod-oom-killed", "alerts")
    assert by["APIErrorRateHigh"] == ("high-error-rate", "annotation runbook")


def test_the_shipped_rules_are_valid_for_prometheus():
    if not shutil.which("promtool"):
        pytest.fail("promtool is not installed: apt-get install prometheus (scripts/test does)")
    r = subprocess.run(["promtool", "check", "rules", str(SEEDS_RULES)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS: 20 rules found" in r.stdout, r.stdout + r.stderr


def test_the_cli_stays_light_without_alert_rules():
    """`runbook validate` without --alert-rules does not import the coverage module."""
    import sys

    r = subprocess.run([sys.executable, "-c", "import sys; from runbook.cli import build_parser; build_parser(); "
                        "print('runbook.alert_rules' in sys.modules, 'yaml' in sys.modules)"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.split() == ["False", "False"], r.stdout + r.stderr
