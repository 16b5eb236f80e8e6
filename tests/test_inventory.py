"""Tests for runbook.inventory: loading, validation positions, group
expansion, lazy secrets, the template view and environment resolution."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runbook.errors import RunbookError
from runbook.inventory import (
    Host,
    InventoryError,
    SecretRef,
    check_inventory,
    load_inventory,
    resolve_inventory,
    reveal,
)
from runbook.secrets import Redactor, Secret

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("RUNBOOK_INVENTORY", "RUNBOOK_ENV", "PG_PASSWORD", "API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def inv_file(tmp_path):
    """inv_file(text, name="inv.yaml") -> Path of a dedented YAML file."""

    def _write(text: str, name: str = "inv.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


def errors(path: Path) -> list[tuple[int, int, str]]:
    inventory, problems = check_inventory(path)
    assert inventory is None
    return [(p.line, p.col, p.message) for p in problems if p.severity == "error"]


# -- groups -------------------------------------------------------------------

GROUPS = """
vars: {region: eu, tier: global}
hosts:
  api-1: {address: 10.0.0.1, groups: [api-servers], vars: {tier: host}}
  api-2: {address: 10.0.0.2}
  api-3: {address: 10.0.0.3, groups: [api-servers]}
  db-1: {address: 10.0.0.9}
groups:
  canary: {hosts: [api-1], vars: {track: canary, service: api-canary}}
  api-servers: {hosts: [api-2, api-1], children: [canary], vars: {service: api, tier: group}}
  everything: {hosts: [db-1], children: [api-servers, canary]}
"""


def test_group_members_are_listed_then_named_by_hosts_then_children(inv_file):
    inv = load_inventory(inv_file(GROUPS))
    assert inv.groups["api-servers"].hosts == ["api-2", "api-1", "api-3"]
    assert inv.groups["canary"].hosts == ["api-1"]
    assert inv.groups["everything"].hosts == ["db-1", "api-2", "api-1", "api-3"]


def test_resolve_hosts_expands_in_order_without_duplicates(inv_file):
    inv = load_inventory(inv_file(GROUPS))
    hosts = inv.resolve_hosts(["canary", "db-1", "api-servers", "api-1"])
    assert [h.name for h in hosts] == ["api-1", "db-1", "api-2", "api-3"]
    assert all(isinstance(h, Host) for h in hosts)
    assert [h.name for h in inv.resolve_hosts("api-2")] == ["api-2"]


def test_host_groups_list_parents_before_children_and_vars_layer(inv_file):
    inv = load_inventory(inv_file(GROUPS))
    # canary is declared first but is a child of api-servers, so it applies last.
    assert inv.hosts["api-1"].groups == ["everything", "api-servers", "canary"]
    assert inv.host_vars("api-1") == {"region": "eu", "tier": "host", "service": "api-canary", "track": "canary"}
    assert inv.host_vars(inv.hosts["api-2"]) == {"region": "eu", "tier": "group", "service": "api"}
    assert inv.host_vars("db-1") == {"region": "eu", "tier": "global"}


def test_group_named_only_by_hosts_exists(inv_file):
    inv = load_inventory(inv_file("""
        hosts:
          web-1: {groups: [web]}
          web-2: {groups: [web]}
    """))
    assert inv.names("group") == ["web"]
    assert inv.groups["web"].hosts == ["web-1", "web-2"]
    assert inv.hosts["web-1"].address == "web-1"  # the name is the address by default


def test_group_cycle_is_reported_where_it_closes(inv_file):
    path = inv_file("""
        hosts:
          h: {}
        groups:
          a: {hosts: [h], children: [b]}
          b: {children: [c]}
          c: {children: [a]}
          d: {children: [d]}
    """)
    assert errors(path) == [
        (6, 18, "groups.c.children: group cycle a -> b -> c -> a"),
        (7, 18, "groups.d.children: group cycle d -> d"),
    ]


def test_unknown_references_have_exact_positions(inv_file):
    path = inv_file("""
        hosts:
          api-1: {}
          bastion: {}
        groups:
          api-servers: {hosts: [api-1, api-9], children: [canry]}
          canary: {hosts: [api-servers]}
        ssh: {jump_host: bastoin}
    """)
    assert errors(path) == [
        (5, 32, "groups.api-servers.hosts: unknown host 'api-9' (did you mean 'api-1'?)"),
        (5, 51, "groups.api-servers.children: unknown group 'canry' (did you mean 'canary'?)"),
        (6, 20, "groups.canary.hosts: 'api-servers' is a group, not a host; list it under children"),
        (7, 18, "ssh.jump_host: unknown host 'bastoin' (did you mean 'bastion'?)"),
    ]


def test_host_and_group_with_the_same_name(inv_file):
    path = inv_file("""
        hosts:
          web: {}
        groups:
          web: {hosts: [web]}
    """)
    assert errors(path) == [(4, 3, "groups.web: 'web' is both a host and a group; rename one")]


# -- ssh defaults and jump hosts -------------------------------------------------

def test_ssh_defaults_apply_to_hosts(inv_file):
    inv = load_inventory(inv_file("""
        ssh: {user: deploy, port: 2222, jump_host: bastion, host_key_policy: accept-new}
        hosts:
          bastion: {address: 192.0.2.1}
          app: {address: 192.0.2.2}
          direct: {address: 192.0.2.3, jump_host: null, port: 22, user: root}
    """))
    assert inv.ssh.host_key_policy == "accept-new" and inv.ssh.forks == 10
    bastion, app, direct = inv.hosts.values()
    assert (bastion.user, bastion.port, bastion.jump_host) == ("deploy", 2222, None)
    assert (app.user, app.port, app.jump_host) == ("deploy", 2222, "bastion")
    assert (direct.user, direct.port, direct.jump_host) == ("root", 22, None)


def test_jump_host_errors(inv_file):
    path = inv_file("""
        hosts:
          a: {jump_host: b}
          b: {jump_host: a}
          c: {jump_host: nowhere}
    """)
    assert errors(path) == [
        (2, 18, "hosts.a.jump_host: jump host cycle a -> b -> a"),
        (4, 18, "hosts.c.jump_host: unknown host 'nowhere'"),
    ]


# -- schema ----------------------------------------------------------------------

def test_unknown_keys_suggest_the_closest_one(inv_file):
    path = inv_file("""
        databses: {}
        hosts:
          api-1: {adress: 10.0.0.1}
        databases:
          main: {hots: db, zzz: 1}
    """)
    assert errors(path) == [
        (1, 1, "unknown top-level key 'databses' (did you mean 'databases'?)"),
        (3, 11, "hosts.api-1: unknown key 'adress' (did you mean 'address'?)"),
        (5, 10, "databases.main: unknown key 'hots' (did you mean 'host'?)"),
        (5, 20, "databases.main: unknown key 'zzz' (expected one of: host, port, dbname, user, password, sslmode, "
                "readonly_role, readonly_password, connect_timeout, dsn, service)"),
    ]


def test_wrong_types_are_reported_without_showing_secret_values(inv_file):
    path = inv_file("""
        hosts:
          a: {port: 70000}
          b: {port: "22"}
        ssh: {host_key_policy: yolo, forks: 0}
        clusters:
          k: {in_cluster: true, context: prod}
        databases:
          main: {password: 424242, sslmode: required, dsn: "postgresql://db/app", host: db}
        http:
          api: {verify_tls: "yes"}
    """)
    found = errors(path)
    assert found == [
        (2, 13, "hosts.a.port: must be a port number from 1 to 65535, got 70000"),
        (3, 13, "hosts.b.port: must be a port number from 1 to 65535, got '22'"),
        (4, 24, "ssh.host_key_policy: must be one of strict, accept-new, got 'yolo'"),
        (4, 37, "ssh.forks: must be a whole number of at least 1, got 0"),
        (6, 25, "clusters.k: 'context' cannot be combined with 'in_cluster'"),
        (8, 20, "databases.main.password: must be a string or a secret source ({env: NAME} or {file: PATH}), "
                "got a number; quote it"),
        (8, 37, "databases.main.sslmode: must be one of disable, allow, prefer, require, verify-ca, verify-full, "
                "got 'required'"),
        (8, 75, "databases.main: 'host' cannot be combined with 'dsn'"),
        (10, 8, "http.api: missing required key 'url'"),
        (10, 21, "http.api.verify_tls: must be true or false, got 'yes'"),
    ]
    assert not any("424242" in message for _, _, message in found)


def test_load_inventory_raises_with_every_problem_one_per_line(inv_file):
    path = inv_file("""
        hosts:
          a: {port: 0}
        groups:
          g: {hosts: [b]}
    """)
    with pytest.raises(InventoryError) as exc:
        load_inventory(path)
    assert str(exc.value).splitlines() == [
        f"{path}:2:13: error: hosts.a.port: must be a port number from 1 to 65535, got 0",
        f"{path}:4:15: error: groups.g.hosts: unknown host 'b'",
    ]
    assert [p.line for p in exc.value.problems] == [2, 4]
    assert isinstance(exc.value, RunbookError)


def test_yaml_errors_and_missing_files_are_problems(inv_file, tmp_path):
    inventory, problems = check_inventory(inv_file("hosts: {a: [}\n"))
    assert inventory is None and problems[0].message.startswith("YAML syntax error")
    inventory, problems = check_inventory(tmp_path / "nope.yaml")
    assert inventory is None and problems[0].message == "inventory file not found"
    inventory, problems = check_inventory(inv_file("- a\n- b\n"))
    assert inventory is None and problems[0].message.startswith("an inventory must be a mapping")


def test_empty_file_is_an_empty_inventory(inv_file):
    inv = load_inventory(inv_file("", name="staging.yaml"))
    assert inv.env == "staging" and inv.names("host") == [] and inv.resolve_hosts([]) == []


# -- secrets ---------------------------------------------------------------------

SECRETS = """
env: prod
databases:
  main:
    host: db.example.internal
    password: {env: PG_PASSWORD}
  reports: {dsn: "postgresql://ro@db2/app", password: {file: pg.secret}}
http:
  api: {url: https://api.example.internal, headers: {Authorization: {env: API_TOKEN}}}
"""


def test_secret_refs_are_lazy(inv_file, monkeypatch):
    path = inv_file(SECRETS)
    inv = load_inventory(path)  # PG_PASSWORD is not set: loading still works
    ref = inv.databases["main"].password
    assert isinstance(ref, SecretRef) and str(ref) == "***" and f"{ref}" == "***"
    assert inv.secret_values() == []
    with pytest.raises(RunbookError) as exc:
        ref.resolve()
    assert str(exc.value) == f"{path}:5:15: databases.main.password: environment variable PG_PASSWORD is not set"

    monkeypatch.setenv("PG_PASSWORD", "s3cr3t-value")
    value = ref.resolve()
    assert isinstance(value, Secret) and value == "s3cr3t-value"
    assert value.name == "databases.main.password"
    assert reveal(ref) == "s3cr3t-value" and reveal("plain") == "plain" and reveal(None) is None
    assert inv.secret_values() == ["s3cr3t-value"]
    assert "s3cr3t" not in repr(ref) + repr(inv.databases["main"]) + repr(value)


def test_file_secrets_are_relative_to_the_inventory_and_stripped(inv_file, tmp_path, monkeypatch):
    inv = load_inventory(inv_file(SECRETS))
    ref = inv.databases["reports"].password
    with pytest.raises(RunbookError, match=r"databases\.reports\.password: cannot read secret file .*pg\.secret"):
        ref.resolve()
    (tmp_path / "pg.secret").write_text("  file-pass\n")
    assert ref.resolve() == "file-pass"

    monkeypatch.setenv("HOME", str(tmp_path))
    home_ref = SecretRef("file", "~/pg.secret", "x.yaml:1:1: k")
    assert home_ref.resolve() == "file-pass"


def test_empty_secret_is_an_error_without_the_value(tmp_path, monkeypatch):
    monkeypatch.setenv("PG_PASSWORD", "")
    with pytest.raises(RunbookError, match="environment variable PG_PASSWORD is empty"):
        SecretRef("env", "PG_PASSWORD", "x.yaml:1:1: k").resolve()
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(RunbookError, match="is empty"):
        SecretRef("file", str(tmp_path / "blank"), "x.yaml:1:1: k").resolve()


def test_plain_text_secrets_are_wrapped_and_warned_about(inv_file):
    path = inv_file("""
        vars: {deploy_token: tok-123, region: eu, nested: {db_password: pw-456}}
        databases:
          main: {password: pw-789, dsn: "postgresql://u:pw-000@db/app"}
        notify:
          incidents: {webhook: https://hooks.example.internal/T00/B00}
    """)
    inv, problems = check_inventory(path)
    assert inv is not None
    assert {(p.line, p.col, p.severity, p.rule) for p in problems} == {
        (1, 22, "warning", "secret"), (1, 65, "warning", "secret"),
        (3, 20, "warning", "secret"), (3, 33, "warning", "secret"), (5, 24, "warning", "secret"),
    }
    assert problems[0].message == "vars.deploy_token: holds a secret in plain text; use {env: NAME} or {file: PATH} instead"
    assert not any(s in p.message for p in problems for s in ("tok-123", "pw-", "hooks"))
    assert isinstance(inv.databases["main"].password, Secret)
    assert inv.vars["region"] == "eu" and not isinstance(inv.vars["region"], Secret)
    assert sorted(inv.secret_values()) == sorted(
        ["tok-123", "pw-456", "pw-789", "postgresql://u:pw-000@db/app", "https://hooks.example.internal/T00/B00"]
    )


def test_bad_secret_sources(inv_file):
    path = inv_file("""
        databases:
          a: {password: {evn: PG_PASSWORD}}
          b: {password: {env: not-a-name}}
          c: {password: {env: X, file: y}}
        vars:
          token: {env: API_TOKEN}
    """)
    assert errors(path) == [
        (2, 18, "databases.a.password: unknown secret source 'evn' (did you mean 'env'?)"),
        (3, 23, "databases.b.password: env must name an environment variable (letters, digits and _), got 'not-a-name'"),
        (4, 17, "databases.c.password: a secret source has exactly one key, env or file"),
    ]


def test_template_context_keeps_secrets_secret(inv_file, monkeypatch):
    from runbook import expr

    monkeypatch.setenv("PG_PASSWORD", "s3cr3t-value")
    inv = load_inventory(inv_file(SECRETS + "vars: {region: eu, api_key: k-1}\nhosts:\n  api-1: {address: 192.0.2.11}\n"))
    ctx = inv.template_context()
    assert ctx["env"] == "prod"
    assert ctx["vars"]["region"] == "eu"
    assert ctx["hosts"]["api-1"]["address"] == "192.0.2.11"
    assert ctx["databases"]["main"]["host"] == "db.example.internal"
    assert ctx["ssh"]["host_key_policy"] == "strict"
    # printed, a secret is masked; the lazy one has not even been read yet
    text = expr.render("{{ inventory.vars.api_key }} {{ inventory.databases.main.password }} {{ inventory.http.api.headers.Authorization }}",
                       {"inventory": ctx})
    assert text == "*** *** ***"
    assert not inv.databases["main"].password.resolved
    assert "s3cr3t" not in repr(ctx) and "k-1" not in repr(ctx)
    # in a shell command it becomes an environment variable, read when the step runs
    command, env = expr.render_shell("psql -W {{ inventory.databases.main.password }}", {"inventory": ctx})
    assert "s3cr3t" not in command and command.startswith('psql -W "${RUNBOOK_SECRET_')
    (value,) = env.values()
    assert value.resolve() == "s3cr3t-value"
    redactor = Redactor(inv.secret_values())
    # k-1 is too short to mask safely (issue 16): reported by name, not masked
    assert redactor.text("PGPASSWORD=s3cr3t-value key=k-1") == "PGPASSWORD=*** key=k-1"
    assert redactor.too_short() == ["vars.api_key"]


# -- lookups ---------------------------------------------------------------------

def test_lookup_names_and_unknown_names(inv_file):
    inv = load_inventory(inv_file(GROUPS + SECRETS))
    assert inv.lookup("database", "main").host == "db.example.internal"
    assert inv.names("database") == ["main", "reports"]
    assert inv.names("http") == ["api"]
    with pytest.raises(RunbookError) as exc:
        inv.lookup("database", "mian")
    assert str(exc.value) == (
        f"unknown database 'mian' in {inv.path} (did you mean 'main'? known databases: main, reports)"
    )
    with pytest.raises(RunbookError, match="no clusters are defined in"):
        inv.lookup("cluster", "prod")
    with pytest.raises(RunbookError) as exc:
        inv.resolve_hosts(["api-1", "canery"])
    assert str(exc.value) == (
        f"unknown host or group 'canery' in {inv.path} (did you mean 'canary'? "
        "known groups: canary, api-servers, everything; hosts: api-1, api-2, api-3, db-1)"
    )
    with pytest.raises(ValueError):
        inv.names("widget")


def test_long_name_lists_are_capped(inv_file):
    hosts = "".join(f"  h{i}: {{}}\n" for i in range(25))
    inv = load_inventory(inv_file("hosts:\n" + hosts))
    with pytest.raises(RunbookError) as exc:
        inv.lookup("host", "zzz")
    assert str(exc.value).endswith("h8, h9, ... (15 more))")


# -- choosing the inventory ------------------------------------------------------------

@pytest.fixture
def envs(tmp_path):
    """A project folder with inventory/{local,staging,production}.yaml and an extra file."""
    folder = tmp_path / "inventory"
    folder.mkdir()
    for env in ("local", "staging", "production"):
        (folder / f"{env}.yaml").write_text(f"vars: {{which: {env}}}\n")
    (tmp_path / "other.yaml").write_text("env: other\n")
    return tmp_path


def test_resolve_inventory_precedence(envs, monkeypatch):
    other = str(envs / "other.yaml")
    assert resolve_inventory(other, "staging", envs).env == "other"  # --inventory wins
    monkeypatch.setenv("RUNBOOK_INVENTORY", other)
    monkeypatch.setenv("RUNBOOK_ENV", "production")
    assert resolve_inventory(None, "staging", envs).env == "staging"  # then --env
    assert resolve_inventory(None, None, envs).env == "other"  # then $RUNBOOK_INVENTORY
    monkeypatch.delenv("RUNBOOK_INVENTORY")
    assert resolve_inventory(None, None, envs).env == "production"  # then $RUNBOOK_ENV
    monkeypatch.delenv("RUNBOOK_ENV")
    inv = resolve_inventory(None, None, envs)  # then inventory/local.yaml
    assert inv.env == "local" and inv.path == envs / "inventory" / "local.yaml"
    (envs / "inventory" / "local.yaml").unlink()
    assert resolve_inventory(None, None, envs) is None  # else none


def test_resolve_inventory_defaults_to_the_current_directory(envs, monkeypatch):
    monkeypatch.chdir(envs)
    inv = resolve_inventory(None, "staging")
    assert inv.path == Path("inventory/staging.yaml") and inv.vars == {"which": "staging"}


def test_unknown_environment_lists_the_available_ones(envs, tmp_path, monkeypatch):
    with pytest.raises(RunbookError) as exc:
        resolve_inventory(None, "prodution", envs)
    message = str(exc.value)
    assert message.startswith("unknown environment 'prodution' (from --env): ")
    assert message.endswith("(did you mean 'production'? available environments: local, production, staging)")
    monkeypatch.setenv("RUNBOOK_ENV", "qa")
    with pytest.raises(RunbookError, match=r"'qa' \(from \$RUNBOOK_ENV\).*available environments: local, production, staging"):
        resolve_inventory(None, None, envs)
    with pytest.raises(RunbookError, match="there are no environments"):
        resolve_inventory(None, "prod", tmp_path / "empty")
    with pytest.raises(RunbookError, match=r"inventory file not found: .*missing\.yaml \(from --inventory\)"):
        resolve_inventory(str(envs / "missing.yaml"), None, envs)


# -- shipped examples -----------------------------------------------------------------

@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_shipped_inventories_load_without_problems(env):
    path = ROOT / "inventory" / f"{env}.yaml"
    inv, problems = check_inventory(path)
    assert problems == [] and inv is not None
    assert inv.env == env
    assert inv.names("prometheus") == ["default"] and "api" in inv.names("http")
    assert {"incidents", "alerts"} <= set(inv.names("notify"))
    assert inv.resolve_hosts("api-servers")
    for ref in inv.secret_sources:  # every secret comes from a source, none is in the file
        assert isinstance(ref, SecretRef)


def test_shipped_local_inventory_points_at_this_machine():
    inv = load_inventory(ROOT / "inventory" / "local.yaml")
    assert inv.hosts["localhost"].address == "127.0.0.1"
    db = inv.lookup("database", "local")
    assert (db.host, db.port, db.dbname, db.user) == ("127.0.0.1", 5432, "postgres", "postgres")
    assert inv.lookup("prometheus", "default").url == "http://127.0.0.1:9090"
    assert inv.lookup("http", "api").url == "http://127.0.0.1:8080"
