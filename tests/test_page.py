"""`runbook serve`'s page in a real headless Chromium (Debian's chromium and
chromium-driver, through selenium).  The runs are made by the run lifecycle
in-process (tests/fakeui.py) into a file audit log; the server is the app of
runbook.team.serve on uvicorn in a thread on a free 127.0.0.1 port, its alert
ledger a fresh PostgreSQL database."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import tempfile
import threading
import time

import pytest

from fakeui import Crash, FakeUI
from labservers import free_port
from pgserver import create_database, drop_database
from runbook import audit, session, spec
from runbook.alert import Alert
from runbook.secrets import Redactor

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
READ = "read-t0ken-for-the-page"
HOSTILE = '<script>document.title="pwned";window.pwned=1</script>'

BOOK = """\
name: web
title: Web is down
alerts: [WebDown]
params:
  pod: {type: string, default: web-1}
params_from_labels:
  pod: pod
stages:
  diagnose:
    - id: look
      shell: |
        echo '%s'
        printf 'colour: \\033[31mred\\033[0m\\n'
        echo n=7
      readonly: true
      outputs:
        n: {regex: 'n=(\\d+)', type: integer}
  mitigate:
    - id: restart
      shell: "echo restarted"
      timeout: 5s
  verify:
    - id: check
      shell: "echo fine"
      readonly: true
""" % HOSTILE


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pg):
    """Runs in a file audit log: paused before a write, approved and finished, in doubt."""
    base = tmp_path_factory.mktemp("page")
    audit_dir, keys = base / "audit", base / "keys"
    (base / "web.yaml").write_text(BOOK)
    rb = spec.find(str(base / "web.yaml"), [])
    hostile_alert = Alert(name=f"WebDown{HOSTILE}", status="firing", labels={"alertname": "WebDown", "pod": "web-\x1b[31m1"},
                          annotations={}, starts_at="2026-12-05T14:31:52.409Z", fingerprint="f00dfeed")
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNBOOK_AUDIT_DIR", str(audit_dir))
        mp.setenv("RUNBOOK_KEY_DIR", str(keys))
        # the worker's way: no person, no --yes: the diagnosis runs, the first write waits
        out = session.start(session.RunRequest(runbook=rb, alert=hostile_alert, who="runbook worker",
                                               params={"pod": "web-1"}), FakeUI())
        assert out.status == "refused", out
        runs["paused"] = out.run_id
        out = session.start(session.RunRequest(runbook=rb, interactive=True, who="alice"), FakeUI())
        assert out.status == "completed", out
        runs["done"] = out.run_id
        with pytest.raises(Crash):
            session.start(session.RunRequest(runbook=rb, yes=True, who="bob"), FakeUI(crash_at="restart"))
        runs["doubt"] = next(s["run"] for s in audit.list_runs(audit_dir / audit.LOG_NAME)
                             if s["run"] not in runs.values())
    db = create_database(pg)
    try:
        yield {"dir": audit_dir, "keys": keys, "runs": runs, "rb": rb, "db_url": pg.url(db)}
    finally:
        drop_database(pg, db)


@pytest.fixture(scope="module")
def site(lab):
    from runbook.team import ledger

    # a webhook named the paused run's incident twice
    conn = ledger.connect(lab["db_url"])
    a = Alert(name="WebDown", status="firing", labels={"alertname": "WebDown"}, annotations={},
              starts_at="2026-12-05T14:31:52.409Z", fingerprint="f00dfeed")
    inc, _ = ledger.record_firing(conn, "web", a, {"alerts": []}, "10.0.0.7:4321")
    conn.execute("UPDATE runbook_incidents SET run_id = %s WHERE id = %s", (lab["runs"]["paused"], inc.id))
    ledger.record_firing(conn, "web", a, {"alerts": []}, "10.0.0.8:999")
    # and an alert whose diagnosis no worker has started yet (its broker was down)
    b = Alert(name="DiskFull<b>", status="firing", labels={}, annotations={}, starts_at="2026-12-05T15:00:00Z",
              fingerprint="d15cf011")
    waiting, _ = ledger.record_firing(conn, "web", b, {"alerts": []}, "10.0.0.9:1")
    lab["waiting"] = waiting.run_id
    conn.close()

    with running(lab, refresh=60) as url:  # no reload in the middle of a test; test_the_page_refreshes_itself: 1 s
        yield url


@contextlib.contextmanager
def running(lab, refresh: int, store=None):
    """The page's app on uvicorn in a thread, on a free port."""
    import uvicorn

    from runbook.store import FileStore
    from runbook.team import serve

    cfg = serve.Config(webhook_token="hook", read_token=READ, audit_url=None if store else lab["db_url"],
                       broker_url=None, paths=[], store=store or (lambda: FileStore(lab["dir"])), refresh=refresh)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(serve.create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and t.is_alive(), "the page server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


@pytest.fixture(scope="module")
def browser():
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK):
            pytest.fail(f"{exe} missing: install Debian's chromium and chromium-driver (scripts/test does, as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="rb-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1200,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser, site):
    """The browser, signed in with the read token (its cookie)."""
    browser.get(f"{site}/?token={READ}")
    return browser


def text(driver) -> str:
    """The page's visible text (read again when the page reloaded itself while it was read)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(20):
        try:
            return driver.find_element(By.TAG_NAME, "body").text
        except (StaleElementReferenceException, NoSuchElementException):
            time.sleep(0.05)
    raise AssertionError("the page kept reloading")


def status_of(url: str, headers=None) -> tuple[int, dict]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, dict(r.getheaders())


# --------------------------------------------------------------------------- tests


def test_without_the_token_it_is_401_and_the_token_link_sets_a_cookie(browser, site, lab):
    browser.delete_all_cookies()
    browser.get(f"{site}/")
    assert "Unauthorized" in text(browser)
    assert status_of(f"{site}/")[0] == 401
    assert status_of(f"{site}/runs/{lab['runs']['done']}")[0] == 401
    assert status_of(f"{site}/?token=wrong")[0] == 401
    assert status_of(f"{site}/healthz")[0] == 200
    assert status_of(f"{site}/", {"Authorization": f"Bearer {READ}"})[0] == 200
    code, headers = status_of(f"{site}/runs/{lab['runs']['done']}?token={READ}")
    assert code == 303 and headers["location"] == f"/runs/{lab['runs']['done']}"
    assert "HttpOnly" in headers["set-cookie"] and READ not in headers["set-cookie"]  # a key derived from it

    browser.get(f"{site}/?token={READ}")  # the link a phone opens: the cookie, then the clean URL
    assert browser.current_url == f"{site}/"
    [cookie] = browser.get_cookies()
    assert cookie["httpOnly"] is True and cookie["name"] == "runbook_read"
    assert "Runs" in text(browser)
    browser.get(f"{site}/runs/{lab['runs']['done']}")  # the cookie is enough from now on
    assert "Unauthorized" not in text(browser) and "Web is down" in text(browser)


def test_the_runs_are_listed_newest_first_with_status_alert_and_who(page, lab):
    from selenium.webdriver.common.by import By

    items = page.find_elements(By.CSS_SELECTOR, "li[data-run]")
    ids = [i.get_attribute("data-run") for i in items]
    runs = lab["runs"]
    assert ids == [lab["waiting"], runs["doubt"], runs["done"], runs["paused"]]
    waiting = items[0].text
    assert "not queued" in waiting and "DiskFull<b> → web" in waiting and "waiting for a worker" in waiting
    items = items[1:]
    ids = ids[1:]
    by_id = {i.get_attribute("data-run"): i for i in items}
    status = {rid: by_id[rid].find_element(By.CSS_SELECTOR, ".st").text for rid in ids}
    assert status == {runs["doubt"]: "in doubt", runs["done"]: "completed", runs["paused"]: "paused"}
    assert "by alice" in by_id[runs["done"]].text and "by bob" in by_id[runs["doubt"]].text
    paused = by_id[runs["paused"]].text
    assert f"WebDown{HOSTILE}" in paused and "before write step restart" in paused and "by runbook worker" in paused
    assert page.find_elements(By.TAG_NAME, "script") == []
    assert page.execute_script("return window.pwned === undefined && document.title.indexOf('pwned') < 0")
    meta = page.find_element(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    assert meta.get_attribute("content") == "60"  # this test's server; in service:
    from runbook.team.serve import Config, render_index

    assert Config("t", None, None, None, []).refresh == 5 and '<meta http-equiv="refresh" content="5">' in render_index([], [])


def test_a_run_page_shows_steps_outputs_and_hostile_text_as_text(page, site, lab):
    from selenium.webdriver.common.by import By

    rid = lab["runs"]["paused"]
    page.find_element(By.CSS_SELECTOR, f'li[data-run="{rid}"] a').click()
    assert page.current_url == f"{site}/runs/{rid}"
    body = text(page)
    look = page.find_element(By.ID, "step-look")
    assert look.get_attribute("data-status") == "ok" and "read" in look.text
    assert "n" in look.find_element(By.CSS_SELECTOR, ".outputs").text and "7" in look.find_element(
        By.CSS_SELECTOR, ".outputs").text
    out = look.find_element(By.CSS_SELECTOR, "pre.output").text
    assert HOSTILE in out and "colour: \\x1b[31mred\\x1b[0m" in out  # the escape codes are shown, not obeyed
    assert f"WebDown{HOSTILE}" in body
    # paused before the write, with who declined it and how to go on
    assert page.find_element(By.ID, "paused").text.startswith("Paused before write step restart")
    restart = page.find_element(By.ID, "step-restart")
    assert restart.get_attribute("data-status") == "paused"
    assert "not approved: nobody was there to approve it (runbook worker, no terminal" in restart.text
    assert f"runbook resume {rid}" in body
    # the webhooks that named its incident
    hooks = page.find_element(By.ID, "webhooks").text
    assert "new incident" in hooks and "webhook 2" in hooks and "10.0.0.8:999" in hooks
    assert page.find_elements(By.TAG_NAME, "script") == []
    assert page.execute_script("return window.pwned === undefined && document.title.indexOf('pwned') < 0")
    assert "pwned" not in page.title


def test_a_decision_and_a_step_in_doubt(page, site, lab):
    from selenium.webdriver.common.by import By

    page.get(f"{site}/runs/{lab['runs']['done']}")
    restart = page.find_element(By.ID, "step-restart")
    assert restart.get_attribute("data-status") == "ok"
    assert "approved by alice via prompt" in restart.find_element(By.CSS_SELECTOR, ".decision").text
    assert [e.get_attribute("data-step") for e in page.find_elements(By.CSS_SELECTOR, ".step")] == [
        "look", "restart", "check"]

    page.get(f"{site}/runs/{lab['runs']['doubt']}")
    assert page.find_element(By.ID, "step-restart").get_attribute("data-status") == "in doubt"
    assert "In doubt: restart" in page.find_element(By.ID, "in-doubt").text
    assert f"runbook resume {lab['runs']['doubt']}" in text(page)

    page.get(f"{site}/runs/nosuchrun")
    assert "No such run" in text(page)
    page.get(f"{site}/runs/{lab['waiting']}")
    assert "has not started: waiting for a worker" in text(page) and "new incident" in text(page)


def test_on_a_phone_nothing_scrolls_sideways(page, site, lab):
    page.set_window_size(375, 812)
    try:
        for path in ("/", f"/runs/{lab['runs']['paused']}", f"/runs/{lab['runs']['doubt']}"):
            page.get(site + path)
            width = page.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], (path, width)
            size = page.execute_script("return parseFloat(getComputedStyle(document.body).fontSize)")
            assert size >= 16
    finally:
        page.set_window_size(1200, 900)


def test_the_page_refreshes_itself(page, site, lab, monkeypatch):
    monkeypatch.setenv("RUNBOOK_KEY_DIR", str(lab["keys"]))
    with audit.AuditLog(lab["dir"]) as log:
        j = audit.RunJournal(log, audit.new_run_id(), Redactor())
        j.run_started(runbook="web", path="web.yaml", sha256="0" * 64, git_commit=None, params={}, dry_run=False,
                      who="carol", host="worker-1")
        j.step_intent(step="look", kind="shell", stage="diagnose", effect="read", targets=["local"], rendered="echo")
        j.step_result(step="look", status="ok", exit_code=0, duration=0.1, output="first\n")
    with running(lab, refresh=1) as fast:
        page.get(f"{fast}/?token={READ}")  # its cookie (another port: another origin)
        page.get(f"{fast}/runs/{j.run_id}")
        see_it_refresh(page, lab, j)


def see_it_refresh(page, lab, j):
    shown = text(page)
    assert "look" in shown and "in progress" in shown and "second" not in shown
    with audit.AuditLog(lab["dir"]) as log:
        j.log = log
        j.step_intent(step="second", kind="shell", stage="diagnose", effect="read", targets=["local"], rendered="x")
        j.step_result(step="second", status="ok", exit_code=0, duration=0.1, output="second step's output\n")
    deadline = time.monotonic() + 10
    while "second step's output" not in text(page):  # no refresh() from here: the page reloads itself
        assert time.monotonic() < deadline, "the page did not refresh itself"
        time.sleep(0.2)



def test_an_unreadable_audit_is_a_503_page_not_a_traceback(lab):
    class Down:
        def records(self):
            raise RuntimeError("connection to server at 127.0.0.1 refused <b>")

        def run_records(self, run_id):
            raise RuntimeError("connection refused")

    with running(lab, 60, store=Down) as url:
        code, _ = status_of(f"{url}/", {"Authorization": f"Bearer {READ}"})
        assert code == 503
        c = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
        c.request("GET", "/", headers={"Authorization": f"Bearer {READ}"})
        body = c.getresponse().read().decode()
        assert "refused &lt;b&gt;" in body and "Traceback" not in body
        assert status_of(f"{url}/runs/x", {"Authorization": f"Bearer {READ}"})[0] == 503
        c.request("POST", "/alertmanager", body=b"{}")
        assert c.getresponse().status in (404, 405)  # without a ledger there is no webhook
