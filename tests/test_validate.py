"""Static checks: graph, references, templates, parameters, safety rules; the CLI's formats and exit codes."""

from __future__ import annotations

import json
import textwrap


from runbook.spec import load_text
from runbook.validate import Config, validate_runbook


def problems(text, config=None):
    rb, ps = load_text(textwrap.dedent(text).lstrip("\n"), "rb.yaml")
    assert rb is not None, [p.format() for p in ps]
    return [p.format() for p in validate_runbook(rb, config=config).problems]


HEAD = """\
name: demo
title: Demo
params:
  service: {type: string, default: api, pattern: '^[a-z]+$'}
  token: {secret: true, default: s3cret}
stages:
"""


def doc(body):
    return HEAD + textwrap.indent(textwrap.dedent(body).lstrip("\n"), "  ")


def test_clean_runbook_has_no_problems():
    assert problems(doc("""
        diagnose:
          - id: look
            shell: "curl -fsS http://{{ params.service }}/health"
            readonly: true
        mitigate:
          - id: fix
            shell: "systemctl restart {{ params.service }}"
            timeout: 1m
        verify:
          - id: check
            shell: "curl -fsS http://{{ params.service }}/health"
            readonly: true
    """)) == []


def test_duplicate_ids_and_missing_targets():
    ps = problems(doc("""
        diagnose:
          - id: a
            shell: "true"
            readonly: true
            next: b2
          - id: a
            shell: "true"
            readonly: true
            on_failure: nowhere
    """))
    assert "rb.yaml:12:11: error: duplicate step id 'a' (first at line 8)" in ps
    assert any("rb.yaml:11:13" in p and "next names step 'b2', which does not exist" in p for p in ps)
    assert any("on_failure names step 'nowhere'" in p for p in ps)


def test_choose_goto_unknown_with_suggestion():
    ps = problems(doc("""
        diagnose:
          - id: decide
            choose:
              - when: "true"
                goto: restrat
              - default: restart
          - id: restart
            shell: "true"
            readonly: true
    """))
    assert any("choose names step 'restrat', which does not exist (did you mean 'restart'?)" in p for p in ps)


def test_unreachable_step():
    ps = problems(doc("""
        diagnose:
          - id: a
            shell: "true"
            readonly: true
          - id: stop
            end: done
          - id: orphan
            shell: "true"
            readonly: true
    """))
    assert ps == ["rb.yaml:13:7: error: step 'orphan' can never be reached (no step leads to it; give a previous step next/goto/on_failure, or remove it)"]


def test_unbounded_loop_and_bounded_loop():
    loop = """
        diagnose:
          - id: a
            shell: "true"
            readonly: true
          - id: b
            shell: "false"
            readonly: true
            on_failure: a{extra}
          - id: done
            end: ok
    """
    ps = problems(doc(loop.format(extra="")))
    assert any("loop with no bound: a → b → a" in p for p in ps)
    assert problems(doc(loop.format(extra="\n            max_visits: 3"))) == []


def test_until_needs_timeout_and_bounds_a_loop():
    ps = problems(doc("""
        diagnose:
          - id: poll
            shell: "true"
            readonly: true
            until: "exit_code == 0"
    """))
    assert any("until needs a timeout" in p for p in ps)


def test_templates_undefined_param_unknown_name_and_bad_syntax():
    ps = problems(doc("""
        diagnose:
          - id: a
            shell: "echo {{ params.servce }} {{ foo }} {{ env.HOME }}"
            readonly: true
          - id: b
            shell: "echo {{ params.service"
            readonly: true
    """))
    assert any("parameter 'servce' is not defined (did you mean 'service'?)" in p for p in ps)
    assert any("unknown name 'foo'" in p for p in ps)
    assert any("environment variable 'HOME' is not allowed" in p for p in ps)
    assert any("step 'b' command: template syntax error" in p for p in ps)


def test_step_output_used_before_it_can_exist():
    ps = problems(doc("""
        diagnose:
          - id: early
            shell: "echo {{ steps.late.stdout }}"
            readonly: true
          - id: late
            shell: "echo hi"
            readonly: true
          - id: after
            choose:
              - when: "steps.late.ok and steps.early.ok"
                goto: stop
          - id: stop
            end: ok
    """))
    assert any("step 'early' command: reads steps.late, but step 'late' cannot have run before 'early'" in p for p in ps)
    assert not any("step 'after'" in p for p in ps)


def test_param_defaults_must_satisfy_their_own_rules():
    ps = problems("""
        name: demo
        title: Demo
        params:
          a: {type: integer, default: "ten"}
          b: {type: string, default: "UPPER", pattern: '^[a-z]+$'}
          c: {type: string, default: blue, enum: [red, green]}
          d: {type: string, pattern: '([unclosed'}
        stages:
          diagnose:
            - id: x
              shell: "true"
              readonly: true
    """)
    assert "rb.yaml:4:31: error: parameter 'a': default 'ten' is not an integer" in ps
    assert any("parameter 'b': default 'UPPER' does not match" in p for p in ps)
    assert any("parameter 'c': default 'blue' must be one of red, green" in p for p in ps)
    assert any("parameter 'd': invalid pattern" in p for p in ps)


def test_safety_rules():
    ps = problems(doc("""
        diagnose:
          - id: fix-in-diagnose
            shell: "systemctl restart x"
          - id: say
            manual: "The token is {{ params.token }}"
        mitigate:
          - id: fix
            shell: "echo '{{ params.service }}'"
    """))
    assert any("[RB101]" in p and "fix-in-diagnose" in p and ": error:" in p for p in ps)
    assert any("[RB103]" in p and ": warning:" in p for p in ps)
    assert any("[RB105]" in p and "secret parameter 'token' would be printed" in p for p in ps)
    assert any("[RB102]" in p for p in ps)
    assert any("[RB106]" in p for p in ps)


def test_secret_in_shell_command_is_fine():
    ps = problems(doc("""
        diagnose:
          - id: call
            shell: "curl -H \\"Authorization: Bearer $TOKEN\\" -u x:{{ params.token }} http://example.invalid"
            readonly: true
    """))
    assert ps == []


def test_rule_severity_is_tunable(write, main, tmp_path):
    body = doc("""
        diagnose:
          - id: fix
            shell: "systemctl restart x"
    """)
    assert any("[RB101]" in p and ": warning:" in p for p in problems(body, Config({"RB101": "warning"})))
    assert not any("[RB101]" in p for p in problems(body, Config({"RB101": "off"})))
    # and from the project's config file, by id or by name
    write("playbooks/x.yaml", body)
    assert main("validate").returncode == 1
    write(".runbook.yaml", "rules:\n  write-in-diagnose: warning\n  RB103: off\n")
    r = main("validate")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" in r.stdout and "RB103" not in r.stdout
    write(".runbook.yaml", "rules:\n  RB999: off\n")
    r = main("validate")
    assert r.returncode == 1 and ".runbook.yaml:2:3: error: config: unknown rule 'RB999'" in r.stdout


BROKEN = """\
name: broken
title: Broken
stages:
  diagnose:
    - id: a
      shell: "true"
      readonly: true
      next: nowhere
"""


def test_cli_exit_codes_and_formats(write, main, tmp_path):
    good = write("rb/good.yaml", HEAD + "  diagnose:\n    - id: a\n      shell: 'true'\n      readonly: true\n")
    bad = write("rb/bad.yaml", BROKEN)
    r = main("validate", good)
    assert r.returncode == 0 and "all valid" in r.stderr
    r = main("validate", tmp_path / "rb")
    assert r.returncode == 1
    assert r.stdout.splitlines() == [f"{bad}:8:13: error: step 'a': next names step 'nowhere', which does not exist"]
    r = main("validate", "does-not-exist.yaml")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = main("validate", "--format", "json", bad)
    data = json.loads(r.stdout)
    assert data["valid"] is False and data["problems"][0]["line"] == 8
    r = main("validate", "--format", "github", bad)
    assert r.stdout.startswith(f"::error file={bad},line=8,col=13,title=runbook::step 'a'")
    r = main("validate", "--format", "sarif", bad)
    sarif = json.loads(r.stdout)
    res = sarif["runs"][0]["results"][0]
    assert sarif["version"] == "2.1.0" and res["locations"][0]["physicalLocation"]["region"]["startLine"] == 8
    r = main("validate", "--format", "nope")
    assert r.returncode == 2


def test_yaml_error_through_cli(write, main):
    p = write("x.yaml", "name: x\ntitle: 'unclosed\nstages: {}\n")
    r = main("validate", p)
    assert r.returncode == 1
    assert r.stdout.startswith(f"{p}:") and "YAML" in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_shipped_playbooks_are_valid(main):
    from conftest import ROOT

    r = main("validate", ROOT / "playbooks")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""


def test_a_loop_through_several_steps_needs_max_visits_even_with_until():
    ps = problems(doc("""
        mitigate:
          - id: restart
            shell: "systemctl restart x"
            timeout: 1m
        verify:
          - id: check
            shell: "curl -f http://x"
            readonly: true
            until: "exit_code == 0"
            timeout: 30s
            next: restart
    """))
    assert any("loop with no bound: restart → check → restart" in p for p in ps)


def test_zero_timeout_and_every_are_refused():
    rb, loaded = load_text(doc("""
        diagnose:
          - id: poll
            shell: "true"
            readonly: true
            until: "false"
            every: 0s
            timeout: 0
    """), "rb.yaml")
    msgs = [p.format() for p in loaded]
    assert any("timeout: must be more than 0" in m for m in msgs) and any("every: must be more than 0" in m for m in msgs)


def test_numbers_where_text_is_expected_are_clean_errors(write, main):
    p = write("n.yaml", """
        name: n
        title: N
        params:
          x: {pattern: 5}
        stages:
          diagnose:
            - id: a
              shell: {command: "true", cwd: 5}
              readonly: true
              until: 1
              timeout: 5s
              outputs:
                v: {regex: 5}
    """)
    r = main("validate", p)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr
    for where in ("params.x.pattern: expected a string", "cwd: expected a string", "until: expected a string", "regex: expected a string"):
        assert where in r.stdout, r.stdout


def test_continue_with_next_has_one_successor_and_the_skipped_step_is_unreachable():
    ps = problems(doc("""
        diagnose:
          - id: a
            shell: "false"
            readonly: true
            on_failure: continue
            next: c
          - id: b
            shell: "true"
            readonly: true
          - id: c
            end: done
    """))
    assert any("step 'b' can never be reached" in p for p in ps)


def test_result_fields_and_outputs_are_checked():
    ps = problems(doc("""
        diagnose:
          - id: probe
            shell: "echo 3"
            readonly: true
            outputs:
              count: {regex: '(\\d+)', type: integer}
          - id: use
            shell: "echo {{ steps.probe.outputs.cnt }} {{ steps.probe.stdout }}"
            readonly: true
          - id: decide
            choose:
              - when: "steps.probe.exit_code == 0"
                goto: done
              - when: "steps.probe.outptus.count > 3"
                goto: done
          - id: done
            end: ok
    """))
    assert any("rb.yaml:14:14" in p and "step 'probe' has no output 'cnt' (did you mean 'count'?)" in p for p in ps), ps
    # the second branch is reported at its own line
    assert any("rb.yaml:20:17" in p and "has no result field 'outptus' (did you mean 'outputs'?)" in p for p in ps), ps
    assert len(ps) == 2


def test_names_that_templates_would_read_as_mapping_methods(write):
    from runbook import spec
    from runbook.validate import validate_runbook

    p = write("m.yaml", """\
        name: m
        title: M
        params:
          items: {type: string, default: a}
        stages:
          diagnose:
            - id: count
              shell: "echo 3"
              readonly: true
              outputs:
                keys: {regex: '(\\\\d+)', type: integer}
        """)
    rb, problems = spec.load_runbook(p)
    msgs = [x.message for x in validate_runbook(rb).problems]
    assert any("parameter name 'items' is also a mapping method" in m for m in msgs), msgs
    assert any("output name 'keys' is also a mapping method" in m for m in msgs), msgs


def test_without_an_inventory_validate_says_what_it_could_not_check(write, main, tmp_path):
    """`hosts: web` may be a group: with an inventory that is an error (no aggregate), without
    one validate cannot know, and says so in a note (RB108) instead of passing silently."""
    import json as _json

    p = write("g.yaml", """
        name: g
        title: G
        stages:
          diagnose:
            - id: disk
              ssh: {hosts: web, command: "df -h /"}
              readonly: true
              outputs:
                use: {regex: '(\\d+)%', type: integer}
        """)
    r = main("validate", p, cwd=tmp_path)
    assert r.returncode == 0 and "info: step 'disk': not checked without an inventory" in r.stdout and "[RB108]" in r.stdout
    inv = write("inv.yaml", _json.dumps({"hosts": {"a": {"address": "192.0.2.1"}, "b": {"address": "192.0.2.2"}},
                                         "groups": {"web": {"hosts": ["a", "b"]}}}))
    r = main("validate", p, "--inventory", inv, cwd=tmp_path)
    assert r.returncode == 1 and "runs on every host of group web" in r.stdout and "RB108" not in r.stdout
