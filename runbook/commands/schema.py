"""runbook schema — the JSON Schema of the runbook format (for editors)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of runbook files", description=__doc__ +
                       "\n\nWith the YAML language server, put `# yaml-language-server: $schema=runbook.schema.json` "
                       "at the top of a playbook after `runbook schema > runbook.schema.json`.")
    p.add_argument("--markdown", action="store_true",
                   help="print the format's reference in Markdown instead (docs/reference.md is made with this)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from runbook.spec import json_schema

    if args.markdown:
        from runbook.docs import reference_markdown

        print(reference_markdown(), end="")
        return 0

    print(json.dumps(json_schema(), indent=2))
    return 0
