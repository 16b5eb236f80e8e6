"""The step-kind protocol: every hook, with its default, in one place.

A step kind is one module in ``runbook/steps/`` (registered by one line in
``runbook.steps.KINDS``).  It must define the five **required** hooks::

    SCHEMA                      runbook.schema.Node: the value under the kind's key
    normalize(value) -> dict    the YAML value (shorthand or mapping) -> the step's body
    templates(body)             [(field, source, mode)]: every template in the body, for the validator;
                                mode: "shell" (a command), "text" (shown to people), "env"/"value"
                                (handed to a process or bound as a value, masked when shown), "expr" (a condition)
    action(step, render)        -> Action: the step fully rendered, no side effects (plan, prompt, audit)
    run(step, action, ctx)      -> StepResult: do it

Everything else below is optional: :func:`runbook.steps.get` copies the
default from this module into a kind module that does not define it, so
callers always use ``step.module.HOOK`` and never ask whether it exists.
Nothing outside ``runbook/steps/`` compares a kind's name: when another part
of the program needs to treat a kind differently, add a hook here (with the
default that fits every other kind) and set it in that kind's module.
"""

from __future__ import annotations

from typing import Any

# The hooks every kind module must define itself.
REQUIRED: tuple[str, ...] = ("SCHEMA", "normalize", "templates", "action", "run")

# --- effect and result -------------------------------------------------------

#: The effect when neither the author (``readonly:``) nor the kind says: True = read.
#: A kind that does not say is treated as one that writes (its steps are confirmed).
DEFAULT_READONLY: bool = False

#: "read" or "write" when the kind knows its effect whatever the step says
#: (a ``wait`` never writes); None: the step's ``readonly:``, ``effect_of`` or DEFAULT_READONLY decides.
FIXED_EFFECT: str | None = None

#: Kind-specific fields of the step's result (``steps.ID.FIELD``), besides
#: ``runbook.steps.BASE_RESULT_FIELDS``; the validator rejects other names.
RESULT_FIELDS: tuple[str, ...] = ()

#: Outputs a step of this kind has without declaring them under ``outputs:``
#: (``steps.ID.outputs.NAME``); ``ask`` has ``answer``.
IMPLICIT_OUTPUTS: tuple[str, ...] = ()

#: Write steps of this kind should have a ``timeout`` (validator rule RB103).
#: False for kinds a person carries out (``manual``): a timeout there would cut them off.
WRITE_NEEDS_TIMEOUT: bool = True

#: ``--server-dry-run`` can send this kind's write steps to its server as a
#: dry-run (Kubernetes ``dryRun=All``); other write steps are skipped then.
SERVER_DRY_RUN: bool = False


def effect_of(body: dict) -> str | None:
    """The effect ("read" or "write") when the step's body tells (a k8s ``get``,
    an HTTP GET), else None.  An author's ``readonly: false`` still makes a known read a write."""
    return None


def static_problems(step) -> list[tuple[str, str, str]]:
    """(key under the kind, message, rule id: "schema" or an RB rule) for what the
    validator should report about a step of this kind that the schema cannot see."""
    return []


def inventory_problems(step, inventory) -> list[tuple[str, str, str]]:
    """(key under the kind, message, rule id) for what the validator should report
    about a step of this kind against the inventory given (``--inventory``/``--env``):
    a read-only ``sql`` step on a non-local database without a ``readonly_role``."""
    return []


def fanout(body: dict) -> bool | None:
    """False when the step runs on several hosts without saying how many at once
    (rule RB104); True when it says; None when the kind does not fan out."""
    return None


def fans_out(body: dict, inventory) -> str:
    """What the step runs on when that is several targets or a group that may
    grow ("2 hosts", "every host of group web"), as far as the unrendered body
    and the inventory (None: not known) tell; "" otherwise.  Its outputs then
    need an ``aggregate`` (checked by validate; the rendered ``Action.fan_out``
    is checked by the plan and before the step runs)."""
    return ""


def per_host(result) -> dict[str, dict] | None:
    """Each target's own result (name -> dict with ``status``, ``stdout``,
    ``stderr``) for kinds that fan out; outputs are read on each one and the
    dicts get their own ``outputs``.  None: the step has one result."""
    return None


def inventory_targets(body: dict) -> list[tuple[str, str, str]]:
    """(inventory kind, name, key) of the inventory entries the step names
    ("host", "group", "cluster", "database", "prometheus", "http", "notify"),
    checked against ``--inventory`` by the validator."""
    return []


# --- the step graph (runbook.graph) ----------------------------------------------


def edges(body: dict) -> list[tuple[str, str]]:
    """(label, step id) of the steps the kind itself may go to (a ``choose``'s
    branches), shown on the graph and checked by the validator."""
    return []


#: The kind picks its successor itself (a StepResult with ``goto``, one of its
#: ``edges``); when it takes none, the run goes on to the following step in
#: document order.  ``next:`` does not apply.  (``choose``)
BRANCHING: bool = False


def falls_through(body: dict) -> bool:
    """For a BRANCHING kind: True when the step may take none of its edges and
    go on to the following step (a ``choose`` without ``default``)."""
    return True


#: The run ends at this step (no successors, not even ``on_failure``), with the
#: status ``end_status(body)``.  (``end``)
ENDS_RUN: bool = False


def end_status(body: dict) -> str:
    """For an ENDS_RUN kind: the status the run ends with ("resolved" exits 0,
    anything else 1)."""
    return "resolved"


# --- display (runbook.ui, runbook graph, runbook show) --------------------------

#: The UI shows the step's output: True streams it line by line as it comes;
#: "head" shows the first SHOW_LINES lines when the step ends (tables, bodies);
#: False shows none (the kind shows what it has to, or has no output).
SHOW_OUTPUT: bool | str = False

#: How many lines of output the UI shows after a step (the rest is in the result and the log).
SHOW_LINES: int = 25

#: ``Action.summary`` is a command line: the plan and the live card show it as
#: ``$ COMMAND``, and the plan shows ``Action.detail["where"]`` (a list of
#: strings: where it runs), when there is one, under it.  (``shell``, ``ssh``)
COMMAND_SUMMARY: bool = False

#: The dry-run plan shows ``Action.summary`` under the step's line.  False when
#: the plan shows the step otherwise (a ``choose``'s branches are its successors).
PLAN_SUMMARY: bool = True

#: The live step card shows ``Action.summary``.  False for kinds that display
#: themselves when they run (a prompt, a panel, the branch taken).
CARD_SUMMARY: bool = True

#: The live step card shows ``Action.targets`` ("on: …").  False for kinds
#: whose targets say nothing (the operator, none).
CARD_TARGETS: bool = True



def details(action) -> list[tuple[str, str]]:
    """(label, text) rows the operator sees on asking for details at a prompt: the whole
    command or request exactly as it will be sent (secrets masked as in the summary,
    nothing cut short), then what else decides what it does (working directory, where it
    runs, a body); readable text, never the kind's internal fields.  The UI adds the
    targets, the timeout and the step that verifies it.  By default the summary, which
    for most kinds is the whole request."""
    return [("request", action.summary)]


def observed(step, result) -> str | None:
    """What one check read, shown each time an ``until`` condition does not hold yet
    (``value 0.034``): by default the step's outputs (``n = 12``), else the last line of
    its output, else its exit code; None when there is nothing to show."""
    if result.outputs:
        return ", ".join(f"{k} = {v}" for k, v in result.outputs.items())
    lines = [line.strip() for line in (result.stdout or "").splitlines() if line.strip()]
    if lines:
        return lines[-1]
    if result.exit_code not in (None, 0):
        return f"exit code {result.exit_code}"
    return None


def output_sections(result) -> list[tuple[str | None, str]]:
    """(label, text) parts of a finished step's output as the UI frames them, each part
    under its label (None: no label).  By default one part: the output (with the errors
    when the step failed).  A kind that runs on several hosts gives one part per host."""
    return [(None, result.stdout if result.ok else result.stdout + result.stderr)]


_OUTLINE_KEYS = ("command", "instructions", "prompt", "message")


def outline(body: dict) -> str:
    """One line saying what an untitled step does, for ``runbook show``: by
    default the first line of the body's command, instructions, prompt or message."""
    for key in _OUTLINE_KEYS:
        if key in body and body[key]:
            return str(body[key]).strip().splitlines()[0]
    return ""


# --- alerts (runbook.alert: ``params_from_labels`` forms) ---------------------------

#: Forms of ``params_from_labels`` this kind resolves: form key -> the
#: ``runbook.schema.Obj`` of the mapping (``deployment: {from_pod: pod}``: the
#: k8s kind finds the Deployment that owns the pod the label names).  The
#: validator and ``run --alert`` find a form's kind through this, never by name.
LABEL_FORMS: dict = {}


def label_value(form: str, spec: dict, value: str, params: dict, inventory, live: bool) -> tuple:
    """(the parameter's value, what to record, words for the operator) of a
    ``LABEL_FORMS`` form, given the label's ``value`` and the other
    parameters known so far (strings, None when unknown).  ``live`` False (a
    dry-run) contacts nothing: the value is None and the words say what a
    live run will look up.  Raises RunbookError (one line) when it cannot."""
    raise NotImplementedError(f"this kind resolves no params_from_labels form ({form})")


# The hooks with a default above, in the order of this module.
DEFAULTED: tuple[str, ...] = (
    "DEFAULT_READONLY", "FIXED_EFFECT", "RESULT_FIELDS", "IMPLICIT_OUTPUTS", "WRITE_NEEDS_TIMEOUT",
    "SERVER_DRY_RUN", "effect_of", "static_problems", "inventory_problems", "fanout", "fans_out", "per_host", "inventory_targets",
    "edges", "BRANCHING", "falls_through", "ENDS_RUN", "end_status",
    "SHOW_OUTPUT", "SHOW_LINES", "COMMAND_SUMMARY", "PLAN_SUMMARY", "CARD_SUMMARY", "CARD_TARGETS", "details",
    "observed", "output_sections", "outline", "LABEL_FORMS", "label_value",
)
HOOKS: tuple[str, ...] = REQUIRED + DEFAULTED


def defaults() -> dict[str, Any]:
    """Hook name -> its default, for :func:`runbook.steps.get`."""
    g = globals()
    return {name: g[name] for name in DEFAULTED}
