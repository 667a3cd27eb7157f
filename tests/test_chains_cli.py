"""Chains, start times, priorities and per-workload notify from the command line and from
Python (issue 24): ``workflow queue --after/--not-before/--priority/--notify``, what ``queue
list`` and ``queue view`` show of them, ``queue wait`` on a chain, and bad input refused in one
line with the queue left as it was. On the in-memory queue and the local queue, the commands
run in this process (the pinion's children are real processes); the end-to-end tests with
real processes are in tests/test_chains_processes.py."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from caliber.cli import main
from caliber.errors import UsageError
from caliber.queue.memory.backend import forget
from tests.pinion_helpers import FUNCTIONS, make_folder, workflow


@pytest.fixture(params=["memory", "local"])
def queue_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
              caliber_home: Path) -> Iterator[str]:
    """The queue the commands use, by CALIBER_QUEUE_URL: an in-memory one or the local one."""
    if request.param == "local":
        url = f"sqlite:///{caliber_home / 'caliber.db'}"
        monkeypatch.setenv("CALIBER_QUEUE_URL", url)
        yield url
        return
    name = f"chains-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CALIBER_QUEUE_URL", f"memory://{name}")
    yield f"memory://{name}"
    forget(name)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    made = make_folder(tmp_path / "wf")
    workflow(made, [("boom", [])], name="analysis").export(made / "analysis.json")
    make_folder(made, "postfuncs", FUNCTIONS + "\n# its own file: its bytes are stored anew\n")
    workflow(made, [("add", [1, 2])], module="postfuncs", name="post").export(
        made / "post.json")
    monkeypatch.chdir(made)
    return made


def caliber(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - main always exits
        code = 0
    out, err = capsys.readouterr()
    return code, out, err


def queued(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = caliber(capsys, "workflow", "queue", *args, "--json")
    assert code == 0, err
    found: dict[str, object] = json.loads(out)
    return found


def run_pinion(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = caliber(capsys, "pinion", "init", "lab", "-a", "1", "-w", "0", "-q")
    assert code in (0, 1), err


@pytest.mark.usefixtures("queue_url")
def test_queue_after_a_prefix_waits_and_json_says_the_plan(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = queued(capsys, "analysis.json", "-p", "lab", "--not-before", "+2h",
                   "--priority", "5", "--notify", "http://127.0.0.1:9/hook")
    assert first["status"] == "queued" and first["priority"] == 5
    assert first["notify"] == "http://127.0.0.1:9/hook" and first["after"] == []
    start = dt.datetime.fromisoformat(str(first["not_before"]))
    assert start.utcoffset() == dt.timedelta(0)
    assert dt.timedelta(hours=1.9) < start - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)
    second = queued(capsys, "post.json", "-p", "lab", "--after", str(first["id"])[:5],
                    "--after", str(first["id"]))
    assert second["status"] == "waiting" and second["after"] == [first["id"]]  # once, whole
    assert second["not_before"] is None and second["priority"] == 0 and second["notify"] is None


@pytest.mark.usefixtures("queue_url")
def test_list_shows_waiting_start_times_and_priorities(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = caliber(capsys, "workflow", "queue", "post.json", "-p", "lab")
    plain = out.strip()
    code, out, _ = caliber(capsys, "queue", "list")
    assert code == 0 and "starts" not in out and "prio" not in out  # none has them: as before
    first = queued(capsys, "analysis.json", "-p", "lab", "--not-before", "+3h",
                   "--priority", "-7")
    second = queued(capsys, "post.json", "-p", "lab", "--after", str(first["id"]))
    code, out, _ = caliber(capsys, "queue", "list")
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["id", "workflow", "pinion", "status", "starts", "prio"]
    row = {line.split()[0]: line.split() for line in lines[2:] if line and line[0] != " "}
    local = dt.datetime.fromisoformat(str(first["not_before"])).astimezone()
    assert row[str(first["id"])][3:6] == ["queued", f"{local:%H:%M}", "-7"]
    assert row[str(second["id"])][3:6] == ["waiting", "-", "0"]
    assert row[plain][3:6] == ["queued", "-", "0"]
    assert "1 waiting" in lines[-1]
    code, out, _ = caliber(capsys, "queue", "list", "--status", "waiting", "--json")
    listed = json.loads(out)
    assert [(w["id"], w["status"], w["after"]) for w in listed] == [
        (second["id"], "waiting", [first["id"]])]
    code, out, _ = caliber(capsys, "queue", "list", "--json")
    by_id = {w["id"]: w for w in json.loads(out)}
    assert by_id[first["id"]]["priority"] == -7
    assert by_id[first["id"]]["not_before"] == first["not_before"]


@pytest.mark.usefixtures("queue_url")
def test_view_names_what_it_waits_for_and_why(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hook = "https://hooks.example.lan/services/T0/B0/s3cret"
    first = queued(capsys, "analysis.json", "-p", "lab", "--priority", "3", "--notify", hook)
    second = queued(capsys, "post.json", "-p", "lab", "--after", str(first["id"]),
                    "--not-before", "2031-05-06T22:00+02:00")
    code, out, _ = caliber(capsys, "queue", "view", str(second["id"]))
    assert code == 0
    assert f"waits for   {first['id']} (analysis): queued, not run yet" in out
    local = dt.datetime(2031, 5, 6, 20, tzinfo=dt.UTC).astimezone()
    assert f"not before  {local:%Y-%m-%d %H:%M:%S}" in out and ", in " in out
    code, out, _ = caliber(capsys, "queue", "view", str(first["id"]))
    assert "priority    +3 (claimed before" in out
    assert "notify      https://hooks.example.lan/... (the rest hidden" in out
    assert "s3cret" not in out
    code, out, _ = caliber(capsys, "queue", "view", str(first["id"]), "--json")
    view = json.loads(out)
    assert (view["notify"], view["priority"], view["upstreams"]) == (hook, 3, [])
    code, out, _ = caliber(capsys, "queue", "view", str(second["id"]), "--json")
    view = json.loads(out)
    assert view["upstreams"] == [{"id": first["id"], "workflow": "analysis",
                                  "status": "queued", "not_before": None}]
    assert view["not_before"] == "2031-05-06T20:00:00+00:00" and view["status"] == "waiting"


@pytest.mark.usefixtures("queue_url")
def test_a_failed_upstream_is_named_and_wait_keeps_waiting(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = queued(capsys, "analysis.json", "-p", "lab")
    second = queued(capsys, "post.json", "-p", "lab", "--after", str(first["id"]))
    run_pinion(capsys)  # runs the analysis, which fails; the post-processing waits
    code, out, _ = caliber(capsys, "queue", "view", str(second["id"]))
    assert (f"waits for   {first['id']} (analysis): failed - retry it to go on: "
            f"caliber queue retry {first['id']}") in out
    assert f"            or give this one up: caliber queue cancel {second['id']}" in out
    code, out, err = caliber(capsys, "queue", "wait", str(second["id"]), "--timeout", "0.3")
    assert code == 124
    assert err.splitlines() == [
        f"{second['id']} waits for {first['id']} (analysis), which failed: it goes on once "
        f"that is retried and completes (caliber queue retry {first['id']})",
        f"timed out after 0.3 s; still not ended: {second['id']}"]


@pytest.mark.usefixtures("queue_url")
def test_cancelling_the_upstream_ends_the_wait_on_the_chain_with_exit_1(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = queued(capsys, "analysis.json", "-p", "lab", "--not-before", "+1h")
    second = queued(capsys, "post.json", "-p", "lab", "--after", str(first["id"]))
    code, out, _ = caliber(capsys, "queue", "cancel", str(first["id"])[:6])
    assert code == 0 and out.splitlines()[1:] == [
        f"cancelled with it, as they waited after it: {second['id']} (post)"]
    code, out, _ = caliber(capsys, "queue", "wait", str(second["id"]), "--timeout", "30")
    assert code == 1
    assert out.startswith(f"{second['id']} post cancelled: ") and str(first["id"]) in out
    assert out.count("cancelled") == 2  # "cancelled: upstream X was cancelled", not thrice
    code, out, _ = caliber(capsys, "queue", "view", str(second["id"]))
    assert f"after       {first['id']} (analysis): cancelled, so this one never runs" in out


def export(capsys: pytest.CaptureFixture[str], folder: Path) -> list[object]:
    """The whole queue (workloads, results, stored files) as ``queue export`` writes it."""
    path = folder / f"export-{uuid.uuid4().hex[:6]}.jsonl"
    code, _, err = caliber(capsys, "queue", "export", str(path))
    assert code == 0, err
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "exported_at"} for line in lines]


@pytest.mark.usefixtures("queue_url")
@pytest.mark.parametrize("options, message", [
    (["--after", "zzzzzzzzzz"], "cannot run after 'zzzzzzzzzz': no workload in the queue has "
                                "that id"),
    (["--not-before", "2031-05-06T22:00"], "has no UTC offset, so it is ambiguous"),
    (["--not-before", "tonight"], "is not a time"),
    (["--not-before", "+2y"], "is not a time from now"),
    (["--priority", "1001"], "priority 1001 is out of range: use -1000 to 1000"),
    (["--priority", "high"], "'high' is not a valid integer"),
    (["--notify", "ftp://hooks.lan/x"], "is not an http:// or https:// address"),
    (["--notify", "http://hooks.lan/a b"], "spaces or control characters"),
])
def test_bad_input_is_one_line_exit_2_and_the_queue_as_it_was(
        folder: Path, capsys: pytest.CaptureFixture[str], options: list[str],
        message: str) -> None:
    first = queued(capsys, "analysis.json", "-p", "lab")
    before = export(capsys, folder)
    code, out, err = caliber(capsys, "workflow", "queue", "post.json", "-p", "lab", *options)
    assert (code, out) == (2, "")
    assert err.startswith("caliber: error: ") and err.count("\n") == 1, err
    assert message in err
    assert export(capsys, folder) == before
    assert not stored(folder / "postfuncs.py")  # its attachment was not stored either
    assert first["id"]


def stored(path: Path) -> bool:
    """Whether the queue's store holds the bytes of ``path``."""
    import hashlib

    from caliber.queue.registry import open_backend
    from caliber.queue.target import resolve_target

    with open_backend(resolve_target()) as backend:
        return backend.has_blob(hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.mark.usefixtures("queue_url")
def test_after_a_cancelled_or_ambiguous_one_is_refused_by_name(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = queued(capsys, "analysis.json", "-p", "lab")
    assert caliber(capsys, "queue", "cancel", str(first["id"]))[0] == 0
    ids = [str(first["id"])] + [str(queued(capsys, "analysis.json", "-p", "other")["id"])
                                for _ in range(36)]  # 37 ids: two share a first letter
    prefix = next(c for c in sorted({i[0] for i in ids}) if sum(i[0] == c for i in ids) > 1)
    before = export(capsys, folder)
    code, out, err = caliber(capsys, "workflow", "queue", "post.json", "-p", "lab",
                             "--after", str(first["id"]))
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert (f"cannot run after workload {first['id']} (analysis): it was cancelled, so this "
            f"would never run; queue it again first: caliber queue retry {first['id']}") in err
    code, out, err = caliber(capsys, "workflow", "queue", "post.json", "-p", "lab",
                             "--after", prefix)
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert f"id prefix {prefix!r} is ambiguous" in err
    assert export(capsys, folder) == before
    assert not stored(folder / "postfuncs.py")


def test_workflow_queue_from_python_takes_the_ids_it_returned(
        folder: Path, queue_url: str) -> None:
    from caliber.queue.api import view_workload
    from caliber.queue.target import resolve_target

    analysis = workflow(folder, [("add", [1])], name="analysis")
    post = workflow(folder, [("add", [2])], name="post")
    start = dt.datetime(2031, 5, 6, 22, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    first = analysis.queue("lab", queue=queue_url, not_before=start, priority=2)
    second = post.queue("lab", queue=queue_url, after=first, notify="https://h.lan/x")
    third = post.queue("lab", queue=queue_url, after=[first, second], not_before="22:00")
    target = resolve_target(queue=queue_url)
    shown = {i: view_workload(i, target).workload for i in (first, second, third)}
    assert shown[first].not_before == start and shown[first].priority == 2
    assert shown[second].after == [first] and shown[second].notify == "https://h.lan/x"
    assert shown[third].after == [first, second]
    assert shown[second].status.value == shown[third].status.value == "waiting"
    assert all(view_workload(i, target).secret_ok for i in shown)  # the plan is signed
    with pytest.raises(UsageError, match="has no time zone"):
        post.queue("lab", queue=queue_url, not_before=dt.datetime(2031, 5, 6, 22))
    with pytest.raises(UsageError, match="out of range"):
        post.queue("lab", queue=queue_url, priority=5000)
    from caliber.queue.api import list_workloads

    assert len(list_workloads(target)) == 3


@pytest.mark.usefixtures("queue_url")
def test_cancel_and_reset_name_what_the_chain_loses(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cancel or reset that cancels workloads waiting after it says which; a running one
    asked to cancel says which will be; --json lists them."""
    first = queued(capsys, "analysis.json", "-p", "lab", "--not-before", "+1h")
    second = queued(capsys, "post.json", "-p", "lab", "--after", str(first["id"]))
    third = queued(capsys, "post.json", "-p", "lab", "--after", str(second["id"]))
    alone = queued(capsys, "analysis.json", "-p", "lab", "--not-before", "+1h")
    code, out, err = caliber(capsys, "queue", "reset", str(first["id"]), "--json")
    assert code == 0, err
    assert json.loads(out)["cancelled_with"] == [second["id"], third["id"]]
    code, out, _ = caliber(capsys, "queue", "cancel", str(alone["id"]))
    assert code == 0 and len(out.splitlines()) == 1  # nothing waited after it
    code, out, _ = caliber(capsys, "queue", "cancel", str(alone["id"]))
    assert code == 2  # ended: refused as before

    up = queued(capsys, "analysis.json", "-p", "lab", "--not-before", "+1h")
    down = queued(capsys, "post.json", "-p", "lab", "--after", str(up["id"]))
    code, out, _ = caliber(capsys, "queue", "reset", str(up["id"]))
    assert code == 0 and out.splitlines()[1] == (
        f"cancelled, as they waited after it: {down['id']} (post)")
    running = queued(capsys, "analysis.json", "-p", "lab")
    after_it = queued(capsys, "post.json", "-p", "lab", "--after", str(running["id"]))
    from caliber.queue.registry import open_backend
    from caliber.queue.target import target_of

    with open_backend(target_of()) as backend:  # a pinion holds it
        claim = backend.claim("lab", "pin", 60, "k")
        assert claim is not None and claim.workload.id == running["id"]
    code, out, _ = caliber(capsys, "queue", "cancel", str(running["id"]))
    assert code == 0 and out.splitlines()[1] == (
        "the workload waiting after it is cancelled too when it ends cancelled: "
        f"{after_it['id']} (post)")
