"""Secret values and their redaction.

Every string that reaches the screen, the plan, the audit log or an error
message goes through a :class:`Redactor` first.  A secret the run has revealed
is replaced by ``***`` wherever it appears, including inside a rendered
command; a revealed secret too short to mask safely is reported instead.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

MASK = "***"


class Secret(str):
    """A string value that came from a secret source (a ``secret: true``
    parameter or an inventory value read from a secret source).

    It behaves as a ``str`` so that templates and comparisons work, but
    ``repr`` never shows it, and a shell template renders it as a reference to
    an environment variable instead of pasting it into the command line.
    """

    __slots__ = ("name",)

    def __new__(cls, value: str, name: str = "secret"):
        obj = super().__new__(cls, value)
        obj.name = name
        return obj

    def __repr__(self) -> str:  # pragma: no cover - defensive
        return f"Secret({self.name!r})"


class LazySecret:
    """A secret that is read only when it is used (e.g. an inventory password
    from ``{env: PG_PASSWORD}``).  Subclasses provide ``name`` and
    ``resolve() -> Secret``; ``str()`` is always the mask."""

    name: str = "secret"

    def resolve(self) -> "Secret":  # pragma: no cover - abstract
        raise NotImplementedError

    def __str__(self) -> str:
        return MASK


#: A revealed secret shorter than this is not masked: masking every "x" of the
#: output would garble it (host-key fingerprints included) and hide nothing.
MIN_MASKED = 4
MIN_WATCHED_MASKED = 8  # an inventory secret the run has not used is masked from this length on


def too_short_notice(name: str) -> str:
    """The one-line warning for a revealed secret too short to mask (never its value)."""
    return (f"warning: secret '{name}' is too short to mask safely (under {MIN_MASKED} characters): "
            "it is not masked in output or the audit log; use a longer one")


class Redactor:
    """Replaces every secret the run has revealed by ``***`` (ignoring case, so
    that an upper-cased copy of a secret is masked too).

    Revealed secrets are masked: a secret parameter given to the run, and
    an inventory secret once a step uses it (``StepContext.reveal``).  The
    inventory's other secrets are *watched*: they are looked for in rendered
    commands (:meth:`values`) so that a secret pasted into a command line is
    still refused, and masked only from :data:`MIN_WATCHED_MASKED` characters
    on (a short one unused by the run must not garble its output).  A revealed secret shorter than
    :data:`MIN_MASKED` characters is not masked either; it is reported once to
    the listener (:meth:`on_too_short`) instead."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: list[str] = []
        self._watched: list[str] = []
        self._short: dict[str, str] = {}  # value -> name: revealed, too short to mask
        self._pending: list[str] = []  # names of short secrets not yet reported (no listener yet)
        self._listener: Callable[[str], None] | None = None
        self._pattern = None
        for s in secrets:
            self.add(s)

    def add(self, value: str, name: str | None = None) -> bool:
        """A secret this run revealed: masked from now on.  Returns whether it is
        masked (False for an empty one, or one too short to mask safely)."""
        label = name or getattr(value, "name", None) or "secret"
        value = str(value)
        if not value:
            return False
        if len(value) < MIN_MASKED:
            if value not in self._short:
                self._short[value] = label
                self._report(label)
            return False
        self._mask(value)
        return True

    def _mask(self, value: str) -> None:
        if value not in self._secrets:
            self._secrets.append(value)
            # Longest first, so that a secret containing another is masked whole.
            self._secrets.sort(key=len, reverse=True)
            self._pattern = None

    def watch(self, value: str) -> None:
        """A secret the run may use but has not revealed (an inventory secret):
        looked for in rendered commands; masked too when it is long enough
        (:data:`MIN_WATCHED_MASKED`) that masking it cannot garble unrelated text
        (a command may print it: a config file, an environment dump)."""
        value = str(value)
        if len(value) >= MIN_MASKED and value not in self._watched:
            self._watched.append(value)
        if len(value) >= MIN_WATCHED_MASKED:
            self._mask(value)

    def on_too_short(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` once for each revealed secret too short to mask
        (those revealed before the listener was set are reported now)."""
        self._listener = listener
        pending, self._pending = self._pending, []
        for name in pending:
            listener(name)

    def report_too_short(self, ui=None, journal=None) -> None:
        """Send the too-short-secret warnings to the operator (one line each,
        through ``ui.notice``) and the audit log (``secret_too_short``, the name,
        never the value).  Without either (a plan), they wait."""
        if ui is None and journal is None:
            return

        def tell(name: str) -> None:
            if ui is not None:
                ui.notice(too_short_notice(name))
            if journal is not None:
                journal.event("secret_too_short", secret=name, min_length=MIN_MASKED)

        self.on_too_short(tell)

    def _report(self, name: str) -> None:
        if self._listener is None:
            self._pending.append(name)
        else:
            self._listener(name)

    def too_short(self) -> list[str]:
        """The names of the revealed secrets that are too short to mask."""
        return list(self._short.values())

    def values(self) -> list[str]:
        """The secret values to look for in rendered text (a command line, an
        environment value): the masked ones and the watched ones."""
        return self._secrets + [v for v in self._watched if v not in self._secrets]

    def masked(self) -> list[str]:
        """The secret values replaced by ``***``."""
        return list(self._secrets)

    def __bool__(self) -> bool:
        """Whether there is any secret to mask or look for."""
        return bool(self._secrets or self._watched)

    def text(self, s: str) -> str:
        if not self._secrets or not s:
            return s
        if self._pattern is None:
            import re

            self._pattern = re.compile("|".join(re.escape(x) for x in self._secrets), re.IGNORECASE)
        return self._pattern.sub(MASK, s)

    def data(self, value: Any) -> Any:
        """Redact strings anywhere inside JSON-like data."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)) if isinstance(k, str) else k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value

