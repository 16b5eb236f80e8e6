"""The format reference is generated from the schema: the committed copy must match."""

from __future__ import annotations

import pytest
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


def test_inventory_reference_is_up_to_date():
    from runbook.docs import inventory_markdown

    committed = (ROOT / "docs" / "inventory.md").read_text(encoding="utf-8")
    assert committed == inventory_markdown(), "regenerate it: runbook schema --inventory --markdown > docs/inventory.md"


def test_inventory_reference_documents_every_section_field_and_secret_source():
    from runbook import inventory as inv

    text = (ROOT / "docs" / "inventory.md").read_text(encoding="utf-8")
    for section, node in inv.INVENTORY.fields.items():
        assert f"| `{section}` |" in text
        entry = node.value if isinstance(node, inv.Section) else node
        if isinstance(entry, inv.Entry):
            assert f"\n## {section}\n" in text
            for name in entry.fields:
                assert f"| `{name}` |" in text.split(f"\n## {section}\n")[1].split("\n## ")[0], (section, name)
    assert "`{env: NAME}`" in text and "`{file: PATH}`" in text
    assert "## Ansible YAML inventories" in text and "`ansible_host`, `ansible_ssh_host`" in text


def _json_validator():
    import jsonschema

    from runbook.inventory import json_schema

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_example_inventory_validates():
    import yaml

    from runbook.inventory import check_inventory
    from runbook.inventory_ansible import _is_ansible
    from runbook.yamlload import load_file

    validator = _json_validator()
    files = sorted((ROOT / "inventory").glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        inventory, problems = check_inventory(path)
        assert inventory is not None and [p.format() for p in problems] == [], path
        if not _is_ansible(load_file(path)[0]):  # the JSON Schema is of runbook's own format
            errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
            assert errors == [], path


def test_the_references_examples_make_a_valid_inventory(tmp_path):
    import yaml

    from runbook import inventory as inv

    examples = [(n.value if isinstance(n, inv.Section) else n).example for n in inv.INVENTORY.fields.values()
                if isinstance(n, (inv.Section, inv.Entry))]
    assert all(examples) and len(examples) == 9
    path = tmp_path / "examples.yaml"
    path.write_text("\n".join(examples) + "\n")
    inventory, problems = inv.check_inventory(path)
    assert [p.format() for p in problems] == [] and inventory is not None
    assert inventory.hosts["api-1"].jump_host == "bastion" and inventory.groups["api-servers"].hosts == ["api-1"]
    assert list(_json_validator().iter_errors(yaml.safe_load(path.read_text()))) == []


def test_declared_fields_and_defaults_are_the_models():
    """The schema and the model classes it fills cannot drift apart: the same
    fields, and a default the reference states is the one the model uses."""
    import dataclasses

    from runbook import inventory as inv

    pairs = [(inv.SSH, inv.SshDefaults), (inv.AWS, inv.AwsSettings)] + [(n.value, n.model) for n in inv.INVENTORY.fields.values()
                                            if isinstance(n, inv.Section)]
    for entry, model in pairs:
        model_fields = {f.name: f for f in dataclasses.fields(model)}
        if model is not inv.Group:  # a group's children are expanded into its hosts
            assert set(entry.fields) == set(model_fields) - {"name"}, model
        for name, node in entry.fields.items():
            if node.default is not inv._NO_DEFAULT:
                assert model_fields[name].default == node.default, (model, name)


@pytest.mark.parametrize("text, ok", [
    ("hosts: {a: {address: 192.0.2.1, port: 22}}", True),
    ("hosts: {a: , b: {jump_host: null}}", True),
    ("hosts: {a: {port: 70000}}", False),
    ("hosts: {a: {adress: x}}", False),
    ("hosts: {'bad name': {}}", False),
    ("ssh: {host_key_policy: yolo}", False),
    ("ssh: {forks: 0}", False),
    ("ssh: {connect_timeout: 0.5, shell: bash}", True),
    ("clusters: {k: {in_cluster: true, context: x}}", False),
    ("clusters: {k: {in_cluster: false, context: x}}", True),
    ("databases: {m: {dsn: 'postgresql://x/y', host: h}}", False),
    ("databases: {m: {password: {env: PG_PASSWORD}, sslmode: verify-full}}", True),
    ("databases: {m: {password: {vault: x}}}", False),
    ("databases: {m: {password: {env: 'not a name'}}}", False),
    ("http: {api: {verify_tls: false}}", False),
    ("http: {api: {url: 'https://x', headers: {Authorization: {file: tok}}}}", True),
    ("notify: {n: {webhook: {env: HOOK}, channel: '#x'}}", True),
    ("aws: {profile: oncall, region: eu-west-1, role_arn: 'arn:aws:iam::123456789012:role/r'}", True),
    ("aws: {endpoint_url: 'http://127.0.0.1:5000'}", True),
    ("aws: {regoin: eu-west-1}", False),
    ("aws: [eu-west-1]", False),
    ("nonsense: 1", False),
    ("env: ''", False),
])
def test_the_json_schema_accepts_what_the_loader_accepts(tmp_path, text, ok):
    import yaml

    from runbook.inventory import check_inventory

    path = tmp_path / "inv.yaml"
    path.write_text(text + "\n")
    inventory, problems = check_inventory(path)
    assert (inventory is not None) is ok, [p.format() for p in problems]
    assert (not list(_json_validator().iter_errors(yaml.safe_load(text)))) is ok


def test_schema_command_prints_the_inventory_schema_and_reference(main):
    import json

    out = main("schema", "--inventory")
    assert out.returncode == 0 and json.loads(out.stdout)["title"] == "runbook inventory"
    out = main("schema", "--inventory", "--markdown")
    assert out.returncode == 0 and out.stdout == (ROOT / "docs" / "inventory.md").read_text(encoding="utf-8")


def test_pre_commit_hook_runs_validate(tmp_path):
    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    ids = {h["id"]: h for h in hooks}
    assert ids["runbook-validate"]["entry"].startswith("runbook validate")
    assert ids["runbook-validate"]["language"] == "python"
    assert "yaml" in ids["runbook-validate"]["types"]
