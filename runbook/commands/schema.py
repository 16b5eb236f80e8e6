"""runbook schema — the JSON Schema of the runbook format (for editors)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of runbook files", description=__doc__ +
                       "\n\nWith the YAML language server, put `# yaml-language-server: $schema=runbook.schema.json` "
                       "at the top of a playbook after `runbook schema > runbook.schema.json`.")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from runbook.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
