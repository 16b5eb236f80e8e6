"""Secret values and their redaction.

Every string that reaches the screen, the plan, the audit log or an error
message goes through a :class:`Redactor` first.  A secret is replaced by
``***`` wherever it appears, including inside a rendered command.
"""

from __future__ import annotations

from typing import Any, Iterable

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


class Redactor:
    """Replaces every known secret value by ``***`` (ignoring case, so that
    an upper-cased copy of a secret is masked too)."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: list[str] = []
        self._pattern = None
        for s in secrets:
            self.add(s)

    def add(self, value: str) -> None:
        value = str(value)
        if value and value not in self._secrets:
            self._secrets.append(value)
            # Longest first, so that a secret containing another is masked whole.
            self._secrets.sort(key=len, reverse=True)
            self._pattern = None

    def values(self) -> list[str]:
        return list(self._secrets)

    def __bool__(self) -> bool:
        return bool(self._secrets)

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
