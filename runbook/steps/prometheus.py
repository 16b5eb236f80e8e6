"""``prometheus``: a PromQL query, or the alerts that are firing, from an inventory Prometheus.

    - id: error-rate
      prometheus:
        query: 'sum(rate(http_requests_total{service="{{ params.service }}",status_code=~"5.."}[5m]))
                / sum(rate(http_requests_total{service="{{ params.service }}"}[5m]))'
      # steps.error-rate.value: the first sample as a number

    - id: error-rate-ok                      # the verify stage
      prometheus:
        query: '…the same…'
        for: 3                              # the condition must hold 3 checks in a row
      until: "value < params.threshold"
      every: 30s
      timeout: 10m

    - id: latency
      prometheus: {query: 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))',
                   range: 30m, step: 1m}

    - id: firing
      prometheus:
        alerts: [HighErrorRate, APIErrorRateSLOCritical]
        labels: {service: "{{ params.service }}"}

* ``server``: the inventory ``prometheus`` entry (default ``default``); its
  ``headers`` (secrets allowed), ``verify_tls`` and ``timeout`` apply.
* ``query`` is sent as a query parameter of ``/api/v1/query`` (with ``range``
  and ``step``: ``/api/v1/query_range`` over the last ``range``; ``step``
  defaults to range/60, at least 1s).  Template values inside a PromQL string
  literal are escaped for it (``service="{{ params.service }}"`` stays one
  label value whatever the parameter holds: quotes and backslashes are
  escaped); outside a string only numbers, durations and metric or label
  names are accepted, anything else is refused.  That is why a value never
  needs a filter: write the template inside the quotes.  Secrets are refused.
* Result: ``value`` (the first series' sample — for a range, its last one —
  as a number), ``series`` (``[{labels, value}]``, for a range also
  ``values``: ``[[time, number], …]``), ``has_value``, ``result_type``.
  With no series, or a NaN sample (0/0: e.g. no requests in the window),
  ``value`` is not a number: shown as ``no data`` / ``NaN``, and a condition
  comparing it fails with that reason instead of a type error (write
  ``has_value and value < 0.01`` to treat it as simply false).
* ``alerts``: names (``"*"`` for all) checked against ``/api/v1/alerts``,
  optionally only those whose labels match ``labels``.  Result: ``firing``
  (names), ``firing_count``, ``pending`` (names), ``alerts`` (each with
  name, state, labels, active_at, value).
* ``for: N`` with the step's ``until``: the step succeeds only when the
  condition held on N consecutive checks (``held`` counts them).  While the
  streak is shorter, the fields the condition reads refuse comparison with
  "held k of N consecutive checks", so the engine keeps polling; a check on
  which the condition is false starts the count again.
* Errors in one line: Prometheus's own message for bad PromQL, connection
  refused, no answer within the timeout.  Always a ``read`` step.
"""

from __future__ import annotations

import time
from typing import Any

from runbook import expr
from runbook import schema as S
from runbook.errors import RunbookError
from runbook.steps import BASE_RESULT_FIELDS, Action, StepResult
from runbook.steps import _web as W

SCHEMA = S.OneOf(
    (
        (str, S.Str(doc="a PromQL query")),
        (dict, S.Obj(
            {
                "server": S.Str(doc="the inventory prometheus entry (default: default)"),
                "query": S.Str(doc="PromQL; template values inside string literals are escaped"),
                "range": S.Duration(positive=True, doc="a range query over the last …"),
                "step": S.Duration(positive=True, doc="resolution of a range query (default range/60)"),
                "alerts": S.OneOf(
                    ((str, S.Str()), (list, S.List(S.Str(), min_items=1))),
                    doc="alert names to check (\"*\" for all)", expect_text="an alert name or a list of them"),
                "labels": S.MapOf(S.AnyValue(), doc="only alerts with these label values"),
                "for": S.Int(minimum=1, maximum=1000, doc="the until condition must hold on this many consecutive checks"),
                "timeout": S.Duration(positive=True, doc="limit of one request (default: the server's, else 10s)"),
            },
            exclusive=(("query", "alerts"),),
        )),
    ),
    doc="Query Prometheus (PromQL or firing alerts)",
    expect_text="a PromQL query or a mapping with query or alerts",
)
DEFAULT_READONLY = True
FIXED_EFFECT = "read"
RESULT_FIELDS = ("value", "series", "has_value", "result_type", "firing", "firing_count", "pending", "alerts", "held")
SHOW_OUTPUT = "head"
SHOW_LINES = 15
_QUERY_FIELDS = ("value", "series", "has_value", "result_type", "firing", "firing_count", "pending", "alerts")
MAX_SERIES_SHOWN = 50


class NoValue:
    """A value a condition cannot use: no data, NaN, or a ``for`` streak
    still short.  Shown as ``shown``; comparing, testing or using it raises
    one clear line (a condition evaluating it counts as "not yet")."""

    __slots__ = ("reason", "shown")

    def __init__(self, reason: str, shown: str = "no data"):
        self.reason = reason
        self.shown = shown

    def _refuse(self, *args, **kwargs):
        raise expr.ExprError(self.reason)

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __floordiv__ = __mod__ = __neg__ = __abs__ = __bool__ = __float__ = __int__ = __len__ = __iter__ = _refuse
    __getitem__ = __contains__ = __round__ = _refuse
    __hash__ = object.__hash__

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise expr.ExprError(self.reason)

    def __str__(self) -> str:
        return self.shown

    __repr__ = __str__

    def __format__(self, spec) -> str:
        return self.shown


def normalize(value) -> dict:
    return {"query": value} if isinstance(value, str) else dict(value)


def templates(body: dict) -> list[tuple[str, str, str]]:
    out = [("server", body["server"], "text")] if isinstance(body.get("server"), str) else []
    if isinstance(body.get("query"), str):
        out.append(("query", body["query"], "text"))
    alerts = body.get("alerts")
    for i, name in enumerate([alerts] if isinstance(alerts, str) else alerts or []):
        out.append((f"alerts[{i}]", name, "text"))
    out += [(f"labels.{k}", v, "text") for k, v in (body.get("labels") or {}).items() if isinstance(v, str)]
    return out


def edges(body: dict) -> list[tuple[str, str]]:
    return []


def inventory_targets(body: dict) -> list[tuple[str, str, str]]:
    return [("prometheus", body.get("server", "default"), "server")]


def _until_names(step) -> set[str]:
    refs, _ = expr.references(step.until, is_expression=True) if step.until else ((), None)
    return {r.root for r in refs}


def static_problems(step) -> list[tuple[str, str, str]]:
    body, problems = step.body, []
    if "query" not in body and "alerts" not in body:
        problems.append(("query", "give query (PromQL) or alerts (names to check)", "schema"))
    if "query" in body:
        for why in W.promql_problems(body["query"]):
            problems.append(("query", why, "schema"))
    for key in ("range", "step"):
        if key in body and "query" not in body:
            problems.append((key, f"{key} goes with query", "schema"))
    if "step" in body and "range" not in body:
        problems.append(("step", "step goes with range (a range query); an instant query has one sample", "schema"))
    if "range" in body and "step" in body and S.parse_duration(body["step"]) > S.parse_duration(body["range"]):
        problems.append(("step", "step is longer than range", "schema"))
    if "labels" in body and "alerts" not in body:
        problems.append(("labels", "labels filters alerts; in a query, write the labels in the PromQL", "schema"))
    if "for" in body:
        if not step.until:
            problems.append(("for", "for counts consecutive checks of the step's until condition: add until "
                                    "(e.g. \"value < 0.01\"), every and timeout", "schema"))
        else:
            names = _until_names(step)
            if not names & set(_QUERY_FIELDS):
                problems.append(("for", f"the until condition must read the query's result "
                                        f"({', '.join(_QUERY_FIELDS[:2])}, …) for for to count checks", "schema"))
            other = sorted(names & (set(BASE_RESULT_FIELDS) | set(step.outputs)))
            if other:
                problems.append(("for", f"with for, the until condition may read only the query's result "
                                        f"(value, series, firing, …), not {', '.join(other)}", "schema"))
    return problems


# --- rendering --------------------------------------------------------------



def _step_seconds(body: dict) -> float:
    if "step" in body:
        return S.parse_duration(body["step"])
    return max(1.0, round(S.parse_duration(body["range"]) / 60))


def action(step, r) -> Action:
    body = step.body
    name = r.text(body.get("server", "default"))
    server = W.inventory_entry(r, "prometheus", name, "a prometheus step")
    base = str(server.url).rstrip("/")
    timeout = S.parse_duration(body["timeout"]) if "timeout" in body else float(server.timeout or W.DEFAULT_TIMEOUT)
    headers = {k: W.render_secret_value(v, r.context, sensitive=W.sensitive_header(k)) for k, v in (server.headers or {}).items()}
    detail: dict[str, Any] = {"server": name, "timeout": timeout, "verify_tls": server.verify_tls,
                              "headers": {k: v.shown() for k, v in headers.items()}}
    if "query" in body:
        query = W.render_promql(body["query"], r.context)
        detail["query"] = query
        params = {"query": query, "timeout": f"{timeout:g}s"}
        if "range" in body:
            detail["range"] = S.parse_duration(body["range"])
            detail["step"] = _step_seconds(body)
            url = W.add_query(f"{base}/api/v1/query_range", {**params, "start": "<now-range>", "end": "<now>", "step": f"{detail['step']:g}s"})
            summary = f"PromQL range {detail['range']:g}s (step {detail['step']:g}s) on prometheus '{name}': {query}"
        else:
            url = W.add_query(f"{base}/api/v1/query", params)
            summary = f"PromQL on prometheus '{name}': {query}"
        detail["url"] = url
    else:
        alerts = body["alerts"]
        names = [r.text(a) for a in ([alerts] if isinstance(alerts, str) else alerts)]
        labels = {k: r.text(v) if isinstance(v, str) else W._plain(v) for k, v in (body.get("labels") or {}).items()}
        detail.update(alerts=names, labels=labels, url=f"{base}/api/v1/alerts")
        where = "".join(f" {k}={v!r}" for k, v in labels.items())
        summary = f"alerts firing on prometheus '{name}': {', '.join(names)}{' with' + where if where else ''}"
    W.check_url(detail["url"].replace("<now-range>", "0").replace("<now>", "0"))
    if "for" in body:
        detail["for"] = body["for"]
        summary += f"\n(until must hold on {body['for']} consecutive checks)"
    act = Action(summary=summary, targets=[W.where(base)], detail=detail)
    act.prom_headers = headers  # the real values, revealed in run
    act.prom_held = 0  # consecutive checks the until condition held (for)
    return act


def details(action: Action) -> list[tuple[str, str]]:
    d = action.detail
    rows = [("query", d["query"])] if "query" in d else [("alerts", ", ".join(d.get("alerts") or []))]
    if d.get("labels"):
        rows.append(("with labels", ", ".join(f"{k}={v!r}" for k, v in d["labels"].items())))
    rows.append(("sent as", f"GET {d['url']}"))
    if d.get("for"):
        rows.append(("holds when", f"until holds on {d['for']} consecutive checks"))
    return rows


def observed(step, result: StepResult) -> str | None:
    """The query's value (or why there is none), or how many alerts fire."""
    d = result.data
    if "alerts" in step.body:
        return None if d.get("firing_count") is None else f"{d['firing_count']} firing"
    if "value" not in d:
        return None
    return f"value {d['value']}"


# --- running ----------------------------------------------------------------


MAX_ANSWER = 32 * 2**20


def _api(ctx, act: Action, path_url: str) -> tuple[Any, list[str]]:
    """The ``data`` of an API answer and its warnings; HttpError in one line."""
    d = act.detail
    headers = {k: v.reveal(ctx) for k, v in act.prom_headers.items()}
    resp = W.send(ctx, "GET", path_url, headers=headers, timeout=d["timeout"], verify=d["verify_tls"],
                  max_body=MAX_ANSWER)
    if resp["truncated"]:
        raise W.HttpError(f"prometheus '{d['server']}' answered with more than {MAX_ANSWER // 2**20} MiB: "
                          "the query returns too many series; aggregate it (sum by, topk)")
    doc, why = W.parse_json(resp["body"])
    if isinstance(doc, dict) and doc.get("status") == "error":
        kind = doc.get("errorType") or "error"
        msg = str(doc.get("error") or "").removeprefix('invalid parameter "query": ')
        if kind == "timeout":
            raise W.HttpError(f"prometheus '{d['server']}' stopped the query: {msg}")
        if kind == "bad_data":
            raise W.HttpError(f"bad PromQL: {msg}")
        raise W.HttpError(f"prometheus '{d['server']}' answered {kind}: {msg}")
    if resp["status"] != 200 or not isinstance(doc, dict) or doc.get("status") != "success":
        excerpt = W.one_line(W.decode_body(resp["body"]), 80)
        raise W.HttpError(f"prometheus '{d['server']}' at {W.where(path_url)} answered {resp['status']} {resp['reason']}"
                          f" — not the Prometheus API? ({why or excerpt})")
    return doc.get("data"), [str(w) for w in doc.get("warnings") or []]


def _labels_text(labels: dict) -> str:
    name = labels.get("__name__", "")
    rest = ",".join(f'{k}="{W.promql_string(str(v))}"' for k, v in labels.items() if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


def _num_text(v: float) -> str:
    return "NaN" if W.is_nan(v) else f"{v:.6g}"


def _query_result(data: Any, ranged: bool) -> tuple[dict, str]:
    rtype = data.get("resultType") if isinstance(data, dict) else None
    raw = data.get("result") if isinstance(data, dict) else None
    series: list[dict] = []
    if rtype in ("scalar", "string"):
        v = raw[1] if isinstance(raw, list) and len(raw) == 2 else None
        series.append({"labels": {}, "value": W.number(v) if rtype == "scalar" else v})
    else:
        for item in raw or []:
            labels = item.get("metric") or {}
            if "values" in item:
                values = [[float(t), W.number(v)] for t, v in item["values"]]
                series.append({"labels": labels, "values": values, "value": values[-1][1] if values else None})
            elif "value" in item:
                series.append({"labels": labels, "value": W.number(item["value"][1])})
    got: dict[str, Any] = {"series": series, "result_type": rtype, "firing": [], "firing_count": 0, "pending": [],
                           "alerts": []}
    first = series[0]["value"] if series else None
    if not series:
        got["value"] = NoValue("no data: the query returned no series (a typo in a label, or nothing recorded yet)")
    elif len(series) > 1:
        got["value"] = NoValue(f"{len(series)} series came back, so there is no single value: aggregate the query "
                               "(sum, max, …) or read series", f"{len(series)} series")
    elif first is None:
        got["value"] = NoValue("no data: the first series has no sample")
    elif W.is_nan(first):
        got["value"] = NoValue("the query returned NaN (e.g. 0/0: no requests in the window)", "NaN")
    else:
        got["value"] = first
    got["has_value"] = not isinstance(got["value"], NoValue)
    lines = []
    for s in series[:MAX_SERIES_SHOWN]:
        v = s["value"]
        shown = _num_text(v) if isinstance(v, float) else str(v)
        extra = f"  ({len(s['values'])} samples)" if "values" in s else ""
        lines.append(f"{_labels_text(s['labels']) if s['labels'] else '{}'}  {shown}{extra}")
    if len(series) > MAX_SERIES_SHOWN:
        lines.append(f"… {len(series) - MAX_SERIES_SHOWN} more series not shown ({len(series)} in all)")
    if not series:
        lines.append("no data (the query returned no series)")
    return got, "\n".join(lines) + "\n"


def _alerts_result(data: Any, names: list[str], labels: dict) -> tuple[dict, str]:
    every = "*" in names
    chosen = []
    for a in (data or {}).get("alerts") or []:
        al = a.get("labels") or {}
        name = al.get("alertname", "")
        if not every and name not in names:
            continue
        if any(str(al.get(k)) != str(v) for k, v in labels.items()):
            continue
        chosen.append({"name": name, "state": a.get("state"), "labels": al, "active_at": a.get("activeAt"),
                       "value": W.number(a.get("value"))})
    firing = list(dict.fromkeys(a["name"] for a in chosen if a["state"] == "firing"))
    pending = list(dict.fromkeys(a["name"] for a in chosen if a["state"] == "pending" and a["name"] not in firing))
    got = {"firing": firing, "firing_count": len(firing), "pending": pending, "alerts": chosen, "series": [],
           "result_type": "alerts", "has_value": False,
           "value": NoValue("an alerts check has no value: use firing or firing_count", "n/a")}
    lines = [f"{a['state'].upper():8} {a['name']} {_labels_text({k: v for k, v in a['labels'].items() if k != 'alertname'})}"
             f"  since {a['active_at']}" for a in chosen[:MAX_SERIES_SHOWN]]
    quiet = [n for n in names if n != "*" and n not in firing and n not in pending]
    if quiet:
        lines.append("not firing: " + ", ".join(quiet))
    if not chosen and every:
        lines.append("no alerts are firing or pending")
    return got, "\n".join(lines) + "\n"


def _empty(reason: str) -> dict:
    """Result fields of a check that got no answer: conditions say why."""
    nv = NoValue(reason)
    return {"value": nv, "series": nv, "has_value": False, "result_type": None, "firing": nv, "firing_count": nv,
            "pending": nv, "alerts": nv}


def run(step, act: Action, ctx) -> StepResult:
    d = act.detail
    started = time.monotonic()
    try:
        if "query" in d:
            url = d["url"]
            if "range" in d:
                end = time.time()
                url = url.replace("start=%3Cnow-range%3E", f"start={end - d['range']:.3f}").replace("end=%3Cnow%3E", f"end={end:.3f}")
            data, warnings = _api(ctx, act, url)
            got, text = _query_result(data, "range" in d)
        else:
            data, warnings = _api(ctx, act, d["url"])
            got, text = _alerts_result(data, d["alerts"], d["labels"])
    except W.HttpError as exc:
        msg = ctx.redactor.text(str(exc))
        act.prom_held = 0
        return StepResult("timeout" if exc.timeout else "failed", error=msg, data={**_empty(msg), "held": 0},
                          duration=time.monotonic() - started)
    except RunbookError as exc:  # a secret header that cannot be read
        msg = ctx.redactor.text(str(exc))
        return StepResult("failed", error=msg, data={**_empty(msg), "held": 0})
    result = StepResult("ok", stdout=text, stderr="".join(f"warning: {w}\n" for w in warnings), data=got,
                        duration=time.monotonic() - started)
    if "for" in d and step.until:
        _count(step, act, result, ctx)
    return result


def _count(step, act: Action, result: StepResult, ctx) -> None:
    """``for: N``: count consecutive checks on which ``until`` held; while
    fewer than N, make the fields the condition reads refuse comparison, so
    that the engine's until is not met yet (and says why)."""
    need = act.detail["for"]
    try:
        holds = bool(expr.evaluate(step.until, {**ctx.context, **result.as_context()}))
    except RunbookError:
        holds = False
    act.prom_held = act.prom_held + 1 if holds else 0
    result.data["held"] = act.prom_held
    if holds and act.prom_held < need:
        why = NoValue(f"the condition held on {act.prom_held} of {need} consecutive checks (for: {need})",
                      shown=str(result.data.get("value")))
        for name in _until_names(step) & set(_QUERY_FIELDS):
            result.data[name] = why
        result.stdout += f"condition held {act.prom_held} of {need} consecutive checks\n"
