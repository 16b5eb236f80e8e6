"""runbook list reads what it shows from a cache keyed by path, size and mtime (runbook.catalog):
a changed, new, removed or broken file is never shown stale, and a bad cache is only a miss."""

from __future__ import annotations

import json
import os

from runbook import catalog

RB = "name: {name}\ntitle: {title}\nseverity: SEV3\nalerts: [A]\nstages:\n  diagnose:\n    - id: a\n      shell: 'true'\n      readonly: true\n"


def test_the_cache_follows_every_change(main, write, tmp_path):
    a = write("pb/a.yaml", RB.format(name="a", title="First"))
    write("pb/b.yaml", RB.format(name="b", title="Second"))
    pb = str(tmp_path / "pb")
    r = main("list", "--path", pb)
    assert r.returncode == 0 and "First" in r.stdout and "Second" in r.stdout
    assert catalog.cache_path().is_file()

    # same size, new content and mtime: shown as it is now
    st = a.stat()
    a.write_text(RB.format(name="a", title="Fixed"))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    r = main("list", "--path", pb)
    assert "Fixed" in r.stdout and "First" not in r.stdout

    # broken now: skipped with its first error, not listed from the cache
    a.write_text("name: a\ntitle: [unclosed\n")
    r = main("list", "--path", pb)
    assert "Fixed" not in r.stdout and "skipped" in r.stderr and "a.yaml:3:1: error: YAML syntax error" in r.stderr

    # removed: gone from the listing and from the cache
    a.unlink()
    r = main("list", "--path", pb)
    assert r.stdout.count("\n") == 2 and str(a.resolve()) not in catalog.cache_path().read_text()


def test_a_bad_or_foreign_cache_is_a_miss_not_an_error(main, write, tmp_path):
    write("pb/a.yaml", RB.format(name="a", title="Real title"))
    catalog.cache_path().parent.mkdir(parents=True, exist_ok=True)
    key = str((tmp_path / "pb/a.yaml").resolve())
    st = (tmp_path / "pb/a.yaml").stat()
    stamp = [st.st_size, st.st_mtime_ns]
    for junk in ("{not json", json.dumps({"version": 99, "files": {}}), json.dumps([1, 2]),
                 json.dumps({"version": catalog._version(), "files": {key: {"stamp": [0, 0], "entry": {"name": "forged"}}}}),
                 # a current stamp, but an entry list could not print (missing fields, wrong types)
                 json.dumps({"version": catalog._version(), "files": {key: {"stamp": stamp, "entry": {"name": "forged"}}}}),
                 json.dumps({"version": catalog._version(), "files": {key: {"stamp": stamp, "entry": {
                     "name": "forged", "title": "t", "severity": None, "alerts": None}}}})):
        catalog.cache_path().write_text(junk)
        r = main("list", "--path", str(tmp_path / "pb"))
        assert r.returncode == 0 and "Real title" in r.stdout and "forged" not in r.stdout, junk


def test_listed_text_shows_control_characters_never_sends_them(main, write, tmp_path):
    write("pb/a.yaml", RB.format(name="a", title='"Evil \\e[2J\\e]0;pwned\\a title"'))
    for _ in range(2):  # read, then from the cache
        r = main("list", "--path", str(tmp_path / "pb"))
        assert "\x1b" not in r.stdout and "\x07" not in r.stdout
        assert "Evil \\x1b[2J\\x1b]0;pwned\\x07 title" in r.stdout


def test_an_unwritable_cache_still_lists(main, write, tmp_path, monkeypatch):
    write("pb/a.yaml", RB.format(name="a", title="Listed"))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("RUNBOOK_CACHE_DIR", str(blocker / "cache"))
    r = main("list", "--path", str(tmp_path / "pb"))
    assert r.returncode == 0 and "Listed" in r.stdout


def test_a_warm_list_reads_no_yaml_and_no_rich(write, tmp_path):
    """The cache is what makes `list` fast (bench/cli_startup.py): on a warm one, neither a YAML
    parser nor the schema nor rich is imported."""
    import subprocess
    import sys

    from conftest import ROOT

    write("pb/a.yaml", RB.format(name="a", title="T"))
    code = ("import sys\nfrom runbook.cli import main\nmain(['list', '--path', %r])\n"
            "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('yaml', 'rich', 'jinja2') or m == 'runbook.spec'))\n"
            % str(tmp_path / "pb"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cold = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    warm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "'yaml'" in cold.stdout  # the first time, the file is read
    assert "LOADED []" in warm.stdout, warm.stdout + warm.stderr


def test_another_runbook_version_does_not_reuse_the_cache(main, write, tmp_path, monkeypatch):
    """A file one version refused may be valid for the next (and the reverse): the cache is keyed by
    runbook's version and its package's modification times, not only the file's."""
    import runbook

    write("pb/a.yaml", RB.format(name="a", title="Listed"))
    main("list", "--path", str(tmp_path / "pb"))
    cached = json.loads(catalog.cache_path().read_text())
    key = next(iter(cached["files"]))
    cached["files"][key]["entry"] = {"broken": "refused by an older runbook"}
    catalog.cache_path().write_text(json.dumps(cached))
    assert "refused by an older runbook" in main("list", "--path", str(tmp_path / "pb")).stderr  # same version: trusted
    monkeypatch.setattr(runbook, "__version__", "99.0")
    r = main("list", "--path", str(tmp_path / "pb"))
    assert "Listed" in r.stdout and "older runbook" not in r.stderr
