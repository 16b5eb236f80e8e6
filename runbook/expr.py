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
from runbook.secrets import Secret

ROOTS = ("params", "steps", "inventory", "env", "run")

_secret_env: contextvars.ContextVar[dict | None] = contextvars.ContextVar("secret_env", default=None)


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


def _shell_finalize(value: Any) -> str:
    if isinstance(value, Unknown):
        return str(value)
    if isinstance(value, Secret):
        var = "RUNBOOK_SECRET_" + re.sub(r"[^A-Z0-9]+", "_", value.name.upper()).strip("_")
        env = _secret_env.get()
        if env is not None:
            env[var] = str(value)
        return f'"${{{var}}}"'
    if value is None:
        value = ""
    elif isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def _text_finalize(value: Any) -> Any:
    return "" if value is None else value


@lru_cache(maxsize=None)
def _env(mode: str):
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_shell_finalize if mode == "shell" else _text_finalize,
    )
    env.filters["tojson_compact"] = lambda v: __import__("json").dumps(v, separators=(",", ":"), default=str)
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
    """Render a template. ``mode`` is ``"text"`` or ``"shell"``.

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


def render_shell(source: str, ctx: dict) -> tuple[str, dict[str, str]]:
    """Render a shell command; return it with the environment variables that
    carry the secrets it references."""
    env: dict[str, str] = {}
    token = _secret_env.set(env)
    try:
        return render(source, ctx, "shell"), env
    finally:
        _secret_env.reset(token)


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


def references(source: str, is_expression: bool = False) -> tuple[list[Reference], str | None]:
    """The names a template or condition reads, and a syntax error message
    (or None).  Only roots that are not assigned inside the template count."""
    from jinja2 import meta, nodes
    from jinja2.exceptions import TemplateSyntaxError

    env = _env("text")
    try:
        if is_expression:
            ast = env.parse("{{ (" + source + ") }}")
        else:
            ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return [], f"{exc.message}"
    free = meta.find_undeclared_variables(ast)
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
    for name in free:
        if name not in seen_roots:
            refs.append(Reference((name, None)))
    return refs, None


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
