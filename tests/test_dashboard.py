"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a real
``caliber dashboard`` process: workloads appear and finish without a reload, a result's
numbers are plotted, a failure says why, a cancel from the page stops a run; and the token,
the anti-forgery check and escaping hold. Screenshots go to ``$CALIBER_TEST_ARTIFACTS`` when
set (else the test's temporary folder)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
from tests.pinion_helpers import (
    make_folder,
    queue,
    start_pinion,
    status_of,
    stop,
    wait_for,
    workflow,
)
from tests.remote_helpers import remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata

__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="Chromium is not installed (apt-get install chromium)")

PLOTS = '''
def series():
    return [float(i % 17) for i in range(500)]

def loads():
    return {"dead": 12.5, "live": 7.25, "wind": 3.0}

def grid():
    return [[r * c for c in range(30)] for r in range(20)]

def rows():
    return [{"case": f"LC{i}", "moment": i * 1.5} for i in range(5)]

def burn():
    raise ValueError("the beam is too short")

def nap(seconds):
    import time
    open("napping", "w").close()
    time.sleep(seconds)
    return seconds
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dashboard:
    def __init__(self, process: subprocess.Popen[str], address: str) -> None:
        self.process = process
        self.address = address
        self.base = address.split("/?", 1)[0]
        self.token = address.rsplit("token=", 1)[1]


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    process = subprocess.Popen(
        [sys.executable, "-m", "caliber", "dashboard", "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"(http://\S+\?token=\S+)", line)
    assert found, (line, process.stderr.read() if process.poll() is not None else "")
    board = Dashboard(process, found.group(1))
    wait_for(lambda: _status(board.base + "/api/queue") == 401, what="the dashboard to answer")
    try:
        yield board
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _status(url: str, **kw: Any) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, **kw), timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    home = tmp_path / "browser-home"  # Chromium's crash reports and dconf: never the user's
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, env=env, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            yield launched
        finally:
            launched.close()


def shot(page: Any, tmp_path: Path, name: str) -> None:
    """The page as drawn now; with CALIBER_TEST_ARTIFACTS (a folder to look at them in)
    also at 800 px wide, as a narrow window shows it."""
    wanted = os.environ.get("CALIBER_TEST_ARTIFACTS")
    folder = Path(wanted or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"dashboard-{name}.png"), full_page=True)
    if wanted and page.viewport_size:
        size = page.viewport_size
        page.set_viewport_size({"width": 800, "height": size["height"]})
        page.screenshot(path=str(folder / f"dashboard-{name}-800.png"), full_page=True)
        page.set_viewport_size(size)


def test_a_workload_appears_and_finishes_without_a_reload(
    dashboard: Dashboard, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.goto(dashboard.address)
    assert "token=" not in page.url  # kept in a cookie, gone from the address bar
    page.wait_for_selector("#range:has-text('no workloads')")
    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    workload = queue(folder, [("series", []), ("loads", []), ("grid", []), ("rows", [])],
                     module="plots", name="beam-check", pinion="p")
    row = page.locator(f"#queue tbody tr:has-text('{workload}')")
    row.wait_for()
    assert "queued" in row.inner_text()
    subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1", "-w",
                    "0", "-q"], check=True, capture_output=True, cwd=tmp_path)
    page.wait_for_selector(f"#queue tbody tr:has-text('{workload}') .status-completed")
    shot(page, tmp_path, "queue")
    # Its results: the numbers drawn as plots, the records as a table.
    page.locator(f"#queue tbody tr:has-text('{workload}') a").nth(1).click()
    page.wait_for_selector("section.task img[data-kind='line']")
    kinds = page.eval_on_selector_all(
        "img[data-kind]", "imgs => imgs.map(i => [i.dataset.kind, i.naturalWidth])")
    wait_for(lambda: page.evaluate(  # (wait_for_function would eval: the page's CSP forbids)
        "[...document.querySelectorAll('img[data-kind]')].every(i => i.naturalWidth > 0)"),
        what="the plots to load")
    assert sorted(k for k, _ in kinds) == ["bars", "heatmap", "line"]
    assert page.locator("table.records td:has-text('LC3')").count() == 1
    shot(page, tmp_path, "results")


def test_a_failure_says_why_and_its_workflow_is_drawn(
    dashboard: Dashboard, browser: Any, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    workload = queue(folder, [("series", []), ("burn", []), ("loads", [])], module="plots",
                     name="short-beam", pinion="p")
    subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1", "-w",
                    "0", "-q"], check=False, capture_output=True, cwd=tmp_path)
    page = browser.new_page()
    page.goto(dashboard.address.replace("/?", f"/workload/{workload}?"))
    page.wait_for_selector("#status.status-failed")
    assert "the beam is too short" in page.inner_text("#error")
    wait_for(lambda: page.evaluate("document.getElementById('diagram').naturalWidth > 0"),
             what="the diagram to load")
    svg = urllib.request.urlopen(urllib.request.Request(
        f"{dashboard.base}/api/workload/{workload}/diagram.svg",
        headers={"Cookie": f"caliber_dashboard={dashboard.token}"}), timeout=5).read().decode()
    assert 'data-status="failed"' in svg and 'data-status="skipped"' in svg
    wait_for(lambda: page.evaluate("document.getElementById('timeline').naturalWidth > 0"),
             what="the timeline to load")
    page.click("#facts a")  # to its results
    page.wait_for_selector("pre.traceback")
    failed = page.inner_text("section.task[data-task='burn-1']")
    assert "ValueError: the beam is too short" in failed
    assert "raise ValueError" in page.inner_text("pre.traceback")
    shot(page, tmp_path, "failure")


def test_cancel_now_from_the_page_stops_the_running_task(
    dashboard: Dashboard, browser: Any, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    workload = queue(folder, [("series", []), ("nap", [600]), ("loads", [])], module="plots",
                     name="long-solve", pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "3", cwd=tmp_path)
    try:
        wait_for(lambda: status_of(workload) == "running", what="the run to start")
        page = browser.new_page()
        page.goto(dashboard.address.replace("/?", f"/workload/{workload}?"))
        page.wait_for_selector("#progress:has-text('nap-1')")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button[data-action='cancel_now']")
        page.wait_for_selector("#status.status-cancelled", timeout=60_000)
        assert page.locator("button[data-action='retry_resume']").is_visible()
        shot(page, tmp_path, "cancelled")
    finally:
        stop(pinion)
    from caliber.results.api import get_results

    results = get_results(workload)
    assert [t.status.value for t in results.tasks][:1] == ["completed"]


def test_no_token_no_queue_and_no_forged_action(dashboard: Dashboard, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    workload = queue(folder, [("series", [])], module="plots", name="w", pinion="p")
    assert _status(f"{dashboard.base}/api/queue") == 401
    assert _status(f"{dashboard.base}/api/queue",
                   headers={"Cookie": "caliber_dashboard=guess"}) == 401
    cookie = {"Cookie": f"caliber_dashboard={dashboard.token}"}
    assert _status(f"{dashboard.base}/api/queue", headers=cookie) == 200
    post = f"{dashboard.base}/api/workload/{workload}/cancel"
    assert _status(post, method="POST", headers=cookie) == 403  # no anti-forgery value
    assert _status(post, method="POST", headers={
        **cookie, "X-Caliber-CSRF": "guess"}) == 403
    assert status_of(workload) == "queued"


def test_stored_strings_are_shown_as_text(dashboard: Dashboard, browser: Any,
                                          tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    evil = '<img src=x onerror="document.title=1">'
    workload = queue(folder, [("series", [])], module="plots", name=evil, pinion="p")
    page = browser.new_page()
    page.goto(dashboard.address)
    row = page.locator(f"#queue tbody tr:has-text('{workload}')")
    row.wait_for()
    assert evil in row.inner_text()
    assert page.locator("#queue tbody img").count() == 0
    from caliber.queue.api import cancel
    from caliber.queue.target import local_target

    cancel(workload, local_target())  # its event names it too
    ended = page.locator(f"#events li[data-id='{workload}']")
    ended.wait_for()
    assert evil in ended.inner_text()
    assert page.locator("#events img").count() == 0
    assert page.title() != "1"


def test_the_json_endpoints(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from caliber.dashboard.app import make_app
    from caliber.queue.target import local_target

    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    first = queue(folder, [("series", [])], module="plots", name="a", pinion="p")
    second = queue(folder, [("loads", [])], module="plots", name="b", pinion="q")
    subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1", "-w",
                    "0", "-q"], check=True, capture_output=True, cwd=tmp_path)
    client = TestClient(make_app(local_target(), token="t" * 20, csrf="c" * 20))
    client.cookies.set("caliber_dashboard", "t" * 20)
    listed = client.get("/api/queue").json()
    assert [i["workflow"] for i in listed["items"]] == ["a", "b"]
    assert listed["counts"] == {"completed": 1, "queued": 1}
    done_row, queued_row = listed["items"]
    assert done_row["started_at"] <= done_row["ended_at"] and done_row["duration"] >= 0
    assert queued_row["started_at"] is None and queued_row["duration"] is None
    only_b = client.get("/api/queue?workflow=b").json()
    assert [i["workflow"] for i in only_b["items"]] == ["b"] and only_b["counts"] == {
        "queued": 1}
    assert [i["pinion"] for i in client.get("/api/queue?status=queued").json()["items"]] == ["q"]
    detail = client.get(f"/api/workload/{first}").json()
    assert detail["status"] == "completed" and not any(detail["actions"].values())
    results = client.get(f"/api/results/{detail['results_id']}").json()
    assert results["tasks"][0]["chart"] == "line"
    chart = client.get(f"/api/results/{detail['results_id']}/chart/task:0.svg")
    assert chart.headers["content-type"].startswith("image/svg+xml")
    assert "<polyline" in chart.text
    assert client.get("/api/workload/nope").status_code == 404
    done = client.post(f"/api/workload/{second}/cancel", headers={"X-Caliber-CSRF": "c" * 20})
    assert done.status_code == 200 and done.json()["status"] == "cancelled"
    again = client.post(f"/api/workload/{first}/retry", headers={"X-Caliber-CSRF": "c" * 20})
    assert again.status_code == 400 and "completed" in again.json()["error"]
    assert json.loads(client.get("/api/pinions").text) == []


@pytest.mark.speckle
def test_the_remote_queue_in_the_browser(browser: Any, tmp_path: Path, request: Any) -> None:
    pytest.importorskip("specklepy")
    remote = request.getfixturevalue("remote")
    from tests.remote_helpers import caliber as run_caliber
    from tests.remote_helpers import pasta_folder

    folder = pasta_folder(tmp_path / "pasta")
    request.getfixturevalue("monkeypatch").setenv("CALIBER_SPECKLE_PROJECT", remote.project)
    queued = run_caliber("workflow", "queue", "pasta.json", "-p", "p", "--json", cwd=folder)
    workload = json.loads(queued.stdout)["id"]
    assert run_caliber("pinion", "init", "p", "-a", "1", "-w", "0", cwd=folder).returncode == 0
    board = request.getfixturevalue("dashboard")
    page = browser.new_page()
    page.goto(board.address)
    assert remote.project in page.inner_text("header")
    page.wait_for_selector(f"#queue tbody tr:has-text('{workload}') .status-completed")
    page.wait_for_selector(f"#events li[data-id='{workload}'] .status-completed")
    page.locator(f"#queue tbody tr:has-text('{workload}') a").nth(1).click()
    page.wait_for_selector("section.task[data-task='Make dough'] img[data-kind='bars']")
    speckle = page.get_attribute("a:has-text('open in Speckle')", "href")
    assert speckle is not None and f"/projects/{remote.project}/models/" in speckle
    shot(page, tmp_path, "remote-results")


# --- chains, start times, and the events of ended workloads (issue 24) ------------------------


def planned(folder: Path, tasks: list[tuple[str, list[Any]]], *, name: str, pinion: str = "p",
            after: tuple[str, ...] = (), not_before: dt.datetime | None = None,
            priority: int = 0) -> str:
    """Queue a workflow after others, from a start time, with a priority (what ``workflow
    queue --after --not-before --priority`` queues), signed with this user's key."""
    from caliber.queue.api import make_workload, opened
    from caliber.queue.secret import load_key, sign
    from caliber.queue.target import local_target

    key = load_key()
    with opened(local_target()) as backend:
        w = make_workload(workflow(folder, tasks, module="plots", name=name), pinion,
                          backend, key)
        w.after, w.not_before, w.priority = list(after), not_before, priority
        w.secret = sign(w, key)
        backend.put(w)
    return w.id


def row(workload: str) -> str:
    """The queue table's row of ``workload`` (by its first cell: others may name it)."""
    return f"#queue tbody tr:has(td:first-child a:text-is('{workload}'))"


def client() -> Any:
    from starlette.testclient import TestClient

    from caliber.dashboard.app import make_app
    from caliber.queue.target import local_target

    made = TestClient(make_app(local_target(), token="t" * 20, csrf="c" * 20))
    made.cookies.set("caliber_dashboard", "t" * 20)
    return made


def test_a_chain_waits_and_a_cancel_says_it_cancels_the_chain_too(
    dashboard: Dashboard, browser: Any, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    analysis = queue(folder, [("series", [])], module="plots", name="analysis", pinion="p")
    tonight = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    post = planned(folder, [("loads", [])], name="post", after=(analysis,),
                   not_before=tonight, priority=5)
    report = planned(folder, [("rows", [])], name="report", after=(post,))
    later = planned(folder, [("grid", [])], name="later", not_before=tonight, priority=-1)
    page = browser.new_page(viewport={"width": 800, "height": 900})
    page.goto(dashboard.address)
    page.wait_for_selector(f"{row(report)} .status-waiting")
    counts = page.inner_text("#counts")
    assert "waiting 2" in counts and "queued 2" in counts
    post_row = page.locator(row(post))
    starts = post_row.locator(".plan").inner_text()
    assert "prio 5" in starts and f"after {analysis}" in starts
    start = post_row.locator(".not-before")
    assert start.get_attribute("title") == "not before " + page.evaluate(
        f"when({json.dumps(tonight.isoformat())})")
    assert start.inner_text() == page.evaluate(
        f"shortWhen({json.dumps(tonight.isoformat())})")
    assert len(start.inner_text()) <= 11  # 'HH:MM' today, else 'MM-DD HH:MM'
    assert page.locator(f"{row(later)} .priority").inner_text() == "prio -1"
    assert page.evaluate("document.documentElement.scrollWidth") <= 800  # the table scrolls
    shot(page, tmp_path, "chain-queue")
    # Only the waiting ones, by the filter.
    page.select_option("#filters select[name=status]", "waiting")
    page.click("#filters button")
    page.wait_for_selector("#range:has-text('1-2')")
    shown = page.locator("#queue tbody tr td:first-child").all_inner_texts()
    assert shown == [post, report]
    # The page of the middle one: what it waits for, what waits for it, when, in what order.
    page.goto(f"{dashboard.base}/workload/{post}")
    page.wait_for_selector("#facts .chain .status-queued")
    facts = page.inner_text("#facts")
    assert f"analysis {analysis}" in facts and f"report {report}" in facts
    assert "priority\t5" in facts and "not before" in facts
    assert f"analysis {analysis} has not started" in page.inner_text("#waiting")
    assert page.locator("#facts a", has_text=analysis).get_attribute("href") == (
        f"/workload/{analysis}")
    wait_for(lambda: page.evaluate("document.getElementById('diagram').naturalWidth > 0"),
             what="the diagram to load")
    shot(page, tmp_path, "chain-workload")
    # Cancel the upstream from its page: the confirmation names the chain below it.
    page.click(f"#facts a:has-text('{analysis}')")
    page.wait_for_selector("#facts .chain .status-waiting")
    assert "(and 1 more down the chain)" in page.inner_text("#facts")
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", answer)
    page.click("button[data-action='cancel']")
    page.wait_for_selector("#status.status-cancelled")
    assert len(asked) == 1 and asked[0].startswith(f"cancel: workload {analysis}?")
    assert "The 2 workloads waiting after it are cancelled too" in asked[0]
    assert f"post {post}" in asked[0] and f"report {report}" in asked[0]
    assert status_of(post) == status_of(report) == "cancelled"
    assert status_of(later) == "queued"


def test_the_ended_workloads_say_what_the_notifications_say(
    dashboard: Dashboard, browser: Any, tmp_path: Path
) -> None:
    from caliber.queue.api import cancel
    from caliber.queue.target import local_target
    from tests.test_notify import Hook

    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    dropped = queue(folder, [("series", [])], module="plots", name="dropped", pinion="p")
    cancel(dropped, local_target())
    analysis = queue(folder, [("series", [])], module="plots", name="analysis", pinion="p")
    post = planned(folder, [("loads", [])], name="post", after=(analysis,))
    check = planned(folder, [("burn", [])], name="check", after=(post,))
    tonight = planned(folder, [("grid", [])], name="tonight", after=(check,), priority=2,
                      not_before=dt.datetime.now(dt.UTC) + dt.timedelta(hours=8))
    page = browser.new_page()
    page.goto(dashboard.address)
    page.wait_for_selector(f"#events li[data-id='{dropped}']")
    hook = Hook()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1", "-w", "0"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "CALIBER_NOTIFY_URL": hook.url})
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(hook.bodies) == 4, what="the four notifications")
    finally:
        hook.close()
    # The one cancelled while queued first: the pinion tells of it when it starts.
    assert [b["caliber"]["id"] for b in hook.bodies] == [dropped, analysis, post, check]
    # The same events, newest first, each exactly as the notification said it.
    events = client().get("/api/events").json()
    assert events == hook.bodies[::-1]
    assert [e["caliber"]["id"] for e in events] == [check, post, analysis, dropped]
    assert "ValueError: the beam is too short" in events[0]["text"]
    assert client().get("/api/events?limit=1").json() == events[:1]
    # After a failed one, it waits (and says why): no event of it.
    waits = client().get(f"/api/workload/{tonight}").json()
    assert waits["status"] == "waiting" and waits["waits_for"] == [
        {"id": check, "workflow": "check", "status": "failed", "not_before": None}]
    # The queue page's panel follows without a reload; the page of them shows them all.
    page.wait_for_selector(f"#events li[data-id='{check}'] .status-failed")
    assert page.locator("#events .text").all_inner_texts() == [
        b["text"] for b in hook.bodies[::-1]]
    shot(page, tmp_path, "queue-ended")  # docs/images/dashboard-queue.png
    page.click("header nav a:has-text('ended')")
    page.wait_for_selector(f"#events li[data-id='{dropped}']")
    assert page.locator("#events li").count() == 4
    shot(page, tmp_path, "ended")


def test_the_ended_list_is_the_last_50_by_when_they_ended(tmp_path: Path) -> None:
    from caliber.queue.api import cancel
    from caliber.queue.target import local_target

    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    early = queue(folder, [("series", [])], module="plots", name="early", pinion="late")
    dropped = [queue(folder, [("series", [])], module="plots", name=f"w{i}", pinion="p")
               for i in range(55)]
    for workload in dropped:
        cancel(workload, local_target())
    # Queued first, ended last: the one the list must begin with.
    subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "late", "-a", "1",
                    "-w", "0", "-q"], check=True, capture_output=True, cwd=tmp_path)
    shown = [e["caliber"]["id"] for e in client().get("/api/events?limit=500").json()]
    assert shown == [early, *dropped[::-1][:49]]


def test_an_old_workload_cancelled_last_is_first_though_50_newer_were_cancelled(
        tmp_path: Path) -> None:
    from caliber.queue.api import cancel
    from caliber.queue.target import local_target

    folder = make_folder(tmp_path / "wf", "plots", PLOTS)
    old = queue(folder, [("series", [])], module="plots", name="old", pinion="nobody")
    newer = [queue(folder, [("series", [])], module="plots", name=f"w{i}", pinion="p")
             for i in range(55)]
    for workload in newer:
        cancel(workload, local_target())
    cancel(old, local_target())  # queued first, cancelled last, no Results: the first one
    shown = [e["caliber"]["id"] for e in client().get("/api/events?limit=500").json()]
    assert shown == [old, *newer[::-1][:49]]
