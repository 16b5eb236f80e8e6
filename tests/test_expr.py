"""The template language: sandbox, references, and the fast path that reads simple templates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook import expr

SIMPLE = [
    "echo {{ params.x }}",
    "{{ steps['a-b'].outputs.n }} and {{ steps[\"c\"].rows[0].n }}",
    "curl {{ inventory.http.api.url }}/health?x={{ params.y }}",
    "no templates at all",
    "{{x}}{{y.z}}",
]


@pytest.mark.parametrize("source", SIMPLE)
def test_fast_path_agrees_with_jinja(source):
    fast = expr._simple_references(source)
    assert fast is not None
    slow, err = expr._jinja_references(source, False)
    assert err is None and set(fast) == set(slow)


names = st.sampled_from(["params", "steps", "inventory", "env", "x"])
keys = st.sampled_from([".a", ".b_c", "['d-e']", '["f"]', "[0]", ".outputs", ".n"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="ab $'-", max_size=5), names, st.lists(keys, max_size=3)), min_size=1, max_size=4))
def test_fast_path_agrees_with_jinja_on_generated_templates(parts):
    source = "".join(f"{text}{{{{ {root}{''.join(k)} }}}}" for text, root, k in parts)
    fast = expr._simple_references(source)
    slow, err = expr._jinja_references(source, False)
    assert fast is not None and err is None
    assert set(fast) == set(slow)


def test_complex_templates_take_the_jinja_path():
    assert expr._simple_references("{{ params.x | upper }}") is None
    assert expr._simple_references("{% for h in params.hosts %}{{ h }}{% endfor %}") is None
    refs, err = expr.references("{% for h in params.hosts %}{{ h }}{% endfor %}")
    assert err is None and refs == (("params", "hosts"),)


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ params.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__ }}",
])
def test_sandbox_refuses_python_internals(source):
    with pytest.raises(expr.ExprError):
        expr.render(source, {"params": {}})


def test_shell_quoting_of_every_value_type():
    ctx = {"params": {"s": "a b; rm -rf /", "n": 3, "t": True, "none": None, "q": "it's"}}
    cmd, env = expr.render_shell("x {{ params.s }} {{ params.n }} {{ params.t }} {{ params.none }} {{ params.q }}", ctx)
    assert cmd == "x 'a b; rm -rf /' 3 true '' 'it'\"'\"'s'" and env == {}


SECRETS = frozenset({"token", "pw"})


@pytest.mark.parametrize("source,misused", [
    ("curl -H {{ params.token }} {{ params.url }}", ()),
    ("echo {{ params['token'] }} {{ params[\"pw\"] }}", ()),
    ("echo {{ params.token.x }}", ("token",)),
    ("echo {{ params.pw[0] }} {{ params.token }} {{ params['pw'].a }}", ("pw",)),
    ("echo {{ params.token | upper }}", ("token",)),
    ("echo {{ 'x' ~ params.token }}", ("token",)),
    ("{% if params.token %}{{ params.token }}{% endif %}", ("token",)),
])
def test_secret_misuse(source, misused):
    expr.secret_misuse.cache_clear()
    assert expr.secret_misuse(source, SECRETS) == misused
    assert expr._jinja_secret_misuse(source, SECRETS) == misused


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="ab $'-", max_size=5), st.sampled_from(["params", "steps", "x"]),
                          st.lists(st.sampled_from([".token", ".pw", "['token']", '["pw"]', ".a", "[0]"]), max_size=3)),
                min_size=1, max_size=4))
def test_secret_misuse_fast_path_agrees_with_jinja(parts):
    """Templates of text and simple paths are judged without Jinja's parser, the same way."""
    source = "".join(f"{text}{{{{ {root}{''.join(k)} }}}}" for text, root, k in parts)
    assert expr._simple_paths(source) is not None
    assert expr.secret_misuse(source, SECRETS) == expr._jinja_secret_misuse(source, SECRETS)
