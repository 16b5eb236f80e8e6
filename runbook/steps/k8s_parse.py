"""The ``k8s`` step's two forms — structured mapping and kubectl-style
shorthand — parsed into one normalized body, without importing kubernetes.

Normalized body (every string may be a template source, rendered later one
value at a time)::

    {"verb": "get", "resource": "pods", "name": None, "namespace": ..., "all_namespaces": False,
     "selector": ..., "field_selector": ..., "output": ..., "container": ..., "tail": ..., "since": ...,
     "previous": False, "replicas": ..., "to_revision": ..., "patch": ..., "patch_type": "strategic",
     "subresource": ..., "grace_period": ..., "cluster": ..., "timeout": ...,
     "shorthand": "the source string" | None, "problems": [(key, message), ...]}

Security of the shorthand: the source is split into tokens *before* any
rendering, keeping ``{{ … }}`` and ``{% … %}`` blocks inside their token;
verbs, resource kinds and flag names must be literal, and each template
token is rendered later as exactly one value.  A parameter such as
``api -n kube-system`` therefore stays one (invalid) name and never becomes
a flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# plural -> (API prefix, group, Kind, namespaced, aliases)
RESOURCES: dict[str, tuple[str, str, str, bool, tuple[str, ...]]] = {
    "pods": ("/api/v1", "", "Pod", True, ("pod", "po")),
    "services": ("/api/v1", "", "Service", True, ("service", "svc")),
    "endpoints": ("/api/v1", "", "Endpoints", True, ("ep",)),
    "configmaps": ("/api/v1", "", "ConfigMap", True, ("configmap", "cm")),
    "secrets": ("/api/v1", "", "Secret", True, ("secret",)),
    "namespaces": ("/api/v1", "", "Namespace", False, ("namespace", "ns")),
    "nodes": ("/api/v1", "", "Node", False, ("node", "no")),
    "events": ("/api/v1", "", "Event", True, ("event", "ev")),
    "persistentvolumeclaims": ("/api/v1", "", "PersistentVolumeClaim", True, ("persistentvolumeclaim", "pvc")),
    "persistentvolumes": ("/api/v1", "", "PersistentVolume", False, ("persistentvolume", "pv")),
    "serviceaccounts": ("/api/v1", "", "ServiceAccount", True, ("serviceaccount", "sa")),
    "replicationcontrollers": ("/api/v1", "", "ReplicationController", True, ("replicationcontroller", "rc")),
    "resourcequotas": ("/api/v1", "", "ResourceQuota", True, ("resourcequota", "quota")),
    "limitranges": ("/api/v1", "", "LimitRange", True, ("limitrange", "limits")),
    "deployments": ("/apis/apps/v1", "apps", "Deployment", True, ("deployment", "deploy")),
    "replicasets": ("/apis/apps/v1", "apps", "ReplicaSet", True, ("replicaset", "rs")),
    "statefulsets": ("/apis/apps/v1", "apps", "StatefulSet", True, ("statefulset", "sts")),
    "daemonsets": ("/apis/apps/v1", "apps", "DaemonSet", True, ("daemonset", "ds")),
    "controllerrevisions": ("/apis/apps/v1", "apps", "ControllerRevision", True, ("controllerrevision",)),
    "jobs": ("/apis/batch/v1", "batch", "Job", True, ("job",)),
    "cronjobs": ("/apis/batch/v1", "batch", "CronJob", True, ("cronjob", "cj")),
    "horizontalpodautoscalers": ("/apis/autoscaling/v2", "autoscaling", "HorizontalPodAutoscaler", True,
                                 ("horizontalpodautoscaler", "hpa")),
    "poddisruptionbudgets": ("/apis/policy/v1", "policy", "PodDisruptionBudget", True, ("poddisruptionbudget", "pdb")),
    "ingresses": ("/apis/networking.k8s.io/v1", "networking.k8s.io", "Ingress", True, ("ingress", "ing")),
}
_ALIAS = {a: plural for plural, (_, _, kind, _, aliases) in RESOURCES.items() for a in (plural, kind.lower(), *aliases)}
# `deployment.apps`, `deployments.apps/v1` — kubectl's qualified forms
_QUALIFIED = re.compile(r"^([a-z]+)\.([a-z0-9.]+?)(?:/v[0-9a-z]+)?$")

READ_VERBS = ("get", "logs", "events", "summary", "top", "rollout_status")
WRITE_VERBS = ("rollout_restart", "rollout_undo", "scale", "delete", "cordon", "uncordon", "patch")
VERBS = READ_VERBS + WRITE_VERBS

# which resources each verb takes (None: any)
VERB_RESOURCES: dict[str, tuple[str, ...] | None] = {
    "get": None, "events": None, "patch": None,
    "logs": ("pods", "deployments", "statefulsets", "daemonsets", "replicasets", "jobs"),
    "summary": ("deployments", "statefulsets", "daemonsets"),
    "top": ("pods", "nodes"),
    "rollout_restart": ("deployments", "statefulsets", "daemonsets"),
    "rollout_undo": ("deployments",),
    "rollout_status": ("deployments",),
    "scale": ("deployments", "statefulsets", "replicasets"),
    "delete": ("pods",),
    "cordon": ("nodes",), "uncordon": ("nodes",),
}
NEEDS_NAME = {"logs", "summary", "rollout_restart", "rollout_undo", "rollout_status", "scale", "delete", "cordon",
              "uncordon", "patch"}
PATCH_TYPES = {"strategic": "application/strategic-merge-patch+json", "merge": "application/merge-patch+json",
               "json": "application/json-patch+json"}
OUTPUTS = ("wide", "name", "json")

FIELDS = ("verb", "resource", "name", "namespace", "all_namespaces", "selector", "field_selector", "output",
          "container", "tail", "since", "previous", "replicas", "to_revision", "patch", "patch_type",
          "subresource", "grace_period", "cluster", "timeout", "shorthand", "problems")


def empty() -> dict:
    body = {k: None for k in FIELDS}
    body.update(all_namespaces=False, previous=False, problems=[])
    return body


def resource_of(word: str) -> str | None:
    """`deploy`, `deployment`, `deployments.apps` → `deployments`; None if unknown."""
    w = word.lower()
    if w in _ALIAS:
        return _ALIAS[w]
    m = _QUALIFIED.match(w)
    if m and m.group(1) in _ALIAS:
        plural = _ALIAS[m.group(1)]
        if RESOURCES[plural][1] == m.group(2) or (m.group(2) == "core" and RESOURCES[plural][1] == ""):
            return plural
    return None


def is_template(s) -> bool:
    return isinstance(s, str) and ("{{" in s or "{%" in s)


def split_target(text: str) -> tuple[str | None, str | None, str | None]:
    """`deployment/{{ params.x }}` → (plural, name source, problem)."""
    if not isinstance(text, str) or not text.strip():
        return None, None, "expected KIND/NAME or KIND"
    head, sep, name = text.partition("/")
    if is_template(head):
        return None, None, (f"the resource kind must be written literally, e.g. deployment/{{{{ params.service }}}} "
                            f"(got {text!r}): a template may only give the name")
    plural = resource_of(head.strip())
    if plural is None:
        return None, None, f"unknown resource kind '{head}'{_did_you_mean(head)} (supported: {', '.join(RESOURCES)})"
    if sep and not name.strip():
        return None, None, f"{text!r} has no name after the '/'"
    if sep and "/" in name and not is_template(name):
        return None, None, f"{text!r}: a name may not contain '/'"
    return plural, (name.strip() if sep else None), None


def _did_you_mean(word: str) -> str:
    import difflib

    close = difflib.get_close_matches(word.lower(), list(_ALIAS), n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --- structured form ---------------------------------------------------------

STRUCTURED_KEYS = {  # YAML key -> normalized field
    "name": "name", "namespace": "namespace", "all_namespaces": "all_namespaces", "selector": "selector",
    "field_selector": "field_selector", "output": "output", "container": "container", "tail": "tail",
    "since": "since", "previous": "previous", "replicas": "replicas", "to_revision": "to_revision",
    "body": "patch", "type": "patch_type", "subresource": "subresource", "grace_period": "grace_period",
    "cluster": "cluster", "timeout": "timeout",
}


def from_mapping(value: dict) -> dict:
    body = empty()
    verbs = [k for k in value if k in VERBS]
    if len(verbs) != 1:  # the schema reports it; keep going with what there is
        body["problems"].append(("verb", "give exactly one verb: " + ", ".join(VERBS)))
        return body
    verb = verbs[0]
    body["verb"] = verb
    for key, field_name in STRUCTURED_KEYS.items():
        if key in value:
            body[field_name] = value[key]
    target = value[verb]
    if isinstance(target, str):
        if verb in ("cordon", "uncordon") and "/" not in target and resource_of(target) != "nodes":
            plural, name, why = "nodes", target, None  # `cordon: node-1`
        else:
            plural, name, why = split_target(target)
        if why:
            body["problems"].append((verb, why))
        body["resource"] = plural
        if name is not None:
            if body["name"] is not None:
                body["problems"].append(("name", f"the name is given twice: in {verb}: and in name:"))
            body["name"] = name
    _check(body, verb)
    return body


def _check(body: dict, key: str) -> None:
    """Rules shared by both forms; problems are (key, message)."""
    verb, plural = body["verb"], body["resource"]
    probs = body["problems"]
    allowed = VERB_RESOURCES.get(verb)
    if plural is None and verb != "events":  # `events` alone: the namespace's events
        if not probs:
            probs.append((key, f"{_show(verb)} needs a resource (e.g. {_example(verb)})"))
        return
    if plural is not None and allowed is not None and plural not in allowed:
        probs.append((key, f"{_show(verb)} works on {', '.join(allowed)}, not {plural}"))
    if verb in NEEDS_NAME and body["name"] is None:
        probs.append((key, f"{_show(verb)} needs a name (e.g. {_example(verb)})"))
    if plural and not RESOURCES[plural][3] and body["namespace"] is not None:
        probs.append(("namespace", f"{plural} are not namespaced: drop the namespace"))
    if body["all_namespaces"] and body["name"] is not None:
        probs.append(("all_namespaces", "all namespaces and a name exclude each other"))
    if body["all_namespaces"] and body["namespace"] is not None:
        probs.append(("all_namespaces", "all namespaces and a namespace exclude each other"))
    if body["all_namespaces"] and verb not in ("get", "top", "events"):
        probs.append(("all_namespaces", f"all namespaces applies to get, top and events, not {_show(verb)}"))
    if verb == "scale" and body["replicas"] is None:
        probs.append((key, "scale needs replicas (e.g. --replicas=5)"))
    if verb == "patch":
        ptype = body["patch_type"] or "strategic"
        body["patch_type"] = ptype
        if ptype not in PATCH_TYPES:
            probs.append(("type", f"patch type '{ptype}' is not one of strategic, merge, json"))
        elif body["patch"] is None:
            probs.append((key, "patch needs a body (the patch document)"))
        elif ptype == "json" and not (isinstance(body["patch"], list) and all(
                isinstance(op, dict) and "op" in op and "path" in op for op in body["patch"])):
            probs.append(("body", "a JSON patch is a list of operations, each with op and path"))
        elif ptype == "json" and any(isinstance(op.get(k), str) and ("{{" in op[k] or "{%" in op[k])
                                     for op in body["patch"] for k in ("op", "path", "from")):
            probs.append(("body", "a JSON patch's op, path and from must be written out, not templated: a value "
                                  "could add path segments or turn a replace into a remove (template the value only)"))
        elif ptype != "json" and not isinstance(body["patch"], dict):
            probs.append(("body", f"a {ptype} merge patch is a mapping (for a list of operations use type: json)"))
        if body["subresource"] not in (None, "status", "scale"):
            probs.append(("subresource", "subresource is status or scale"))
    if body["output"] is not None and body["output"] not in OUTPUTS:
        probs.append(("output", f"output '{body['output']}' is not one of {', '.join(OUTPUTS)}"))
    if body["output"] is not None and verb != "get":
        probs.append(("output", "output applies to get"))
    for field_name, verbs in (("container", ("logs",)), ("tail", ("logs",)), ("since", ("logs",)),
                              ("previous", ("logs",)), ("replicas", ("scale",)), ("to_revision", ("rollout_undo",)),
                              ("grace_period", ("delete",)), ("timeout", ("rollout_status",)),
                              ("selector", ("get", "top", "events")), ("field_selector", ("get", "events")),
                              ("patch", ("patch",)), ("subresource", ("patch",))):
        if body[field_name] not in (None, False) and verb not in verbs:
            probs.append((field_name if field_name != "patch" else "body",
                          f"{field_name if field_name != 'patch' else 'body'} applies to {' and '.join(map(_show, verbs))}, not {_show(verb)}"))


def _show(verb: str) -> str:
    return verb.replace("_", " ") if verb else "?"


def _example(verb: str) -> str:
    return {"cordon": "cordon node-1", "uncordon": "uncordon node-1", "delete": "delete pod/api-7c9f-x2",
            "scale": "scale deployment/api --replicas=5", "top": "top pods"}.get(verb, f"{_show(verb)} deployment/api")


# --- shorthand -----------------------------------------------------------------


class ShorthandError(Exception):
    pass


@dataclass
class Token:
    source: str  # quotes removed, templates intact
    at: int  # character offset in the shorthand
    quoted: bool = False


_BLOCK_TAGS = ("if", "for", "macro", "call", "filter", "raw")


def tokenize(text: str) -> list[Token]:
    """Split on white space outside quotes and template blocks; quotes group
    and are removed (as a shell would); ``{{ … }}``/``{% … %}`` stay whole."""
    tokens: list[Token] = []
    cur: list[str] = []
    start, quoted, quote, i, n = None, False, None, 0, len(text)
    depth = 0  # inside {% if %}…{% endif %} (or for, …): white space belongs to the token
    while i < n:
        if text.startswith("{{", i) or text.startswith("{%", i):
            close = "}}" if text[i + 1] == "{" else "%}"
            j = text.find(close, i + 2)
            if j == -1:
                raise ShorthandError(f"unclosed template starting at character {i + 1}")
            if close == "%}":
                tag = (text[i + 2:j].strip().lstrip("-").split() or [""])[0]
                if tag in _BLOCK_TAGS:
                    depth += 1
                elif tag.startswith("end"):
                    depth = max(0, depth - 1)
            start = i if start is None else start
            cur.append(text[i:j + 2])
            i = j + 2
            continue
        c = text[i]
        if depth and not quote:
            cur.append(c)
            i += 1
            continue
        if quote:
            if c == quote:
                quote = None
            else:
                cur.append(c)
            i += 1
            continue
        if c in "'\"":
            quote, quoted = c, True
            start = i if start is None else start
            i += 1
            continue
        if c.isspace():
            if start is not None:
                tokens.append(Token("".join(cur), start, quoted))
                cur, start, quoted = [], None, False
            i += 1
            continue
        if c in "\\`$;|&<>":
            raise ShorthandError(f"character {c!r} at {i + 1} is not allowed in the shorthand (no shell runs here; "
                                 "quote the value, or use the structured form)")
        start = i if start is None else start
        cur.append(c)
        i += 1
    if quote:
        raise ShorthandError(f"unclosed {quote} quote")
    if depth:
        raise ShorthandError("a {% … %} block is not closed")
    if start is not None:
        tokens.append(Token("".join(cur), start, quoted))
    return tokens


# flag spellings -> (field, takes a value)
_COMMON = {"-n": ("namespace", True), "--namespace": ("namespace", True), "--cluster": ("cluster", True)}
FLAGS: dict[str, dict[str, tuple[str, bool]]] = {
    "get": {**_COMMON, "-A": ("all_namespaces", False), "--all-namespaces": ("all_namespaces", False),
            "-l": ("selector", True), "--selector": ("selector", True), "--field-selector": ("field_selector", True),
            "-o": ("output", True), "--output": ("output", True)},
    "logs": {**_COMMON, "-c": ("container", True), "--container": ("container", True), "--tail": ("tail", True),
             "--since": ("since", True), "-p": ("previous", False), "--previous": ("previous", False)},
    "events": {**_COMMON, "--for": ("_for", True), "-A": ("all_namespaces", False),
               "--all-namespaces": ("all_namespaces", False)},
    "summary": dict(_COMMON),
    "top": {**_COMMON, "-A": ("all_namespaces", False), "--all-namespaces": ("all_namespaces", False),
            "-l": ("selector", True), "--selector": ("selector", True)},
    "rollout_restart": dict(_COMMON),
    "rollout_undo": {**_COMMON, "--to-revision": ("to_revision", True)},
    "rollout_status": {**_COMMON, "--timeout": ("timeout", True)},
    "scale": {**_COMMON, "--replicas": ("replicas", True)},
    "delete": {**_COMMON, "--grace-period": ("grace_period", True)},
    "cordon": {"--cluster": ("cluster", True)},
    "uncordon": {"--cluster": ("cluster", True)},
    "patch": {**_COMMON, "-p": ("patch", True), "--patch": ("patch", True), "--type": ("patch_type", True),
              "--subresource": ("subresource", True)},
}
SHORTHAND_VERBS = ("get", "logs", "events", "summary", "top", "rollout restart", "rollout undo", "rollout status",
                   "scale", "delete", "cordon", "uncordon", "patch")
_INT_FIELDS = ("tail", "replicas", "to_revision", "grace_period")


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
    if tokens and tokens[0].source == "kubectl":
        tokens = tokens[1:]  # a pasted `kubectl …` line: the kubectl binary is not used either way
    if not tokens:
        raise ShorthandError("empty command: e.g. get pods -l app=api")
    word = tokens[0]
    if is_template(word.source):
        raise ShorthandError("the verb must be written literally, not as a template")
    verb = word.source
    rest = tokens[1:]
    if verb == "rollout":
        if not rest or rest[0].source not in ("restart", "undo", "status"):
            got = f" '{rest[0].source}'" if rest else ""
            raise ShorthandError(f"unsupported rollout subcommand{got}: use rollout restart, rollout undo or rollout status")
        verb, rest = f"rollout_{rest[0].source}", rest[1:]
    elif verb not in FLAGS:
        import difflib

        close = difflib.get_close_matches(verb, [v.split()[0] for v in SHORTHAND_VERBS], n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ShorthandError(f"unsupported verb '{verb}'{hint}; supported: {', '.join(SHORTHAND_VERBS)}")
    body["verb"] = verb
    flags = FLAGS[verb]
    positional: list[Token] = []
    i = 0
    while i < len(rest):
        t = rest[i]
        src = t.source
        if src.startswith("-") and not t.quoted and not is_template(src.split("=", 1)[0]) and src != "-":
            name, eq, value = src.partition("=")
            if name == "--":
                raise ShorthandError("'--' is not supported")
            if name not in flags:
                allowed = ", ".join(sorted(flags))
                raise ShorthandError(f"unsupported flag '{name}' for {_show(verb)} (supported: {allowed})")
            field_name, takes = flags[name]
            if takes:
                if not eq:
                    if i + 1 >= len(rest):
                        raise ShorthandError(f"flag '{name}' needs a value")
                    i += 1
                    value = rest[i].source
                if value == "":
                    raise ShorthandError(f"flag '{name}' needs a value")
                if field_name in _INT_FIELDS and not is_template(value):
                    if not re.fullmatch(r"-?\d+", value):
                        raise ShorthandError(f"flag '{name}' takes a whole number, got {value!r}")
                    value = int(value)
                if field_name == "patch":
                    value = _patch_json(value)
                if body.get(field_name) not in (None, False):
                    raise ShorthandError(f"flag '{name}' is given twice")
                body[field_name] = value
            else:
                if eq and value not in ("true", "false"):
                    raise ShorthandError(f"flag '{name}' takes no value (or =true / =false)")
                body[field_name] = value != "false"
        else:
            positional.append(t)
        i += 1
    target = body.pop("_for", None)
    _positional(verb, positional, body, target)
    _check(body, "shorthand")


def _patch_json(value: str):
    import json

    if is_template(value):
        raise ShorthandError("the patch document of the shorthand must be literal JSON (a template could change its "
                             "structure); use the structured form, whose body renders each value on its own")
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ShorthandError(f"the patch is not valid JSON: {exc}") from None


def _positional(verb: str, pos: list[Token], body: dict, target: str | None) -> None:
    srcs = [t.source for t in pos]
    if target is not None:
        srcs = [target] + srcs
    if verb in ("cordon", "uncordon"):
        if len(srcs) != 1:
            raise ShorthandError(f"{verb} takes one node name")
        src = srcs[0]
        body["resource"] = "nodes"
        if "/" in src and not is_template(src.split("/")[0]):
            plural, name, why = split_target(src)
            if why or plural != "nodes":
                raise ShorthandError(why or f"{verb} works on nodes, not {plural}")
            body["name"] = name
        else:
            body["name"] = src
        return
    if verb == "events" and not srcs:
        return
    if verb == "top" and not srcs:
        raise ShorthandError("top needs pod or node (e.g. top pod -n production)")
    if not srcs:
        raise ShorthandError(f"{_show(verb)} needs a resource (e.g. {_example(verb)})")
    first = srcs[0]
    if verb == "logs" and "/" not in first and not is_template(first) and len(srcs) == 1 and resource_of(first) is None:
        body["resource"], body["name"] = "pods", first  # `logs api-7c9f-x2`: a pod name
        return
    if verb == "logs" and is_template(first.split("/")[0]) and len(srcs) == 1:
        body["resource"], body["name"] = "pods", first
        return
    plural, name, why = split_target(first)
    if why:
        raise ShorthandError(why)
    body["resource"] = plural
    extra = srcs[1:]
    if name is None and extra:
        name, extra = extra[0], extra[1:]
    if extra:
        raise ShorthandError(f"unexpected argument '{extra[0]}' (one resource and one name at most)")
    body["name"] = name
