"""Inventory: the hosts, groups, clusters, databases and endpoints that
runbooks target, one YAML file per environment (``inventory/NAME.yaml``).

The format is declared once, in :data:`INVENTORY` (nodes in the style of
:mod:`runbook.schema`): the loader checks every value with the node that
declares it, and the same nodes give the JSON Schema and the reference
(``runbook schema --inventory [--markdown]``, docs/inventory.md).

``load_inventory(path)`` validates a file strictly and raises
:class:`InventoryError` listing every problem at ``file:line:col``;
``check_inventory(path)`` returns the problems (warnings included) instead.
``resolve_inventory(...)`` picks the file from the command line flags and the
environment.

Secrets are never read at load time: a value written ``{env: NAME}`` or
``{file: PATH}`` becomes a :class:`SecretRef` that is resolved when a step
needs it, so that a dry-run works without production credentials.  A secret
written in plain text is accepted with a warning and wrapped as a
:class:`~runbook.secrets.Secret` so that it is still redacted.

An Ansible YAML inventory (a file whose top level is ``all:`` and Ansible
groups, without any of our sections) loads into the same model: see
:mod:`runbook.inventory_ansible`.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable


from runbook import schema as S
from runbook.errors import Problem, RunbookError, UsageError
from runbook.secrets import MASK, LazySecret, Secret
from runbook.yamlload import Map, Seq, load_file, size_problem

_ENV_VAR_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
_ENV_VAR = re.compile(_ENV_VAR_PATTERN + r"\Z")
_URL_CREDENTIALS = re.compile(r"://[^/@\s:]+:[^/@\s]+@|\bpassword\s*=", re.IGNORECASE)
_SECRET_KEYS = frozenset({"password", "token", "secret", "webhook", "api_key", "apikey", "authorization"})
_SOURCES = ("env", "file")


class InventoryError(RunbookError):
    """An inventory file with errors; the message lists them one per line."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(p.format() for p in problems))
        self.problems = problems


class SecretRef(LazySecret):
    """A secret read on demand from an environment variable (``source="env"``)
    or a file (``source="file"``, contents stripped).

    ``where`` is ``file:line:col: dotted.key`` and starts every error message.
    ``str()`` is ``***``: the value is only reachable through :meth:`resolve`.
    """

    __slots__ = ("source", "ref", "where", "name", "base_dir", "_value")

    def __init__(self, source: str, ref: str, where: str, name: str = "secret", base_dir: Path | None = None):
        if source not in _SOURCES:
            raise ValueError(f"unknown secret source {source!r}")
        self.source = source
        self.ref = ref
        self.where = where
        self.name = name
        self.base_dir = base_dir  # relative file paths are relative to the inventory file
        self._value: Secret | None = None

    @property
    def resolved(self) -> bool:
        return self._value is not None

    def resolve(self) -> Secret:
        """Read the secret (once); raise :class:`RunbookError` when it is missing."""
        if self._value is None:
            self._value = Secret(self._read(), name=self.name)
        return self._value

    def _read(self) -> str:
        if self.source == "env":
            value = os.environ.get(self.ref)
            if value is None:
                raise RunbookError(f"{self.where}: environment variable {self.ref} is not set")
            if not value:
                raise RunbookError(f"{self.where}: environment variable {self.ref} is empty")
            return value
        path = Path(self.ref).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise RunbookError(f"{self.where}: cannot read secret file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise RunbookError(f"{self.where}: secret file {path} is not UTF-8 text") from None
        if not value:
            raise RunbookError(f"{self.where}: secret file {path} is empty")
        return value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"SecretRef({self.source}={self.ref!r})"


#: A string setting that may come from a secret source.
Text = str | SecretRef


def reveal(value: Text | None) -> str | None:
    """The actual string behind a setting, resolving a :class:`SecretRef`."""
    return value.resolve() if isinstance(value, SecretRef) else value


@dataclass
class Host:
    """A machine reached over SSH. ``address`` defaults to the name;
    ``port``, ``user`` and ``jump_host`` include the ``ssh:`` defaults; ``groups`` lists every group the host
    belongs to (directly or through child groups), parents before children."""

    name: str
    address: Text
    port: int | None = None  # None: ~/.ssh/config's Port, else 22
    user: Text | None = None
    groups: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    jump_host: str | None = None


@dataclass
class Group:
    """A named set of hosts; ``hosts`` is fully expanded, ordered, without duplicates."""

    name: str
    hosts: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class SshDefaults:
    """The ``ssh:`` section: connection settings shared by all hosts."""

    user: Text | None = None
    port: int | None = None
    known_hosts: Text | None = None
    identity_file: Text | None = None
    host_key_policy: str = "strict"  # "strict" | "accept-new"; never "accept anything"
    forks: int = 10
    connect_timeout: float = 10
    jump_host: str | None = None
    shell: str | None = None  # "sh" | "bash": what runs ssh commands (default: the login shell, sh -c when wrapped)


@dataclass
class AwsSettings:
    """The ``aws:`` section: which credentials and region aws steps use (the standard chain selects
    the credentials themselves: environment, shared files, SSO, instance or task role)."""

    profile: Text | None = None
    region: Text | None = None
    role_arn: Text | None = None
    endpoint_url: Text | None = None


@dataclass
class Cluster:
    """A Kubernetes cluster: a kubeconfig context, or the cluster we run in."""

    name: str
    kubeconfig: Text | None = None
    context: Text | None = None
    namespace: Text | None = None
    in_cluster: bool = False


@dataclass
class Database:
    """A PostgreSQL database: host/port/dbname/user, a ``dsn`` or a libpq ``service``."""

    name: str
    host: Text | None = None
    port: int | None = None
    dbname: Text | None = None
    user: Text | None = None
    password: Text | None = None
    sslmode: str | None = None
    readonly_role: Text | None = None
    readonly_password: Text | None = None
    connect_timeout: float | None = None
    dsn: Text | None = None
    service: Text | None = None


@dataclass
class HttpEndpoint:
    name: str
    url: Text
    headers: dict[str, Text] = field(default_factory=dict)
    verify_tls: bool = True
    timeout: float | None = None


@dataclass
class Prometheus(HttpEndpoint):
    """A Prometheus server: an HTTP endpoint answering the query API."""


@dataclass
class Notifier:
    name: str
    webhook: Text | None = None  # with routing_key: the Events API URL (None: PagerDuty's)
    channel: str | None = None
    routing_key: Text | None = None  # a PagerDuty notifier

    @property
    def pagerduty(self) -> bool:
        return self.routing_key is not None


# -- the schema ---------------------------------------------------------------------
# One declaration both checks a file (the loader below asks each node to read its
# value) and documents the format (`runbook schema --inventory [--markdown]`), so
# the reference cannot drift from what the loader accepts.

NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_NAME = re.compile(NAME_PATTERN + r"\Z")
_NO_DEFAULT = object()

SECRET_SOURCE_JSON = {
    "description": "a secret source: {env: NAME} reads an environment variable, {file: PATH} a file "
                   "(relative to the inventory file), when a step needs it",
    "oneOf": [
        {"type": "object", "properties": {"env": {"type": "string", "pattern": f"^{_ENV_VAR_PATTERN}$"}},
         "required": ["env"], "additionalProperties": False},
        {"type": "object", "properties": {"file": {"type": "string", "minLength": 1}},
         "required": ["file"], "additionalProperties": False},
    ],
}


@dataclass
class Setting(S.Node):
    """One inventory setting. :meth:`read` checks a value for the loader and
    returns it converted (or ``_INVALID`` after reporting it): the loader is
    the one validator, so :meth:`check` is not used; :meth:`json` and
    :attr:`phrase` describe the same rule for editors and the reference.

    ``default`` is the value used when the key is absent (a literal, also in
    the JSON Schema); ``default_doc`` says it in words when it is not one.
    ``nullable``: ``null`` means something (else it is the same as absent)."""

    doc: str = ""
    default: Any = _NO_DEFAULT
    default_doc: str = ""
    nullable: bool = False
    phrase = "value"

    def read(self, ld: _Loader, value: Any, pos: tuple[int, int], where: str, key: str) -> Any:  # pragma: no cover
        raise NotImplementedError

    def schema(self) -> dict:  # pragma: no cover
        raise NotImplementedError

    def json(self) -> dict:
        d = self.schema()
        if self.nullable:
            d = {"anyOf": [d, {"type": "null"}]}
        if self.default is not _NO_DEFAULT:
            d["default"] = self.default
        if self.doc or self.default_doc:
            d["description"] = self.doc + (f" (default: {self.default_doc})" if self.default_doc else "")
        return d

    def default_text(self) -> str:
        """The default for the reference: the literal in backquotes, or the words."""
        if self.default is not _NO_DEFAULT:
            return f"`{str(self.default).lower() if isinstance(self.default, bool) else self.default}`"
        return self.default_doc


@dataclass
class Text(Setting):
    """A string, or a secret source ``{env: NAME}`` / ``{file: PATH}``."""

    phrase = "string or secret source"

    def read(self, ld, value, pos, where, key):
        return ld.text(value, pos, where, key)

    def schema(self):
        return {"anyOf": [{"type": "string"}, SECRET_SOURCE_JSON]}


@dataclass
class Name(Setting):
    """A literal, non-empty string (the name of another entry, a channel)."""

    phrase = "string"

    def read(self, ld, value, pos, where, key):
        if isinstance(value, str) and value:
            return value
        return ld.invalid(pos, f"{where}: must be a name, got {_describe(value)}")

    def schema(self):
        return {"type": "string", "minLength": 1}


@dataclass
class Port(Setting):
    phrase = "port (1–65535)"

    def read(self, ld, value, pos, where, key):
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
            return value
        return ld.invalid(pos, f"{where}: must be a port number from 1 to 65535, got {_describe(value)}")

    def schema(self):
        return {"type": "integer", "minimum": 1, "maximum": 65535}


@dataclass
class Count(Setting):
    phrase = "integer ≥ 1"

    def read(self, ld, value, pos, where, key):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        return ld.invalid(pos, f"{where}: must be a whole number of at least 1, got {_describe(value)}")

    def schema(self):
        return {"type": "integer", "minimum": 1}


@dataclass
class Seconds(Setting):
    phrase = "seconds (a number > 0)"

    def read(self, ld, value, pos, where, key):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return value
        return ld.invalid(pos, f"{where}: must be a number of seconds greater than 0, got {_describe(value)}")

    def schema(self):
        return {"type": "number", "exclusiveMinimum": 0}


@dataclass
class Flag(Setting):
    phrase = "boolean"

    def read(self, ld, value, pos, where, key):
        if isinstance(value, bool):
            return value
        return ld.invalid(pos, f"{where}: must be true or false, got {_describe(value)}")

    def schema(self):
        return {"type": "boolean"}


@dataclass
class Choice(Setting):
    values: tuple[str, ...] = ()

    @property
    def phrase(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(f"`{v}`" for v in self.values)

    def read(self, ld, value, pos, where, key):
        if isinstance(value, str) and value in self.values:
            return value
        return ld.invalid(pos, f"{where}: must be one of {', '.join(self.values)}, got {_describe(value)}")

    def schema(self):
        return {"type": "string", "enum": list(self.values)}


@dataclass
class Names(Setting):
    phrase = "list of names"

    def read(self, ld, value, pos, where, key):
        if isinstance(value, Seq) and all(isinstance(v, str) for v in value):
            return list(value)
        return ld.invalid(pos, f"{where}: must be a list of names, e.g. [a, b]")

    def schema(self):
        return {"type": "array", "items": {"type": "string"}}


@dataclass
class Vars(Setting):
    """Free-form data; a mapping whose only key is env or file is a secret source."""

    phrase = "mapping of name → any value"

    def read(self, ld, value, pos, where, key):
        if not isinstance(value, Map):
            return ld.invalid(pos, f"{where}: must be a mapping, got {_describe(value, show=False)}")
        return ld.mapping(value, where)

    def schema(self):
        return {"type": "object", "additionalProperties": True}


@dataclass
class Headers(Setting):
    phrase = "mapping of header → string or secret source"

    def read(self, ld, value, pos, where, key):
        if not isinstance(value, Map):
            return ld.invalid(pos, f"{where}: must be a mapping, got {_describe(value, show=False)}")
        return ld.mapping(value, where, text_only=True)

    def schema(self):
        return {"type": "object", "additionalProperties": Text().schema()}


@dataclass
class Entry(S.Obj):
    """The settings of one entry (or of the ``ssh`` section, or of the whole
    file). ``excludes`` pairs a key with the keys it cannot be combined with
    when it is set (true or non-empty); ``example`` is YAML for the reference."""

    excludes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    needs_one: tuple[str, ...] = ()  # at least one of these keys must be given
    example: str = ""

    def json(self) -> dict:
        d = super().json()
        rules = [{"if": {"required": [key], "properties": {key: {"not": {"enum": [False, "", None]}}}},
                  "then": {"not": {"anyOf": [{"required": [other]} for other in others]}}}
                 for key, others in self.excludes]
        if self.needs_one:
            rules.append({"anyOf": [{"required": [key]} for key in self.needs_one]})
        if rules:
            d["allOf"] = rules
        return d


@dataclass
class Section(S.MapOf):
    """A top-level mapping of named entries (``hosts``, ``databases``...);
    ``allow_empty`` accepts an entry written ``name:`` with no value."""

    allow_empty: bool = False
    model: type | None = None  # the class an entry becomes
    label: str = ""  # one entry, in words ("host", "database")

    def json(self) -> dict:
        d = super().json()
        if self.allow_empty:
            d["additionalProperties"] = {"anyOf": [d["additionalProperties"], {"type": "null"}]}
        return d


_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _endpoint(what: str, example: str) -> Entry:
    return Entry(
        {
            "url": Text(doc="the base URL (a step's path is added to it)"),
            "headers": Headers(doc="HTTP headers sent with every request, e.g. Authorization: {env: API_TOKEN}"),
            "verify_tls": Flag(default=True, doc="check the server's TLS certificate (https)"),
            "timeout": Seconds(default_doc="10", doc="seconds for one request (a prometheus step's own timeout wins)"),
        },
        required=("url",), example=example, doc=what[0].upper() + what[1:],
    )


HOST = Entry(
    {
        "address": Text(default_doc="the host's name", doc="host name or IP address to connect to"),
        "port": Port(default_doc="`ssh.port`, else ~/.ssh/config's Port, else 22", doc="SSH port"),
        "user": Text(default_doc="`ssh.user`, else ~/.ssh/config's User, else your login name", doc="SSH user"),
        "groups": Names(doc="groups the host belongs to (a group named only here is created)"),
        "vars": Vars(doc="the host's variables (they override its groups' and the file's vars)"),
        "jump_host": Name(default_doc="`ssh.jump_host`", nullable=True, doc="a host of this file to connect through (SSH ProxyJump); "
                                                               "`null` connects directly"),
    },
    example="hosts:\n  bastion: {address: bastion.example.internal}\n"
            "  api-1: {address: 192.0.2.11, port: 2222, groups: [api-servers], vars: {track: canary}}",
    doc="A machine reached over SSH",
)
GROUP = Entry(
    {
        "hosts": Names(doc="the group's hosts"),
        "children": Names(doc="groups whose hosts are in this group too (no cycles)"),
        "vars": Vars(doc="variables of the group's hosts (child groups' vars override parents')"),
    },
    example="groups:\n  api-servers: {children: [canary], vars: {service: api}}\n  canary: {hosts: [api-1]}",
    doc="A named set of hosts, for ssh steps' `hosts:`",
)
SSH = Entry(
    {
        "user": Text(default_doc="~/.ssh/config's User, else your login name", doc="SSH user of every host"),
        "port": Port(default_doc="~/.ssh/config's Port, else 22", doc="SSH port of every host"),
        "known_hosts": Text(default_doc="~/.ssh/known_hosts (and /etc/ssh/ssh_known_hosts)",
                            doc="the known_hosts file host keys are checked against"),
        "identity_file": Text(default_doc="the ssh-agent and ~/.ssh's default keys", doc="the private key to log in with"),
        "host_key_policy": Choice(values=("strict", "accept-new"), default="strict",
                                  doc="strict: an unknown host key fails the step; accept-new: a new key is added to "
                                      "known_hosts once (never a changed one) and recorded in the audit log"),
        "forks": Count(default=10, doc="how many hosts an ssh step reaches at once (a step's forks wins)"),
        "connect_timeout": Seconds(default=10, doc="seconds to wait for a connection"),
        "jump_host": Name(doc="a host of this file every other host connects through (SSH ProxyJump)"),
        "shell": Choice(values=("sh", "bash"), default_doc="the login shell",
                        doc="what runs ssh steps' commands (sh -c or bash -c); a step's own shell wins"),
    },
    example="ssh:\n  user: deploy\n  known_hosts: ~/.ssh/known_hosts\n  host_key_policy: strict\n"
            "  forks: 20\n  jump_host: bastion",
    doc="connection settings shared by every host",
)
AWS = Entry(
    {
        "profile": Text(default_doc="$AWS_PROFILE, else the default chain (environment, shared files, SSO, instance "
                                    "or task role)", doc="the shared-config profile whose credentials aws steps use"),
        "region": Text(default_doc="$AWS_REGION, else the profile's region",
                       doc="the region of aws steps that name none"),
        "role_arn": Text(doc="a role assumed through STS with those credentials (a session per run, named "
                             "runbook-RUN_ID)"),
        "endpoint_url": Text(default_doc="$AWS_ENDPOINT_URL (and $AWS_ENDPOINT_URL_<SERVICE>), as boto3 reads them, "
                                         "else AWS's own",
                             doc="one endpoint for every AWS API: an emulator such as moto or LocalStack"),
    },
    example="aws:\n  profile: nano-oncall\n  region: eu-west-1\n"
            "  role_arn: arn:aws:iam::123456789012:role/runbook-oncall",
    doc="the AWS account aws steps call: a credentials profile, a region, a role to assume "
        "(no keys here: the standard chain reads them)",
)
CLUSTER = Entry(
    {
        "kubeconfig": Text(default_doc="$KUBECONFIG, else ~/.kube/config", doc="the kubeconfig file"),
        "context": Text(default_doc="the kubeconfig's current context", doc="the kubeconfig context"),
        "namespace": Text(default_doc="`default`", doc="the namespace of steps that name none"),
        "in_cluster": Flag(default=False, doc="use the service account of the pod runbook runs in"),
    },
    excludes=(("in_cluster", ("kubeconfig", "context")),),
    example="clusters:\n  main: {kubeconfig: ~/.kube/config, context: prod-eu, namespace: production}",
    doc="A Kubernetes cluster: a kubeconfig context, or the cluster runbook runs in (k8s steps use `main` "
        "unless they name one)",
)
DATABASE = Entry(
    {
        "host": Text(doc="the server's host name or address (libpq's default when absent)"),
        "port": Port(default_doc="5432", doc="the server's port"),
        "dbname": Text(doc="the database"),
        "user": Text(doc="the role to connect as"),
        "password": Text(default_doc="$PGPASSWORD or ~/.pgpass", doc="its password"),
        "sslmode": Choice(values=_SSL_MODES, default_doc="libpq's (`prefer`)", doc="libpq's sslmode"),
        "readonly_role": Text(doc="the role read-only steps run as (the boundary the server enforces; "
                                  "`validate --strict` wants one on every non-local database)"),
        "readonly_password": Text(doc="the read-only role's password"),
        "connect_timeout": Seconds(default_doc="10", doc="seconds to wait for a connection"),
        "dsn": Text(doc="a libpq connection string or URL instead of host, port, dbname and service"),
        "service": Text(doc="a libpq service name (pg_service.conf)"),
    },
    excludes=(("dsn", ("host", "port", "dbname", "service")),),
    example="databases:\n  main:\n    host: db-1.example.internal\n    dbname: app\n    user: runbook\n"
            "    password: {env: PG_PASSWORD}\n    sslmode: verify-full\n    readonly_role: runbook_ro\n"
            "    readonly_password: {env: PG_RO_PASSWORD}",
    doc="A PostgreSQL database for sql steps: host/port/dbname/user, a `dsn` or a libpq `service`",
)
NOTIFIER = Entry(
    {
        "webhook": Text(doc="the incoming-webhook URL (Slack-compatible); a secret: use {env: NAME}. With "
                            "`routing_key`: the Events API v2 URL (default https://events.pagerduty.com/v2/enqueue; "
                            "https://events.eu.pagerduty.com/v2/enqueue for an EU account)"),
        "channel": Name(doc="the channel name a notify step's `to:` may use instead of the notifier's name"),
        "routing_key": Text(doc="a PagerDuty service's Events API v2 integration key: the notifier pages through "
                                "PagerDuty (trigger, acknowledge, resolve); a secret: use {env: NAME}"),
    },
    needs_one=("webhook", "routing_key"),
    example='notify:\n  incidents: {webhook: {env: SLACK_WEBHOOK_INCIDENTS}, channel: "#incidents"}\n'
            '  pager: {routing_key: {env: PAGERDUTY_ROUTING_KEY}}',
    doc="A chat webhook, or a PagerDuty service (`routing_key`), for notify steps",
)


def _section(entry: Entry, model: type, label: str, allow_empty: bool = False, doc: str = "") -> Section:
    return Section(entry, key_pattern=f"^{NAME_PATTERN}$", key_hint="letters, digits, '.', '_' and '-'",
                   allow_empty=allow_empty, model=model, label=label, doc=doc)


INVENTORY = Entry(
    {
        "env": Name(default_doc="the file's name without .yaml",
                    doc="the environment's name: shown in a run's header, recorded in the audit log, "
                        "`inventory.env` in templates"),
        "vars": Vars(doc="variables every host sees (its groups' and its own vars override them)"),
        "hosts": _section(HOST, Host, "host", allow_empty=True, doc="machines reached over SSH, by name"),
        "groups": _section(GROUP, Group, "group", allow_empty=True, doc="named sets of hosts"),
        "ssh": SSH,
        "aws": AWS,
        "clusters": _section(CLUSTER, Cluster, "cluster", doc="Kubernetes clusters, by name"),
        "databases": _section(DATABASE, Database, "database", doc="PostgreSQL databases, by name"),
        "prometheus": _section(_endpoint("a Prometheus server (its HTTP API) for prometheus steps",
                                         "prometheus:\n  default: {url: http://prometheus.example.internal:9090, timeout: 30}"),
                               Prometheus, "Prometheus server", doc="Prometheus servers, by name (steps use `default` unless they name one)"),
        "http": _section(_endpoint("an HTTP service for http steps",
                                   "http:\n  api:\n    url: https://api.example.internal\n"
                                   "    headers: {Authorization: {env: API_TOKEN}}\n    timeout: 10"),
                         HttpEndpoint, "HTTP service", doc="HTTP services, by name"),
        "notify": _section(NOTIFIER, Notifier, "notifier", doc="chat webhooks and PagerDuty services, by name"),
    },
    doc="A runbook inventory: one environment's hosts, groups, clusters, databases and endpoints",
)
_SECTIONS = tuple(INVENTORY.fields)
#: The sections of named entries that become one model class each (hosts and groups are built apart).
_ENTRY_SECTIONS = {name: node for name, node in INVENTORY.fields.items()
                   if isinstance(node, Section) and name not in ("hosts", "groups")}


def json_schema() -> dict:
    """The JSON Schema of runbook's inventory format (``runbook schema --inventory``)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://github.com/runbook-executor/runbook/inventory.schema.json",
            "title": "runbook inventory", **INVENTORY.json()}


# lookup() kinds: kind -> (Inventory attribute, singular label, plural label)
_KINDS = {
    "host": ("hosts", "host", "hosts"),
    "group": ("groups", "group", "groups"),
    "cluster": ("clusters", "cluster", "clusters"),
    "database": ("databases", "database", "databases"),
    "prometheus": ("prometheus", "prometheus server", "prometheus servers"),
    "http": ("http", "http endpoint", "http endpoints"),
    "notify": ("notify", "notifier", "notifiers"),
}


@dataclass(repr=False)
class Inventory:
    """One environment's targets. Entries are keyed by name in file order."""

    path: Path
    env: str
    vars: dict[str, Any] = field(default_factory=dict)
    ssh: SshDefaults = field(default_factory=SshDefaults)
    aws: AwsSettings | None = None  # None: no aws: section (aws steps use the default chain)
    hosts: dict[str, Host] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    databases: dict[str, Database] = field(default_factory=dict)
    prometheus: dict[str, Prometheus] = field(default_factory=dict)
    http: dict[str, HttpEndpoint] = field(default_factory=dict)
    notify: dict[str, Notifier] = field(default_factory=dict)
    #: Every secret of the file: literal ones and (resolved or not) references.
    secret_sources: list[Secret | SecretRef] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Inventory({str(self.path)!r}, env={self.env!r})"

    def names(self, kind: str) -> list[str]:
        """The names of one kind of entry ("host", "group", "database", ...)."""
        return list(self._entries(kind))

    def lookup(self, kind: str, name: str) -> Any:
        """The entry ``name`` of ``kind``; a clear :class:`RunbookError` when unknown."""
        entries = self._entries(kind)
        if name in entries:
            return entries[name]
        _, label, plural = _KINDS[kind]
        if not entries:
            raise RunbookError(f"unknown {label} '{name}': no {plural} are defined in {self.path}")
        raise RunbookError(
            f"unknown {label} '{name}' in {self.path}{_suggest(name, entries, f'known {plural}: {_listing(entries)}')}"
        )

    def resolve_hosts(self, target: str | Iterable[str]) -> list[Host]:
        """Expand host and group names into hosts, in order, without duplicates."""
        found: dict[str, Host] = {}
        for name in [target] if isinstance(target, str) else target:
            if name in self.hosts:
                found.setdefault(name, self.hosts[name])
            elif name in self.groups:
                for host in self.groups[name].hosts:
                    found.setdefault(host, self.hosts[host])
            else:
                raise RunbookError(
                    f"unknown host or group '{name}' in {self.path}"
                    + _suggest(name, [*self.groups, *self.hosts], f"known groups: {_listing(self.groups)}; hosts: {_listing(self.hosts)}")
                )
        return list(found.values())

    def host_vars(self, host: Host | str) -> dict[str, Any]:
        """Variables seen by one host: global < groups (parents first) < host."""
        if isinstance(host, str):
            host = self.lookup("host", host)
        merged = dict(self.vars)
        for group in host.groups:
            merged.update(self.groups[group].vars)
        merged.update(host.vars)
        return merged

    def template_context(self) -> dict[str, Any]:
        """JSON-like data for templates (``inventory.databases.main.dbname``).

        Secrets stay secret objects: printed they are ``***``; in a shell
        command they become an environment variable read when the step runs."""
        context: dict[str, Any] = {"env": self.env, "path": str(self.path), "vars": _plain(self.vars), "ssh": _plain(self.ssh)}
        for attr, _, _ in _KINDS.values():
            context[attr] = {name: _plain(entry) for name, entry in getattr(self, attr).items()}
        return context

    def secret_values(self) -> list[str]:
        """The secrets known so far (literal ones and resolved references).  A run's
        Redactor watches them (refusing them in a command line) but masks one only
        once a step reveals it (``StepContext.reveal``)."""
        values: list[str] = []
        for source in self.secret_sources:
            if isinstance(source, SecretRef):
                if source.resolved:
                    values.append(source.resolve())
            else:
                values.append(source)
        return values

    def _entries(self, kind: str) -> dict[str, Any]:
        if kind not in _KINDS:
            raise ValueError(f"unknown inventory kind {kind!r} (expected one of {', '.join(_KINDS)})")
        return getattr(self, _KINDS[kind][0])


def check_inventory(path: str | Path) -> tuple[Inventory | None, list[Problem]]:
    """Load and validate an inventory file (ours or an Ansible YAML
    inventory). Returns the inventory (``None`` when there is any error) and
    every problem found, warnings included."""
    path = Path(path)
    if not path.is_file():
        return None, [Problem(str(path), 1, 1, "inventory file not found")]
    from runbook.inventory_ansible import _ANSIBLE_TAGS, _AnsibleLoader, _foreign_format, _is_ansible, _load_tagged

    if (too_big := size_problem(str(path), path.stat().st_size)) is not None:
        return None, [too_big]  # refused unread (nor scanned for an Ansible INI or vault header)
    data, problems = load_file(path)
    vaulted: set[tuple[int, int]] = set()
    if data is None and any(f"tag '{tag}'" in p.message for p in problems for tag in _ANSIBLE_TAGS):
        data, problems, vaulted = _load_tagged(path, problems)
    if not isinstance(data, Map) and (foreign := _foreign_format(path, data)) is not None:
        return None, [foreign]
    loader = _AnsibleLoader(path, vaulted) if _is_ansible(data) else _Loader(path)
    inventory = loader.build(data) if data is not None or not problems else None
    found = [p for p in loader.problems if p.severity == "error" or (p.line, p.col) not in vaulted]
    problems = sorted([*problems, *found], key=lambda p: (p.line, p.col))
    if any(p.severity == "error" for p in problems):
        return None, problems
    return inventory, problems


def load_inventory(path: str | Path) -> Inventory:
    """Load an inventory file; raise :class:`InventoryError` listing its errors."""
    inventory, problems = check_inventory(path)
    if inventory is None:
        raise InventoryError([p for p in problems if p.severity == "error"])
    return inventory


def resolve_inventory(inventory: str | None, env: str | None, base_dir: Path = Path()) -> Inventory | None:
    """The inventory a command uses: ``--inventory FILE``, else ``--env NAME``
    (``base_dir/inventory/NAME.yaml``), else ``$RUNBOOK_INVENTORY``, else
    ``$RUNBOOK_ENV``, else ``base_dir/inventory/local.yaml`` if it exists."""
    if inventory:
        return _load_path(inventory, "--inventory")
    if env:
        return _load_env(env, base_dir, "--env")
    if from_env := os.environ.get("RUNBOOK_INVENTORY"):
        return _load_path(from_env, "$RUNBOOK_INVENTORY")
    if from_env := os.environ.get("RUNBOOK_ENV"):
        return _load_env(from_env, base_dir, "$RUNBOOK_ENV")
    local = base_dir / "inventory" / "local.yaml"
    return load_inventory(local) if local.is_file() else None


def _load_path(path: str, origin: str) -> Inventory:
    if not Path(path).is_file():
        raise UsageError(f"inventory file not found: {path} (from {origin})")
    return load_inventory(path)


def _load_env(env: str, base_dir: Path, origin: str) -> Inventory:
    directory = base_dir / "inventory"
    path = directory / f"{env}.yaml"
    if _NAME.match(env) and path.is_file():
        return load_inventory(path)
    available = sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []
    if not available:
        raise UsageError(f"unknown environment '{env}' (from {origin}): there are no environments, {directory}/*.yaml does not exist")
    raise UsageError(
        f"unknown environment '{env}' (from {origin}): {path} does not exist"
        + _suggest(env, available, f"available environments: {', '.join(available)}")
    )


def jump_cycles(jumps: dict[str, str | None]) -> list[list[str]]:
    """Each cycle of jump hosts once (hosts in the order they jump), for reporting."""
    cycles, reported = [], set()
    for host in jumps:
        chain = [host]
        while (jump := jumps[chain[-1]]) is not None:
            if jump in chain:
                cycle = chain[chain.index(jump):]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    cycles.append(cycle)
                break
            chain.append(jump)
    return cycles


def _suggest(word: object, choices: Iterable[str], known: str = "") -> str:
    """`` (did you mean 'x'?)`` when ``word`` is close to one of ``choices``,
    followed by ``known`` (a list of the valid names) inside the parentheses."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    parts = [f"did you mean '{close[0]}'?"] if close else []
    parts += [known] if known else []
    return f" ({' '.join(parts)})" if parts else ""


def _listing(names: Iterable[str], cap: int = 10) -> str:
    names = list(names)
    if not names:
        return "none"
    more = f", ... ({len(names) - cap} more)" if len(names) > cap else ""
    return ", ".join(names[:cap]) + more


def _plain(value: Any) -> Any:
    """JSON-like copy of ``value``; secrets are kept as Secret/SecretRef objects."""
    if isinstance(value, (Secret, SecretRef)):
        return value
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _describe(value: Any, show: bool = True) -> str:
    """A value for an error message; ``show=False`` names only its type
    (for settings that may hold a secret)."""
    if isinstance(value, Map):
        return "a mapping"
    if isinstance(value, Seq):
        return "a list"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if show and isinstance(value, (str, int, float)):
        return repr(value)
    return {str: "a string", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _plain_secret(key: str, value: str) -> bool:
    """Whether a literal string is a secret, judging by its key or content."""
    k = key.lower().replace("-", "_")
    return k in _SECRET_KEYS or "password" in k or "token" in k or bool(_URL_CREDENTIALS.search(value))


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


_INVALID = object()  # marks a value already reported as a problem


@dataclass
class _Raw:
    """One entry as written: the position of its name, its mapping and its checked fields."""

    pos: tuple[int, int]
    entry: Map
    fields: dict[str, Any]


class _Loader:
    """Turns the YAML data of one inventory file into an :class:`Inventory`,
    collecting every problem on the way."""

    def __init__(self, path: Path):
        self.path = path
        self.file = str(path)
        self.problems: list[Problem] = []
        self.secrets: list[Secret | SecretRef] = []

    def error(self, pos: tuple[int, int], message: str) -> None:
        self.problems.append(Problem(self.file, pos[0], pos[1], message))

    def warn(self, pos: tuple[int, int], message: str, rule: str) -> None:
        self.problems.append(Problem(self.file, pos[0], pos[1], message, "warning", rule))

    def invalid(self, pos: tuple[int, int], message: str) -> object:
        self.error(pos, message)
        return _INVALID

    # -- the whole file ---------------------------------------------------

    def build(self, data: Any) -> Inventory | None:
        if data is None:
            data = Map()
        if not isinstance(data, Map):
            self.error(getattr(data, "pos", (1, 1)),
                       f"an inventory must be a mapping with sections such as hosts, groups and databases, got {_describe(data)}")
            return None
        if "all" in data:  # the top of an Ansible inventory, next to our own sections
            ours = ", ".join(str(key) for key in data if key in _SECTIONS)
            self.error(data.kpos("all"), f"'all' starts an Ansible inventory, which cannot be mixed with runbook sections"
                                         f" ({ours}); keep them in separate files")
        self.unknown_keys(data, [*_SECTIONS, "all"] if "all" in data else _SECTIONS, "")
        top = {key: INVENTORY.fields[key].read(self, data[key], data.vpos(key), key, key)
               for key in ("env", "vars") if data.get(key) is not None}
        top = {key: value for key, value in top.items() if value is not _INVALID}
        ssh_block = self.block(data, "ssh")
        ssh_fields = self.fields(ssh_block, SSH, "ssh")
        aws_fields = self.fields(self.block(data, "aws"), AWS, "aws") if data.get("aws") is not None else None
        hosts = self.entries(data, "hosts")
        groups = self.entries(data, "groups")
        sections = {section: self.entries(data, section) for section in _ENTRY_SECTIONS}
        members, host_groups = self.group_members(hosts, groups)
        jumps = self.jump_hosts(hosts, ssh_block, ssh_fields.get("jump_host"))
        if any(p.severity == "error" for p in self.problems):
            return None

        ssh = SshDefaults(**ssh_fields)
        return Inventory(
            path=self.path,
            env=top.get("env", self.path.stem),
            vars=top.get("vars", {}),
            ssh=ssh,
            aws=AwsSettings(**aws_fields) if aws_fields is not None else None,
            hosts={
                name: Host(
                    name=name,
                    address=raw.fields.get("address", name),
                    port=raw.fields.get("port", ssh.port),
                    user=raw.fields.get("user", ssh.user),
                    groups=host_groups[name],
                    vars=raw.fields.get("vars", {}),
                    jump_host=jumps[name],
                )
                for name, raw in hosts.items()
            },
            groups={
                name: Group(name=name, hosts=names, vars=groups[name].fields.get("vars", {}) if name in groups else {})
                for name, names in members.items()
            },
            **{
                section: {name: _ENTRY_SECTIONS[section].model(name=name, **raw.fields) for name, raw in entries.items()}
                for section, entries in sections.items()
            },
            secret_sources=self.secrets,
        )

    def block(self, data: Map, section: str) -> Map:
        """A top-level mapping section (empty when absent or invalid)."""
        value = data.get(section)
        if isinstance(value, Map):
            return value
        if value is not None:
            self.error(data.vpos(section), f"{section}: must be a mapping, got {_describe(value, show=False)}")
        return Map()

    def entries(self, data: Map, section: str) -> dict[str, _Raw]:
        """The named entries of a section, as its :class:`Section` declares them."""
        declared: Section = INVENTORY.fields[section]
        schema: Entry = declared.value
        block = self.block(data, section)
        out: dict[str, _Raw] = {}
        for name, entry in block.items():
            where = f"{section}.{name}"
            if not isinstance(name, str) or not _NAME.match(name):
                self.error(block.kpos(name), f"{section}: invalid name '{name}' (use {declared.key_hint})")
                continue
            if entry is None and declared.allow_empty:
                entry = Map()
                entry.pos = block.vpos(name)
            if not isinstance(entry, Map):
                self.error(block.vpos(name),
                           f"{where}: must be a mapping with keys such as {', '.join(schema.fields)}, got {_describe(entry, show=False)}")
                continue
            raw = out[name] = _Raw(block.kpos(name), entry, self.fields(entry, schema, where))
            for key in schema.required:
                if entry.get(key) is None:
                    self.error(entry.pos, f"{where}: missing required key '{key}'")
            if schema.needs_one and all(entry.get(key) is None for key in schema.needs_one):
                self.error(entry.pos, f"{where}: needs one of the keys {' or '.join(repr(k) for k in schema.needs_one)}")
            for key, others in schema.excludes:  # settings that exclude each other
                if raw.fields.get(key):
                    for other in others:
                        if other in raw.fields:
                            self.error(entry.kpos(other), f"{where}: '{other}' cannot be combined with '{key}'")
        return out

    # -- references between entries ----------------------------------------

    def group_members(self, hosts: dict[str, _Raw], groups: dict[str, _Raw]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Check group references and expand groups. Returns the members of
        every group (declared ones first, then the ones only named by hosts)
        and the groups of every host (parents before children, then file order)."""
        named_by: dict[str, list[str]] = {}
        for host, raw in hosts.items():
            for i, group in enumerate(raw.fields.get("groups", [])):
                pos = raw.entry["groups"].ipos(i)
                if group in hosts:
                    self.error(pos, f"hosts.{host}.groups: '{group}' is a host, not a group")
                    continue
                if group not in groups and (hint := _suggest(group, groups)):
                    self.warn(pos, f"hosts.{host}.groups: group '{group}' is not declared under groups{hint}", "inventory")
                named_by.setdefault(group, []).append(host)

        direct: dict[str, list[str]] = {}
        children: dict[str, list[tuple[str, tuple[int, int]]]] = {}
        for group, raw in groups.items():
            if group in hosts:
                self.error(raw.pos, f"groups.{group}: '{group}' is both a host and a group; rename one")
            direct[group] = [host for host, _ in self.references(raw, "hosts", hosts, f"groups.{group}.hosts", "host", groups)]
        for group in named_by:
            direct.setdefault(group, [])
        for group in direct:
            direct[group] += named_by.get(group, [])
            children[group] = (
                list(self.references(groups[group], "children", direct, f"groups.{group}.children", "group", hosts))
                if group in groups else []
            )

        members: dict[str, list[str]] = {}

        def expand(group: str, stack: list[str]) -> list[str]:
            if group not in members:
                stack.append(group)
                found = dict.fromkeys(direct[group])
                for child, pos in children[group]:
                    if child in stack:
                        cycle = " -> ".join([*stack[stack.index(child):], child])
                        self.error(pos, f"groups.{group}.children: group cycle {cycle}")
                    else:
                        found.update(dict.fromkeys(expand(child, stack)))
                stack.pop()
                members[group] = list(found)
            return members[group]

        parents: dict[str, list[str]] = {group: [] for group in direct}
        for group in direct:
            expand(group, [])
            for child, _ in children[group]:
                parents[child].append(group)

        depth: dict[str, int] = {}

        def level(group: str) -> int:
            if group not in depth:
                depth[group] = 0  # stops the recursion on a cycle (already reported)
                depth[group] = 1 + max((level(p) for p in parents[group]), default=-1)
            return depth[group]

        host_groups: dict[str, list[str]] = {host: [] for host in hosts}
        for group in sorted(direct, key=level):
            for host in members[group]:
                host_groups[host].append(group)
        return {group: members[group] for group in direct}, host_groups

    def references(self, raw: _Raw, key: str, known: Iterable[str], where: str, what: str,
                   others: Iterable[str]) -> Iterable[tuple[str, tuple[int, int]]]:
        """The names listed under ``raw.entry[key]`` that are ``known`` (names
        of ``what``, "host" or "group"), with their positions; reports the
        others. ``others`` holds the names of the other kind, for a hint."""
        other, other_key = ("group", "children") if what == "host" else ("host", "hosts")
        for i, name in enumerate(raw.fields.get(key, [])):
            pos = raw.entry[key].ipos(i)
            if name in known:
                yield name, pos
            elif name in others:
                self.error(pos, f"{where}: '{name}' is a {other}, not a {what}; list it under {other_key}")
            else:
                self.error(pos, f"{where}: unknown {what} '{name}'{_suggest(name, known)}")

    def jump_hosts(self, hosts: dict[str, _Raw], ssh: Map, default: str | None) -> dict[str, str | None]:
        """The jump host of every host: its own ``jump_host`` (``null`` for a
        direct connection), else ``ssh.jump_host`` unless it is that host."""
        if default is not None and default not in hosts:
            self.error(ssh.vpos("jump_host"), f"ssh.jump_host: unknown host '{default}'{_suggest(default, hosts)}")
            default = None
        jumps: dict[str, str | None] = {}
        for host, raw in hosts.items():
            jump = default if default != host else None
            if "jump_host" in raw.entry:
                jump = raw.fields.get("jump_host")
                if jump is not None and jump not in hosts:
                    self.error(raw.entry.vpos("jump_host"), f"hosts.{host}.jump_host: unknown host '{jump}'{_suggest(jump, hosts)}")
                    jump = None
            jumps[host] = jump

        for cycle in jump_cycles(jumps):
            first = hosts[cycle[0]].entry
            pos = first.vpos("jump_host") if "jump_host" in first else ssh.vpos("jump_host")
            self.error(pos, f"hosts.{cycle[0]}.jump_host: jump host cycle {' -> '.join([*cycle, cycle[0]])}")
        return jumps

    # -- single values --------------------------------------------------------

    def unknown_keys(self, m: Map, allowed: Iterable[str], where: str) -> None:
        allowed = list(allowed)
        for key in m:
            if key not in allowed:
                hint = _suggest(key, allowed) or f" (expected one of: {', '.join(allowed)})"
                what = f"{where}: unknown key" if where else "unknown top-level key"
                self.error(m.kpos(key), f"{what} '{key}'{hint}")

    def fields(self, entry: Map, schema: Entry, where: str) -> dict[str, Any]:
        """The valid, non-null settings of one entry; reports the others."""
        self.unknown_keys(entry, schema.fields, where)
        out: dict[str, Any] = {}
        for key, node in schema.fields.items():
            if entry.get(key) is not None:
                value = node.read(self, entry[key], entry.vpos(key), _join(where, key), key)
                if value is not _INVALID:
                    out[key] = value
        return out

    def mapping(self, m: Map, where: str, text_only: bool = False) -> dict[str, Any]:
        """A mapping of free-form data (``vars``) or of text (``headers``)."""
        out: dict[str, Any] = {}
        for key, item in m.items():
            if not isinstance(key, str):
                self.error(m.kpos(key), f"{where}: keys must be strings, got {_describe(key)}")
                continue
            pos, item_where = m.vpos(key), _join(where, key)
            value = self.text(item, pos, item_where, key) if text_only else self.data(item, pos, item_where, key)
            if value is not _INVALID:
                out[key] = value
        return out

    def data(self, value: Any, pos: tuple[int, int], where: str, key: str) -> Any:
        """Free-form data; a mapping whose only key is env or file is a secret source."""
        if isinstance(value, Map):
            if len(value) == 1 and next(iter(value)) in _SOURCES:
                return self.secret_ref(value, where)
            return self.mapping(value, where)
        if isinstance(value, Seq):
            return [self.data(v, value.ipos(i), f"{where}[{i}]", key) for i, v in enumerate(value)]
        if isinstance(value, str):
            return self.literal(value, pos, where, key)
        return value

    def text(self, value: Any, pos: tuple[int, int], where: str, key: str) -> Any:
        """A string, or a secret source ``{env: NAME}`` / ``{file: PATH}``."""
        if isinstance(value, str):
            return self.literal(value, pos, where, key)
        if isinstance(value, Map):
            return self.secret_ref(value, where)
        quote = "; quote it" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
        return self.invalid(pos, f"{where}: must be a string or a secret source ({{env: NAME}} or {{file: PATH}}),"
                                 f" got {_describe(value, show=False)}{quote}")

    def literal(self, value: str, pos: tuple[int, int], where: str, key: str) -> str:
        """A literal string; a secret written in plain text is wrapped as a Secret, with a warning."""
        if not value or not _plain_secret(key, value):
            return value
        secret = Secret(value, name=where)
        self.secrets.append(secret)
        self.warn(pos, f"{where}: holds a secret in plain text; use {{env: NAME}} or {{file: PATH}} instead", "secret")
        return secret

    def secret_ref(self, m: Map, where: str) -> Any:
        if len(m) != 1:
            return self.invalid(m.pos, f"{where}: a secret source has exactly one key, env or file")
        (source, ref), = m.items()
        if source not in _SOURCES:
            hint = _suggest(source, _SOURCES) or " (use env or file)"
            return self.invalid(m.kpos(source), f"{where}: unknown secret source '{source}'{hint}")
        if source == "env" and not (isinstance(ref, str) and _ENV_VAR.match(ref)):
            return self.invalid(m.vpos(source),
                                f"{where}: env must name an environment variable (letters, digits and _), got {_describe(ref)}")
        if source == "file" and not (isinstance(ref, str) and ref):
            return self.invalid(m.vpos(source), f"{where}: file must be a path, got {_describe(ref)}")
        line, col = m.pos
        secret = SecretRef(source, ref, f"{self.file}:{line}:{col}: {where}", name=where, base_dir=self.path.parent)
        self.secrets.append(secret)
        return secret


# -- Ansible YAML inventories ---------------------------------------------------------
