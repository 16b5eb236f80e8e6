"""What makes a ``sql`` step read-only: PostgreSQL's own parser and catalog.

A word list cannot make SQL read-only (``ts_stat('…')`` runs SQL hidden in a
string).  A read-only step is checked twice, and both checks refuse rather than
guess:

1. **Statically** (``validate`` and again before it runs), with PostgreSQL's
   grammar (pglast, the libpg_query binding): exactly one statement, of a type
   that reads — ``SELECT`` (``VALUES``, ``TABLE``) without a locking clause, an
   ``INTO`` or a data-modifying ``WITH``; ``SHOW``; ``EXPLAIN`` of those without
   ``ANALYZE``.  The functions and operators it calls, in subqueries and CTEs
   too, are collected; those that take SQL text (:data:`SQL_TEXT_FUNCTIONS`) are
   refused outright: a read cannot be checked inside a string.
2. **On the connection** that will run it, before it runs: every function (and
   the function behind every operator) is looked up in ``pg_proc`` by name —
   in the schema it names, else in the connection's ``current_schemas(true)``
   (search_path).  Every overload with that name counts (the check does not
   resolve argument types): the step is refused when any of them is
   volatile and not on :data:`HARMLESS_VOLATILE`, or is a user-defined
   function written in SQL or a procedural language (whatever its volatility
   says, such a function can call ``pg_terminate_backend``), or a user-defined
   aggregate.  Lookups are cached per connection (the cache is dropped when a
   write step runs on it: it may create functions).

Not checked: functions that a view runs for the caller (``pg_stat_activity``
calls ``pg_stat_get_activity``), type input and cast functions (``'x'::t``), a
domain's ``CHECK``, row-level security policies.  Their owners decided those;
the inventory's ``readonly_role`` is the boundary the server enforces.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass, field
from functools import lru_cache

#: Statement types a read-only step may run (pglast node names).
READ_STATEMENTS = ("SelectStmt", "VariableShowStmt", "ExplainStmt")

#: Volatile built-in functions that change nothing (PostgreSQL labels them
#: volatile because their result changes between calls): time and randomness,
#: sizes, WAL positions, lock, recovery and control-file state, commit status, a
#: bounded sleep (``statement_timeout`` cuts it), the session's own sequence values.
HARMLESS_VOLATILE = frozenset((
    "random", "random_normal", "clock_timestamp", "timeofday", "gen_random_uuid", "uuidv4", "uuidv7",
    "pg_sleep", "pg_sleep_for", "pg_sleep_until",
    "pg_is_in_recovery", "pg_is_wal_replay_paused", "pg_get_wal_replay_pause_state",
    "pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn",
    "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp",
    "pg_database_size", "pg_relation_size", "pg_table_size", "pg_indexes_size", "pg_total_relation_size",
    "pg_tablespace_size", "pg_blocking_pids", "pg_safe_snapshot_blocking_pids", "pg_lock_status",
    "pg_control_checkpoint", "pg_control_system", "pg_control_recovery", "pg_control_init", "pg_current_logfile",
    "pg_last_committed_xact", "pg_xact_commit_timestamp", "pg_xact_status", "txid_status",
    "pg_notification_queue_usage", "pg_partition_tree", "pg_partition_ancestors", "pg_sequence_last_value",
    "pg_jit_available", "current_query", "currval", "lastval",
))

#: Functions that run SQL given as text (or a cursor's query): refused in read
#: steps whatever their volatility, because the SQL inside cannot be checked.
#: ``ts_rewrite`` only in its two-argument form (the second is a query).
SQL_TEXT_FUNCTIONS = re.compile(
    r"^(ts_stat|query_to_xml|query_to_xmlschema|query_to_xml_and_xmlschema|cursor_to_xml|cursor_to_xmlschema"
    r"|dblink\w*)$")

#: Operator expressions (A_Expr kinds) that name an operator.
_OPERATOR_KINDS = frozenset(("AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_OP_ALL", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT",
                             "AEXPR_NULLIF", "AEXPR_IN", "AEXPR_LIKE", "AEXPR_ILIKE", "AEXPR_SIMILAR"))
FIRST_NORMAL_OID = 16384  # PostgreSQL's FirstNormalObjectId: below it, built into the server
from runbook.steps.sql import PLACEHOLDER as _PLACEHOLDER  # noqa: E402 - the one pattern of bound values
_LOCKING = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b", re.IGNORECASE)


class Refused(Exception):
    """The statement is not a read; ``offset`` is where, in the query text (characters)."""

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class Call:
    kind: str  # "function" or "operator"
    schema: str | None
    name: str
    nargs: int
    offset: int | None

    @property
    def shown(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass
class Statement:
    """A parsed read: its type (as people write it) and what it calls."""

    type: str
    calls: list[Call] = field(default_factory=list)

    @property
    def functions(self) -> list[str]:
        return list(dict.fromkeys(c.shown for c in self.calls if c.kind == "function"))


def line_col(query: str, offset: int | None) -> tuple[int, int]:
    before = query[: max(offset or 0, 0)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def where(query: str, offset: int | None) -> str:
    line, col = line_col(query, offset)
    return f"line {line}, column {col} of the query"


def _bound(query: str) -> str:
    """The query as the server gets it: ``%(name)s`` become ``$n`` (padded, so
    offsets stay those of the text as written) and ``%%`` becomes ``%``."""
    numbers: dict[str, int] = {}

    def sub(m):
        if m.group() == "%%":
            return "% "
        n = numbers.setdefault(m.group(1) or f"#{len(numbers)}", len(numbers) + 1)
        return f"${n}".ljust(len(m.group()))

    return _PLACEHOLDER.sub(sub, query)


def _char_offset(text: str, byte_offset: int) -> int:
    return len(text.encode("utf-8")[:byte_offset].decode("utf-8", "ignore"))


_TYPE_NAMES = {
    "SelectStmt": "SELECT", "VariableShowStmt": "SHOW", "ExplainStmt": "EXPLAIN", "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE", "ReindexStmt": "REINDEX",
    "ClusterStmt": "CLUSTER", "CheckPointStmt": "CHECKPOINT", "VacuumStmt": "VACUUM/ANALYZE", "LockStmt": "LOCK",
    "CreateStmt": "CREATE TABLE", "CreateTableAsStmt": "CREATE TABLE AS", "NotifyStmt": "NOTIFY",
    "ListenStmt": "LISTEN", "UnlistenStmt": "UNLISTEN", "DeclareCursorStmt": "DECLARE CURSOR",
    "VariableSetStmt": "SET", "CopyStmt": "COPY", "DoStmt": "DO", "CallStmt": "CALL", "TransactionStmt": "a transaction command",
    "PrepareStmt": "PREPARE", "ExecuteStmt": "EXECUTE", "DiscardStmt": "DISCARD", "TruncateStmt": "TRUNCATE",
    "DropStmt": "DROP", "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW", "LoadStmt": "LOAD",
}


def type_name(node: str, query: str = "", offset: int = 0) -> str:
    if node == "VacuumStmt":
        word = re.match(r"\s*(\w+)", query[offset:])
        return word.group(1).upper() if word else "VACUUM"
    return _TYPE_NAMES.get(node, node.removesuffix("Stmt"))


@lru_cache(maxsize=512)
def parse(query: str) -> Statement:
    """The statement's type and calls, or :class:`Refused` when it is not a read."""
    from pglast.parser import ParseError, parse_sql_json

    text = _bound(query)
    try:
        tree = json.loads(parse_sql_json(text))
    except ParseError as exc:
        loc = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        offset = _char_offset(text, loc) if loc is not None else None
        raise Refused(f"SQL syntax error: {exc.args[0] if exc.args else exc}", offset) from None
    stmts = tree.get("stmts") or []
    if not stmts:
        raise Refused("the query has no statement")
    if len(stmts) > 1:
        raise Refused("one statement per sql step", _char_offset(text, stmts[1].get("stmt_location", 0)))
    raw = stmts[0]
    start = _char_offset(text, raw.get("stmt_location", 0))
    (node, body), = raw["stmt"].items()
    shown = type_name(node, text, start)
    if node not in READ_STATEMENTS:
        raise Refused(f"a read-only step may not run {shown}: only SELECT (VALUES, TABLE), SHOW and EXPLAIN "
                      "without ANALYZE read", start)
    if node == "ExplainStmt":
        for opt in body.get("options") or []:
            d = opt.get("DefElem", {})
            if d.get("defname") == "analyze":
                arg = d.get("arg") or {}
                value = str(next(iter(arg.values()), {}).get("sval", "true") if arg else "true").lower()
                if value not in ("false", "off", "0", "no"):
                    raise Refused("a read-only step may not run EXPLAIN ANALYZE: it runs the statement",
                                  _char_offset(text, d.get("location", 0)))
        (inner, _), = body["query"].items()
        if inner not in ("SelectStmt",):
            raise Refused(f"a read-only step may not EXPLAIN {type_name(inner)}", start)
    calls: list[Call] = []
    _walk(raw["stmt"], text, calls)
    return Statement(shown, calls)


def _first_location(node) -> int | None:
    if isinstance(node, dict):
        if isinstance(node.get("location"), int) and node["location"] >= 0:
            return node["location"]
        for v in node.values():
            found = _first_location(v)
            if found is not None:
                return found
    elif isinstance(node, list):
        for v in node:
            found = _first_location(v)
            if found is not None:
                return found
    return None


def _names(items) -> tuple[str | None, str]:
    parts = [i.get("String", {}).get("sval", "") for i in items or []]
    return (parts[-2] if len(parts) > 1 else None), parts[-1] if parts else ""


def _walk(node, text: str, calls: list[Call]) -> None:
    if isinstance(node, list):
        for v in node:
            _walk(v, text, calls)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            loc = _first_location(value)
            raise Refused(f"a read-only step may not run {type_name(key)} (in a WITH)",
                          _char_offset(text, loc) if loc is not None else None)
        if key == "SelectStmt" and isinstance(value, dict):
            if value.get("lockingClause"):
                m = _LOCKING.search(text)
                raise Refused("a read-only step may not lock rows (SELECT … FOR UPDATE/SHARE)", m.start() if m else None)
            if value.get("intoClause"):
                loc = _first_location(value["intoClause"])
                raise Refused("a read-only step may not SELECT … INTO (it creates a table)",
                              _char_offset(text, loc) if loc is not None else None)
        if key == "FuncCall" and isinstance(value, dict):
            schema, name = _names(value.get("funcname"))
            loc = value.get("location")
            offset = _char_offset(text, loc) if isinstance(loc, int) and loc >= 0 else None
            nargs = len(value.get("args") or [])
            if SQL_TEXT_FUNCTIONS.match(name.lower()) or (name.lower() == "ts_rewrite" and nargs == 2):
                raise Refused(f"a read-only step may not call {name}: it runs SQL given as text, which cannot be "
                              "checked", offset)
            calls.append(Call("function", schema, name, nargs, offset))
        elif key == "A_Expr" and isinstance(value, dict) and value.get("kind") in _OPERATOR_KINDS:
            schema, name = _names(value.get("name"))
            loc = value.get("location")
            calls.append(Call("operator", schema, name, 2, _char_offset(text, loc) if isinstance(loc, int) and loc >= 0 else None))
        _walk(value, text, calls)


# --- the catalog check, on the connection that runs the step -----------------------

_FUNCTIONS = """
SELECT p.proname, n.nspname, p.oid::regprocedure::text, p.provolatile, l.lanname, p.prokind, p.oid < %(first)s
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE p.proname = ANY(%(names)s)
"""
_OPERATORS = """
SELECT o.oprname, n.nspname, o.oid::regoperator::text || ' → ' || p.oid::regprocedure::text, p.provolatile,
       l.lanname, p.prokind, p.oid < %(first)s, p.proname
FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE o.oprname = ANY(%(names)s)
"""

# connection -> {"search_path": [...], ("function"|"operator", name): [rows]}
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget(conn) -> None:
    """Drop what is known about ``conn``'s catalog (after a write step: it may create functions)."""
    _CACHE.pop(conn, None)


def check(conn, stmt: Statement) -> None:
    """Refuse (:class:`Refused`) when a call of ``stmt`` may change something, as
    ``conn`` resolves it.  Runs outside any transaction; warm, it sends nothing."""
    cache = _CACHE.setdefault(conn, {})
    if "search_path" not in cache:
        cache["search_path"] = list(conn.execute("SELECT current_schemas(true)", prepare=False).fetchone()[0])
    for kind, sql in (("function", _FUNCTIONS), ("operator", _OPERATORS)):
        missing = sorted({c.name for c in stmt.calls if c.kind == kind and (kind, c.name) not in cache})
        if missing:
            rows = conn.execute(sql, {"names": missing, "first": FIRST_NORMAL_OID}, prepare=False).fetchall()
            for name in missing:
                cache[(kind, name)] = [r for r in rows if r[0] == name]
    search_path = cache["search_path"]
    for call in stmt.calls:
        rows = [r for r in cache[(call.kind, call.name)]
                if (r[1] == call.schema if call.schema else r[1] in search_path)]
        if not rows:
            if call.kind == "operator":
                continue  # the server reports an unknown operator itself
            raise Refused(f"function {call.shown}() does not exist on this connection (search_path: "
                          f"{', '.join(search_path)})", call.offset)
        for row in rows:
            why = _why_refused(call, row)
            if why:
                raise Refused(why, call.offset)


def _why_refused(call: Call, row) -> str | None:
    name, _schema, signature, volatile, language, prokind, builtin = row[:7]
    what = f"operator {signature}" if call.kind == "operator" else f"function {signature}"
    function_name = row[7] if call.kind == "operator" else name
    if SQL_TEXT_FUNCTIONS.match(function_name):
        return f"a read-only step may not call {what}: it runs SQL given as text, which cannot be checked"
    if not builtin and language not in ("c", "internal"):
        return (f"a read-only step may not call the user-defined {what} (LANGUAGE {language}): whatever its "
                "volatility says, it can call anything; make the step a write step (drop readonly) so it is confirmed")
    if not builtin and prokind in ("a", "w"):
        return f"a read-only step may not call the user-defined aggregate {signature}"
    if volatile == "v" and not (builtin and function_name in HARMLESS_VOLATILE):
        return (f"a read-only step may not call {what}: it is VOLATILE (it can change things even in a READ ONLY "
                "transaction); make the step a write step (drop readonly) so it is confirmed")
    return None
