"""The keys that seal the audit log: Ed25519, evolving per epoch (forward secure).

The key directory (:func:`key_dir`: ``$RUNBOOK_KEY_DIR``, else ``<audit dir>/keys``,
mode 0700) of one log holds:

* ``verify.pub``: the trust anchor, the public key of epoch 0, written once when
  the log's first sealed record is written.  Copy it where an attacker on this
  machine cannot write: ``runbook audit verify --key COPY`` then proves the log.
* ``seal.key`` (0600): the private key of the *current* epoch and its number.
  When a new epoch starts, the writer creates the next key in ``seal.key.next``,
  appends an ``epoch`` record (the new public key, signed by the old key) and
  then replaces ``seal.key`` with the new one: the old key is gone, so whoever
  takes the machine later cannot re-sign earlier epochs.

``cryptography`` is imported only when a key is used (never by ``runbook --help``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError

KEY_NAME = "seal.key"
NEXT_NAME = "seal.key.next"
ANCHOR_NAME = "verify.pub"
ANCHOR_TYPE = "runbook-audit-anchor"
EPOCH_RECORDS = 1000  # a new epoch at least every this many records (and at every run's start)


def key_dir(log_dir: str | os.PathLike[str]) -> Path:
    """Where the keys of the log in ``log_dir`` live: ``$RUNBOOK_KEY_DIR``, else ``<log_dir>/keys``."""
    if os.environ.get("RUNBOOK_KEY_DIR"):
        return Path(os.environ["RUNBOOK_KEY_DIR"]).expanduser()
    return Path(log_dir) / "keys"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes | None:
    """The bytes of canonical base64 ``text``; None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    return raw if b64(raw) == text else None  # canonical only: padding bits a decoder ignores are not free


def fingerprint(public: bytes) -> str:
    """A short name of a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass
class Key:
    """The private key of one epoch."""

    epoch: int
    private: Any  # cryptography's Ed25519PrivateKey
    public: bytes  # raw, 32 bytes
    anchor: str  # fingerprint of the log's epoch-0 public key
    log: str = ""  # the log it seals (its absolute path when the key was made)

    def sign(self, data: bytes) -> str:
        return b64(self.private.sign(data))


def generate(epoch: int, anchor: str | None = None, log: str = "") -> Key:
    """A new key for ``epoch``; epoch 0's key is its own anchor."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    public = _public_raw(private)
    return Key(epoch, private, public, anchor or fingerprint(public), log)


def _public_raw(private: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@lru_cache(maxsize=4096)
def _public_key(public: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(public)


def check(public: bytes, sig: Any, data: bytes) -> bool:
    """Whether ``sig`` (base64) is ``public``'s Ed25519 signature of ``data``."""
    from cryptography.exceptions import InvalidSignature

    raw = unb64(sig)
    if raw is None or len(raw) != 64 or len(public) != 32:
        return False
    try:
        _public_key(public).verify(raw, data)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- files -------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` in one step (a temporary file renamed over it)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        _fsync_dir(path.parent)


def _key_bytes(key: Key) -> bytes:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    raw = key.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    fields = {"v": 1, "epoch": key.epoch, "anchor": key.anchor, "log": key.log, "private_key": b64(raw)}
    text = json.dumps(fields, sort_keys=True)
    return text.encode() + b"\n"


def write_key(path: Path, key: Key) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, _key_bytes(key))


def read_key(path: Path) -> Key | None:
    """The key in ``path``; None when there is no such file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = json.loads(path.read_bytes())
        raw = unb64(data["private_key"])
        if raw is None or len(raw) != 32 or not isinstance(data["epoch"], int):
            raise ValueError
        private = Ed25519PrivateKey.from_private_bytes(raw)
        return Key(data["epoch"], private, _public_raw(private), str(data["anchor"]), str(data.get("log") or ""))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunbookError(f"cannot read the sealing key {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError):
        raise RunbookError(f"the sealing key {path} is damaged") from None


def write_anchor(directory: Path, public: bytes) -> Path:
    path = directory / ANCHOR_NAME
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = json.dumps({"type": ANCHOR_TYPE, "alg": "ed25519", "public_key": b64(public), "created": created})
    write_atomic(path, text.encode() + b"\n", mode=0o644)
    return path


def read_anchor(path: str | os.PathLike[str]) -> bytes:
    """The raw public key in an anchor file: ``verify.pub`` as written here, or a PEM
    (SubjectPublicKeyInfo) Ed25519 public key.  Raises FileNotFoundError or RunbookError."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            PublicFormat,
            load_pem_public_key,
        )

        try:
            key = load_pem_public_key(data)
        except ValueError:
            key = None
        if not isinstance(key, Ed25519PublicKey):
            raise RunbookError(f"{path}: not an Ed25519 public key")
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        obj = json.loads(data)
        public = unb64(obj.get("public_key")) if isinstance(obj, dict) else None
    except ValueError:
        public = None
    if public is None or len(public) != 32:
        raise RunbookError(f"{path}: not an audit log anchor (verify.pub) nor a PEM Ed25519 public key")
    return public


def retire(directory: Path) -> Path | None:
    """Move the key files of a previous log aside (``retired-<time>/``), keeping them as evidence.

    Used when a log with no sealed record is about to be sealed while keys exist
    (the log was removed or replaced, or the directory also served another log)."""
    present = [directory / n for n in (KEY_NAME, NEXT_NAME, ANCHOR_NAME) if (directory / n).exists()]
    if not present:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = directory / f"retired-{stamp}-{os.urandom(3).hex()}"
    target.mkdir(mode=0o700)
    for p in present:
        os.replace(p, target / p.name)
    _fsync_dir(directory)
    return target
