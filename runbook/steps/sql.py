"""``sql``: statements against an inventory PostgreSQL database (psycopg 3).

    - id: pool
      sql:
        database: main
        query: "SELECT state, count(*) AS n FROM pg_stat_activity WHERE datname = %(db)s GROUP BY state"
        args: {db: "{{ params.dbname }}"}
      readonly: true

* Values reach the server as bound parameters (``%(name)s`` placeholders and
  ``args``); the SQL text itself may not contain templates.  With ``args``,
  write a literal ``%`` as ``%%``.  One statement per step: the statement is
  always sent with the extended protocol, which refuses several.
* ``readonly: true``: a ``READ ONLY`` transaction with a ``statement_timeout``
  (default 30 s, ``statement_timeout:`` to change it), as the inventory's
  ``readonly_role`` when the database entry names one; statements calling a
  function with side effects (``pg_terminate_backend``…) are refused, because
  PostgreSQL lets those run in a read-only transaction.
* Otherwise the step is a write: confirmed first, run in a transaction that
  commits only on success; ``expect_rows`` ({max: 50}, {min: 1} or an exact
  count) rolls it back when the statement touched other than that many rows;
  ``autocommit: true`` for statements that cannot run in a transaction
  (``VACUUM``, ``CREATE INDEX CONCURRENTLY``).
* Result: ``rows`` (a list of mappings), ``rowcount``, ``columns``; shown as a
  table.  One connection per database (and role) per run, reused.

psycopg is imported only when a ``sql`` step runs.
"""

from __future__ import annotations

import re
import time
from typing import Any

from runbook import expr
from runbook import schema as S
from runbook.errors import RunbookError
from runbook.schema import parse_duration
from runbook.secrets import LazySecret, Secret
from runbook.steps import Action, StepResult

SCHEMA = S.Obj(
    {
        "database": S.Str(doc="the inventory database"),
        "query": S.Str(doc="one SQL statement; values as %(name)s placeholders"),
        "args": S.MapOf(S.AnyValue(), key_pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", doc="values bound to the placeholders (templates allowed)"),
        "statement_timeout": S.Duration(positive=True, doc="server-side limit for the statement (default 30s)"),
        "autocommit": S.Bool(doc="run outside a transaction (VACUUM, CREATE INDEX CONCURRENTLY)"),
        "expect_rows": S.OneOf(
            (
                (int, S.Int(minimum=0, doc="exactly this many rows")),
                (dict, S.Obj({"min": S.Int(minimum=0), "max": S.Int(minimum=0)})),
            ),
            doc="roll back unless the statement touched this many rows",
            expect_text="a row count or a mapping with min and/or max",
        ),
        "max_rows": S.Int(minimum=1, maximum=100_000, doc="rows kept in the result (default 1000)"),
    },
    required=("database", "query"),
    doc="Run a SQL statement against an inventory database",
)
DEFAULT_READONLY = False
FIXED_EFFECT = None
RESULT_FIELDS = ("rows", "rowcount", "columns", "truncated")
SHOW_OUTPUT = True
DEFAULT_STATEMENT_TIMEOUT = 30.0
DEFAULT_MAX_ROWS = 1000
TABLE_ROWS, TABLE_CELL = 50, 60  # what the table shows before it truncates

# Functions that act even inside a READ ONLY transaction.
SIDE_EFFECT_FUNCTIONS = re.compile(
    r"""\b(pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_rotate_logfile|set_config|nextval|setval
    |dblink_exec|dblink|dblink_send_query|lo_\w+|pg_(?:try_)?advisory_\w+|pg_notify|pg_switch_wal
    |pg_create_restore_point|pg_promote|pg_stat_reset\w*|pg_file_write|pg_file_unlink|pg_file_rename
    |pg_logical_emit_message|pg_replication_origin_\w+|pg_create_\w+_replication_slot|pg_drop_replication_slot)\s*\(""",
    re.IGNORECASE | re.VERBOSE,
)
COPY_PROGRAM = re.compile(r"\bcopy\b.*\b(to|from)\s+program\b", re.IGNORECASE | re.DOTALL)
PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


def normalize(value) -> dict:
    return dict(value)


def templates(body: dict) -> list[tuple[str, str, str]]:
    out = [("database", body["database"], "text")]
    out += [(f"args.{k}", v, "value") for k, v in (body.get("args") or {}).items() if isinstance(v, str)]
    return out


def edges(body: dict) -> list[tuple[str, str]]:
    return []


def inventory_targets(body: dict) -> list[tuple[str, str, str]]:
    return [("database", body["database"], "database")]


def _strip_sql(sql: str) -> str:
    """The SQL without comments and string literals; quoted identifiers unquoted."""
    out, i, n = [], 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j == -1 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j == -1 else j + 2
        elif c == "'":
            j = i + 1
            while j < n and not (sql[j] == "'" and not sql.startswith("''", j)):
                j += 2 if sql.startswith("''", j) else 1
            out.append("''")
            i = j + 1
        elif c == "$" and (m := re.match(r"\$([A-Za-z_]\w*)?\$", sql[i:])):
            tag = m.group()
            j = sql.find(tag, i + len(tag))
            out.append("''")
            i = n if j == -1 else j + len(tag)
        elif c == '"':
            j = sql.find('"', i + 1)
            out.append(sql[i + 1: n if j == -1 else j])
            i = n if j == -1 else j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def side_effects(sql: str) -> list[str]:
    """Names of the calls in ``sql`` that act even in a read-only transaction."""
    bare = _strip_sql(sql)
    found = [m.group(1).lower() for m in SIDE_EFFECT_FUNCTIONS.finditer(bare)]
    if COPY_PROGRAM.search(bare):
        found.append("COPY … PROGRAM")
    return list(dict.fromkeys(found))


def static_problems(step) -> list[tuple[str, str, str]]:
    """(key, message, rule) the validator reports for this step."""
    body, problems = step.body, []
    if expr.is_template(body["query"]):
        problems.append(("query", "the SQL text may not contain templates: write %(name)s and give the value "
                                  "under args, so that it is sent as a bound parameter", "schema"))
    if step.effect == "read":
        for name in side_effects(body["query"]):
            problems.append(("query", f"a read-only step may not call {name}: it acts even in a READ ONLY transaction; "
                                      "make the step a write step (drop readonly) so it is confirmed", "schema"))
        if body.get("autocommit"):
            problems.append(("autocommit", "autocommit is for writes that cannot run in a transaction; "
                                           "a read-only step runs in a READ ONLY transaction", "schema"))
    used = {m.group(1) for m in PLACEHOLDER.finditer(body["query"]) if m.group(1)}
    if PLACEHOLDER.search(body["query"]) and "%s" in [m.group() for m in PLACEHOLDER.finditer(body["query"])]:
        problems.append(("query", "use named placeholders %(name)s with args, not %s", "schema"))
    args = set(body.get("args") or {})
    for name in sorted(used - args):
        problems.append(("query", f"placeholder %({name})s has no value under args", "schema"))
    for name in sorted(args - used):
        problems.append(("args", f"args.{name} is not used by the query (write %({name})s where it goes)", "schema"))
    return problems


# --- rendering --------------------------------------------------------------


def _database(r, name: str):
    inventory = getattr(r, "inventory", None)
    if inventory is None:
        raise RunbookError(f"a sql step needs an inventory with database '{name}' (use --inventory FILE or --env NAME)")
    return inventory.lookup("database", name)


def _describe(db, role: str | None) -> str:
    """Where the statement goes, for people: never a password."""
    if db.service:
        where = f"service={db.service}"
    elif db.dsn is not None:
        where = _safe_dsn(str(db.dsn) if not isinstance(db.dsn, LazySecret) else "dsn from a secret source")
    else:
        where = f"{db.user or '(default user)'}@{db.host or 'localhost'}:{db.port or 5432}/{db.dbname or '(default)'}"
    return where + (f" as role {role}" if role else "")


def _safe_dsn(dsn: str) -> str:
    dsn = re.sub(r"(://[^:/@\s]*:)[^@/\s]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn, flags=re.IGNORECASE)


def _statement_timeout(step) -> float:
    return parse_duration(step.body.get("statement_timeout", DEFAULT_STATEMENT_TIMEOUT))


def action(step, r) -> Action:
    body = step.body
    name = r.text(body["database"])
    db = _database(r, name)
    readonly = step.effect == "read"
    role = db.readonly_role if readonly and db.readonly_role else None
    args = {k: (r.value(v) if isinstance(v, str) else v) for k, v in (body.get("args") or {}).items()}
    shown_args = ", ".join(f"{k}={_show(v)}" for k, v in args.items())
    summary = body["query"].strip() + (f"\n-- args: {shown_args}" if args else "")
    detail = {
        "database": name, "query": body["query"], "args": args, "readonly": readonly, "role": role,
        "statement_timeout": _statement_timeout(step), "autocommit": bool(body.get("autocommit")),
        "expect_rows": body.get("expect_rows"), "where": _describe(db, role),
    }
    return Action(summary=summary, targets=[f"database {name} ({detail['where']})"], detail=detail)


def _show(v: Any) -> str:
    if isinstance(v, (Secret, LazySecret)):
        return "***"
    return repr(v) if not isinstance(v, expr.Unknown) else str(v)


# --- running ----------------------------------------------------------------


def _reveal(value):
    if isinstance(value, LazySecret):
        return value.resolve()
    return value


def _connect(ctx, act: Action):
    """One connection per database and role per run, reused by later steps."""
    key = ("sql", act.detail["database"], act.detail["role"])
    conn = ctx.connections.get(key)
    if conn is not None and not conn.closed:
        return conn
    import psycopg

    db = ctx.inventory.lookup("database", act.detail["database"])
    kwargs: dict[str, Any] = {"application_name": f"runbook:{ctx.run_id}", "autocommit": True}
    conninfo = ""
    if db.dsn is not None:
        conninfo = str(_reveal(db.dsn))
        for secret in _dsn_passwords(conninfo):
            ctx.redactor.add(secret)
    for key_name in ("host", "port", "dbname", "user", "sslmode", "service"):
        value = getattr(db, key_name)
        if value is not None:
            kwargs[key_name] = str(_reveal(value))
    password = db.password
    if act.detail["role"]:
        kwargs["user"] = str(act.detail["role"])
        password = db.readonly_password
    if password is not None:
        kwargs["password"] = str(_reveal(password))
        ctx.redactor.add(kwargs["password"])
    kwargs["connect_timeout"] = int(db.connect_timeout or 10)
    try:
        conn = psycopg.connect(conninfo, **kwargs)
    except psycopg.Error as exc:
        raise RunbookError(_connect_error(act, kwargs, exc)) from None
    ctx.connections[key] = conn
    return conn


def _dsn_passwords(conninfo: str) -> list[str]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        pw = conninfo_to_dict(conninfo).get("password")
    except Exception:  # noqa: BLE001 - a malformed DSN is reported by connect itself
        return []
    return [str(pw)] if pw else []


def _connect_error(act: Action, kwargs: dict, exc: Exception) -> str:
    text = str(exc)
    name = act.detail["database"]
    where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 5432)}" if "service" not in kwargs else f"service {kwargs['service']}"
    low = text.lower()
    if "connection refused" in low:
        return f"cannot connect to database '{name}' at {where}: connection refused (is PostgreSQL running and listening there?)"
    if "password authentication failed" in low:
        return f"database '{name}': password authentication failed for user '{kwargs.get('user', '(default)')}'"
    if "no password supplied" in low or "fe_sendauth" in low:
        return f"database '{name}': the server asks for a password and none is configured (set password: {{env: …}} in the inventory, or use ~/.pgpass)"
    m = re.search(r'database "([^"]+)" does not exist', text)
    if m:
        return f"database '{name}': the server at {where} has no database '{m.group(1)}'"
    m = re.search(r'role "([^"]+)" does not exist', text)
    if m:
        return f"database '{name}': the server at {where} has no role '{m.group(1)}'"
    if "timeout expired" in low:
        return f"cannot connect to database '{name}' at {where}: no answer within {kwargs.get('connect_timeout')}s"
    if "could not translate host name" in low or "name or service not known" in low:
        return f"cannot connect to database '{name}': unknown host '{kwargs.get('host')}' (DNS lookup failed)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"cannot connect to database '{name}' at {where}: {first}"


class _Rollback(Exception):
    pass


def run(step, act: Action, ctx) -> StepResult:
    import psycopg
    from psycopg.rows import dict_row

    started = time.monotonic()
    if act.detail["readonly"]:
        refused = side_effects(act.detail["query"])
        if refused:
            return StepResult("failed", error=f"refused: a read-only step may not call {', '.join(refused)} "
                                              "(it acts even in a READ ONLY transaction)")
    try:
        conn = _connect(ctx, act)
    except RunbookError as exc:
        return StepResult("failed", error=ctx.redactor.text(str(exc)))
    timeout = act.detail["statement_timeout"]
    if ctx.timeout is not None:
        timeout = min(timeout, max(ctx.timeout, 0.001))
    timeout_ms = max(1, int(timeout * 1000))
    args = {k: _reveal(v) for k, v in act.detail["args"].items()} or None
    rows: list[dict] = []
    columns: list[str] = []
    rowcount = -1
    max_rows = step.body.get("max_rows", DEFAULT_MAX_ROWS)
    truncated = 0
    try:
        with conn.cursor(row_factory=dict_row, binary=True) as cur:  # binary: always the extended protocol
            def execute():
                nonlocal rows, columns, rowcount, truncated
                cur.execute(act.detail["query"], args)
                rowcount = cur.rowcount
                if cur.description is not None:
                    columns = [c.name for c in cur.description]
                    rows = cur.fetchmany(max_rows)
                    extra = cur.fetchall()
                    truncated = len(extra)
                _check_rows(act.detail["expect_rows"], rowcount)

            if act.detail["autocommit"]:
                cur.execute(f"SET statement_timeout = {timeout_ms}")
                try:
                    execute()
                finally:
                    cur.execute("RESET statement_timeout")
            else:
                with conn.transaction():
                    if act.detail["readonly"]:
                        cur.execute("SET TRANSACTION READ ONLY")
                    cur.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                    execute()
    except _Rollback as exc:
        return StepResult("failed", exit_code=None, stdout=_table(columns, rows, truncated), error=f"{exc}; rolled back",
                          data=_data(rows, columns, rowcount, truncated), duration=time.monotonic() - started)
    except psycopg.Error as exc:
        return StepResult("failed", error=ctx.redactor.text(_statement_error(exc, act, timeout)),
                          duration=time.monotonic() - started)
    return StepResult("ok", stdout=_table(columns, rows, truncated) if columns else f"{rowcount} rows affected\n",
                      data=_data(rows, columns, rowcount, truncated), duration=time.monotonic() - started)


def _data(rows, columns, rowcount, truncated) -> dict:
    return {"rows": rows, "columns": columns, "rowcount": rowcount, "truncated": truncated}


def _check_rows(expect, rowcount: int) -> None:
    if expect is None:
        return
    if isinstance(expect, int):
        if rowcount != expect:
            raise _Rollback(f"expected exactly {expect} rows, the statement touched {rowcount}")
        return
    if "max" in expect and rowcount > expect["max"]:
        raise _Rollback(f"expected at most {expect['max']} rows, the statement touched {rowcount}")
    if "min" in expect and rowcount < expect["min"]:
        raise _Rollback(f"expected at least {expect['min']} rows, the statement touched {rowcount}")


def _statement_error(exc, act: Action, timeout: float) -> str:
    diag = getattr(exc, "diag", None)
    state = getattr(exc, "sqlstate", None) or ""
    primary = (diag.message_primary if diag is not None else None) or str(exc).splitlines()[0]
    if state == "25006":
        return f"the database refused a write in a read-only step (SQLSTATE 25006: {primary})"
    if state == "57014":
        return f"statement timeout: cancelled by the server after {timeout:g}s (SQLSTATE 57014)"
    if state == "42601" and diag is not None and diag.statement_position:
        line, col = _line_col(act.detail["query"], int(diag.statement_position))
        return f"SQL syntax error at line {line}, column {col}: {primary} (SQLSTATE 42601)"
    if state == "42P18" or "cannot insert multiple commands" in primary:
        return f"one statement per sql step: {primary}"
    where = f" at line {_line_col(act.detail['query'], int(diag.statement_position))[0]}" if diag is not None and diag.statement_position else ""
    return f"{primary}{where} (SQLSTATE {state})" if state else primary


def _line_col(query: str, position: int) -> tuple[int, int]:
    before = query[: max(position - 1, 0)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def _table(columns: list[str], rows: list[dict], truncated: int) -> str:
    """A plain-text table that stays readable: long cells and many rows are cut, with counts."""
    if not columns:
        return ""

    def cell(v) -> str:
        text = "NULL" if v is None else str(v).replace("\n", " ")
        return text if len(text) <= TABLE_CELL else text[: TABLE_CELL - 1] + "…"

    shown = rows[:TABLE_ROWS]
    cells = [[cell(r.get(c)) for c in columns] for r in shown]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    total = len(rows) + truncated
    if total > len(shown):
        lines.append(f"… {total - len(shown)} more rows not shown ({total} in all)")
    else:
        lines.append(f"({total} row{'s' if total != 1 else ''})")
    return "\n".join(lines) + "\n"
