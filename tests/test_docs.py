"""The format reference is generated from the schema: the committed copy must match."""

from __future__ import annotations

from conftest import ROOT


def test_reference_is_up_to_date():
    from runbook.docs import reference_markdown

    committed = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == reference_markdown(), "regenerate it: runbook schema --markdown > docs/reference.md"


def test_reference_covers_every_kind_and_field():
    from runbook import spec, steps

    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    for kind in steps.KINDS:
        assert f"\n### {kind}\n" in text
    for field in spec.COMMON_FIELDS:
        assert f"| `{field}` |" in text


def test_pre_commit_hook_runs_validate(tmp_path):
    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    ids = {h["id"]: h for h in hooks}
    assert ids["runbook-validate"]["entry"].startswith("runbook validate")
    assert ids["runbook-validate"]["language"] == "python"
    assert "yaml" in ids["runbook-validate"]["types"]
