"""The one expression language of runbooks: templates and conditions.

It is Jinja2 in its immutable sandbox (no access to Python internals, no
imports, no file or network access), with two rules of our own:

* A value rendered into a shell command is shell-quoted automatically
  (``shlex.quote``), so a parameter like ``x; touch /tmp/pwned`` stays one
  argument.  A :class:`~runbook.secrets.Secret` is never pasted into a command:
  it renders as a reference to an environment variable that the step passes
  to the process, so it never shows in an argument list.
* Undefined names are errors, never empty strings.

Templates are written ``{{ params.service }}``; conditions are bare
expressions: ``steps.pool.outputs.n > 140``.
"""

from __future__ import annotations

import contextvars
import re
import shlex
from functools import lru_cache
from typing import Any, Iterable

from runbook.errors import RunbookError
from runbook.secrets import MASK, LazySecret, Secret

ROOTS = ("params", "steps", "inventory", "env", "run")

_secret_env: contextvars.ContextVar[dict | None] = contextvars.ContextVar("secret_env", default=None)
_marks: contextvars.ContextVar[list | None] = contextvars.ContextVar("marks", default=None)
MARK = re.compile("\x00(\\d+)\x00")  # a value's place in render_marked's text


class ExprError(RunbookError):
    pass


class Unknown:
    """A value that is only known at run time (a step's output, in a dry-run).

    Any attribute or item of it is another Unknown; it renders as
    ``<steps.pods.stdout>`` so that the plan shows where the value goes.
    """

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path

    def __getattr__(self, name: str) -> "Unknown":
        if name.startswith("_"):
            raise AttributeError(name)
        return Unknown(f"{self.path}.{name}")

    def __getitem__(self, key) -> "Unknown":
        if isinstance(key, str) and key.isidentifier():
            return Unknown(f"{self.path}.{key}")
        return Unknown(f"{self.path}[{key!r}]")

    def __str__(self) -> str:
        return f"<{self.path}>"

    __repr__ = __str__

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0

    def _op(self, other, sym: str) -> "Unknown":
        return Unknown(f"{self.path} {sym} {other}")

    def _rop(self, other, sym: str) -> "Unknown":
        return Unknown(f"{other} {sym} {self.path}")

    # arithmetic and comparisons on a run-time value are run-time values too
    __add__ = lambda self, o: self._op(o, "+")  # noqa: E731
    __radd__ = lambda self, o: self._rop(o, "+")  # noqa: E731
    __sub__ = lambda self, o: self._op(o, "-")  # noqa: E731
    __rsub__ = lambda self, o: self._rop(o, "-")  # noqa: E731
    __mul__ = lambda self, o: self._op(o, "*")  # noqa: E731
    __rmul__ = lambda self, o: self._rop(o, "*")  # noqa: E731
    __truediv__ = lambda self, o: self._op(o, "/")  # noqa: E731
    __rtruediv__ = lambda self, o: self._rop(o, "/")  # noqa: E731
    __floordiv__ = lambda self, o: self._op(o, "//")  # noqa: E731
    __mod__ = lambda self, o: self._op(o, "%")  # noqa: E731
    __lt__ = lambda self, o: self._op(o, "<")  # noqa: E731
    __le__ = lambda self, o: self._op(o, "<=")  # noqa: E731
    __gt__ = lambda self, o: self._op(o, ">")  # noqa: E731
    __ge__ = lambda self, o: self._op(o, ">=")  # noqa: E731
    __neg__ = lambda self: Unknown(f"-{self.path}")  # noqa: E731

    def __bool__(self) -> bool:  # a dry-run walks every branch; `if` takes the first
        return True


def _keep_unknown(filter_func):
    def wrapped(value, *args, **kwargs):
        return value if isinstance(value, Unknown) else filter_func(value, *args, **kwargs)

    return wrapped


def _shell_finalize(value: Any) -> str:
    if isinstance(value, Unknown):
        return str(value)
    if isinstance(value, (Secret, LazySecret)):
        # Never in the command line: a reference to an environment variable
        # that carries it (a LazySecret is read when the step runs).
        base = "RUNBOOK_SECRET_" + re.sub(r"[^A-Z0-9]+", "_", value.name.upper()).strip("_")
        var, n = base, 2
        env = _secret_env.get()
        if env is not None:
            while var in env and env[var] is not value and not (isinstance(value, Secret) and env[var] == value):
                var, n = f"{base}_{n}", n + 1
            env[var] = value
        return f'"${{{var}}}"'
    if value is None:
        value = ""
    elif isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def _text_finalize(value: Any) -> Any:
    if isinstance(value, Secret):  # text is for people: secrets never show
        return MASK
    return "" if value is None else value


def _raw_finalize(value: Any) -> Any:
    return "" if value is None else value


def _marked_finalize(value: Any) -> str:
    values = _marks.get()
    values.append(value)
    return f"\x00{len(values) - 1}\x00"


@lru_cache(maxsize=None)
def _env(mode: str):
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize={"shell": _shell_finalize, "text": _text_finalize, "raw": _raw_finalize,
                  "marked": _marked_finalize}[mode],
    )
    for name in ("int", "float", "round", "abs", "string", "lower", "upper", "trim"):
        env.filters[name] = _keep_unknown(env.filters[name])
    return env


@lru_cache(maxsize=4096)
def _compile_template(source: str, mode: str):
    return _env(mode).from_string(source)


@lru_cache(maxsize=4096)
def _compile_expr(source: str):
    return _env("text").compile_expression(source, undefined_to_none=False)


def is_template(s: Any) -> bool:
    return isinstance(s, str) and ("{{" in s or "{%" in s)


def _explain(exc: Exception) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if type(exc).__name__ == "UndefinedError":
        msg = msg.replace("'dict object'", "the value").replace("'jinja2.", "'")
        return f"{msg}"
    if type(exc).__name__ == "SecurityError":
        return f"not allowed in the sandbox: {msg}"
    return msg


def render(source: str, ctx: dict, mode: str = "text") -> str:
    """Render a template. ``mode`` is ``"text"`` (for people: secrets show as
    ``***``), ``"raw"`` (for processes) or ``"shell"``.

    For shell mode use :func:`render_shell`, which also returns the secret
    environment the command needs.
    """
    if not is_template(source):
        return source
    try:
        return _compile_template(source, mode).render(ctx)
    except RunbookError:
        raise
    except Exception as exc:  # jinja errors of every kind become one line
        raise ExprError(f"template {source!r}: {_explain(exc)}") from None


def render_marked(source: str, ctx: dict) -> tuple[str, list]:
    """The template rendered with each value replaced by a marker (:data:`MARK`),
    and the values themselves, for kinds that escape each value for where it
    sits (a URL part, a PromQL string) rather than for a shell."""
    if not is_template(source):
        return source.replace("\x00", ""), []
    values: list = []
    token = _marks.set(values)
    try:
        return render(source.replace("\x00", ""), ctx, "marked"), values
    finally:
        _marks.reset(token)


def render_shell(source: str, ctx: dict, secrets: Iterable[str] = ()) -> tuple[str, dict[str, Any]]:
    """Render a shell command; return it with the environment variables that
    carry the secrets it references (values are Secret or LazySecret).

    Refuses a template inside quotes, backticks or a here-document (where
    shell quoting does not protect), and a command in which a secret value
    would appear (e.g. ``{{ params.token | upper }}``)."""
    for problem in shell_quoting_problems(source):
        raise ExprError(problem)
    env: dict[str, Any] = {}
    token = _secret_env.set(env)
    try:
        command = render(source, ctx, "shell")
    finally:
        _secret_env.reset(token)
    low = re.sub(r'"\$\{RUNBOOK_SECRET_\w+\}"', "", command).lower()  # our own references are not the secret
    for secret in secrets:
        if secret and secret.lower() in low:
            raise ExprError("a secret would appear in the command line: use {{ params.NAME }} alone "
                            "(it is passed as an environment variable), not inside a filter or an expression")
    return command, env


_WHOLE = re.compile(r"^\s*\{\{(.*)\}\}\s*$", re.DOTALL)


def render_value(source: str, ctx: dict) -> Any:
    """Render a value that goes to a process, not to a person (an
    environment variable): ``{{ expr }}`` alone keeps its object, so a
    secret stays a Secret/LazySecret for the engine to resolve and mask."""
    m = _WHOLE.match(source) if isinstance(source, str) else None
    if m and "}}" not in m.group(1) and "{{" not in m.group(1):
        return evaluate(m.group(1), ctx)
    return render(source, ctx, "raw")


def render_data(value: Any, ctx: dict) -> Any:
    """Render every template string inside JSON-like data (text mode)."""
    if isinstance(value, str):
        return render(value, ctx)
    if isinstance(value, dict):
        return {k: render_data(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [render_data(v, ctx) for v in value]
    return value


def evaluate(source: str, ctx: dict) -> Any:
    """Evaluate a condition such as ``steps.pool.outputs.n > 140``."""
    try:
        return _compile_expr(source)(ctx)
    except RunbookError:
        raise
    except Exception as exc:
        raise ExprError(f"condition {source!r}: {_explain(exc)}") from None


# --- static analysis -------------------------------------------------------


class Reference(tuple):
    """``(root, key, …)``: e.g. ``("params", "service")`` or
    ``("inventory", "hosts", "api-1", "address")``; key is None when the root
    is used whole."""

    @property
    def root(self) -> str:
        return self[0]

    @property
    def key(self) -> str | None:
        return self[1]

    @property
    def path(self) -> tuple:
        """The statically known keys after the root, e.g. ("hosts", "api-1", "address")."""
        return tuple(k for k in self[1:] if k is not None)


def explain(source: str, ctx: dict, limit: int = 60, redact=None) -> str:
    """Why a condition came out as it did: the values it read, e.g.
    ``steps.pool.rows[0].n = 152`` (secrets masked, long values cut)."""
    refs, error = references(source, True)
    if error:
        return ""
    parts = []
    for ref in refs:
        if ref.root not in ("steps", "params", "inventory", "env", "run"):
            continue
        text = ref.root + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" if str(k).isidentifier() else f"[{k!r}]"
                                  for k in ref.path)
        try:
            value = evaluate(text, ctx)
        except Exception:  # noqa: BLE001 - an explanation must never fail the branch
            continue
        if isinstance(value, (dict, list)) or value.__class__.__name__ == "Unknown":
            continue
        shown = MASK if isinstance(value, (Secret, LazySecret)) else repr(value) if isinstance(value, str) else str(value)
        if redact is not None:  # before cutting: a secret cut in two would no longer be recognised
            shown = redact(shown)
        if len(shown) > limit:
            shown = shown[: limit - 1] + "…"
        parts.append(f"{text} = {shown}")
    return ", ".join(dict.fromkeys(parts))


@lru_cache(maxsize=8192)
def _parse(source: str, is_expression: bool):
    from jinja2.exceptions import TemplateSyntaxError

    try:
        return _env("text").parse("{{ (" + source + ") }}" if is_expression else source), None
    except TemplateSyntaxError as exc:
        return None, exc.message


# `{{ a.b["c"][0] }}` and nothing fancier: most templates; read without Jinja's parser.
_SIMPLE_PATH = r"""[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[(?:"[^"\\]*"|'[^'\\]*'|\d+)\])*"""
_SIMPLE_EXPR = re.compile(r"\{\{\s*(" + _SIMPLE_PATH + r")\s*\}\}")
_PATH_PART = re.compile(r"""\.([A-Za-z_]\w*)|\["([^"]*)"\]|\['([^']*)'\]|\[(\d+)\]""")


def _simple_paths(source: str) -> list[tuple[str, tuple]] | None:
    """(root, keys) of each ``{{ path }}`` of a template made only of text and simple paths, in
    order, or None for any other template (a filter, a statement, a comment, an operator…)."""
    rest = _SIMPLE_EXPR.sub("", source)
    if "{{" in rest or "{%" in rest or "{#" in rest or "}}" in rest:
        return None
    paths = []
    for m in _SIMPLE_EXPR.finditer(source):
        path = m.group(1)
        root = re.match(r"[A-Za-z_]\w*", path).group()
        keys = []
        for part in _PATH_PART.finditer(path, len(root)):
            attr, dq, sq, idx = part.groups()
            keys.append(int(idx) if idx is not None else (attr if attr is not None else (dq if dq is not None else sq)))
        paths.append((root, tuple(keys)))
    return paths


def _simple_references(source: str) -> tuple[Reference, ...] | None:
    """References of a template made only of text and simple paths, or None."""
    paths = _simple_paths(source)
    if paths is None:
        return None
    refs = [Reference((root, *keys) if keys else (root, None)) for root, keys in paths]
    # as the Jinja path: a root used whole counts only when it is never used with keys
    keyed = {r.root for r in refs if r.key is not None}
    return tuple(dict.fromkeys(r for r in refs if r.key is not None or r.root not in keyed))


@lru_cache(maxsize=8192)
def references(source: str, is_expression: bool = False) -> tuple[tuple[Reference, ...], str | None]:
    """The names a template or condition reads, and a syntax error message
    (or None).  Only roots that are not assigned inside the template count."""
    if not is_expression:
        simple = _simple_references(source)
        if simple is not None:
            return simple, None
    return _jinja_references(source, is_expression)


def _jinja_references(source: str, is_expression: bool) -> tuple[tuple[Reference, ...], str | None]:
    from jinja2 import nodes

    ast, error = _parse(source, is_expression)
    if error is not None:
        return (), error
    names = list(ast.find_all(nodes.Name))
    assigned = {n.name for n in names if n.ctx in ("store", "param")}
    free = {n.name for n in names if n.ctx == "load"} - assigned
    refs: list[Reference] = []
    seen_roots: set[str] = set()
    inner_nodes = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, (nodes.Getattr, nodes.Getitem)):
            inner_nodes.add(id(node.node))
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if id(node) in inner_nodes:
            continue  # only the outermost node of a chain: a.b.c is one reference
        chain: list[str | None] = []
        cur = node
        while isinstance(cur, (nodes.Getattr, nodes.Getitem)):
            if isinstance(cur, nodes.Getattr):
                chain.append(cur.attr)
            elif isinstance(cur.arg, nodes.Const) and isinstance(cur.arg.value, (str, int)):
                chain.append(cur.arg.value)
            else:
                chain.append(None)
            cur = cur.node
        if isinstance(cur, nodes.Name) and cur.name in free:
            chain.reverse()
            if None in chain:  # a computed key: the static part ends before it
                chain = chain[: chain.index(None)]
            refs.append(Reference((cur.name, *chain) if chain else (cur.name, None)))
            seen_roots.add(cur.name)
    for name in sorted(free):
        if name not in seen_roots:
            refs.append(Reference((name, None)))
    return tuple(refs), None


@lru_cache(maxsize=4096)
def secret_misuse(source: str, secret_names: frozenset) -> tuple[str, ...]:
    """Secret parameters that a shell template uses other than as a whole
    ``{{ params.NAME }}`` (inside a filter, a concatenation, a statement…)."""
    if not secret_names or "params" not in source:  # nothing to misuse: no parse (Jinja's lexer costs ~30 ms once)
        return ()
    paths = _simple_paths(source)
    if paths is not None:  # text and whole paths: only params.SECRET.more (a part of it) is a misuse
        return tuple(dict.fromkeys(keys[0] for root, keys in paths
                                   if root == "params" and len(keys) > 1 and keys[0] in secret_names))
    return _jinja_secret_misuse(source, secret_names)


def _jinja_secret_misuse(source: str, secret_names: frozenset) -> tuple[str, ...]:
    from jinja2 import nodes

    ast, error = _parse(source, False)
    if error is not None:
        return ()

    def is_secret(node) -> str | None:
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "params":
            return node.attr if node.attr in secret_names else None
        if isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name == "params" \
                and isinstance(node.arg, nodes.Const):
            return node.arg.value if node.arg.value in secret_names else None
        return None

    bare = {id(child) for out in ast.find_all(nodes.Output) for child in out.nodes if is_secret(child)}
    bad = [is_secret(n) for n in ast.find_all((nodes.Getattr, nodes.Getitem)) if is_secret(n) and id(n) not in bare]
    return tuple(dict.fromkeys(bad))


_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_QUOTE_NAMES = {"'": "single quotes", '"': "double quotes", "`": "backticks", "<<": "a here-document",
                "((": "shell arithmetic", "[[": "a [[ … ]] test (its operands may be evaluated as arithmetic)"}


@lru_cache(maxsize=4096)
def shell_quoting_problems(source: str) -> tuple[str, ...]:
    """Templates placed where automatic shell quoting does not protect:
    inside '…', "…", `…` or a here-document.  (Inside "…" a quoted value's
    quotes are literal, so $(…) in the value would run.)"""
    if "{{" not in source:
        return ()
    problems: list[str] = []
    stack: list[str] = []  # "'", '"', "`", "(" for $( … )
    heredoc: str | None = None  # delimiter of a pending or open here-document
    in_heredoc = False
    pos = 0
    for m in _TEMPLATE.finditer(source):
        text = source[pos:m.start()]
        stack, heredoc, in_heredoc = _scan(text, stack, heredoc, in_heredoc)
        if m.group().startswith("{{"):
            where = "<<" if in_heredoc else next((c for c in reversed(stack) if c in ("((", "[[")), None) \
                or (stack[-1] if stack and stack[-1] != "(" else None)
            if where:
                problems.append(f"{m.group()} is inside {_QUOTE_NAMES[where]}, where shell quoting does not protect it; "
                                f"values are quoted automatically, so write the template outside quotes")
        pos = m.end()
    return tuple(problems)


def _scan(text: str, stack: list[str], heredoc: str | None, in_heredoc: bool):
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        top = stack[-1] if stack else None
        if in_heredoc:
            if c == "\n":
                line_end = text.find("\n", i + 1)
                line = text[i + 1: line_end if line_end != -1 else n]
                if line.strip() == heredoc and line_end != -1:
                    in_heredoc, heredoc = False, None
            i += 1
            continue
        if top == "'":
            if c == "'":
                stack.pop()
        elif top == "`":
            if c == "\\":
                i += 1
            elif c == "`":
                stack.pop()
        elif top == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                stack.pop()
            elif c == "`":
                stack.append("`")
            elif text.startswith("$(", i):
                stack.append("(")
                i += 1
        else:  # unquoted, or inside $( … ), (( … )) or [[ … ]]
            if c == "\\":
                i += 1
            elif c in "'\"`":
                stack.append(c)
            elif text.startswith("$((", i) or text.startswith("((", i):
                stack.append("((")
                i += 2 if text.startswith("$((", i) else 1
            elif text.startswith("))", i) and top == "((":
                stack.pop()
                i += 1
            elif text.startswith("[[", i):
                stack.append("[[")
                i += 1
            elif text.startswith("]]", i) and top == "[[":
                stack.pop()
                i += 1
            elif text.startswith("$(", i):
                stack.append("(")
                i += 1
            elif c == ")" and top == "(":
                stack.pop()
            elif text.startswith("<<", i) and not text.startswith("<<<", i):
                m = re.match(r"<<-?\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)", text[i:])
                if m:
                    heredoc = m.group(1)
                    i += m.end() - 1
            elif c == "\n" and heredoc:
                in_heredoc = True
        i += 1
    return stack, heredoc, in_heredoc


def iter_strings(value: Any, path: str = "") -> Iterable[tuple[str, str]]:
    """(path, string) for every string inside JSON-like data."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_strings(v, f"{path}[{i}]")
