"""The prometheus step against a real Prometheus (tests/promserver.py) scraping
an exporter whose counters the tests control; each test uses its own
``service`` label so that tests sharing the session server do not interfere."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest

from conftest import ROOT, book
from runbook import audit

RATIO = ('sum(rate(http_requests_total{{service="{s}",status_code=~"5.."}}[3s])) '
         '/ sum(rate(http_requests_total{{service="{s}"}}[3s]))')


# (requests, errors) per scrape for each test's service, set before Prometheus starts so that
# every series is there, with a few seconds of history, by the time its test runs
SERVICES = {"p-inst": (100, 10), "p-verify": (100, 20), "p-bad": (100, 20), "p-idle": (0, 0), "p-esc": (10, 0),
            "p-alert": (100, 50), "p-calm": (100, 0), "e2e-ok": (1000, 2), "e2e-bad": (100, 30)}


@pytest.fixture(scope="module", autouse=True)
def _services(exporter):
    for name, (requests, errors) in SERVICES.items():
        exporter.set(name, requests=requests, errors=errors)


@pytest.fixture
def inv(write, prom):
    def _inv(url: str | None = None, extra: str = "") -> str:
        return str(write("inv.yaml", f'prometheus:\n  default: {{url: "{url or prom.url}", timeout: 5}}\n{extra}'))
    return _inv


def wait_for(prom, promql: str, check, timeout: float = 15.0):
    """Wait until Prometheus itself answers ``promql`` with a value that passes ``check``."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        result = prom.query(promql)["result"]
        last = float(result[0]["value"][1]) if result else None
        if last is not None and check(last):
            return last
        time.sleep(0.3)
    raise AssertionError(f"{promql} stayed at {last}")


def results(audit_dir: Path) -> dict:
    return {r["step"]: r for r in audit.read_records(audit_dir / "audit.jsonl") if r["type"] == "step_result"}


def test_instant_query_value_and_series(write, main, inv, prom, exporter):
    wait_for(prom, RATIO.format(s="p-inst"), lambda v: abs(v - 0.1) < 1e-9)
    p = book(write, f"""
  diagnose:
    - id: err
      prometheus: '{RATIO.format(s="p-inst")}'
    - id: by-code
      prometheus: 'sum by (status_code) (rate(http_requests_total{{service="p-inst"}}[3s]))'
    - id: decide
      choose:
        - when: "steps.err.value > 0.05 and steps.err.has_value and steps['by-code'].series | length == 2"
          goto: high
    - id: low
      end: {{status: failed, message: "low"}}
    - id: high
      end: "error ratio {{{{ steps.err.value | round(3) }}}} ({{{{ steps['by-code'].series[0].labels.status_code }}}} first)"
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error ratio 0.1 (" in r.stdout
    assert '{status_code="200"}  ' in r.stdout and '{status_code="500"}  ' in r.stdout  # the series table


def test_verify_waits_until_the_rate_falls_and_holds_for_three_checks(write, main, inv, prom, exporter, audit_dir):
    wait_for(prom, RATIO.format(s="p-verify"), lambda v: v > 0.1)
    exporter.set("p-verify", requests=100, errors=0)  # the fix is out: the 3s window drains in a few seconds
    p = book(write, f"""
  verify:
    - id: error-rate-ok
      prometheus:
        query: '{RATIO.format(s="p-verify")}'
        for: 3
      until: "value < 0.01"
      every: 0.5s
      timeout: 20s
""")
    started = time.monotonic()
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout + r.stderr
    res = results(audit_dir)["error-rate-ok"]
    assert res["status"] == "ok"
    assert res["attempts"] >= 4  # at least one check while the rate was still high, then three good ones
    assert "condition held 1 of 3 consecutive checks" in r.stdout or res["attempts"] >= 4
    assert time.monotonic() - started < 20


def test_for_counts_consecutive_checks(write, main, inv, prom, audit_dir):
    p = book(write, """
  verify:
    - id: up
      prometheus: {query: 'up{job="app"}', for: 3}
      until: "value == 1"
      every: 0.2s
      timeout: 10s
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout + r.stderr
    assert results(audit_dir)["up"]["attempts"] == 3  # held on the first check, needed three in a row


def test_verify_times_out_when_the_rate_never_falls(write, main, inv, prom, exporter):
    wait_for(prom, RATIO.format(s="p-bad"), lambda v: v > 0.1)
    p = book(write, f"""
  verify:
    - id: error-rate-ok
      prometheus: {{query: '{RATIO.format(s="p-bad")}', for: 3}}
      until: "value < 0.01"
      every: 0.5s
      timeout: 2s
      on_failure: escalate
    - id: fine
      end: ok
    - id: escalate
      end: {{status: escalated, message: "still {{{{ steps['error-rate-ok'].value }}}}"}}
""")
    started = time.monotonic()
    r = main("run", p, "--inventory", inv())
    took = time.monotonic() - started
    assert r.returncode == 1
    assert re.search(r"condition 'value < 0.01' not met after 2s \(\d checks\)", r.stdout), r.stdout
    still = re.search(r"still ([0-9.e+-]+)", r.stdout)  # Prometheus' float division: 0.2 or 0.19999999999999998
    assert still and abs(float(still[1]) - 0.2) < 1e-9, r.stdout
    assert took < 10


def test_no_data_and_nan_are_said_plainly(write, main, inv, prom, exporter):
    wait_for(prom, RATIO.format(s="p-idle"), math.isnan)  # unchanged counters: the ratio is 0/0
    p = book(write, f"""
  diagnose:
    - id: nothing
      prometheus: 'sum(rate(http_requests_total{{service="no-such-service"}}[3s]))'
    - id: idle
      prometheus: '{RATIO.format(s="p-idle")}'
    - id: show
      end: "nothing={{{{ steps.nothing.value }}}} has={{{{ steps.nothing.has_value }}}} idle={{{{ steps.idle.value }}}}"
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout
    assert "nothing=no data has=False idle=NaN" in r.stdout
    assert "no data (the query returned no series)" in r.stdout and "{}  NaN" in r.stdout
    p = book(write, """
  diagnose:
    - id: nothing
      prometheus: 'sum(rate(http_requests_total{service="no-such-service"}[3s]))'
    - id: decide
      choose:
        - when: "steps.nothing.value > 0.05"
          goto: high
    - id: high
      end: "high"
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 1
    assert "step 'decide' failed: no data: the query returned no series" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    p = book(write, f"""
  verify:
    - id: idle
      prometheus: '{RATIO.format(s="p-idle")}'
      until: "value < 0.01"
      every: 0.3s
      timeout: 1s
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 1
    assert "last: the query returned NaN (e.g. 0/0: no requests in the window)" in r.stdout


def test_errors_are_one_line(write, main, inv, closed_port, web):
    p = book(write, """
  diagnose:
    - id: bad
      prometheus: 'sum(rate(http_requests_total[5m]'
      on_failure: continue
    - id: down
      prometheus: {server: down, query: up}
      on_failure: continue
    - id: notprom
      prometheus: {server: web, query: up}
""")
    extra = f'  down: {{url: "http://127.0.0.1:{closed_port}"}}\n  web: {{url: "{web.url}/status/404"}}\n'
    r = main("run", p, "--inventory", inv(extra=extra))
    assert r.returncode == 1
    failed = [x for x in r.stdout.splitlines() if "✗ failed" in x]
    assert len(failed) == 3, r.stdout
    assert "bad PromQL: 1:33: parse error: unclosed left parenthesis" in failed[0]
    assert f"cannot connect to 127.0.0.1:{closed_port}: connection refused" in failed[1]
    assert "prometheus 'web' at 127.0.0.1" in failed[2] and "answered 404 Not Found — not the Prometheus API?" in failed[2]


def test_range_query(write, main, inv, prom):
    wait_for(prom, 'count_over_time(up{job="app"}[10s])', lambda v: v >= 3)
    p = book(write, """
  diagnose:
    - id: rps
      prometheus: {query: 'sum(up{job="app"})', range: 10s, step: 1s}
    - id: check
      choose:
        - when: "steps.rps.result_type == 'matrix' and steps.rps.series[0]['values'] | length >= 2 and steps.rps.value > 0"
          goto: ok
    - id: bad
      end: {status: failed, message: "unexpected"}
    - id: ok
      end: "up {{ steps.rps.value }}"
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "samples)" in r.stdout and "up 1.0" in r.stdout


def test_alerts(write, main, inv, prom, exporter):
    p = book(write, """
  diagnose:
    - id: high
      prometheus: {alerts: [HighErrorRate], labels: {service: p-alert}}
      until: "firing_count > 0"
      every: 0.5s
      timeout: 20s
    - id: calm
      prometheus: {alerts: [HighErrorRate, APIErrorRateSLOCritical], labels: {service: p-calm}}
    - id: always
      prometheus: {alerts: "*"}
    - id: check
      choose:
        - when: "steps.high.firing == ['HighErrorRate'] and steps.calm.firing_count == 0 and 'AlwaysFiring' in steps.always.firing"
          goto: ok
    - id: bad
      end: {status: failed, message: "unexpected"}
    - id: ok
      end: "alerts as expected"
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FIRING   HighErrorRate" in r.stdout
    assert "not firing: HighErrorRate, APIErrorRateSLOCritical" in r.stdout


def test_promql_values_are_escaped_not_pasted(write, main, inv, prom, exporter):
    wait_for(prom, 'count(http_requests_total{service="p-esc"})', lambda v: v == 2)
    p = book(write, """
  diagnose:
    - id: q
      prometheus: 'count(http_requests_total{service="{{ params.service }}"})'
    - id: show
      end: "has={{ steps.q.has_value }}"
""", head="params:\n  service: {type: string}\n")
    evil = 'p-esc"} or vector(42) or up{job="'
    r = main("run", p, "--inventory", inv(), "-p", f"service={evil}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "has=False" in r.stdout  # one (odd) label value, no injected vector(42)
    assert r'service="p-esc\"} or vector(42) or up{job=\""' in r.stdout
    r = main("run", p, "--inventory", inv(), "-p", "service=p-esc")
    assert "has=True" in r.stdout
    p = book(write, """
  diagnose:
    - id: q
      prometheus: 'sum(rate(http_requests_total[{{ params.window }}]))'
""", head="params:\n  window: {type: string}\n")
    r = main("run", p, "--inventory", inv(), "--dry-run", "-p", "window=5m")
    assert r.returncode == 0 and "[5m]" in r.stdout
    r = main("run", p, "--inventory", inv(), "--dry-run", "-p", "window=5m])) or vector(1) #")
    assert r.returncode == 1
    assert "would be pasted into the PromQL query outside a string literal" in r.stderr


def test_dry_run_contacts_nothing(write, main, inv, web):
    p = book(write, """
  diagnose:
    - id: q
      prometheus: {query: 'up', range: 5m}
    - id: a
      prometheus: {alerts: [HighErrorRate]}
""")
    r = main("run", p, "--inventory", inv(url=web.url), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "PromQL range 300s (step 5s) on prometheus 'default': up" in r.stdout
    assert "alerts firing on prometheus 'default': HighErrorRate" in r.stdout
    assert web.requests == []


@pytest.mark.parametrize("body, until, message", [
    ("{query: up, for: 3}", None, "for counts consecutive checks of the step's until condition"),
    ("{query: up, for: 3}", "ok", "the until condition must read the query's result"),
    ("{query: up, step: 1m}", None, "step goes with range"),
    ("{alerts: [A], range: 5m}", None, "range goes with query"),
    ("{query: up, labels: {a: b}}", None, "labels filters alerts"),
    ("{query: 'up{job=\"a}'}", None, "a string literal is not closed"),
    ("{query: up, alerts: [A]}", None, "'query' and 'alerts' cannot be used together"),
    ("{server: other, query: up}", None, "prometheus 'other' is not in"),
    ("{query: up, for: 0}", None, "0 is out of range"),
])
def test_validation_errors(write, main, inv, body, until, message):
    extra = f'      until: "{until}"\n      timeout: 10s\n' if until else ""
    p = book(write, f"""
  diagnose:
    - id: q
      prometheus: {body}
{extra}""")
    r = main("validate", p, "--inventory", inv())
    assert r.returncode == 1
    assert message in r.stdout, r.stdout


# --- the shipped playbook, end to end -----------------------------------------


def _playbook(write, prom, web, service_timing: str = "") -> tuple[Path, str]:
    """playbooks/high-error-rate.yaml with its polling made test-sized (every 30s → 0.5s, [5m] → [3s],
    verify timeout 10m → 3s) and an inventory pointing at the real Prometheus and web servers."""
    text = (ROOT / "playbooks" / "high-error-rate.yaml").read_text()
    text = text.replace("[5m]", "[3s]").replace("every: 30s", "every: 0.5s").replace("timeout: 10m", "timeout: 3s")
    assert text.count("[3s]") == 4 and "every: 0.5s" in text
    p = write("high-error-rate.yaml", text)
    inv = write("inv.yaml", f"""
        prometheus:
          default: {{url: "{prom.url}", timeout: 5}}
        http:
          api: {{url: "{web.url}", headers: {{Authorization: {{env: API_TOKEN}}}}}}
        notify:
          incidents: {{webhook: {{env: HOOK_INCIDENTS}}, channel: "#incidents"}}
        """)
    return p, str(inv)


def test_high_error_rate_playbook_resolves(write, main, prom, web, exporter, audit_dir):
    wait_for(prom, RATIO.format(s="e2e-ok"), lambda v: v < 0.01)
    p, inv = _playbook(write, prom, web)
    env = {"API_TOKEN": "tok-e2e-1", "HOOK_INCIDENTS": f"{web.url}/hook/incidents-secret-path"}
    r = main("run", p, "--inventory", inv, "-p", "service=e2e-ok", "--answer", "cause=external",
            "--answer", "external=done", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    res = results(audit_dir)
    assert res["error-rate"]["status"] == "ok" and "0.002" in r.stdout
    assert res["liveness"]["status"] == "ok" and res["readiness"]["status"] == "failed"  # readiness answers 503
    assert res["error-rate-ok"]["status"] == "ok" and res["error-rate-ok"]["attempts"] == 3
    texts = [h["payload"]["text"] for h in web.hooks]
    assert len(texts) == 2 and texts[0].startswith("*STARTED*") and texts[1].startswith("*RESOLVED*")
    assert all("run " in t and "runbook high-error-rate" in t for t in texts)
    assert web.hooks[0]["payload"]["channel"] == "#incidents"
    assert all(q["headers"].get("Authorization") == "tok-e2e-1" for q in web.requests if q["path"].startswith("/health"))
    logged = (audit_dir / "audit.jsonl").read_text()
    for secret in ("tok-e2e-1", "incidents-secret-path"):
        assert secret not in logged and secret not in r.stdout + r.stderr


def test_high_error_rate_playbook_escalates(write, main, prom, web, exporter, audit_dir):
    wait_for(prom, RATIO.format(s="e2e-bad"), lambda v: v > 0.2)
    p, inv = _playbook(write, prom, web)
    env = {"API_TOKEN": "tok", "HOOK_INCIDENTS": f"{web.url}/hook/incidents"}
    r = main("run", p, "--inventory", inv, "-p", "service=e2e-bad", "--answer", "cause=external",
            "--answer", "external=done", env=env, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "run escalated" in r.stdout
    texts = [h["payload"]["text"] for h in web.hooks]
    assert [t.split()[0] for t in texts] == ["*STARTED*", "*ESCALATION*"]
    assert "is not back under 0.01 (last: 0.3" in texts[1]


def test_values_after_a_regex_matcher_stay_one_literal_value():
    from runbook.steps import _web as W

    q = W.render_promql('up{job=~"{{ params.x }}", a="{{ params.x }}", b!~\'{{ params.y }}\'}',
                        {"params": {"x": "api|billing.*", "y": 'a"b'}})
    assert q == 'up{job=~"api\\\\|billing\\\\.\\\\*", a="api|billing.*", b!~\'a"b\'}'


def test_several_series_have_no_single_value():
    from runbook.steps.prometheus import NoValue, _query_result

    got, _ = _query_result({"resultType": "vector", "result": [
        {"metric": {"i": "a"}, "value": [0, "0.001"]}, {"metric": {"i": "b"}, "value": [0, "0.9"]}]}, False)
    assert isinstance(got["value"], NoValue) and not got["has_value"]
    assert "2 series came back" in got["value"].reason
    assert [s["value"] for s in got["series"]] == [0.001, 0.9]
