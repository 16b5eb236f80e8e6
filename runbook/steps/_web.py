"""What the http, prometheus and notify kinds share: rendering values into
URLs and PromQL safely, and sending one HTTP request with urllib3.

Rendering.  A template's values are never pasted raw into a URL or a query:
the template is rendered with each ``{{ … }}`` value replaced by a marker,
then every marker is replaced by its value escaped for where it sits —

* in a URL: percent-quoted as one path segment (a ``/`` in a value is
  ``%2F``; ``.`` and ``..`` are refused), one query value or the fragment;
  in the host part only a host name or address (and ``:port``) is accepted;
  a value that starts the URL may be a whole ``http(s)://host[:port][/path]``
  base (e.g. ``{{ inventory.http.api.url }}``).  Secrets never go into a URL.
* in PromQL: escaped for the string literal around it (``"…"``/``'…'``: a
  backslash, the quote and control characters are escaped; inside
  ```…``` a backtick is refused); outside a string only a number, a
  duration (``5m``) or a metric/label name is accepted.  Secrets are refused.

The values the kinds send in headers and bodies may be secrets: they are kept
as parts (text, :class:`Secret`, :class:`LazySecret`) until the step runs, and
shown as ``***``.

urllib3 is imported when a request is sent, never at import time.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
from typing import Any

from runbook import expr
from runbook.errors import RunbookError
from runbook.secrets import MASK, LazySecret, Secret

DEFAULT_TIMEOUT = 10.0  # seconds for one request when neither the step nor the inventory says
MAX_BODY = 1024 * 1024  # bytes of a response body kept

def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_secret(value: Any) -> bool:
    return isinstance(value, (Secret, LazySecret))


# --- URLs -------------------------------------------------------------------

_BASE = re.compile(r"^https?://[^\s?#/]+(/[^\s?#]*)?$")


def render_url(source: str, ctx: dict, query: dict | None = None) -> str:
    """A URL from a template, each value quoted for the part it is in, with
    ``query`` (already rendered values) appended, encoded."""
    text, values = expr.render_marked(source, ctx)
    out: list[str] = []
    pos = 0
    for m in expr.MARK.finditer(text):
        before = text[pos:m.start()]
        out.append(before)
        done = "".join(out)
        value = values[int(m.group(1))]
        out.append(_url_value(done, value, source, at_end=m.end() == len(text), next_char=text[m.end():m.end() + 1]))
        pos = m.end()
    out.append(text[pos:])
    url = add_query("".join(out).strip(), query)
    if "<steps." not in url:  # a dry-run value only known at run time
        check_url(url)
    return url


def add_query(url: str, query: dict | None) -> str:
    """``url`` with the ``query`` parameters appended, each value percent-encoded."""
    pairs = [(k, _plain(v)) for k, v in (query or {}).items() if v is not None]
    if not pairs:
        return url
    head, sep, frag = url.partition("#")
    joiner = "" if head.endswith(("?", "&")) else ("&" if "?" in head else "?")
    return head + joiner + urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote) + sep + frag


def _url_value(done: str, value: Any, source: str, at_end: bool, next_char: str) -> str:
    if isinstance(value, expr.Unknown):
        return str(value)
    if is_secret(value):
        raise RunbookError(f"a secret may not be put in a URL ({source!r}): URLs end up in logs; send it in a header")
    text = _plain(value)
    if "://" not in done:
        if done == "" and _BASE.match(text) and (at_end or next_char in "/?#"):
            return text.rstrip("/") if next_char == "/" else text
        if done == "":
            raise RunbookError(f"{source!r}: a value that starts the URL must be an http(s)://host[:port][/path] base, got {text!r}")
        raise RunbookError(f"{source!r}: a template in the scheme of the URL is not allowed")
    rest = done.split("://", 1)[1]
    if not any(c in rest for c in "/?#"):  # the host part
        if re.fullmatch(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?|\d{1,5}", text):
            return text
        raise RunbookError(f"{source!r}: {text!r} is not a host name or address")
    if "#" in rest:
        return urllib.parse.quote(text, safe="")
    if "?" in rest:
        return urllib.parse.quote(text, safe="")
    if text in (".", "..", ""):
        raise RunbookError(f"{source!r}: {text!r} may not be a path segment"
                           + (" (an empty value would change which resource the URL names)" if not text else ""))
    return urllib.parse.quote(text, safe="")


def inventory_entry(r, section: str, name: str, needed_by: str):
    """An inventory http/prometheus entry whose URL can be shown (credentials go in headers)."""
    inventory = getattr(r, "inventory", None)
    if inventory is None:
        raise RunbookError(f"{needed_by} needs an inventory with {section} entry '{name}' "
                           "(use --inventory FILE or --env NAME)")
    entry = inventory.lookup(section, name)
    if is_secret(entry.url):
        raise RunbookError(f"{section} entry '{name}': its url comes from a secret source and cannot be shown; "
                           "put credentials in headers")
    return entry


def check_url(url: str, shown: str | None = None) -> None:
    """Refuse what is not a plain http(s) URL; ``shown`` names the URL in errors
    instead of the URL itself (a webhook URL is a credential)."""
    name = shown or repr(url)
    try:
        u = urllib.parse.urlsplit(url)
        u.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise RunbookError(f"invalid URL {name}: {exc}") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise RunbookError(f"not an http(s) URL: {name}")
    if u.username or u.password:
        raise RunbookError(f"credentials in a URL are not allowed ({u.scheme}://…@{u.hostname}): send them in a header")
    if re.search(r"\s", url):
        raise RunbookError(f"a URL may not contain spaces or line breaks: {name}")


def join_url(base: str, path: str) -> str:
    """An inventory base URL and a (rendered, quoted) path."""
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")


def render_path(source: str, ctx: dict) -> str:
    """A path (with optional ?query) below an endpoint's base URL, values quoted."""
    url = render_url("http://h/" + source.lstrip("/"), ctx)
    return url[len("http://h"):]


# --- PromQL -----------------------------------------------------------------

_PROM_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                            "offset", "bool", "atan2", "inf", "nan", "start", "end"})
_PROM_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_PROM_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_PROM_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")


def promql_string(value: str, quote: str = '"') -> str:
    """``value`` escaped for the inside of a PromQL ``"…"`` or ``'…'`` literal."""
    out = []
    for c in value:
        if c == "\\":
            out.append("\\\\")
        elif c == quote:
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def _promql_scan(text: str, state: str | None) -> str | None:
    """The string state after ``text`` (None: outside a string; else the quote)."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if state is None:
            if c in "\"'`":
                state = c
            elif c == "#":  # a comment to the end of the line
                j = text.find("\n", i)
                i = n if j == -1 else j
                continue
        elif state == "`":
            if c == "`":
                state = None
        else:
            if c == "\\":
                i += 2
                continue
            if c == state:
                state = None
            elif c == "\n":
                return "\n"  # unterminated: a string cannot span lines
        i += 1
    return state


def promql_problems(source: str) -> list[str]:
    """What is wrong with a PromQL template before it is rendered."""
    bare = re.sub(r"\{\{.*?\}\}", "x", source, flags=re.DOTALL)
    bare = re.sub(r"\{%.*?%\}|\{#.*?#\}", "", bare, flags=re.DOTALL)
    state = _promql_scan(bare, None)
    if state is not None:
        return ["a string literal is not closed (a quote is missing)"]
    return []


_RE2_META = re.compile(r"[\\.+*?()|\[\]{}^$]")


def _after_regex_matcher(text: str, quote: str) -> bool:
    """Whether the string literal open at the end of ``text`` follows =~ or !~."""
    i = len(text) - 1
    while i >= 0:
        if text[i] == quote:
            slashes = 0
            j = i - 1
            while j >= 0 and text[j] == "\\":
                slashes += 1
                j -= 1
            if slashes % 2 == 0:
                return text[:i].rstrip().endswith(("=~", "!~"))
        i -= 1
    return False


def render_promql(source: str, ctx: dict) -> str:
    """A PromQL query from a template: values escaped for the string literal they are in."""
    text, values = expr.render_marked(source, ctx)
    out: list[str] = []
    state = None
    pos = 0
    for m in expr.MARK.finditer(text):
        before = text[pos:m.start()]
        state = _promql_scan(before, state)
        out.append(before)
        value = values[int(m.group(1))]
        if isinstance(value, expr.Unknown):
            out.append(str(value))
        elif is_secret(value):
            raise RunbookError(f"a secret may not be put in a PromQL query ({source!r}): queries are logged by Prometheus")
        else:
            v = _plain(value)
            if state in ('"', "'"):
                if _after_regex_matcher("".join(out) + before, state):
                    v = _RE2_META.sub(lambda m: "\\" + m.group(0), v)  # one literal value, even after =~
                out.append(promql_string(v, state))
            elif state == "`":
                if "`" in v:
                    raise RunbookError(f"{v!r} contains a backtick and cannot go inside a `raw string`; use \"…\" quotes")
                out.append(v)
            elif _PROM_NUMBER.match(v) or _PROM_DURATION.match(v) or (_PROM_NAME.match(v) and v.lower() not in _PROM_KEYWORDS):
                out.append(v)
            else:
                raise RunbookError(
                    f"{v!r} would be pasted into the PromQL query outside a string literal; outside quotes only "
                    f"numbers, durations (5m) and metric or label names are accepted — put the template inside "
                    f"quotes (label=\"{{{{ … }}}}\") so that it is escaped")
        pos = m.end()
    out.append(text[pos:])
    state = _promql_scan(text[pos:], state)
    if state is not None:
        raise RunbookError(f"the PromQL query has a string literal that is not closed: {source!r}")
    return "".join(out).strip()


# --- values that may be secret (headers, bodies) ----------------------------


class Value:
    """A rendered value kept as parts until it is sent: text, Secret, LazySecret."""

    def __init__(self, parts: list, sensitive: bool = False, credential: bool | None = None):
        self.parts = parts
        self.sensitive = sensitive  # mask it when shown even if no part is a secret
        # a credential (a sensitive header name) is also masked in all output once sent; a merely
        # templated header is masked in the plan only (masking "ok" everywhere would garble output)
        self.credential = sensitive if credential is None else credential

    @property
    def secret(self) -> bool:
        return self.sensitive or any(is_secret(p) for p in self.parts)

    def shown(self) -> str:
        if self.sensitive:
            return MASK
        return "".join(MASK if is_secret(p) else str(p) for p in self.parts)

    def reveal(self, ctx) -> str:
        """The real value (reads lazy secrets; every secret read is masked from then on)."""
        text = "".join(_plain(ctx.reveal(p)) for p in self.parts)
        if self.credential and text:
            ctx.redactor.add(text)
            m = re.match(r"^\s*\S+\s+(\S.*)$", text)  # "Bearer abc": mask the credentials alone too
            if m:
                ctx.redactor.add(m.group(1))
        return text


def render_secret_value(source: Any, ctx: dict, sensitive: bool = False, credential: bool | None = None) -> Value:
    if isinstance(source, (Secret, LazySecret)):
        return Value([source], sensitive, credential)
    if not isinstance(source, str):
        return Value([_plain(source)], sensitive, credential)
    text, values = expr.render_marked(source, ctx)
    parts: list = []
    pos = 0
    for m in expr.MARK.finditer(text):
        parts.append(text[pos:m.start()])
        v = values[int(m.group(1))]
        parts.append(v if is_secret(v) or isinstance(v, expr.Unknown) else _plain(v))
        pos = m.end()
    parts.append(text[pos:])
    return Value([p for p in parts if not (isinstance(p, str) and p == "")], sensitive, credential)


def render_json(value: Any, ctx: dict):
    """JSON-like data with every template string rendered to a :class:`Value`."""
    if isinstance(value, str):
        return render_secret_value(value, ctx)
    if isinstance(value, dict):
        return {str(k): render_json(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [render_json(v, ctx) for v in value]
    return value


def json_shown(value: Any):
    if isinstance(value, Value):
        return value.shown()
    if isinstance(value, dict):
        return {k: json_shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_shown(v) for v in value]
    return value


def json_revealed(value: Any, ctx):
    if isinstance(value, Value):
        return value.reveal(ctx)
    if isinstance(value, dict):
        return {k: json_revealed(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [json_revealed(v, ctx) for v in value]
    return value


_SENSITIVE_HEADER = re.compile(r"auth|token|secret|key|cookie|password|session|signature|credential", re.IGNORECASE)


def sensitive_header(name: str) -> bool:
    return bool(_SENSITIVE_HEADER.search(name))


# --- sending ----------------------------------------------------------------


class HttpError(Exception):
    """One line for the operator; ``timeout`` when the time limit ran out."""

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


class _Pools:
    """The run's urllib3 pool managers (one per TLS setting), kept in
    ``ctx.connections`` so that connections are reused by later steps."""

    def __init__(self):
        self.managers: dict = {}

    def get(self, verify: bool, ca_file: str | None):
        import urllib3

        key = (verify, ca_file)
        if key not in self.managers:
            self.managers[key] = urllib3.PoolManager(
                num_pools=20, maxsize=4, cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE",
                ca_certs=ca_file if verify else None, retries=False)
        return self.managers[key]

    def close(self) -> None:
        for m in self.managers.values():
            m.clear()
        self.managers.clear()


def pools(ctx) -> _Pools:
    p = ctx.connections.get("http")
    if p is None:
        p = ctx.connections["http"] = _Pools()
    return p


def where(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return f"{u.hostname}:{port}"


READ_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_REDIRECTS = 5
_CHUNK = 65536


def _origin(url: str) -> tuple:
    u = urllib.parse.urlsplit(url)
    return (u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80))


def send(ctx, method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | None = None,
         timeout: float = DEFAULT_TIMEOUT, verify: bool = True, ca_file: str | None = None,
         follow_redirects: bool = False, max_body: int = MAX_BODY) -> dict:
    """Send one request; the response as a dict (status, reason, headers,
    body bytes, truncated, elapsed, url), or :class:`HttpError` in one line.

    ``timeout`` bounds the whole request, body included (not each read); the
    step's remaining time (``ctx.timeout``), when shorter, wins — and a request
    stopped by it is reported with ``timeout=True``.  Redirects are followed
    only when asked, only for reads, never from https to http, and without the
    request's headers when they lead to another origin (credentials stay home)."""
    by_step = ctx.timeout is not None and ctx.timeout < timeout
    limit = max(0.001, ctx.timeout if by_step else timeout)
    started = time.monotonic()
    deadline = started + limit
    for name, value in (headers or {}).items():
        if any(c in value for c in "\r\n\0") or any(ord(c) > 255 for c in value):
            raise HttpError(f"header {name}: its value has a line break or characters HTTP headers cannot carry "
                            "(check the inventory or the secret's source)")
    hops = 0
    current, current_headers = url, dict(headers or {})
    while True:
        resp, data = _once(ctx, method, current, current_headers, body, deadline, limit, verify, ca_file, max_body,
                           by_step)
        location = resp.headers.get("location")
        if not (follow_redirects and 300 <= resp.status < 400 and location and method in READ_METHODS):
            break
        hops += 1
        if hops > MAX_REDIRECTS:
            raise HttpError(f"too many redirects from {url}")
        target = urllib.parse.urljoin(current, location)
        if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
            raise HttpError(f"{current} redirects to {target.split('?')[0]!r}, which is not http(s); not followed")
        if _origin(current)[0] == "https" and _origin(target)[0] == "http":
            raise HttpError(f"{current} redirects from https to plain http ({where(target)}); not followed")
        if _origin(target) != _origin(current):
            current_headers = {}  # no inventory or step header (credentials) crosses to another origin
        current = target
    headers_out: dict[str, str] = {}
    for k, v in resp.headers.items():
        k = k.lower()
        headers_out[k] = f"{headers_out[k]}, {v}" if k in headers_out else v
    return {"status": resp.status, "reason": resp.reason or _reason(resp.status), "headers": headers_out,
            "body": data[:max_body], "truncated": len(data) > max_body, "elapsed": time.monotonic() - started,
            "url": current}


def _once(ctx, method, url, headers, body, deadline, limit, verify, ca_file, max_body, by_step):
    """One request (no redirect followed); the body read against the deadline."""
    import warnings

    import urllib3
    from urllib3 import exceptions as E

    manager = pools(ctx).get(verify, ca_file)
    at = where(url)
    remaining = max(0.001, deadline - time.monotonic())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", E.InsecureRequestWarning)
            resp = manager.request(method, url, headers=headers, body=body, redirect=False, retries=False,
                                   timeout=urllib3.Timeout(connect=remaining, read=remaining), preload_content=False)
            try:
                chunks, size = [], 0
                while method != "HEAD" and size <= max_body:
                    if time.monotonic() >= deadline:
                        raise HttpError(f"{at}: the answer did not finish within {limit:g}s"
                                        + (" (the step's timeout)" if by_step else ""), timeout=by_step)
                    want = min(_CHUNK, max_body + 1 - size)
                    # read1: what has arrived, so a trickling answer cannot outlast the deadline
                    chunk = resp.read1(want) if hasattr(resp, "read1") else resp.read(want, decode_content=True)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                data = b"".join(chunks)
            finally:
                resp.release_conn()
    except (E.HTTPError, OSError) as exc:
        reason = exc.reason if isinstance(exc, E.MaxRetryError) else exc
        raise HttpError(_error(reason, at, limit, verify, by_step), timeout=by_step and _is_timeout(reason)) from None
    except (ValueError, UnicodeError) as exc:
        raise HttpError(f"{at}: the request could not be sent ({type(exc).__name__})") from None
    return resp, data


def _reason(code: int) -> str:
    import http.client

    return http.client.responses.get(code, "")


def _is_timeout(exc) -> bool:
    from urllib3 import exceptions as E

    return isinstance(exc, (E.ReadTimeoutError, E.TimeoutError)) and not isinstance(exc, E.NewConnectionError) \
        or isinstance(exc, TimeoutError)


def _error(exc, at: str, limit: float, verify: bool, by_step: bool) -> str:
    from urllib3 import exceptions as E

    text = str(exc)
    if isinstance(exc, E.NameResolutionError):
        host = at.rsplit(":", 1)[0]
        return f"cannot resolve host '{host}' (DNS lookup failed)"
    if isinstance(exc, E.NewConnectionError):
        if "refused" in text.lower():
            return f"cannot connect to {at}: connection refused (is the service running and listening there?)"
        m = re.search(r"\[Errno -?\d+\] (.*)$", text)
        return f"cannot connect to {at}: {m.group(1) if m else text}"
    if isinstance(exc, (E.ConnectTimeoutError,)):
        return f"no connection to {at} within {limit:g}s" + (" (the step's timeout)" if by_step else "")
    if isinstance(exc, (E.ReadTimeoutError, TimeoutError)) or "timed out" in text.lower():
        return f"no answer from {at} within {limit:g}s" + (" (the step's timeout)" if by_step else "")
    if isinstance(exc, E.SSLError) or "ssl" in text.lower():
        m = re.search(r"certificate verify failed: ([^(]*)", text)
        if m:
            return (f"TLS certificate of {at} not trusted: {m.group(1).strip()} "
                    f"(give the CA with ca_file: PATH, or verify_tls: false to skip verification)")
        m = re.search(r"\] ([^(\]]+?)(?: \(_ssl\.c.*)?$", text)
        return f"TLS error with {at}: {(m.group(1) if m else text).strip()}"
    if isinstance(exc, E.ProtocolError):
        return f"the connection to {at} broke: {text.split(':', 1)[0]}"
    if isinstance(exc, E.LocationValueError):
        return f"invalid URL for {at}: {text}"
    return f"request to {at} failed: {text.splitlines()[0] if text else type(exc).__name__}"


def decode_body(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def parse_json(data: bytes):
    """(value, None) or (None, why it is not JSON)."""
    if not data.strip():
        return None, "the body is empty"
    try:
        return json.loads(data), None
    except ValueError as exc:
        return None, f"the body is not JSON ({str(exc).split(':')[0]})"


def one_line(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: Any) -> float | None:
    """A Prometheus sample value ("0.5", "NaN", "+Inf") as a float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
