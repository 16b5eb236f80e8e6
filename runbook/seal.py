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

The writer keeps the directory 0700 and the keys 0600, and removes the temporary
files (``*.tmp<pid>``) a crash can leave.  When a new log starts where an old one
was moved aside, :func:`retire` keeps the old anchor in ``retired-<time>/`` (to
verify the old log with ``--key``) and destroys the old private key.

``cryptography`` is imported only when a key is used (never by ``runbook --help``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
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
    start: dict[str, Any] | None = None  # epoch 0 only: {"records", "hash"} of the log when it was made


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


def write_atomic(path: Path, data: bytes, mode: int = 0o600, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` in one step (a temporary file renamed over it).

    ``sync``: the temporary file is on disk before it is renamed, so a power loss leaves
    the old file or the new one, never an empty or partial one; ``sync_dir`` (default:
    ``sync``): the rename itself is on disk before this returns."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        _fsync_dir(path.parent)


def _key_bytes(key: Key) -> bytes:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    raw = key.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    fields: dict[str, Any] = {"v": 1, "epoch": key.epoch, "anchor": key.anchor, "log": key.log,
                              "private_key": b64(raw)}
    if key.start is not None:
        fields["start"] = key.start
    text = json.dumps(fields, sort_keys=True)
    return text.encode() + b"\n"


def write_key(path: Path, key: Key) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, _key_bytes(key))


def read_key(path: Path) -> Key | None:
    """The key in ``path``; None when there is no such file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunbookError(f"cannot read the sealing key {path}: {exc.strerror or exc}") from None
    return parse_key(data, str(path))


def key_bytes(key: Key) -> bytes:
    """``key`` as :func:`write_key` stores it (what :func:`parse_key` reads)."""
    return _key_bytes(key)


def parse_key(data: bytes, where: str) -> Key:
    """The key stored as ``data`` (by :func:`key_bytes`); RunbookError naming ``where`` when damaged."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        fields = json.loads(data)
        raw = unb64(fields["private_key"])
        if raw is None or len(raw) != 32 or not isinstance(fields["epoch"], int):
            raise ValueError
        private = Ed25519PrivateKey.from_private_bytes(raw)
        start = fields.get("start")
        return Key(fields["epoch"], private, _public_raw(private), str(fields["anchor"]),
                   str(fields.get("log") or ""), start if isinstance(start, dict) else None)
    except (ValueError, KeyError, TypeError):
        raise RunbookError(f"the sealing key {where} is damaged") from None


def anchor_bytes(public: bytes) -> bytes:
    """The anchor file (``verify.pub``) of the public key ``public``."""
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = json.dumps({"type": ANCHOR_TYPE, "alg": "ed25519", "public_key": b64(public), "created": created})
    return text.encode() + b"\n"


def write_anchor(directory: Path, public: bytes) -> Path:
    path = directory / ANCHOR_NAME
    write_atomic(path, anchor_bytes(public), mode=0o644)
    return path


def read_anchor(path: str | os.PathLike[str]) -> bytes:
    """The raw public key in an anchor file: ``verify.pub`` as written here, or a PEM
    (SubjectPublicKeyInfo) Ed25519 public key.  Raises FileNotFoundError or RunbookError."""
    return parse_anchor(Path(path).read_bytes(), str(path))


def parse_anchor(data: bytes, path: str) -> bytes:
    """The raw public key in the anchor ``data`` (see :func:`read_anchor`), read from ``path``."""
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


def secure(directory: Path) -> None:
    """Keep the key directory 0700 and the private keys in it 0600 (an existing directory too)."""
    try:
        if stat.S_IMODE(os.stat(directory).st_mode) != 0o700:
            os.chmod(directory, 0o700)
        for name in (KEY_NAME, NEXT_NAME):
            p = directory / name
            if p.exists() and stat.S_IMODE(p.stat().st_mode) & 0o077:
                os.chmod(p, 0o600)
    except OSError:  # not ours to change: the writer goes on (reading the key says if it cannot)
        pass


def clean_temporary(directory: Path) -> None:
    """Remove the temporary key files (``seal.key.next.tmp<pid>``...) a crash left behind, and
    any private key in ``retired-*/`` (older versions kept them there).

    Called by the writer under the log's lock, when no other writer can be writing them."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        leftovers = []
        if name.startswith((KEY_NAME, ANCHOR_NAME)) and ".tmp" in name:
            leftovers.append(directory / name)
        elif name.startswith("retired-"):  # private keys kept aside by an older runbook: destroyed too
            leftovers += [directory / name / KEY_NAME, directory / name / NEXT_NAME]
        for p in leftovers:
            try:
                os.unlink(p)
            except OSError:
                pass


def retire(directory: Path) -> Path | None:
    """Keep the anchor of a previous log aside (``retired-<time>/verify.pub``, to verify that
    log with ``--key``) and destroy its private keys (``seal.key``, ``seal.key.next``).

    Used only when a new log starts where no sealed log is (the old one was moved aside,
    or its keys belong to another log that is gone)."""
    keys = [directory / n for n in (KEY_NAME, NEXT_NAME) if (directory / n).exists()]
    anchor = directory / ANCHOR_NAME
    target = None
    if anchor.exists():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = directory / f"retired-{stamp}-{os.urandom(3).hex()}"
        target.mkdir(mode=0o700)
        os.replace(anchor, target / ANCHOR_NAME)
    for p in keys:  # the old private keys are destroyed: nobody can sign for the old log any more
        os.unlink(p)
    if keys or target is not None:
        _fsync_dir(directory)
    return target


def retired_anchors(directory: Path) -> list[Path]:
    """The anchors kept by :func:`retire` in ``directory``, newest first."""
    try:
        return sorted(directory.glob(f"retired-*/{ANCHOR_NAME}"), reverse=True)
    except OSError:
        return []
