"""Tests for Ansible YAML inventories in runbook.inventory: the mapping onto
hosts and groups, variable precedence, connection settings, secrets, and the
clear problems for vaulted values, INI files and invalid entries."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from runbook import expr
from runbook.inventory import Host, InventoryError, check_inventory, load_inventory, resolve_inventory
from runbook.secrets import Redactor, Secret

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("RUNBOOK_INVENTORY", "RUNBOOK_ENV"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def inv_file(tmp_path):
    """inv_file(text, name="hosts.yaml") -> Path of a dedented file."""

    def _write(text: str, name: str = "hosts.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


def problems_of(path: Path, severity: str = "error") -> list[tuple[int, int, str]]:
    _, problems = check_inventory(path)
    return [(p.line, p.col, p.message) for p in problems if p.severity == severity]


EXAMPLE = """
all:
  vars: {ansible_user: deploy}
  hosts:
    bastion: {ansible_host: 192.0.2.5}
  children:
    api_servers:
      hosts:
        api-1: {ansible_host: 192.0.2.11, ansible_port: 2222}
        api-2:
      vars: {service: api}
      children:
        canary:
          hosts: {api-1: }
    db_servers:
      hosts: {db-1: {ansible_host: 192.0.2.21, ansible_user: postgres}}
"""


# -- the mapping -------------------------------------------------------------------

def test_example_resolves_groups_to_hosts(inv_file):
    inv = load_inventory(inv_file(EXAMPLE))
    api_1, api_2 = inv.resolve_hosts("api_servers")
    assert all(isinstance(h, Host) for h in (api_1, api_2))
    assert (api_1.name, api_1.address, api_1.port, api_1.user) == ("api-1", "192.0.2.11", 2222, "deploy")
    assert (api_2.name, api_2.address, api_2.port, api_2.user) == ("api-2", "api-2", 22, "deploy")
    assert inv.hosts["db-1"].user == "postgres" and inv.hosts["db-1"].address == "192.0.2.21"
    assert inv.hosts["bastion"].user == "deploy"
    assert inv.env == "hosts" and inv.ssh.user == "deploy"


def test_example_groups_all_and_ungrouped(inv_file):
    inv = load_inventory(inv_file(EXAMPLE))
    assert inv.names("group") == ["all", "ungrouped", "api_servers", "canary", "db_servers"]
    assert set(inv.groups["canary"].hosts) <= set(inv.groups["api_servers"].hosts)
    assert inv.groups["canary"].hosts == ["api-1"]
    assert inv.groups["all"].hosts == ["bastion", "api-1", "api-2", "db-1"]
    assert set(inv.groups["all"].hosts) == set(inv.hosts)
    assert inv.groups["ungrouped"].hosts == ["bastion"]
    # parents before children: Ansible's variable order
    assert inv.hosts["api-1"].groups == ["all", "api_servers", "canary"]
    assert inv.hosts["bastion"].groups == ["all", "ungrouped"]
    assert [h.name for h in inv.resolve_hosts(["canary", "db_servers", "api-1"])] == ["api-1", "db-1"]


def test_connection_variables_leave_vars_and_others_stay(inv_file):
    inv = load_inventory(inv_file("""
        all:
          vars: {ansible_user: deploy, region: eu}
          hosts:
            web-1: {ansible_host: 192.0.2.31, ansible_port: "2200", pg_role: primary, ansible_python_interpreter: /usr/bin/python3}
    """))
    web = inv.hosts["web-1"]
    assert (web.address, web.port, web.user) == ("192.0.2.31", 2200, "deploy")
    assert web.vars == {"pg_role": "primary", "ansible_python_interpreter": "/usr/bin/python3"}
    assert inv.vars == {"region": "eu"} and inv.groups["all"].vars == {"region": "eu"}


def test_group_vars_precedence_host_over_child_over_parent_over_all(inv_file):
    inv = load_inventory(inv_file("""
        all:
          vars: {ansible_user: from-all, level: all, only_all: 1}
          children:
            parent:
              vars: {ansible_user: from-parent, level: parent, only_parent: 1}
              children:
                child:
                  vars: {ansible_user: from-child, level: child}
                  hosts:
                    in-child:
                    own-user: {ansible_ssh_user: from-host, level: host}
              hosts:
                in-parent:
            other:
              hosts: {in-other: }
    """))
    assert inv.hosts["own-user"].user == "from-host"  # the ansible_ssh_user alias on the host beats every group
    assert inv.hosts["in-child"].user == "from-child"
    assert inv.hosts["in-parent"].user == "from-parent"
    assert inv.hosts["in-other"].user == "from-all"
    assert inv.host_vars("own-user") == {"level": "host", "only_all": 1, "only_parent": 1}
    assert inv.host_vars("in-child") == {"level": "child", "only_all": 1, "only_parent": 1}
    assert inv.host_vars("in-parent")["level"] == "parent"
    assert inv.host_vars("in-other") == {"level": "all", "only_all": 1}


def test_same_depth_groups_follow_priority_then_name(inv_file):
    inv = load_inventory(inv_file("""
        all:
          children:
            b_group:
              vars: {testvar: b, ansible_group_priority: 10}
              hosts: {shared: }
            a_group:
              vars: {testvar: a}
              hosts: {shared: }
            c_group:
              vars: {testvar: c}
              hosts: {shared: }
    """))
    host = inv.hosts["shared"]
    assert host.groups == ["all", "a_group", "c_group", "b_group"]
    assert inv.host_vars(host)["testvar"] == "b"
    assert "ansible_group_priority" not in inv.groups["b_group"].vars


def test_host_under_two_groups_is_one_host(inv_file):
    path = inv_file("""
        all:
          children:
            web:
              hosts:
                app-1: {ansible_host: 192.0.2.41, role: web}
            monitoring:
              hosts:
                app-1: {exporter_port: 9100}
                mon-1:
            payments:
              hosts:
                app-1: {role: payments}
    """)
    inv, problems = check_inventory(path)
    assert list(inv.hosts) == ["app-1", "mon-1"]
    app = inv.hosts["app-1"]
    assert app.address == "192.0.2.41" and app.vars == {"role": "payments", "exporter_port": 9100}
    assert app.groups == ["all", "monitoring", "payments", "web"]
    assert [h.name for h in inv.resolve_hosts(["web", "monitoring", "payments"])] == ["app-1", "mon-1"]
    assert inv.groups["all"].hosts == ["app-1", "mon-1"]
    # a conflicting value is allowed, as in Ansible, but pointed out
    assert [(p.line, p.col, p.severity, p.message) for p in problems] == [
        (12, 23, "warning", "all.children.payments.hosts.app-1.role: host 'app-1' already sets role at line 5;"
                            " this later value wins, as in Ansible"),
    ]


def test_group_written_in_two_places_merges(inv_file):
    inv = load_inventory(inv_file("""
        all:
          children:
            eu:
              children:
                databases: {hosts: {db-eu: }, vars: {backup: daily}}
            us:
              children:
                databases: {hosts: {db-us: }, vars: {retention: 7}}
        databases:
          hosts: {db-extra: }
    """))
    assert inv.groups["databases"].hosts == ["db-eu", "db-us", "db-extra"]
    assert inv.groups["databases"].vars == {"backup": "daily", "retention": 7}
    assert inv.groups["all"].hosts == ["db-eu", "db-us", "db-extra"]
    assert inv.hosts["db-extra"].groups == ["all", "eu", "us", "databases"]
    assert inv.groups["ungrouped"].hosts == []


def test_top_level_groups_without_all(inv_file):
    inv = load_inventory(inv_file("""
        webservers:
          hosts: {web-1: {ansible_host: 192.0.2.51}}
        dbservers:
          hosts: {db-1: }
    """))
    assert inv.names("group") == ["all", "ungrouped", "webservers", "dbservers"]
    assert inv.groups["all"].hosts == ["web-1", "db-1"]


def test_host_ranges_and_ports_in_host_names(inv_file):
    inv = load_inventory(inv_file("""
        all:
          children:
            web:
              hosts:
                web[01:03].example.internal:
                cache-[a:b]:
                legacy.example.internal:2222: {ansible_user: ops}
                odd[1:5:2]:
    """))
    assert inv.groups["web"].hosts == [
        "web01.example.internal", "web02.example.internal", "web03.example.internal",
        "cache-a", "cache-b", "legacy.example.internal", "odd1", "odd3", "odd5",
    ]
    legacy = inv.hosts["legacy.example.internal"]
    assert (legacy.address, legacy.port, legacy.user) == ("legacy.example.internal", 2222, "ops")


# -- jump hosts -------------------------------------------------------------------------

def test_proxy_jump_to_an_inventory_host_sets_jump_host(inv_file):
    path = inv_file("""
        all:
          vars:
            ansible_ssh_common_args: -o ProxyJump=ops@bastion.example.internal:22
          hosts:
            bastion: {ansible_host: bastion.example.internal}
            app: {ansible_host: 192.0.2.61}
            direct: {ansible_ssh_common_args: ""}
            via-command:
              ansible_ssh_extra_args: -o ProxyCommand="ssh -W %h:%p -q bastion"
            via-j: {ansible_ssh_common_args: -J app}
            elsewhere: {ansible_ssh_common_args: -o ProxyJump=gw.example.internal}
    """)
    inv, problems = check_inventory(path)
    jumps = {name: host.jump_host for name, host in inv.hosts.items()}
    assert jumps == {"bastion": None, "app": "bastion", "direct": None, "via-command": "bastion",
                     "via-j": "app", "elsewhere": None}
    assert [(p.line, p.col, p.message) for p in problems] == [
        (11, 42, "all.hosts.elsewhere.ansible_ssh_common_args: jump host 'gw.example.internal' is not a host of this"
                 " inventory, so runbook connects directly; add 'gw.example.internal' under hosts to go through it"),
    ]


def test_jump_host_cycle_is_an_error(inv_file):
    path = inv_file("""
        all:
          hosts:
            a: {ansible_ssh_common_args: -o ProxyJump=b}
            b: {ansible_ssh_common_args: -o ProxyJump=a}
    """)
    assert problems_of(path) == [(3, 34, "all.hosts.a.ansible_ssh_common_args: jump host cycle a -> b -> a")]


# -- secrets -----------------------------------------------------------------------------

def test_vaulted_value_is_a_clear_problem_at_its_position(inv_file):
    path = inv_file("""
        all:
          children:
            db_servers:
              hosts:
                db-1:
                  ansible_host: 192.0.2.21
                  ansible_become_password: !vault |
                      $ANSIBLE_VAULT;1.1;AES256
                      62313365396662343061393464336163383764373764613633653634306231386433626436623361
                  ansible_port: 0
    """)
    inventory, problems = check_inventory(path)
    assert inventory is None
    assert [(p.line, p.col, p.message) for p in problems if p.severity == "error"] == [
        (7, 36, "all.children.db_servers.hosts.db-1.ansible_become_password: vaulted values (!vault) are not supported,"
                " runbook cannot decrypt Ansible Vault; put the secret in an environment variable and use {env: NAME}"
                " in a runbook inventory"),
        (10, 25, "all.children.db_servers.hosts.db-1.ansible_port: must be a port number from 1 to 65535, got 0"),
    ]
    assert not any("6231336539" in p.message or "YAML error" in p.message for p in problems)
    with pytest.raises(InventoryError) as exc:
        load_inventory(path)
    assert str(exc.value).splitlines()[0].startswith(f"{path}:7:36: error: ")


def test_vault_in_our_own_format_gets_the_same_message(inv_file):
    path = inv_file("""
        databases:
          main: {host: db.example.internal, password: !vault "$ANSIBLE_VAULT;1.1;AES256 6231"}
    """)
    _, problems = check_inventory(path)
    assert [(p.line, p.col, p.severity) for p in problems] == [(2, 47, "error")]
    assert problems[0].message.startswith("databases.main.password: vaulted values (!vault) are not supported")


def test_vault_encrypted_file(inv_file):
    path = inv_file("$ANSIBLE_VAULT;1.1;AES256\n62313365396662343061\n")
    (line, col, message), = problems_of(path)
    assert (line, col) == (1, 1) and "encrypted with ansible-vault" in message


def test_unsafe_tag_is_a_plain_string(inv_file):
    inv = load_inventory(inv_file("""
        all:
          hosts:
            web-1: {motd: !unsafe "{{ not a template }}"}
    """))
    assert inv.hosts["web-1"].vars == {"motd": "{{ not a template }}"}


def test_passwords_are_masked_and_warned_about(inv_file):
    path = inv_file("""
        all:
          vars:
            ansible_become_password: sudo-pw-1
          hosts:
            web-1:
              ansible_host: 192.0.2.71
              ansible_password: ssh-pw-2
              ansible_ssh_pass: 123456
              grafana_api_token: tok-3
              region: eu
    """)
    inv, problems = check_inventory(path)
    assert inv is not None
    assert [(p.line, p.col, p.severity, p.rule) for p in problems] == [
        (3, 30, "warning", "secret"), (7, 25, "warning", "secret"), (8, 25, "warning", "secret"), (9, 26, "warning", "secret"),
    ]
    assert problems[1].message == (
        "all.hosts.web-1.ansible_password: runbook never logs in with a password, so this one is masked and unused;"
        " use SSH key authentication (an ssh-agent or ansible_ssh_private_key_file)"
    )
    assert "SSH key authentication" in problems[0].message and "become" in problems[0].message
    assert not any(s in p.message for p in problems for s in ("pw-", "123456", "tok-3"))

    web = inv.hosts["web-1"]
    assert isinstance(web.vars["ansible_password"], Secret) and isinstance(web.vars["ansible_ssh_pass"], Secret)
    assert not isinstance(web.vars["region"], Secret)
    ctx = inv.template_context()
    text = expr.render("{{ inventory.hosts['web-1'].vars.ansible_password }} {{ inventory.vars.ansible_become_password }}"
                       " {{ inventory.hosts['web-1'].vars.region }}", {"inventory": ctx})
    assert text == "*** *** eu"
    assert "ssh-pw-2" not in repr(ctx) and "sudo-pw-1" not in repr(ctx)
    assert sorted(inv.secret_values()) == ["123456", "ssh-pw-2", "sudo-pw-1", "tok-3"]
    assert Redactor(inv.secret_values()).text("login ssh-pw-2 / sudo-pw-1") == "login *** / ***"


# -- problems -------------------------------------------------------------------------------

def test_ini_inventory_is_one_clear_problem(inv_file):
    path = inv_file("""
        # production hosts
        [webservers]
        web-1 ansible_host=192.0.2.81
        web-2

        [webservers:vars]
        ansible_user=deploy
    """, name="production.ini")
    inventory, problems = check_inventory(path)
    assert inventory is None
    assert [(p.line, p.col, p.message) for p in problems] == [
        (2, 1, f"Ansible INI inventories are not supported; convert with `ansible-inventory -i {path} --list -y`"),
    ]
    with pytest.raises(InventoryError, match="Ansible INI inventories are not supported"):
        load_inventory(path)


def test_ini_host_lines_without_a_group(inv_file):
    path = inv_file("""
        web-1 ansible_host=192.0.2.81 ansible_port=2222
        web-2 ansible_host=192.0.2.82
    """)
    (line, col, message), = problems_of(path)
    assert (line, col) == (1, 1) and message.startswith("Ansible INI inventories are not supported")


def test_invalid_entries_have_exact_positions(inv_file):
    path = inv_file("""
        all:
          children:
            api:
              hosts: [api-1, api-2]
            db:
              hots: {db-1: }
              vars: [a]
            web:
              hosts:
                web-1: 192.0.2.10
                web-2: {ansible_port: 70000, ansible_user: 0}
                "web[5:1]":
            loop:
              children:
                inner:
                  children: {loop: }
    """)
    assert problems_of(path) == [
        (4, 14, "all.children.api.hosts: must be a mapping of host names to their variables, got a list;"
                " write each host as a key (`api-1:` on its own line)"),
        (6, 7, "all.children.db: unknown key 'hots' (did you mean 'hosts'?)"),
        (7, 13, "all.children.db.vars: must be a mapping of variables, got a list"),
        (10, 16, "all.children.web.hosts.web-1: host variables must be a mapping such as {ansible_host: 192.0.2.10},"
                 " got a string"),
        (11, 31, "all.children.web.hosts.web-2.ansible_port: must be a port number from 1 to 65535, got 70000"),
        (11, 52, "all.children.web.hosts.web-2.ansible_user: must be a user name, got a number"),
        (12, 9, "all.children.web.hosts.web[5:1]: host range [5:1] is empty (its begin is after its end)"),
        (16, 22, "all.children.loop.children.inner.children.loop: group cycle loop -> inner -> loop"),
    ]


def test_host_and_group_with_the_same_name(inv_file):
    path = inv_file("""
        all:
          hosts: {web: }
          children:
            web: {hosts: {web-1: }}
    """)
    assert problems_of(path) == [(4, 5, "all.children.web: 'web' is both a host and a group; rename one")]


def test_mixing_all_with_our_sections_is_an_error(inv_file):
    path = inv_file("""
        hosts:
          api-1: {address: 192.0.2.11}
        all:
          hosts: {api-2: }
    """)
    assert problems_of(path) == [
        (3, 1, "'all' starts an Ansible inventory, which cannot be mixed with runbook sections (hosts);"
               " keep them in separate files"),
    ]


def test_unsupported_settings_are_warned_about(inv_file, tmp_path):
    (tmp_path / "group_vars").mkdir()
    path = inv_file("""
        all:
          vars:
            ansible_ssh_private_key_file: ~/.ssh/ops
            ansible_host_key_checking: false
          hosts:
            local: {ansible_connection: local}
            win-1: {ansible_connection: winrm, ansible_ssh_private_key_file: ~/.ssh/other}
            tpl: {ansible_host: "{{ inventory_hostname }}.example.internal"}
    """)
    inv, problems = check_inventory(path)
    assert inv is not None and inv.ssh.identity_file == "~/.ssh/ops" and inv.ssh.host_key_policy == "strict"
    assert inv.hosts["tpl"].address == "tpl"
    found = [(p.line, p.col, p.rule) for p in problems]
    assert found == [(1, 1, "inventory"), (4, 32, "inventory"), (6, 33, "inventory"), (7, 33, "inventory"),
                     (7, 70, "inventory"), (8, 25, "inventory")]
    messages = "\n".join(p.message for p in problems)
    assert "group_vars/ next to this inventory is not read" in messages
    assert "runbook always checks host keys" in messages
    assert "connection 'local' is not supported" in messages and "connection 'winrm' is not supported" in messages
    assert "one private key for every host" in messages
    assert "Jinja template, which runbook does not evaluate" in messages
    assert all(p.severity == "warning" for p in problems)


# -- choosing the inventory ------------------------------------------------------------------

def test_resolve_inventory_accepts_ansible_files(tmp_path, monkeypatch):
    folder = tmp_path / "inventory"
    folder.mkdir()
    (folder / "staging.yaml").write_text(textwrap.dedent(EXAMPLE))
    (folder / "local.yaml").write_text("hosts: {localhost: {address: 127.0.0.1}}\n")
    inv = resolve_inventory(None, "staging", tmp_path)
    assert inv.env == "staging" and inv.path == folder / "staging.yaml"
    assert [h.name for h in inv.resolve_hosts("db_servers")] == ["db-1"]
    assert resolve_inventory(None, None, tmp_path).names("host") == ["localhost"]
    monkeypatch.setenv("RUNBOOK_INVENTORY", str(folder / "staging.yaml"))
    assert resolve_inventory(None, None, tmp_path).groups["canary"].hosts == ["api-1"]
    assert resolve_inventory(str(folder / "local.yaml"), None, tmp_path).names("host") == ["localhost"]


def test_shipped_ansible_example_loads_without_problems():
    path = ROOT / "inventory" / "ansible-example.yaml"
    inv, problems = check_inventory(path)
    assert problems == [] and inv is not None
    assert inv.env == "ansible-example"
    assert [h.name for h in inv.resolve_hosts("api_servers")] == ["api-1", "api-2", "api-3"]
    assert inv.groups["canary"].hosts == ["api-1"]
    assert inv.hosts["api-1"].jump_host == "bastion" and inv.hosts["bastion"].jump_host is None
    assert inv.hosts["db-1"].user == "postgres"
    for host in inv.hosts.values():  # documentation addresses only
        assert re.fullmatch(r"192\.0\.2\.\d+|[a-z0-9.-]+\.example\.internal|[a-z0-9-]+", str(host.address)), host.address


def test_a_huge_host_range_is_refused_before_it_is_built():
    import time

    from runbook.inventory_ansible import _expand_host_pattern

    started = time.monotonic()
    with pytest.raises(ValueError, match="more than"):
        _expand_host_pattern("web[1:100000000]")
    assert time.monotonic() - started < 1
