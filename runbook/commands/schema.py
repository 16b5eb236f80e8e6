"""runbook schema — the JSON Schema of the runbook format, or of the inventory format (for editors)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of runbook (or inventory) files", description=__doc__ +
                       "\n\nWith the YAML language server, put `# yaml-language-server: $schema=runbook.schema.json` "
                       "at the top of a playbook after `runbook schema > runbook.schema.json` (and "
                       "`$schema=inventory.schema.json` in an inventory after `runbook schema --inventory > "
                       "inventory.schema.json`).")
    p.add_argument("--inventory", action="store_true",
                   help="the inventory format instead of the runbook format")
    p.add_argument("--result", action="store_true",
                   help="the JSON Schema of a run's result (runbook run/resume --format json, "
                        "runbook audit show --format result) instead")
    p.add_argument("--markdown", action="store_true",
                   help="print the format's reference in Markdown instead (docs/reference.md and, "
                        "with --inventory, docs/inventory.md are made with this)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    if args.result:
        if args.inventory or args.markdown:
            from runbook.errors import UsageError

            raise UsageError("--result goes alone (it has no Markdown reference)")
        from runbook.result import json_schema

        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.markdown:
        from runbook.docs import inventory_markdown, reference_markdown

        print(inventory_markdown() if args.inventory else reference_markdown(), end="")
        return 0
    if args.inventory:
        from runbook.inventory import json_schema
    else:
        from runbook.spec import json_schema
    print(json.dumps(json_schema(), indent=2))
    return 0
