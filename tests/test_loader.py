"""The loader turns any input into a runbook or clean file:line:col errors."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook.spec import load_text
from runbook.validate import validate_runbook

GOOD = """\
name: demo
title: Demo
stages:
  diagnose:
    - id: look
      shell: uptime
      readonly: true
"""


def msgs(text):
    rb, problems = load_text(text, "rb.yaml")
    return rb, [p.format() for p in problems]


def test_valid_document_loads():
    rb, problems = msgs(GOOD)
    assert problems == []
    assert rb.name == "demo" and [s.id for s in rb.steps] == ["look"]
    assert rb.steps[0].effect == "read"


def test_yaml_syntax_error_names_line_column_and_fix():
    _, problems = msgs("name: demo\ntitle: [unclosed\nstages: {}\n")
    assert len(problems) == 1
    assert problems[0].startswith("rb.yaml:3:")
    assert "YAML syntax error" in problems[0]


def test_unquoted_template_gets_a_hint():
    _, problems = msgs(GOOD + "    - id: x\n      shell: {{ params.a }}\n")
    assert any("must be quoted" in p and p.startswith("rb.yaml:9:") for p in problems), problems


def test_tab_indentation_hint():
    _, problems = msgs("name: demo\ntitle: d\nstages:\n\tdiagnose: []\n")
    assert "rb.yaml:4:1:" in problems[0] and "tabs" in problems[0]


def test_unknown_key_suggests_the_right_one():
    _, problems = msgs(GOOD.replace("readonly: true", "readonyl: true"))
    assert problems == ["rb.yaml:7:7: error: stages.diagnose[0]: unknown key 'readonyl' (did you mean 'readonly'?)"]


def test_unknown_top_level_key_and_missing_required():
    _, problems = msgs("name: demo\ntitel: x\nstages: {}\n")
    assert "rb.yaml:2:1: error: unknown key 'titel' (did you mean 'title'?)" in problems
    assert any("missing required key 'title'" in p for p in problems)


def test_wrong_types():
    _, problems = msgs(GOOD.replace("readonly: true", "readonly: maybe\n      retries: lots"))
    assert any("rb.yaml:7:17" in p and "expected true or false" in p for p in problems)
    assert any("rb.yaml:8:16" in p and "expected an integer" in p for p in problems)


def test_bad_duration():
    _, problems = msgs(GOOD.replace("readonly: true", "readonly: true\n      timeout: soon"))
    assert any("expected a duration" in p and "rb.yaml:8:16" in p for p in problems)


def test_unknown_step_kind():
    _, problems = msgs(GOOD.replace("shell: uptime", "shel: uptime"))
    assert problems == ["rb.yaml:6:7: error: stages.diagnose[0]: unknown key 'shel' (did you mean 'shell'?)"]
    _, problems = msgs(GOOD.replace("shell: uptime", "telepathy: uptime"))
    assert "unknown key 'telepathy'" in problems[0]


def test_step_with_two_kinds():
    _, problems = msgs(GOOD.replace("shell: uptime", "shell: uptime\n      wait: 5s"))
    assert any("two kinds" in p for p in problems)


def test_duplicate_yaml_key():
    _, problems = msgs(GOOD.replace("readonly: true", "readonly: true\n      readonly: false"))
    assert any("duplicate key 'readonly'" in p and "rb.yaml:8:7" in p for p in problems)


def test_not_a_mapping_and_empty():
    assert msgs("- a\n- b\n")[1] == ["rb.yaml:1:1: error: a runbook must be a mapping with name, title and stages"]
    assert "empty" in msgs("")[1][0]


def test_unsafe_yaml_tags_are_refused():
    _, problems = msgs("name: !!python/object/apply:os.system [echo hi]\n")
    assert problems and "rb.yaml:1:" in problems[0]


# --- generated documents: any input ends in a runbook or clean errors -------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=12),
                    st.sampled_from(["{{ params.x }}", "30s", "abort", "continue", "look", "x"]))
keys = st.sampled_from(["name", "title", "stages", "params", "diagnose", "mitigate", "verify", "id", "shell",
                        "readonly", "next", "on_failure", "choose", "when", "goto", "default", "until", "timeout",
                        "retries", "outputs", "regex", "type", "secret", "wait", "end", "ask", "manual", "max_visits"])
docs = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=6)),
                    max_leaves=30)


def _dump(value, indent=0) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=False)


@settings(max_examples=300, deadline=None)
@given(docs)
def test_generated_structures_never_crash(doc):
    rb, problems = load_text(_dump(doc), "gen.yaml")
    if rb is not None:
        problems = problems + validate_runbook(rb).problems
    for p in problems:
        assert p.path == "gen.yaml" and p.line >= 1 and p.col >= 1 and p.message


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc:-[]{}'\"\n #&*!|>%@`\t")) | st.characters(), max_size=80))
def test_generated_text_never_crashes(text):
    rb, problems = load_text(text, "gen.yaml")
    assert rb is not None or problems  # a runbook, or at least one clean error
    for p in problems:
        assert p.format().startswith("gen.yaml:")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "id": st.sampled_from(["a", "b", "c", "d"]),
    "shell": st.sampled_from(["true", "echo {{ params.x }}", "echo {{ steps.a.stdout }}", "echo {{ nope }}"]),
}, optional={"next": st.sampled_from(["a", "b", "c", "zz"]), "on_failure": st.sampled_from(["a", "continue", "zz"]),
             "readonly": st.booleans(), "max_visits": st.integers(1, 3)}), min_size=1, max_size=6))
def test_generated_graphs_validate_cleanly(steps):
    import yaml

    doc = {"name": "g", "title": "G", "params": {"x": {"default": "v"}}, "stages": {"diagnose": steps}}
    rb, problems = load_text(yaml.safe_dump(doc), "g.yaml")
    assert rb is not None, problems
    res = validate_runbook(rb)
    for p in res.problems:
        assert p.line >= 1 and p.message


# -- big files and alias bombs ------------------------------------------------------------


def _no_parsing(monkeypatch):
    """Make any YAML parsing fail the test: the size check must come first."""
    import yaml

    from runbook import yamlload

    def compose(*a, **kw):
        raise AssertionError("the file was parsed")

    monkeypatch.setattr(yamlload.yaml, "compose", compose)
    monkeypatch.setattr(yaml, "compose", compose)


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path, monkeypatch):
    from runbook.spec import load_runbook
    from runbook.yamlload import MAX_FILE_BYTES

    path = tmp_path / "big.yaml"
    step = "    - id: s{}\n      shell: echo ok\n      readonly: true\n"
    body = "".join(step.format(i) for i in range(10 * MAX_FILE_BYTES // len(step)))  # ~10 MB
    path.write_text("name: big\ntitle: Big\nstages:\n  diagnose:\n" + body)
    _no_parsing(monkeypatch)
    rb, problems = load_runbook(path)
    assert rb is None
    assert [p.format() for p in problems] == [
        f"{path}:1:1: error: {path.stat().st_size / 1e6:.1f} MB is over runbook's 1 MB limit for a runbook, inventory"
        " or alert file; split it into smaller files (one runbook per incident, one inventory per environment)"
    ]


def test_an_inventory_over_the_size_limit_is_refused_without_reading_it(tmp_path, monkeypatch):
    from runbook.inventory import check_inventory
    from runbook.yamlload import MAX_FILE_BYTES

    path = tmp_path / "big.yaml"
    path.write_text("hosts:\n" + "".join(f"  h{i}: {{address: 192.0.2.1}}\n" for i in range(MAX_FILE_BYTES // 20)))
    _no_parsing(monkeypatch)
    inventory, problems = check_inventory(path)
    assert inventory is None and len(problems) == 1
    assert problems[0].message.startswith(f"{path.stat().st_size / 1e6:.1f} MB is over runbook's 1 MB limit")


def test_the_limit_counts_bytes_not_characters():
    from runbook.yamlload import MAX_FILE_BYTES, load

    text = "name: x\ndescription: " + "é" * (MAX_FILE_BYTES // 2 + 10) + "\n"  # fewer characters than the limit
    assert len(text) < MAX_FILE_BYTES
    data, problems = load(text, "x.yaml")
    assert data is None and "over runbook's 1 MB limit" in problems[0].message


def test_a_file_just_under_the_limit_loads(tmp_path):
    from runbook.spec import load_runbook
    from runbook.yamlload import MAX_FILE_BYTES

    head, tail = "name: demo\ntitle: Demo\ndescription: ", "\n" + GOOD.split("\n", 2)[2]
    padding = MAX_FILE_BYTES - len(head) - len(tail)
    path = tmp_path / "rb.yaml"
    path.write_text(head + "x" * padding + tail)
    assert path.stat().st_size == MAX_FILE_BYTES
    rb, problems = load_runbook(path)
    assert problems == [] and rb is not None and len(rb.description) == padding


def test_an_alias_bomb_is_refused_with_the_expansion_message():
    levels = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    _, problems = msgs("\n".join(levels) + "\n")  # a 9**9 values "billion laughs" in 500 bytes
    assert len(problems) == 1
    assert problems[0].startswith("rb.yaml:1:1: error: YAML error: aliases expand the document by more than 100,000 values")


def test_only_values_added_by_aliases_count_against_the_alias_budget(monkeypatch):
    from runbook import yamlload

    monkeypatch.setattr(yamlload, "MAX_ALIAS_VALUES", 10)
    plain = "items: [" + ", ".join(f"[{i}, {i}]" for i in range(50)) + "]\n"
    data, problems = yamlload.load(plain, "x.yaml")
    assert problems == [] and len(data["items"]) == 50  # 150 values, none from an alias
    few = "base: &b {k: [1, 2]}\nuse: [*b, *b]\n"  # each alias adds 3 values: 6 in all
    data, problems = yamlload.load(few, "x.yaml")
    assert problems == [] and data["use"] == [{"k": [1, 2]}] * 2
    many = "base: &b {k: [1, 2]}\nuse: [*b, *b, *b, *b]\n"  # 12 values from aliases
    data, problems = yamlload.load(many, "x.yaml")
    assert data is None and "aliases expand the document by more than 10 values" in problems[0].message


def test_validate_refuses_a_big_file_in_one_line(tmp_path, main):
    from runbook.yamlload import MAX_FILE_BYTES

    path = tmp_path / "big.yaml"
    path.write_text("name: big\ntitle: Big\ndescription: " + "x" * MAX_FILE_BYTES + "\nstages: {}\n")
    out = main("validate", path)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    # just over the limit, the size is said in bytes ("1.0 MB is over the 1 MB limit" would not say much)
    assert f"{path}:1:1: error: {path.stat().st_size:,} bytes is over runbook's 1 MB limit" in out.stdout


def test_merge_keys_and_long_aliased_texts_count_against_the_alias_budget():
    """`<<: *a` copies every key of `a` into each mapping (400 x 400 = 160,000 values from 8 KB),
    and an alias of a long text repeats all of it: both are expansions, refused like alias bombs."""
    from runbook import yamlload

    merges = "base: &a {" + ", ".join(f"k{i}: 1" for i in range(400)) + "}\nl:\n" + "- {<<: *a}\n" * 400
    long_text = "s: &s '" + "x" * 300_000 + "'\nl:\n" + "- *s\n" * 600
    for text in (merges, long_text):
        assert len(text.encode()) < yamlload.MAX_FILE_BYTES
        data, problems = yamlload.load(text, "bomb.yaml")
        assert data is None and "aliases expand the document" in problems[0].message, problems[:1]
    # ordinary merges and short aliases stay fine
    ok = "base: &a {x: 1, y: 2}\nl:\n" + "- {<<: *a, z: 3}\n" * 50 + "t: &t hello\nu: [" + ", ".join(["*t"] * 50) + "]\n"
    data, problems = yamlload.load(ok, "ok.yaml")
    assert problems == [] and data["l"][49] == {"x": 1, "y": 2, "z": 3} and data["u"][0] == "hello"


SCALARS = ["", "~", "null", "Null", "NULL", "true", "True", "FALSE", "yes", "no", "on", "0", "-1", "+12", "0o17",
           "0x1F", "1_000", "3.14", ".5", "-.inf", ".NaN", "1e3", "6.8523015e+5", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
           "<<", "=", "text", "{{ params.x }}", "12:30:00", "190:20:30", "0b101", "1.", "tru", "n", "-", "+", ".", "1 2"]


@pytest.mark.parametrize("value", SCALARS)
def test_fast_resolver_gives_the_safe_loaders_tags(value):
    """yamlload's loader resolves tags in fewer steps than PyYAML's: the same tags, plain or quoted."""
    from runbook import yamlload

    ref = yaml.SafeLoader("")
    fast = yamlload._Loader("")
    for implicit in ((True, False), (False, True)):
        assert fast.resolve(yaml.ScalarNode, value, implicit) == ref.resolve(yaml.ScalarNode, value, implicit)
    for kind in (yaml.SequenceNode, yaml.MappingNode):
        assert fast.resolve(kind, None, (True, False)) == ref.resolve(kind, None, (True, False))
    text = f"k: '{value}'\nv: {value}\n" if value[:1] not in "-+." or len(value) > 1 else f"k: '{value}'\n"
    mine, problems = yamlload.load(text)
    try:
        ref_data = yaml.safe_load(text)
    except yaml.YAMLError:  # '=', '<<', '{{ … }}' unquoted: not a plain value
        assert problems
    else:
        assert repr(dict(mine)) == repr(ref_data)  # repr: nan == nan
