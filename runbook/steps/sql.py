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
  ``readonly_role`` when the database entry names one.  Before that, PostgreSQL's
  parser (pglast) must find one statement that reads (SELECT without locking
  clauses, VALUES, TABLE, SHOW, EXPLAIN without ANALYZE), and the connection's
  catalog must find no volatile function among those it calls
  (:mod:`runbook.steps.sql_readonly`), because PostgreSQL lets those act even in
  a read-only transaction.  ``validate --strict`` wants a ``readonly_role`` on
  every non-local database read by a step (RB107).
* Otherwise the step is a write: confirmed first, run in a transaction that
  commits only on success; ``expect_rows`` ({max: 50}, {min: 1} or an exact
  count) rolls it back when the statement touched other than that many rows;
  ``autocommit: true`` for statements that cannot run in a transaction
  (``VACUUM``, ``CREATE INDEX CONCURRENTLY``).
* Result: ``rows`` (a list of mappings), ``rowcount``, ``columns``; shown as a
  table.  One connection per database (and role) per run, reused, and reset
  after every step (:data:`RESET_SESSION`), so that no step leaves state for the next.

psycopg is imported only when a ``sql`` step runs.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from runbook import expr
from runbook import schema as S
from runbook.errors import RunbookError
from runbook.schema import parse_duration
from runbook.secrets import LazySecret, Secret
from runbook.text import plural
from runbook.steps import Action, StepResult
from runbook.steps import base

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
SHOW_OUTPUT = "head"  # the UI shows the top of the result table
DEFAULT_STATEMENT_TIMEOUT = 30.0
DEFAULT_MAX_ROWS = 1000
TABLE_ROWS, TABLE_CELL, TABLE_COLUMNS = 50, 60, 12  # what the table shows before it cuts

# Functions that act even inside a READ ONLY transaction: named in a write step's
# expect_rows check, and an early refusal in validate for read steps (the catalog
# check on the connection is what decides: runbook.steps.sql_readonly).
_SIDE_EFFECT_NAMES = r"""pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_rotate_logfile|set_config|nextval|setval
    |dblink_exec|dblink|dblink_send_query|lo_\w+|pg_(?:try_)?advisory_\w+|pg_notify|pg_switch_wal
    |pg_create_restore_point|pg_promote|pg_stat_reset\w*|pg_file_write|pg_file_unlink|pg_file_rename
    |pg_logical_emit_message|pg_replication_origin_\w+|pg_create_\w+_replication_slot|pg_drop_replication_slot
    |pg_logical_slot_get_\w+|pg_replication_slot_advance|pg_stat_statements_reset|pg_wal_replay_\w+
    |pg_backup_start|pg_backup_stop|pg_start_backup|pg_stop_backup|pg_log_backend_memory_contexts
    |query_to_xml\w*|cursor_to_xml\w*|pg_read_file|pg_read_binary_file|pg_ls_\w+"""
SIDE_EFFECT_FUNCTIONS = re.compile(r"\b(" + _SIDE_EFFECT_NAMES + r")\s*\(", re.IGNORECASE | re.VERBOSE)
SIDE_EFFECT_NAME = re.compile(r"(?:" + _SIDE_EFFECT_NAMES + r")\Z", re.IGNORECASE | re.VERBOSE)
COPY_PROGRAM = re.compile(r"\bcopy\b.*\b(to|from)\s+program\b", re.IGNORECASE | re.DOTALL)
PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


def normalize(value) -> dict:
    return dict(value)


def details(action: Action) -> list[tuple[str, str]]:
    d = action.detail
    how = "autocommit (each statement on its own)" if d.get("autocommit") else "in one transaction"
    if d.get("readonly"):
        how += ", READ ONLY" + (f", as role {d['role']}" if d.get("role") else "")
    rows = [("statement", action.summary), ("runs", how)]
    if d.get("statement_timeout"):
        rows.append(("statement timeout", f"{d['statement_timeout']:g}s"))
    return rows


def observed(step, result: StepResult) -> str | None:
    """The outputs, else the first row read."""
    rows = result.data.get("rows")
    if result.outputs or not rows:
        return base.observed(step, result) if result.outputs else (None if rows is None else f"{len(rows)} rows")
    first = ", ".join(f"{k} = {v}" for k, v in rows[0].items())
    return first + (f" (first of {len(rows)} rows)" if len(rows) > 1 else "")


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
            # E'…' strings take backslash escapes; plain ones only ''
            escapes = i > 0 and sql[i - 1] in "eE" and not (i > 1 and (sql[i - 2].isalnum() or sql[i - 2] in "_$"))
            j = i + 1
            while j < n:
                if escapes and sql[j] == "\\":
                    j += 2
                elif sql.startswith("''", j):
                    j += 2
                elif sql[j] == "'":
                    break
                else:
                    j += 1
            out.append("''")
            i = j + 1
        elif c == "$" and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")) \
                and (m := re.match(r"\$([A-Za-z_]\w*)?\$", sql[i:])):
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
    """What in ``sql`` acts even in a read-only transaction (or hides what it
    runs from this check): function names, DO/CALL, SET, COPY … PROGRAM.

    A list can never be complete (a user-defined function may wrap any of
    these): the real boundary is the inventory's ``readonly_role``."""
    bare = _strip_sql(sql)
    found = [m.group(1).lower() for m in SIDE_EFFECT_FUNCTIONS.finditer(bare)]
    if COPY_PROGRAM.search(bare):
        found.append("COPY … PROGRAM")
    statement = re.match(r"\s*(\w+)(\s+\w+)?", bare)
    if statement:
        first = statement.group(1).upper()
        if first in ("DO", "CALL", "SET", "RESET", "DISCARD", "LISTEN", "NOTIFY", "LOCK", "PREPARE", "EXECUTE"):
            found.append(first)
    if re.search(r"\bU&", bare, re.IGNORECASE):
        found.append("U& escaped names")
    return list(dict.fromkeys(found))


def non_transactional(sql: str) -> list[str]:
    """Side effects that a rollback cannot undo."""
    return [f for f in side_effects(sql) if f not in ("nextval", "setval", "set_config", "SET", "RESET")]


def read_problems(query: str) -> list[str]:
    """Why ``query`` cannot run as a read-only step, as far as PostgreSQL's parser
    tells without a database (the catalog check on the connection comes later)."""
    from runbook.steps import sql_readonly as R

    try:
        stmt = R.parse(query)
    except R.Refused as exc:
        return [f"{exc} (the statement is checked with PostgreSQL's parser; at {R.where(query, exc.offset)})"]
    return [f"a read-only step may not use {c.name}: it acts even in a READ ONLY transaction "
            f"(at {R.where(query, c.offset)}); make the step a write step (drop readonly) so it is confirmed"
            for c in stmt.calls if c.kind == "function" and SIDE_EFFECT_NAME.match(c.name)]


def static_problems(step) -> list[tuple[str, str, str]]:
    """(key, message, rule) the validator reports for this step."""
    body, problems = step.body, []
    if expr.is_template(body["query"]):
        problems.append(("query", "the SQL text may not contain templates: write %(name)s and give the value "
                                  "under args, so that it is sent as a bound parameter", "schema"))
    if step.effect == "read" and not expr.is_template(body["query"]):
        problems += [("query", message, "schema") for message in read_problems(body["query"])]
        if body.get("autocommit"):
            problems.append(("autocommit", "autocommit is for writes that cannot run in a transaction; "
                                           "a read-only step runs in a READ ONLY transaction", "schema"))
    if "expect_rows" in body:
        if body.get("autocommit"):
            problems.append(("expect_rows", "expect_rows cannot roll back an autocommit statement; drop one of them", "schema"))
        for name in non_transactional(body["query"]):
            problems.append(("expect_rows", f"expect_rows cannot undo {name}: it acts at once, before any rollback; "
                                            "bound the rows in the query instead (e.g. LIMIT)", "schema"))
    if body.get("args") and "%" in PLACEHOLDER.sub("", body["query"]):
        problems.append(("query", "with args, a literal % must be written %% (e.g. LIKE 'runbook:%%')", "schema"))
    used = {m.group(1) for m in PLACEHOLDER.finditer(body["query"]) if m.group(1)}
    if PLACEHOLDER.search(body["query"]) and "%s" in [m.group() for m in PLACEHOLDER.finditer(body["query"])]:
        problems.append(("query", "use named placeholders %(name)s with args, not %s", "schema"))
    args = set(body.get("args") or {})
    for name in sorted(used - args):
        problems.append(("query", f"placeholder %({name})s has no value under args", "schema"))
    for name in sorted(args - used):
        problems.append(("args", f"args.{name} is not used by the query (write %({name})s where it goes)", "schema"))
    return problems


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")


def _local(db) -> bool:
    """The database runs on this machine (a lab, a laptop): 127.0.0.1, localhost,
    ::1 or a Unix socket.  A service name or a DSN from a secret could be anywhere."""
    if db.service is not None:
        return False
    host = db.host
    if db.dsn is not None:
        if isinstance(db.dsn, LazySecret):
            return False
        host = _dsn_where(str(db.dsn)).get("host", host)
    if host is None:
        return True  # libpq's default: the local Unix socket
    if isinstance(host, (Secret, LazySecret)):
        return False
    return all(h.strip() in LOCAL_HOSTS or h.strip().startswith("/") for h in str(host).split(","))


def inventory_problems(step, inventory) -> list[tuple[str, str, str]]:
    """RB107: a read-only step on a database that is not local needs its entry's
    ``readonly_role`` (the boundary the server enforces); a templated database
    name may pick any entry, so every one is checked then."""
    if step.effect != "read":
        return []
    name = step.body["database"]
    names = inventory.names("database") if expr.is_template(name) else [name]
    out = []
    for n in names:
        if n not in inventory.names("database"):
            continue  # reported as an unknown database
        db = inventory.lookup("database", n)
        if db.readonly_role is None and not _local(db):
            message = (f"database '{n}' in {inventory.path} has no readonly_role: a read-only step runs as its owner "
                       "there; give it a role that can only read (see the README: pg_read_all_data + pg_monitor, "
                       "NOSUPERUSER, default_transaction_read_only = on)")
            out.append(("database", message, "RB107"))
    return out


# --- rendering --------------------------------------------------------------


def _database(r, name):
    inventory = getattr(r, "inventory", None)
    if inventory is None:
        raise RunbookError(f"a sql step needs an inventory with database '{name}' (use --inventory FILE or --env NAME)")
    return inventory.lookup("database", name)


_DSN_KEYS = re.compile(r"\b(host|hostaddr|port|dbname|user)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s]+)")


def _dsn_where(dsn: str) -> dict[str, str]:
    """host, port, dbname, user of a DSN, read without psycopg; nothing else
    (a whitelist, so that no password can slip through)."""
    from urllib.parse import unquote, urlsplit

    if re.match(r"^postgres(ql)?://", dsn):
        try:
            u = urlsplit(dsn)
            out = {"host": u.hostname or "", "port": str(u.port or ""), "dbname": unquote(u.path.lstrip("/")),
                   "user": unquote(u.username or "")}
        except ValueError:
            return {}
        return {k: v for k, v in out.items() if v}
    return {m.group(1): m.group(2).strip("'") for m in _DSN_KEYS.finditer(dsn)}


def _where(db, role: str | None) -> str:
    """Where the statement goes, for people: never a password."""
    if db.service:
        where = f"service={db.service}"
    else:
        parts = dict(host=db.host, port=db.port, dbname=db.dbname, user=db.user)
        if db.dsn is not None and not isinstance(db.dsn, LazySecret):
            parts.update(_dsn_where(str(db.dsn)))
        elif db.dsn is not None:
            return "dsn from a secret source" + (f" as role {role}" if role else "")
        where = f"{parts.get('user') or '(default user)'}@{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}/{parts.get('dbname') or '(default)'}"
    return where + (f" as role {role}" if role else "")


def _statement_timeout(step) -> float | None:
    """Read-only steps: 30 s unless said otherwise; writes: what the step says (else its timeout)."""
    if "statement_timeout" in step.body:
        return parse_duration(step.body["statement_timeout"])
    return DEFAULT_STATEMENT_TIMEOUT if step.effect == "read" else None


def action(step, r) -> Action:
    body = step.body
    name = r.value(body["database"])
    readonly = step.effect == "read"
    args = {k: (r.value(v) if isinstance(v, str) else v) for k, v in (body.get("args") or {}).items()}
    if isinstance(name, expr.Unknown):  # chosen at run time (a dry-run shows where it comes from)
        role, where = None, "chosen at run time"
    else:
        name = str(name)
        db = _database(r, name)
        role = db.readonly_role if readonly and db.readonly_role else None
        where = _where(db, role)
    shown_args = ", ".join(f"{k}={_show(v)}" for k, v in args.items())
    summary = body["query"].strip() + (f"\n-- args: {shown_args}" if args else "")
    detail = {
        "database": str(name), "query": body["query"], "args": args, "readonly": readonly, "role": role,
        "statement_timeout": _statement_timeout(step), "autocommit": bool(body.get("autocommit")),
        "expect_rows": body.get("expect_rows"), "where": where,
    }
    if readonly:
        summary += "\n-- " + _read_check_line(body["query"], detail)
    return Action(summary=summary, targets=[f"database {name} ({where})"], detail=detail)


def _read_check_line(query: str, detail: dict) -> str:
    """What the read-only check will look at, for the plan: the statement type and
    the functions (and operators) whose volatility is read from the server's pg_proc."""
    from runbook.steps import sql_readonly as R

    try:
        stmt = R.parse(query)
    except R.Refused as exc:
        detail["statement_type"], detail["functions"] = None, []
        return f"read-only check: refused ({exc})"
    detail["statement_type"], detail["functions"] = stmt.type, stmt.functions
    return f"read-only {stmt.type}; functions checked in pg_proc before it runs: {', '.join(stmt.functions) or 'none'}"


def _show(v: Any) -> str:
    if isinstance(v, (Secret, LazySecret)):
        return "***"
    return repr(v) if not isinstance(v, expr.Unknown) else str(v)


# --- running ----------------------------------------------------------------


def _alive(conn) -> bool:
    if conn.closed or conn.broken:
        return False
    try:
        conn.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means: connect again
        return False


def _connect(ctx, act: Action):
    """One connection per database and role per run, reused by later steps
    (and replaced when the server ended it meanwhile)."""
    key = ("sql", act.detail["database"], act.detail["role"])
    conn = ctx.connections.get(key)
    if conn is not None:
        if _alive(conn):
            return conn
        conn.close()
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    db = ctx.inventory.lookup("database", act.detail["database"])
    params: dict[str, Any] = {}
    if db.dsn is not None:
        dsn = str(ctx.reveal(db.dsn))
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            raise RunbookError(f"database '{db.name}': its dsn cannot be parsed (check its quoting and %-encoding)") from None
        if params.get("password"):
            ctx.redactor.add(str(params["password"]), name=f"databases.{db.name}.dsn")
    for key_name in ("host", "port", "dbname", "user", "sslmode", "service"):
        value = getattr(db, key_name)
        if value is not None:
            params[key_name] = str(ctx.reveal(value))
    if db.password is not None:
        params["password"] = str(ctx.reveal(db.password))
    if act.detail["role"]:  # the read-only role with its own credentials, never the owner's
        params["user"] = str(act.detail["role"])
        params.pop("password", None)
        if db.readonly_password is not None:
            params["password"] = str(ctx.reveal(db.readonly_password))
    connect_timeout = db.connect_timeout or 10
    if ctx.timeout is not None:
        connect_timeout = min(connect_timeout, ctx.timeout)
    params["connect_timeout"] = max(2, math.ceil(connect_timeout))  # libpq: 0 means forever, 1 is raised to 2
    params["application_name"] = f"runbook:{ctx.run_id}"
    try:
        conn = psycopg.connect(**params, autocommit=True)
    except psycopg.Error as exc:
        raise RunbookError(ctx.redactor.text(_connect_error(db.name, params, exc))) from None
    ctx.connections[key] = conn
    return conn


def _connect_error(name: str, params: dict, exc: Exception) -> str:
    text = str(exc)
    where = f"service {params['service']}" if params.get("service") else f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
    low = text.lower()
    if "connection refused" in low:
        return f"cannot connect to database '{name}' at {where}: connection refused (is PostgreSQL running and listening there?)"
    if "password authentication failed" in low:
        return f"database '{name}': password authentication failed for user '{params.get('user', '(default)')}'"
    if "no password supplied" in low or "fe_sendauth" in low:
        return (f"database '{name}': the server asks user '{params.get('user', '(default)')}' for a password and none is "
                f"configured (set password: {{env: …}} — or readonly_password for the read-only role — in the inventory, or use ~/.pgpass)")
    m = re.search(r'database "([^"]+)" does not exist', text)
    if m:
        return f"database '{name}': the server at {where} has no database '{m.group(1)}'"
    m = re.search(r'role "([^"]+)" does not exist', text)
    if m:
        return f"database '{name}': the server at {where} has no role '{m.group(1)}'"
    if "timeout expired" in low:
        return f"cannot connect to database '{name}' at {where}: no answer within {params.get('connect_timeout')}s"
    if "could not translate host name" in low or "name or service not known" in low:
        return f"cannot connect to database '{name}': unknown host '{params.get('host')}' (DNS lookup failed)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"cannot connect to database '{name}' at {where}: {first}"


class _Rollback(Exception):
    pass


def run(step, act: Action, ctx) -> StepResult:
    from runbook.steps import sql_readonly as R

    started = time.monotonic()
    stmt = None
    if act.detail["readonly"]:
        try:
            stmt = R.parse(act.detail["query"])
        except R.Refused as exc:
            return StepResult("failed", error=f"refused: {exc} (at {R.where(act.detail['query'], exc.offset)})")
    try:
        conn = _connect(ctx, act)
    except RunbookError as exc:
        return StepResult("failed", error=ctx.redactor.text(str(exc)))
    try:
        return _run_on(conn, stmt, step, act, ctx, started)
    finally:
        _reset(ctx, conn, act)


# What a statement can leave in a session, reset after every step: DISCARD ALL
# without its DEALLOCATE ALL (older psycopg releases, which the dependency allows, miss that their own
# prepared statements are gone; one planted with PREPARE runs only through
# EXECUTE, which a read-only step refuses).  One round trip, simple protocol.
RESET_SESSION = ("CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
                 "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES")


def _reset(ctx, conn, act: Action) -> None:
    """Leave nothing of this step in the session for the next one on this
    connection (:data:`RESET_SESSION`: settings, advisory locks, LISTENs, cursors,
    temporary tables, sequence caches).  A connection that cannot be reset is
    closed, and the next step connects again."""
    from runbook.steps import sql_readonly as R

    if not act.detail["readonly"]:
        R.forget(conn)  # a write may have created or replaced functions
    if conn.closed:
        return
    try:
        if not conn.broken:
            conn.execute(RESET_SESSION, prepare=False)
            return
    except Exception:  # noqa: BLE001, S110 - whatever the reason, this session is not reused
        pass
    conn.close()
    ctx.connections.pop(("sql", act.detail["database"], act.detail["role"]), None)


def _run_on(conn, stmt, step, act: Action, ctx, started: float) -> StepResult:
    import psycopg

    from runbook.steps import sql_readonly as R

    if stmt is not None:
        try:
            R.check(conn, stmt)
        except R.Refused as exc:
            return StepResult("failed", error=f"refused: {exc} (at {R.where(act.detail['query'], exc.offset)})",
                              duration=time.monotonic() - started)
        except psycopg.Error as exc:
            return StepResult("failed", error=ctx.redactor.text(f"the read-only check could not read the catalog: {exc}"),
                              duration=time.monotonic() - started)
    timeout = act.detail["statement_timeout"]
    by_step = ctx.timeout is not None and (timeout is None or ctx.timeout < timeout)
    if by_step:
        timeout = max(ctx.timeout, 0.001)
    timeout_ms = max(1, int(timeout * 1000)) if timeout is not None else 0  # 0: no limit
    args = {k: ctx.reveal(v) for k, v in act.detail["args"].items()} or None
    max_rows = step.body.get("max_rows", DEFAULT_MAX_ROWS)
    got: dict[str, Any] = {"rows": [], "columns": [], "rowcount": -1, "truncated": 0}
    try:
        with conn.cursor() as cur:
            def execute():
                # prepare=True: always the extended protocol, so the server refuses a second statement
                cur.execute(act.detail["query"], args, prepare=True)
                got["rowcount"] = cur.rowcount
                if cur.description is not None:
                    got["columns"] = _column_names([c.name for c in cur.description])
                    got["rows"] = [_plain_row(got["columns"], r) for r in cur.fetchmany(max_rows)]
                    got["truncated"] = len(cur.fetchall())
                _check_rows(act.detail["expect_rows"], got["rowcount"])

            if act.detail["autocommit"]:
                cur.execute(f"SET statement_timeout = {timeout_ms}")
                try:
                    execute()
                finally:
                    if not conn.broken:
                        cur.execute("RESET statement_timeout")
            else:
                with conn.transaction():
                    if act.detail["readonly"]:
                        cur.execute("SET TRANSACTION READ ONLY")
                    cur.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                    execute()
    except _Rollback as exc:
        return StepResult("failed", stdout=_table(got), error=f"{exc}; rolled back", data=got,
                          duration=time.monotonic() - started)
    except psycopg.Error as exc:
        status = "timeout" if by_step and getattr(exc, "sqlstate", None) == "57014" else "failed"
        return StepResult(status, error=ctx.redactor.text(_statement_error(exc, act, timeout)),
                          duration=time.monotonic() - started)
    return StepResult("ok", stdout=_table(got) if got["columns"] else f"{plural(got['rowcount'], 'row')} affected\n",
                      data=got, duration=time.monotonic() - started)


def _column_names(names: list[str]) -> list[str]:
    """Unique names: a second `n` becomes `n_2`, so no column hides another."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def _plain(value: Any) -> Any:
    """Values usable in conditions and JSON: numbers stay numbers, intervals
    become seconds, timestamps and other types become text."""
    import datetime
    import decimal

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (bytes, memoryview)):
        return "\\x" + bytes(value).hex()
    return str(value)


def _plain_row(columns: list[str], row: tuple) -> dict:
    return {c: _plain(v) for c, v in zip(columns, row)}


def _check_rows(expect, rowcount: int) -> None:
    if expect is None:
        return
    if isinstance(expect, int):
        if rowcount != expect:
            raise _Rollback(f"expected exactly {plural(expect, 'row')}, the statement touched {rowcount}")
        return
    if "max" in expect and rowcount > expect["max"]:
        raise _Rollback(f"expected at most {expect['max']} rows, the statement touched {rowcount}")
    if "min" in expect and rowcount < expect["min"]:
        raise _Rollback(f"expected at least {expect['min']} rows, the statement touched {rowcount}")


def _statement_error(exc, act: Action, timeout: float | None) -> str:
    diag = getattr(exc, "diag", None)
    state = getattr(exc, "sqlstate", None) or ""
    primary = (diag.message_primary if diag is not None else None) or str(exc).splitlines()[0]
    position = int(diag.statement_position) if diag is not None and diag.statement_position else None
    if state == "25006":
        return f"the database refused a write in a read-only step (SQLSTATE 25006: {primary})"
    if state == "57014" and timeout is not None:
        return f"statement timeout: cancelled by the server after {timeout:g}s (SQLSTATE 57014)"
    if state == "42601" and position:
        line, col = _line_col(act.detail["query"], position)
        return f"SQL syntax error at line {line}, column {col}: {primary} (SQLSTATE 42601)"
    if state == "42P18" or "cannot insert multiple commands" in primary:
        return f"one statement per sql step: {primary}"
    if state.startswith("57P") or state.startswith("08"):
        return f"the connection to database '{act.detail['database']}' was lost: {primary} (SQLSTATE {state})"
    where = f" at line {_line_col(act.detail['query'], position)[0]}" if position else ""
    return f"{primary}{where} (SQLSTATE {state})" if state else primary


def _line_col(query: str, position: int) -> tuple[int, int]:
    """Line and column of the server's 1-based character position in the query."""
    from runbook.steps.sql_readonly import line_col

    return line_col(query, position - 1)


def _table(got: dict) -> str:
    """A plain-text table that stays readable: long cells, many rows and
    many columns are cut, with counts of what was cut."""
    columns, rows, truncated = got["columns"], got["rows"], got["truncated"]
    if not columns:
        return ""

    def cell(v) -> str:
        text = "NULL" if v is None else str(v).replace("\n", " ")
        return text if len(text) <= TABLE_CELL else text[: TABLE_CELL - 1] + "…"

    shown_cols = columns[:TABLE_COLUMNS]
    shown = rows[:TABLE_ROWS]
    cells = [[cell(r.get(c)) for c in shown_cols] for r in shown]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(shown_cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown_cols, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    total = len(rows) + truncated
    notes = []
    if total > len(shown):
        notes.append(f"… {total - len(shown)} more rows not shown ({total} in all)")
    else:
        notes.append(f"({plural(total, 'row')})")
    if len(columns) > len(shown_cols):
        notes.append(f"{len(columns) - len(shown_cols)} more columns not shown: {', '.join(columns[len(shown_cols):])}")
    return "\n".join(lines + notes) + "\n"
