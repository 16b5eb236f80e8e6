"""Finding runbooks, and what ``runbook list`` shows of them — fast.

``runbook list`` at 3am must answer at once, so it reads only what it shows
(name, title, severity, alerts) and keeps that in a small cache keyed by each
file's path, size and modification time (``$RUNBOOK_CACHE_DIR``, else
``$XDG_CACHE_HOME/runbook``, else ``~/.cache/runbook``).  A file not in the
cache, or changed since, is loaded and checked in full (a broken one is listed
as skipped with its first error, as before); an unchanged one costs a stat.
The cache holds only what ``list`` prints; ``run``, ``show`` and ``validate``
always read the file itself.  This module imports nothing heavy (no YAML, no
schema, no rich) unless a file must be read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_FORMAT = 1  # of the cache's format


def _version() -> list:
    """Whose cache this is: the format, runbook's version, and the modification times of
    its package folders (an upgrade or an edit of runbook replaces files there), so that a
    file another version refused, or accepted, is read again."""
    from runbook import __version__

    here = Path(__file__).resolve().parent
    stamps = []
    for d in (here, here / "steps"):
        try:
            stamps.append(d.stat().st_mtime_ns)
        except OSError:
            stamps.append(None)
    return [_FORMAT, __version__, *stamps]


def search_path(explicit: str | None = None) -> list[Path]:
    """--path DIR, else $RUNBOOK_PATH (os.pathsep-separated), else ./playbooks."""
    if explicit:
        return [Path(explicit)]
    env = os.environ.get("RUNBOOK_PATH")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path("playbooks")]


def runbook_files(paths: list[Path]) -> list[Path]:
    """The *.yaml / *.yml files under each path (folders searched recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file()))
        elif p.is_file():
            out.append(p)
    return out


def cache_path() -> Path:
    base = os.environ.get("RUNBOOK_CACHE_DIR")
    if base:
        return Path(base) / "catalog.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "runbook" / "catalog.json"


def _load_cache(path: Path, version: list) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != version or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _save_cache(path: Path, files: dict, version: list) -> None:
    """Atomically (a reader never sees half a file); a cache that cannot be written is no error."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": version, "files": files}, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def _valid(entry) -> bool:
    """An entry as :func:`_entry` makes it (a cache is a file anyone may have edited)."""
    if not isinstance(entry, dict):
        return False
    if "broken" in entry:
        return isinstance(entry["broken"], str)
    return (isinstance(entry.get("name"), str) and isinstance(entry.get("title"), str)
            and isinstance(entry.get("severity"), (str, type(None)))
            and isinstance(entry.get("alerts"), list) and all(isinstance(a, str) for a in entry["alerts"]))


def _entry(f: Path) -> dict:
    """What list shows of one file, read and checked in full."""
    from runbook import spec

    rb, problems = spec.load_runbook(f)
    if rb is None:
        first = next((p for p in problems if p.severity == "error"), None)
        return {"broken": first.format() if first else str(f)}
    return {"name": rb.name, "title": rb.title, "severity": rb.severity, "alerts": list(rb.alerts)}


def entries(files: list[Path]) -> list[tuple[Path, dict]]:
    """(file, entry) for each file, in order; an entry is either
    ``{"name", "title", "severity", "alerts"}`` or ``{"broken": first error}``."""
    where, version = cache_path(), _version()
    cache = _load_cache(where, version)
    out, changed, seen = [], False, set()
    for f in files:
        key = str(f.resolve())
        seen.add(key)
        try:
            st = f.stat()
        except OSError:
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        hit = cache.get(key)
        if isinstance(hit, dict) and hit.get("stamp") == stamp and _valid(hit.get("entry")):
            out.append((f, hit["entry"]))
            continue
        entry = _entry(f)
        cache[key] = {"stamp": stamp, "entry": entry}
        changed = True
        out.append((f, entry))
    gone = [k for k in cache if k not in seen and not Path(k).exists()]
    for k in gone:
        del cache[k]
    if changed or gone:
        _save_cache(where, cache, version)
    return out
