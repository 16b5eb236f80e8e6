"""runbook validate [PATH ...] — check runbook files and folders (for CI).

Exit 0 when every file is valid (warnings and notes allowed), 1 when any has an error,
2 on a usage error.  One problem per line: path:line:col: severity: message.

With --alert-rules FILE…, also alert coverage against Prometheus rule files (or
Kubernetes PrometheusRule objects): alerts no runbook answers (RB201, warning), runbook
alerts no rule defines (RB202, info: --strict leaves it), a runbook annotation naming no
runbook (RB203, error), an alert several runbooks list (RB204, warning), a runbook
listing an alert whose rules' annotations name another runbook (RB205, warning).
"""

from __future__ import annotations

from runbook.commands.common import add_inventory


def register(sub) -> None:
    p = sub.add_parser("validate", help="check runbooks: schema, graph, templates, safety rules", description=__doc__)
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: $RUNBOOK_PATH or ./playbooks)")
    p.add_argument("--format", choices=("text", "json", "github", "sarif"), default="text")
    p.add_argument("--config", metavar="FILE", help="rule settings (default: .runbook.yaml found upwards)")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (info notes stay notes)")
    p.add_argument("--allow-auto-approve", action="store_true",
                   help="accept auto_approve write steps in SEV1/SEV2 runbooks (RB109 off)")
    p.add_argument("--alert-rules", nargs="+", action="extend", metavar="FILE",
                   help="Prometheus rule files (or folders of them, or PrometheusRule manifests): report alerts no runbook "
                        "answers and runbook alerts no rule defines, against all the runbooks given (PATHs go before "
                        "this option, or write --alert-rules=FILE)")
    p.add_argument("--dry-run", action="store_true",
                   help="also dry-run each valid runbook with its example_params against the inventory (--env/--inventory), "
                        "contacting nothing: catches what only rendering finds (inventory names, template values)")
    add_inventory(p)
    p.set_defaults(func=run)


def check_files(files, inventory=None, config=None, loaded=None):
    """(file, problems) for each file; a file's problems are sorted by place.
    ``loaded``, a list, receives the runbooks that loaded."""
    from runbook import spec
    from runbook.validate import validate_runbook

    out = []
    for f in files:
        rb, problems = spec.load_runbook(f)
        if rb is not None:
            problems = problems + validate_runbook(rb, inventory, config).problems
            if loaded is not None:
                loaded.append(rb)
        out.append((str(f), sorted(problems, key=lambda p: (p.line, p.col))))
    return out


def dry_run_problems(path: str, inventory, config) -> list:
    """The problems a dry-run with the runbook's example_params finds (none when it plans)."""
    from runbook import spec
    from runbook.engine import Engine, Options, resolve_params
    from runbook.errors import Problem, RunbookError
    from runbook.session import example_params

    import os

    rb, _ = spec.load_runbook(path)
    given = example_params(rb)
    for name, p in rb.params.items():  # secrets never sit in a runbook: the environment, else a stand-in
        if p.secret and name not in given and not p.has_default:
            given[name] = os.environ.get(f"RUNBOOK_PARAM_{name.upper()}", "dry-run-secret")
    try:
        params = resolve_params(rb, given)
        Engine(rb, params, inventory=inventory, options=Options(dry_run=True)).plan()
    except RunbookError as exc:
        msg = str(exc)
        import re

        placed = re.match(re.escape(rb.path) + r":(\d+):(\d+): (.*)", msg, re.S)
        if placed:  # already placed: path:line:col: …
            return [Problem(path, int(placed[1]), int(placed[2]), "dry-run: " + placed[3], "error", "dry-run")]
        pos = rb.data.kpos("example_params") if "example_params" in rb.data else (1, 1)
        hint = " (give example values in example_params)" if "missing required parameter" in msg else ""
        return [Problem(path, pos[0], pos[1], f"dry-run: {msg}{hint}", "error", "dry-run")]
    return []


def run(args) -> int:
    import json
    from pathlib import Path

    from runbook import spec
    from runbook.validate import RULES, load_config

    files = _files([Path(p) for p in args.paths] or spec.search_path(None), spec.runbook_files, "", "runbook")
    config, config_problems = load_config(args.config)
    if args.allow_auto_approve:
        config.severities["RB109"] = "off"
    inventory = None
    problems_extra = list(config_problems)
    if args.inventory or args.env:
        from runbook.inventory import check_inventory, resolve_inventory

        if args.inventory:
            inventory, inv_problems = check_inventory(args.inventory)
            problems_extra += inv_problems
        else:
            inventory = resolve_inventory(None, args.env)
    runbooks: list | None = [] if args.alert_rules else None  # kept only when needed: 1,000 trees are ~100 MB
    results = check_files(files, inventory, config, runbooks)
    if args.dry_run:
        if inventory is None:
            from runbook.inventory import resolve_inventory

            inventory = resolve_inventory(None, None)
        results = [(f, ps + (dry_run_problems(f, inventory, config) if not any(p.severity == "error" for p in ps) else []))
                   for f, ps in results]
    coverage = None
    if args.alert_rules:
        results, coverage = alert_coverage(args.alert_rules, results, runbooks, config)
    if problems_extra:
        results.insert(0, (problems_extra[0].path, problems_extra))
    all_problems = [p for _, ps in results for p in ps]
    if args.strict:
        from dataclasses import replace

        all_problems = [replace(p, severity="error") if p.severity == "warning" else p for p in all_problems]
    errors = sum(1 for p in all_problems if p.severity == "error")
    warnings = sum(1 for p in all_problems if p.severity == "warning")
    infos = len(all_problems) - errors - warnings
    bad_files = len({p.path for p in all_problems if p.severity == "error"})

    if args.format == "json":
        doc = {"valid": errors == 0, "files": len(files), "errors": errors, "warnings": warnings, "infos": infos,
               "problems": [p.__dict__ for p in all_problems]}
        if coverage is not None:
            doc["alert_rules"] = {"files": coverage["files"], "alerts": coverage["answers"],
                                  "not_in_rules": coverage["not_in_rules"]}
        print(json.dumps(doc, indent=2))
    elif args.format == "github":
        for p in all_problems:
            level = {"error": "error", "warning": "warning"}.get(p.severity, "notice")
            title = f"runbook {p.rule}" if p.rule in RULES or p.rule == "alert-rules" else "runbook"
            props = ",".join(f"{k}={_gh_property(v)}" for k, v in
                             (("file", p.path), ("line", p.line), ("col", p.col), ("title", title)))
            print(f"::{level} {props}::{_gh_data(p.message)}")
    elif args.format == "sarif":
        print(json.dumps(_sarif(all_problems), indent=2))
    else:
        from runbook.ui import visible

        for p in all_problems:
            print(visible(p.format()))  # a message may quote the file's text
        n = len(files) + (len(coverage["files"]) if coverage else 0)
        summary = f"{n} file{'s' if n != 1 else ''} checked: "
        summary += "all valid" if errors == 0 else f"{errors} error{'s' if errors != 1 else ''} in {bad_files} file{'s' if bad_files != 1 else ''}"
        if warnings:
            summary += f", {warnings} warning{'s' if warnings != 1 else ''}"
        if infos:
            summary += f", {infos} note{'s' if infos != 1 else ''}"
        import sys

        if coverage is not None:
            print(visible(coverage["summary"]), file=sys.stderr)
        print(summary, file=sys.stderr)
    return 1 if errors else 0


def alert_coverage(rule_paths, results, runbooks, config):
    """Results with the alert-coverage findings merged in (runbook files' own, then each rule
    file's), and what the json output and the summary say about coverage."""
    from pathlib import Path

    from runbook import alert_rules

    files = _files([Path(p) for p in rule_paths], alert_rules.rule_files, "--alert-rules: ", "rule")
    loaded = [alert_rules.load_rule_file(f) for f in files]
    rules = [r for rf in loaded for r in rf.rules]
    cov = alert_rules.check(rules, runbooks, config, complete=all(rf.readable for rf in loaded))
    merged = [(f, sorted(ps + cov.problems.pop(f, []), key=lambda p: (p.line, p.col))) for f, ps in results]
    for rf in loaded:
        merged.append((rf.path, sorted(rf.problems + cov.problems.pop(rf.path, []), key=lambda p: (p.line, p.col))))
    for f, ps in cov.problems.items():  # a runbook path spelled differently (not expected)
        merged.append((f, ps))
    answered = sum(1 for a in cov.answers if a["runbook"] or a["by"])
    not_in = cov.not_in_rules
    summary = (f"alert rules: {len(cov.answers)} alerting rule{'s' if len(cov.answers) != 1 else ''} in {len(files)} "
               f"file{'s' if len(files) != 1 else ''}, {answered} answered by a runbook")
    if not_in:
        summary += "; runbook alerts no rule defines: " + ", ".join(
            f"{d['alert']} ({d['runbook']})" for d in not_in)
    return merged, {"files": [str(f) for f in files], "answers": cov.answers, "not_in_rules": not_in, "summary": summary}


def _gh_data(value) -> str:
    """A workflow command's message, escaped as GitHub's toolkit does (escapeData):
    ``%``, CR and LF; other control characters made visible (an annotation is shown in
    the log too)."""
    from runbook.ui import visible

    s = str(value).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return visible(s, one_line=True)


def _gh_property(value) -> str:
    """A workflow command's property value (``file=``, ``title=``…), escaped as GitHub's
    toolkit does (escapeProperty): ``%``, CR, LF, ``:`` and ``,``."""
    return _gh_data(value).replace(":", "%3A").replace(",", "%2C")


def _sarif(problems) -> dict:
    from runbook import __version__
    from runbook.validate import RULES

    level = {"error": "error", "warning": "warning"}  # else "note" (info)
    rules = [{"id": "schema", "name": "schema", "shortDescription": {"text": "the runbook format: YAML, keys, types, graph, templates"}},
             {"id": "alert-rules", "name": "alert-rules", "shortDescription": {"text": "the format of a Prometheus rule file or PrometheusRule (--alert-rules)"}}]
    rules += [{"id": rid, "name": name, "shortDescription": {"text": text},
               "defaultConfiguration": {"level": level.get(sev, "note")}}
              for rid, (name, sev, text) in RULES.items()]
    results = [{
        "ruleId": p.rule if p.rule in RULES or p.rule == "alert-rules" else "schema",
        "level": level.get(p.severity, "note"),
        "message": {"text": p.message},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": p.path}, "region": {"startLine": p.line, "startColumn": p.col}}}],
    } for p in problems]
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "runbook", "version": __version__, "informationUri": "https://pypi.org/project/runbook-executor/", "rules": rules}},
                  "results": results}],
    }


def _files(paths, find, prefix: str, what: str) -> list:
    """The files ``find`` finds under ``paths``; a usage error when a path is missing or none is found."""
    from runbook.errors import UsageError

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"{prefix}no such file or folder: {', '.join(missing)}")
    files = find(paths)
    if not files:
        raise UsageError(f"{prefix}no {what} files (*.yaml, *.yml) in {', '.join(map(str, paths))}")
    return files
