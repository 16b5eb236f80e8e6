"""``notify``: post a message to an inventory webhook (Slack incoming webhook or generic JSON).

    - id: announce
      notify:
        to: incidents                    # an inventory notify entry, or its channel: "#incidents"
        event: started
        message: "Investigating high 5xx rate on {{ params.service }}"

    - id: all-clear
      notify: {to: incidents, event: resolved, message: "Error rate back under {{ params.threshold }}"}

    - id: page-lead
      notify: {to: incidents, event: escalation, message: "Still failing: @engineering-lead please take over",
               required: true}           # a failed post fails the step (default: a warning only)

* ``to``: the name of an inventory ``notify`` entry, or a channel (``#…``)
  that exactly one entry has.  The webhook URL is a secret (usually
  ``{env: …}``): it is read when the step runs and never shown.
* ``message`` is a template (text: a secret shows as ``***``).  Every message
  ends with the runbook name and the run id, so that readers find the run
  (``runbook audit show RUN_ID``).  ``event`` (started, update, failed,
  escalation, resolved; default update) prefixes it in bold (``*RESOLVED*``).
* ``format``: ``slack`` (default) posts ``{"text": …}`` (plus ``channel``
  when the inventory entry names one), which Slack, Mattermost and
  Rocket.Chat incoming webhooks accept; ``json`` posts
  ``{text, event, runbook, run_id, channel, message, dry_run}`` for a generic receiver.
* Effect: ``read`` — a message changes nothing the runbook is about, so it
  is not confirmed and may sit in the diagnose stage.  ``readonly: false``
  makes it a write step that is confirmed first (e.g. a message to customers).
* Failure: a webhook that cannot be reached or answers other than 2xx does
  **not** fail the step — the run should never stop because chat is down.
  The step stays ``ok``, its ``error`` and output say ``not sent: …``, the
  audit log gets a ``notify_failed`` record, and ``sent`` is false.  With
  ``required: true`` the step fails instead (then ``on_failure`` applies).
  A missing webhook secret is treated the same way, and so is a notifier
  missing from the inventory in a live run (``--dry-run`` reports it).
* PagerDuty: a notifier with a ``routing_key`` (an Events API v2 integration
  key, a secret) pages instead of posting a message:

      - id: page
        notify: {to: pager, event: escalation, message: "5xx above {{ params.threshold }}", severity: critical}
      - id: unpage
        notify: {to: pager, page: resolve}

  ``page``: ``trigger``, ``acknowledge`` or ``resolve`` (default: resolve for
  ``event: resolved``, else trigger); ``dedup_key`` (a template; default the
  fingerprint of the alert the run answers, else the run id) ties the trigger to its acknowledge and resolve; ``severity``:
  critical, error (default), warning or info.  A trigger sends
  ``{routing_key, event_action, dedup_key, payload: {summary, source, severity,
  custom_details}, client}``; acknowledge and resolve send ``{routing_key,
  event_action, dedup_key}``.  The routing key is added when the request is
  sent: it is never shown, planned or logged.  ``message`` is optional for
  acknowledge and resolve.
* ``--dry-run`` shows the payload and sends nothing; ``--server-dry-run``
  does not send either (its read steps run, but nobody should be paged by
  a rehearsal).
* Result: ``sent`` (true/false), ``status_code``, ``channel``, ``payload``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from runbook import schema as S
from runbook.errors import RunbookError
from runbook.steps import Action, StepResult
from runbook.steps import _web as W

EVENTS = {"started": "*STARTED*", "update": "*UPDATE*", "failed": "*FAILED*", "escalation": "*ESCALATION*",
          "resolved": "*RESOLVED*"}
PAGE_ACTIONS = ("trigger", "acknowledge", "resolve")
PAGE_SEVERITIES = ("critical", "error", "warning", "info")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
SCHEMA = S.Obj(
    {
        "to": S.Str(doc="an inventory notify entry, or its channel (#…)"),
        "message": S.Str(doc="the text (a template)"),
        "event": S.Str(enum=tuple(EVENTS), doc="started, update (default), failed, escalation or resolved"),
        "format": S.Str(enum=("slack", "json"), doc="slack: {text, channel} (default); json: a structured object"),
        "required": S.Bool(doc="a failed post fails the step (default: a warning only)"),
        "timeout": S.Duration(positive=True, doc="limit of the request (default 5s)"),
        "page": S.Str(enum=PAGE_ACTIONS, doc="PagerDuty notifiers: trigger, acknowledge or resolve (default: resolve "
                                             "for event resolved, else trigger)"),
        "dedup_key": S.Str(doc="PagerDuty notifiers: the incident's key, a template (default: the alert's "
                                "fingerprint, else the run id)"),
        "severity": S.Str(enum=PAGE_SEVERITIES, doc="PagerDuty notifiers: critical, error (default), warning or info"),
    },
    required=("to",),
    doc="Post a message to a chat or webhook",
)
DEFAULT_READONLY = True
FIXED_EFFECT = None
RESULT_FIELDS = ("sent", "status_code", "channel", "payload")
SHOW_OUTPUT = True
DEFAULT_TIMEOUT = 5.0


def normalize(value) -> dict:
    return dict(value)


def templates(body: dict) -> list[tuple[str, str, str]]:
    return [(k, body[k], "text") for k in ("to", "message", "dedup_key") if k in body]


def edges(body: dict) -> list[tuple[str, str]]:
    return []


def inventory_targets(body: dict) -> list[tuple[str, str, str]]:
    to = body["to"]
    return [] if to.startswith("#") else [("notify", to, "to")]


def static_problems(step) -> list[tuple[str, str, str]]:
    body = step.body
    if "message" not in body and body.get("page", "trigger" if body.get("event") != "resolved" else "resolve") == "trigger":
        return [("message", "missing required key 'message' (only a PagerDuty acknowledge or resolve goes "
                            "without one)", "schema")]
    return []


def _notifier(r, to: str):
    inventory = getattr(r, "inventory", None)
    if inventory is None:
        raise RunbookError(f"a notify step needs an inventory with notifier '{to}' (use --inventory FILE or --env NAME)")
    if not to.startswith("#"):
        return inventory.lookup("notify", to)
    matches = [n for n in inventory.notify.values() if n.channel == to]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = ", ".join(f"{n.name} ({n.channel})" for n in inventory.notify.values() if n.channel) or "none"
        raise RunbookError(f"no notifier in {inventory.path} posts to {to} (notifiers with channels: {known})")
    raise RunbookError(f"{len(matches)} notifiers in {inventory.path} post to {to} "
                       f"({', '.join(n.name for n in matches)}): name one in to:")


def action(step, r) -> Action:
    body = step.body
    to = r.text(body["to"])
    run_info = r.context.get("run") or {}
    try:
        notifier = _notifier(r, to)
    except RunbookError as exc:
        if run_info.get("dry_run") or body.get("required"):
            raise  # the plan (and CI's validate --dry-run) must say so
        # live: a notice that cannot be sent must not stop the incident response
        return Action(summary=f"POST to notifier {to}: not possible ({exc})", targets=[to],
                      detail={"missing": str(exc), "notifier": to, "channel": None, "payload": None, "required": False})
    event = body.get("event", "update")
    run = r.context.get("run") or {}
    message = r.text(body["message"]).strip() if "message" in body else ""
    if getattr(notifier, "pagerduty", False):
        return _page_action(body, r, notifier, event, message, run)
    if not message:
        raise RunbookError(f"notifier '{notifier.name}' posts messages: the step needs a message")
    if any(k in body for k in ("page", "dedup_key", "severity")):
        raise RunbookError(f"page, dedup_key and severity are for PagerDuty notifiers; '{notifier.name}' has no "
                           "routing_key")
    footer = f"runbook {run.get('runbook', '?')}, run {run.get('id', '?')}"
    text = f"{EVENTS[event]} {message}\n_{footer}_"
    fmt = body.get("format", "slack")
    if fmt == "slack":
        payload: dict[str, Any] = {"text": text}
        if notifier.channel:
            payload["channel"] = notifier.channel
    else:
        payload = {"text": text, "event": event, "message": message, "runbook": run.get("runbook"),
                   "run_id": run.get("id"), "channel": notifier.channel, "dry_run": bool(run.get("dry_run"))}
    timeout = S.parse_duration(body["timeout"]) if "timeout" in body else DEFAULT_TIMEOUT
    where = f"{notifier.name}" + (f" ({notifier.channel})" if notifier.channel else "")
    shown = json.dumps(payload, ensure_ascii=False)
    return Action(summary=f"POST to notifier {where}: {shown}", targets=[where],
                  detail={"notifier": notifier.name, "channel": notifier.channel, "payload": payload,
                          "required": bool(body.get("required", False)), "timeout": timeout, "format": fmt})


def _page_action(body: dict, r, notifier, event: str, message: str, run: dict) -> Action:
    """A PagerDuty Events API v2 event; the routing key is added only when it is sent."""
    page = body.get("page") or ("resolve" if event == "resolved" else "trigger")
    # one PagerDuty incident per alert (its fingerprint), else per run
    dedup_key = (r.text(body["dedup_key"]).strip() if body.get("dedup_key")
                 else str(run.get("fingerprint") or run.get("id") or ""))
    if not dedup_key:
        raise RunbookError("the PagerDuty dedup_key is empty")
    payload: dict[str, Any] = {"event_action": page, "dedup_key": dedup_key[:255]}
    if page == "trigger":
        if not message:
            raise RunbookError("a PagerDuty trigger needs a message (its summary)")
        summary = f"{message} (runbook {run.get('runbook', '?')}, run {run.get('id', '?')})"
        payload["payload"] = {
            "summary": summary[:1024], "source": f"runbook {run.get('runbook', '?')}",
            "severity": body.get("severity", "error"),
            "custom_details": {"event": event, "message": message, "runbook": run.get("runbook"),
                               "run_id": run.get("id"), "dry_run": bool(run.get("dry_run"))},
        }
        payload["client"] = "runbook"
    timeout = S.parse_duration(body["timeout"]) if "timeout" in body else DEFAULT_TIMEOUT
    where = f"{notifier.name} (PagerDuty)"
    shown = json.dumps(payload, ensure_ascii=False)
    return Action(summary=f"{page} PagerDuty incident via notifier {notifier.name}: {shown}", targets=[where],
                  detail={"notifier": notifier.name, "channel": None, "payload": payload, "pagerduty": True,
                          "required": bool(body.get("required", False)), "timeout": timeout, "format": "pagerduty"})


def details(action: Action) -> list[tuple[str, str]]:
    d = action.detail
    if d.get("payload") is None:
        return [("request", action.summary)]
    return [("request", f"POST to notifier {action.targets[0] if action.targets else d.get('notifier')}"),
            ("payload", json.dumps(d["payload"], ensure_ascii=False, indent=2))]


def page(ctx, r, notifier: str, message: str, *, step_id: str, severity: str = "critical") -> StepResult:
    """A PagerDuty trigger outside any step (a runbook's escalation ``page:``), sent and recorded as a
    notify step's would be; never raises (a page that cannot be sent is said, not fatal)."""
    from types import SimpleNamespace

    try:
        act = action(SimpleNamespace(id=step_id, body={"to": notifier, "message": message, "page": "trigger",
                                                       "severity": severity}), r)
        if not act.detail.get("pagerduty") and not act.detail.get("missing"):
            raise RunbookError(f"notifier '{notifier}' has no routing_key: escalation pages go through PagerDuty")
    except RunbookError as exc:
        return StepResult("failed", error=ctx.redactor.text(str(exc)), data={"sent": False})
    return run(SimpleNamespace(id=step_id), act, ctx)


def run(step, act: Action, ctx) -> StepResult:
    d = act.detail
    started = time.monotonic()
    data = {"sent": False, "status_code": None, "channel": d["channel"], "payload": d["payload"]}

    def not_sent(why: str) -> StepResult:
        why = ctx.redactor.text(why)
        ctx.event("notify_failed", step=step.id, notifier=d["notifier"], error=why, required=d["required"])
        if d["required"]:
            return StepResult("failed", error=f"not sent: {why}", data=data, duration=time.monotonic() - started)
        return StepResult("ok", stdout=f"NOT SENT to {d['notifier']}: {why} (the run goes on; required: true would stop it)\n",
                          error=f"warning: not sent: {why}", data=data, duration=time.monotonic() - started)

    if d.get("missing"):
        return not_sent(d["missing"])
    if ctx.server_dry_run:
        return StepResult("ok", stdout=f"not sent to {d['notifier']} (--server-dry-run)\n", data=data,
                          duration=time.monotonic() - started)
    payload = d["payload"]
    try:
        notifier = ctx.inventory.lookup("notify", d["notifier"])
        if d.get("pagerduty"):
            key = str(ctx.reveal(notifier.routing_key))
            ctx.redactor.add(key)  # a routing key pages whoever holds it: never in output or the log
            payload = {"routing_key": key, **payload}
            url = str(ctx.reveal(notifier.webhook)) if notifier.webhook is not None else PAGERDUTY_URL
        else:
            url = str(ctx.reveal(notifier.webhook))
            ctx.redactor.add(url)  # before any check: an error must not show it
        W.check_url(url, shown="(the webhook URL, not shown)")
    except RunbookError as exc:
        return not_sent(f"{'routing key or URL' if d.get('pagerduty') else 'webhook'} of notifier '{d['notifier']}': {exc}")
    if not d.get("pagerduty"):
        ctx.redactor.add(url)  # a webhook URL is a credential: never in output or the log
    body = json.dumps(payload).encode()
    try:
        resp = W.send(ctx, "POST", url, headers={"Content-Type": "application/json"}, body=body, timeout=d["timeout"])
    except W.HttpError as exc:
        return not_sent(str(exc).replace(W.where(url), f"the webhook of '{d['notifier']}'"))
    data["status_code"] = resp["status"]
    if not 200 <= resp["status"] < 300:
        excerpt = W.one_line(W.decode_body(resp["body"]), 80)
        return not_sent(f"the webhook answered {resp['status']} {resp['reason']}" + (f": {excerpt}" if excerpt else ""))
    data["sent"] = True
    if d.get("pagerduty"):
        return StepResult("ok", stdout=f"PagerDuty {d['payload']['event_action']} sent through {d['notifier']} "
                                       f"(dedup_key {d['payload']['dedup_key']})\n",
                          data=data, duration=time.monotonic() - started)
    where = d["notifier"] + (f" ({d['channel']})" if d["channel"] else "")
    return StepResult("ok", stdout=f"sent to {where}\n", data=data, duration=time.monotonic() - started)
