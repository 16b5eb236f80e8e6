"""``http``: one HTTP request — a health check, a status API, a webhook call.

    - id: liveness
      http: "http://{{ params.host }}:8080/health/liveness"     # GET, expects 2xx

    - id: readiness
      http:
        endpoint: api                       # inventory http.api: base URL, headers, TLS, timeout
        path: "/health/readiness"
        query: {verbose: "1", service: "{{ params.service }}"}   # encoded, never pasted
        expect: {status: 200, json: {status: ok}}
      until: "status_code == 200"           # poll until ready
      every: 5s
      timeout: 2m

    - id: flag-off
      http:
        url: "https://flags.example.internal/api/flags/{{ params.flag }}"
        method: PATCH
        headers: {Authorization: "Bearer {{ env.FLAGS_TOKEN }}"}
        json: {enabled: false}
        expect: [200, 204]
      timeout: 30s

* ``url``, or ``endpoint`` (an inventory ``http`` entry: its ``url`` is the
  base, its ``headers``, ``verify_tls`` and ``timeout`` the defaults) plus
  ``path``.  Template values are percent-quoted for the part of the URL they
  are in (one path segment, one query value; ``.``/``..`` refused); give
  query parameters as a ``query:`` mapping.  Secrets may not go in a URL.
* ``method`` (default GET).  GET, HEAD and OPTIONS are ``read`` steps; every
  other method is a ``write`` (confirmed before it runs; ``readonly`` cannot
  change either).
* ``headers``: values may be templates or inventory secrets; the values of
  secrets, of templates, and of headers whose name says auth/token/key/cookie
  are shown as ``***`` in the plan, on screen and in the audit log (and a
  sensitive header's value is masked in the response too).
* ``body`` (text) or ``json`` (data, sent as ``application/json``).
* ``timeout``: the limit of the request (default: the endpoint's, else 10s;
  the step's own ``timeout`` wins when shorter).  ``verify_tls`` (default
  true; ``false`` to skip), ``ca_file`` (a CA bundle to trust).
  ``follow_redirects`` (default false: a 3xx is the answer, so credentials
  never follow a redirect to another host).
* ``expect``: a status (``200``), a list of them (``[200, 204]``), a
  condition over the result (``"json.status == 'ok'"``), or a mapping with
  ``status``, ``json`` (values the JSON body must contain: nested mappings are
  matched as subsets) and ``condition``.  Without ``expect``, any 2xx is
  fine.  A mismatch fails the step with one line saying what differed.
* Result: ``status_code``, ``reason``, ``headers`` (names in lower case),
  ``body`` (text, at most 1 MiB kept; ``set-cookie`` values are
  ``***``), ``json`` (the parsed body, or none),
  ``elapsed`` (seconds), ``url``; ``stdout`` is the body, so ``outputs`` with
  ``json: path`` read the JSON body; headers are read as
  ``steps.ID.headers['x-request-id']``.  Conditions and ``until`` see the
  fields directly (``until: "status_code == 200"``).

urllib3 is imported only when a request is sent; one pool per run, reused.
"""

from __future__ import annotations

import json as jsonlib
import time
from typing import Any

from runbook import expr
from runbook import schema as S
from runbook.errors import RunbookError
from runbook.secrets import MASK
from runbook.steps import BASE_RESULT_FIELDS, Action, StepResult
from runbook.steps import _web as W
from runbook.steps import base

METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
READ_METHODS = ("GET", "HEAD", "OPTIONS")
# response headers that carry credentials: kept out of the result (which the audit log records)
_SECRET_RESPONSE_HEADERS = frozenset({"set-cookie", "set-cookie2", "authorization", "proxy-authorization"})

_STATUS = S.OneOf(
    (
        (int, S.Int(minimum=100, maximum=599, doc="this status")),
        (list, S.List(S.Int(minimum=100, maximum=599), min_items=1, doc="one of these statuses")),
    ),
    expect_text="a status code or a list of them",
)
SCHEMA = S.OneOf(
    (
        (str, S.Str(doc="the URL (GET)")),
        (dict, S.Obj(
            {
                "url": S.Str(doc="the URL; template values are quoted for the part they are in"),
                "endpoint": S.Str(doc="an inventory http endpoint (its url is the base)"),
                "path": S.Str(doc="the path below the endpoint's base URL"),
                "method": S.Str(enum=METHODS, doc="GET (default), HEAD and OPTIONS read; the others write"),
                "query": S.MapOf(S.AnyValue(), doc="query parameters (encoded)"),
                "headers": S.MapOf(S.AnyValue(), key_pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", key_hint="a header name",
                                   doc="request headers (values may be secrets; masked when shown)"),
                "body": S.Str(doc="the request body (text)"),
                "json": S.AnyValue(doc="the request body as JSON"),
                "timeout": S.Duration(positive=True, doc="limit of the request (default: the endpoint's, else 10s)"),
                "verify_tls": S.Bool(doc="verify the server's certificate (default true)"),
                "ca_file": S.Str(doc="a CA bundle (PEM) to trust instead of the system's"),
                "follow_redirects": S.Bool(doc="follow 3xx redirects (default false)"),
                "expect": S.OneOf(
                    (
                        (int, S.Int(minimum=100, maximum=599)),
                        (list, S.List(S.Int(minimum=100, maximum=599), min_items=1)),
                        (str, S.Str(doc="a condition over the result")),
                        (dict, S.Obj({"status": _STATUS, "json": S.AnyValue(doc="values the JSON body must contain"),
                                      "condition": S.Str(doc="a condition over the result")})),
                    ),
                    doc="what the answer must be (default: a 2xx status)",
                    expect_text="a status, a list of statuses, a condition or a mapping with status/json/condition",
                ),
            },
            exclusive=(("url", "endpoint"), ("body", "json")),
        )),
    ),
    doc="Send an HTTP request",
    expect_text="a URL or a mapping with url (or endpoint and path)",
)
DEFAULT_READONLY = False
FIXED_EFFECT = None
RESULT_FIELDS = ("status_code", "reason", "headers", "body", "json", "elapsed", "url")
SHOW_OUTPUT = "head"  # the top of the response body
SHOW_LINES = 15


def normalize(value) -> dict:
    return {"url": value} if isinstance(value, str) else dict(value)


_OVERRIDE = ("x-http-method-override", "x-http-method", "x-method-override")


def effect_of(body: dict) -> str:
    """GET/HEAD/OPTIONS read; a method-override header makes a GET what it says (a write)."""
    overridden = any(str(k).lower() in _OVERRIDE for k in (body.get("headers") or {}))
    return "read" if str(body.get("method", "GET")).upper() in READ_METHODS and not overridden else "write"


def templates(body: dict) -> list[tuple[str, str, str]]:
    out = []
    for key in ("url", "endpoint", "path", "ca_file"):
        if isinstance(body.get(key), str):
            out.append((key, body[key], "text"))
    out += [(f"query.{k}", v, "text") for k, v in (body.get("query") or {}).items() if isinstance(v, str)]
    out += [(f"headers.{k}", v, "value") for k, v in (body.get("headers") or {}).items() if isinstance(v, str)]
    if isinstance(body.get("body"), str):
        out.append(("body", body["body"], "value"))
    if "json" in body:
        out += [(f"json.{p}" if p else "json", v, "value") for p, v in expr.iter_strings(body["json"])]
    expect = body.get("expect")
    if isinstance(expect, dict) and "json" in expect:
        out += [(f"expect.json.{p}", v, "text") for p, v in expr.iter_strings(expect["json"])]
    return out


def edges(body: dict) -> list[tuple[str, str]]:
    return []


def inventory_targets(body: dict) -> list[tuple[str, str, str]]:
    return [("http", body["endpoint"], "endpoint")] if "endpoint" in body else []


def _condition(body: dict) -> str | None:
    expect = body.get("expect")
    if isinstance(expect, str):
        return expect
    if isinstance(expect, dict):
        return expect.get("condition")
    return None


def static_problems(step) -> list[tuple[str, str, str]]:
    body, problems = step.body, []
    method = body.get("method", "GET")
    if "url" not in body and "endpoint" not in body:
        problems.append(("url", "give url, or endpoint (an inventory http entry) and path", "schema"))
    if "path" in body and "endpoint" not in body:
        problems.append(("path", "path goes with endpoint; with url, write the whole URL", "schema"))
    if "url" in body and not expr.is_template(body["url"]):
        try:
            W.check_url(body["url"])
        except RunbookError as exc:
            problems.append(("url", str(exc), "schema"))
    if method == "HEAD" and ("body" in body or "json" in body):
        problems.append(("method", "a HEAD request has no body", "schema"))
    if step.readonly is True and method not in READ_METHODS:
        problems.append(("method", f"readonly: true cannot make a {method} a read step: every method but GET, HEAD and "
                                   "OPTIONS is a write and is confirmed before it runs; drop readonly", "schema"))
    if step.readonly is False and method in READ_METHODS:
        problems.append(("method", f"readonly: false has no effect: a {method} is a read step; if this endpoint "
                                   "changes things, call it with the method that says so", "schema"))
    cond = _condition(body)
    if cond is not None:
        allowed = set(expr.ROOTS) | set(BASE_RESULT_FIELDS) | set(RESULT_FIELDS)
        refs, err = expr.references(cond, is_expression=True)
        if err:
            problems.append(("expect", f"condition syntax error: {err}", "schema"))
        for ref in refs:
            if ref.root not in allowed:
                problems.append(("expect", f"unknown name '{ref.root}' in the condition (use {', '.join(RESULT_FIELDS)}, "
                                           "or params.…, steps.…)", "schema"))
    return problems


# --- rendering --------------------------------------------------------------



def action(step, r) -> Action:
    body = step.body
    method = body.get("method", "GET")
    query = {}
    for k, v in (body.get("query") or {}).items():
        value = W.render_secret_value(v, r.context) if isinstance(v, str) else W.Value([W._plain(v)])
        if value.secret:
            raise RunbookError(f"query.{k}: a secret may not be put in a URL (URLs end up in logs): send it in a header")
        query[k] = "".join(str(p) for p in value.parts)
    headers: dict[str, W.Value] = {}
    timeout, verify = W.DEFAULT_TIMEOUT, True
    if "endpoint" in body:
        name = r.text(body["endpoint"])
        ep = W.inventory_entry(r, "http", name, "an http step with endpoint")
        path = W.render_path(body.get("path", ""), r.context)
        url = W.join_url(str(ep.url), path)
        url = W.add_query(url, query)
        W.check_url(url)
        for k, v in (ep.headers or {}).items():
            headers[k] = W.render_secret_value(v, r.context, sensitive=W.sensitive_header(k))
        timeout = float(ep.timeout) if ep.timeout else timeout
        verify = ep.verify_tls
    else:
        url = W.render_url(body["url"], r.context, query)
    for k, v in (body.get("headers") or {}).items():
        templated = isinstance(v, str) and expr.is_template(v)
        headers[k] = W.render_secret_value(v, r.context, sensitive=W.sensitive_header(k) or templated,
                                           credential=W.sensitive_header(k))
    payload, content_type = None, None
    if "json" in body:
        payload, content_type = W.render_json(body["json"], r.context), "application/json"
    elif "body" in body:
        payload = W.render_secret_value(body["body"], r.context)
    if content_type and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = W.Value([content_type])
    if "timeout" in body:
        timeout = S.parse_duration(body["timeout"])
    if "verify_tls" in body:
        verify = body["verify_tls"]
    ca_file = r.text(body["ca_file"]) if "ca_file" in body else None
    shown_headers = {k: v.shown() for k, v in headers.items()}
    if payload is None:
        shown_body = None
    elif "json" in body:
        shown_body = jsonlib.dumps(W.json_shown(payload), ensure_ascii=False)
    else:
        shown_body = payload.shown()
    lines = [f"{method} {url}"] + [f"{k}: {v}" for k, v in shown_headers.items()]
    if shown_body is not None:
        lines.append(W.one_line(shown_body, 400))
    expect = body.get("expect")
    if isinstance(expect, dict) and "json" in expect:
        expect = {**expect, "json": r.data(expect["json"])}
    detail = {"method": method, "url": url, "headers": shown_headers, "body": shown_body, "timeout": timeout,
              "verify_tls": verify, "follow_redirects": bool(body.get("follow_redirects", False)), "expect": expect}
    if ca_file:
        detail["ca_file"] = ca_file
    act = Action(summary="\n".join(lines), targets=[W.where(url) if "://" in url and "<steps." not in url.split("/")[2] else url],
                 detail=detail)
    act.http_send = {"headers": headers, "payload": payload, "json": "json" in body}  # the real values, revealed in run
    return act


def details(action: Action) -> list[tuple[str, str]]:
    """The whole request as sent (its body not cut short), and what it must answer."""
    d = action.detail
    lines = [f"{d['method']} {d['url']}"] + [f"{k}: {v}" for k, v in (d.get("headers") or {}).items()]
    if d.get("body") is not None:
        lines += ["", str(d["body"])]
    rows = [("request", "\n".join(lines))]
    if d.get("expect") is not None:
        rows.append(("expects", jsonlib.dumps(d["expect"], ensure_ascii=False, default=str)))
    if not d.get("verify_tls", True):
        rows.append(("TLS", "the server's certificate is not checked (verify_tls: false)"))
    return rows


def observed(step, result: StepResult) -> str | None:
    code = result.data.get("status_code")
    if code is None:
        return base.observed(step, result) if result.outputs else None
    return f"HTTP {code}" + (f", {base.observed(step, result)}" if result.outputs else "")


# --- running ----------------------------------------------------------------


def run(step, act: Action, ctx) -> StepResult:
    d = act.detail
    send = act.http_send
    started = time.monotonic()
    try:
        headers = {k: v.reveal(ctx) for k, v in send["headers"].items()}
        payload = send["payload"]
        if payload is None:
            data = None
        elif send["json"]:
            data = jsonlib.dumps(W.json_revealed(payload, ctx)).encode()
        else:
            data = payload.reveal(ctx).encode()
    except RunbookError as exc:
        return StepResult("failed", error=ctx.redactor.text(str(exc)))
    try:
        resp = W.send(ctx, d["method"], d["url"], headers=headers, body=data, timeout=d["timeout"],
                      verify=d["verify_tls"], ca_file=d.get("ca_file"), follow_redirects=d["follow_redirects"])
    except W.HttpError as exc:
        return StepResult("timeout" if exc.timeout else "failed", error=ctx.redactor.text(str(exc)),
                          data=_empty(d), duration=time.monotonic() - started)
    text = W.decode_body(resp["body"])
    parsed, why = W.parse_json(resp["body"]) if resp["body"].strip() else (None, "the body is empty")
    headers_in = {k: (MASK if k in _SECRET_RESPONSE_HEADERS else v) for k, v in resp["headers"].items()}
    got = {"status_code": resp["status"], "reason": resp["reason"], "headers": headers_in, "body": text,
           "json": parsed, "elapsed": round(resp["elapsed"], 6), "url": resp["url"]}
    result = StepResult("ok", stdout=text + ("\n[… body cut at 1 MiB]\n" if resp["truncated"] else ""), data=got,
                        duration=time.monotonic() - started)
    problem = _check(step, d["expect"], got, why, result, ctx)
    if problem:
        result.status, result.error = "failed", ctx.redactor.text(problem)
    return result


def _empty(d: dict) -> dict:
    """Result fields of a request that got no answer: conditions see no status."""
    return {"status_code": None, "reason": "", "headers": {}, "body": "", "json": None, "elapsed": None, "url": d["url"]}


def _status_line(got: dict) -> str:
    line = f"{got['status_code']} {got['reason']}".strip()
    loc = got["headers"].get("location")
    if loc and 300 <= got["status_code"] < 400:
        line += f" (redirect to {loc}; follow_redirects: true to follow)"
    return line


def _excerpt(got: dict) -> str:
    body = got["body"].strip()
    return f": {W.one_line(body, 100)}" if body else ""


def _check(step, expect, got: dict, why_not_json: str | None, result: StepResult, ctx) -> str | None:
    """What differs from the expectation, in one line, or None."""
    code = got["status_code"]
    statuses = None
    json_expect = None
    condition = None
    if isinstance(expect, bool):
        expect = None
    if isinstance(expect, int):
        statuses = [expect]
    elif isinstance(expect, list):
        statuses = expect
    elif isinstance(expect, str):
        condition = expect
    elif isinstance(expect, dict):
        s = expect.get("status")
        statuses = [s] if isinstance(s, int) else s
        json_expect = expect.get("json")
        condition = expect.get("condition")
    if statuses is None and not (200 <= code < 300):  # a condition alone does not make a 503 fine
        return f"expected a 2xx status, got {_status_line(got)}{_excerpt(got)}"
    if statuses is not None and code not in statuses:
        want = str(statuses[0]) if len(statuses) == 1 else "one of " + ", ".join(map(str, statuses))
        return f"expected status {want}, got {_status_line(got)}{_excerpt(got)}"
    if json_expect is not None:
        if got["json"] is None:
            return f"expected a JSON body, but {why_not_json or 'the body is null'}{_excerpt(got)}"
        diff = _json_diff(json_expect, got["json"], "")
        if diff:
            return f"JSON body: {diff}"
    if condition is not None:
        scope = {**ctx.context, **result.as_context()}
        try:
            held = expr.evaluate(condition, scope)
        except RunbookError as exc:
            return f"expect: {exc}"
        if not held:
            return f"expected {condition}, but it is false (status {_status_line(got)}{_excerpt(got)})"
    return None


def _same(want: Any, got: Any) -> bool:
    if want is None or got is None:
        return want is got
    if isinstance(want, bool) and isinstance(got, bool):
        return want is got
    if isinstance(want, str) != isinstance(got, str) and not isinstance(want, (dict, list)) and not isinstance(got, (dict, list)):
        return str(want).lower() == str(got).lower()  # a template renders numbers and booleans as text
    if isinstance(want, bool) or isinstance(got, bool):
        return False
    return want == got


def _json_diff(want: Any, got: Any, path: str) -> str | None:
    """The first difference between an expected (subset) value and the body."""
    where = path or "the body"
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"expected an object at {where}, got {W.one_line(jsonlib.dumps(got), 60)}"
        for k, v in want.items():
            p = f"{path}.{k}" if path else str(k)
            if k not in got:
                return f"{p} is missing (keys: {', '.join(map(str, list(got)[:10])) or 'none'})"
            diff = _json_diff(v, got[k], p)
            if diff:
                return diff
        return None
    if isinstance(want, list):  # each expected item somewhere in the list (as a subset, in any order)
        if not isinstance(got, list):
            return f"expected a list at {where}, got {W.one_line(jsonlib.dumps(got), 60)}"
        for i, item in enumerate(want):
            if not any(_json_diff(item, g, f"{path}[{i}]") is None for g in got):
                return f"{where} has no item matching {W.one_line(jsonlib.dumps(item), 60)}"
        return None
    if not _same(want, got):
        return f"expected {where} = {jsonlib.dumps(want)}, got {W.one_line(jsonlib.dumps(got), 80)}"
    return None
