"""``output.log`` in bounded memory and disk: ``queue logs`` streams it whatever its size,
the pinion cuts its middle out past ``--log-max`` (keeping the head, a marker line and the
tail), and ``queue logs -f`` follows cuts, truncation and replacement, saying so when output
was lost to it."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import caliber
from caliber.pinion.follow import OUTPUT_FILE
from caliber.pinion.outputlog import LAYOUT_FILE, LogCap, read_layout, stream
from caliber.sizes import format_size, parse_size
from tests.pinion_helpers import make_folder, start_pinion, status_of, stop, wait_for

LOUD = '''
import os, time

def wait(marker):
    while not os.path.exists(marker):
        time.sleep(0.02)

def say(text):
    print(text, flush=True)
    return 1

def loud(lines, width=100):
    for i in range(lines):
        print(f"line {i:09d} ".ljust(width - 1, "x"), flush=False)
    return lines

def phases(first, second, markers):
    """``first`` lines, wait; ``second`` lines (then a file says so), wait; the end."""
    for i in range(first):
        print(f"one {i:09d} ".ljust(99, "a"))
    print("phase one done", flush=True)
    wait(markers + ".1")
    for i in range(second):
        print(f"two {i:09d} ".ljust(99, "b"))
    print("phase two done", flush=True)
    open(markers + ".printed", "w").close()
    wait(markers + ".2")
    print("the end", flush=True)
    return 1

def steps(markers):
    """Short lines between markers: a follower sees each step."""
    for i in range(3):
        print(f"before {i}", flush=True)
    wait(markers + ".1")
    print("after truncation", flush=True)
    wait(markers + ".2")
    print("after replacement", flush=True)
    wait(markers + ".3")
    return 1
'''
MARKER_LINE = re.compile(rb"^\[caliber: (\d+) bytes of output cut here \(output\.log is capped "
                         rb"at (\w+): --log-max\)\]$", re.M)


def caliber_run(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          timeout=120, check=False, **kw)  # type: ignore[call-overload]


def queue_task(tmp_path: Path, function: str, *args: object) -> str:
    folder = make_folder(tmp_path / "loud", module="loud", source=LOUD)
    workflow = caliber.Workflow(
        caliber.Process([caliber.Task(f"loud:{function}", name=function, args=list(args))]),
        "loud", attachments=["loud.py"], base_dir=folder)
    return workflow.queue(pinion="p")


def run_folder(caliber_home: Path, wid: str) -> Path:
    return caliber_home / "runs" / "p" / f"{wid}-1"


def check_cut(log: bytes, printed: int, line: bytes,
              lossy: bool = False) -> tuple[list[int], list[int]]:
    """A log cut once: whole lines numbered from 0 in its head, one marker line whose count is
    what is missing, and lines numbered on to the last in its tail (the lines next to the
    marker may be cut in two). Returns the numbers of the head's and the tail's whole lines.
    ``lossy``: a few lines may be missing uncounted (cut by copying while a process appends)."""
    markers = MARKER_LINE.findall(log)
    assert len(markers) == 1, markers[:3]
    cut = int(markers[0][0])
    marker = MARKER_LINE.search(log)
    assert marker is not None
    counted = len(log) - (marker.end() - marker.start() + 2) + cut
    assert counted == printed or (lossy and printed - printed // 100 <= counted <= printed)
    head, tail = log[:marker.start() - 1], log[marker.end() + 1:]
    width = 100  # bytes a line
    head_numbers = [int(x) for x in re.findall(rb"^" + line + rb" (\d{9}) ", head, re.M)]
    tail_numbers = [int(x) for x in re.findall(rb"^" + line + rb" (\d{9}) ", tail, re.M)]
    assert head_numbers == list(range(len(head_numbers))) and head_numbers
    assert len(head) // width - 1 <= len(head_numbers) <= len(head) // width + 1
    assert len(tail) // width - 1 <= len(tail_numbers) <= len(tail) // width + 1
    if lossy:
        assert tail_numbers == sorted(set(tail_numbers))
    else:
        assert tail_numbers == list(range(tail_numbers[0], tail_numbers[0] + len(tail_numbers)))
    return head_numbers, tail_numbers


# --- queue logs: streamed, whatever the size ---------------------------------------------


def test_queue_logs_of_a_huge_log_streams_it_in_bounded_memory(
    tmp_path: Path, caliber_home: Path
) -> None:
    wid = queue_task(tmp_path, "say", "hello")
    done = caliber_run("pinion", "init", "p", "-a", "1", "-w", "0")
    assert done.returncode == 0, done.stderr
    log = run_folder(caliber_home, wid) / OUTPUT_FILE
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)  # not UTF-8: the bytes come out as they are
    with open(log, "wb") as f:
        for i in range(400):
            chunk = block[i:] + block[:i]
            f.write(chunk)
            digest.update(chunk)
    out_path, peak_path = tmp_path / "out", tmp_path / "peak"
    limited = (  # 1 GiB of address space; its peak memory since exec (VmHWM) left in a file
        "import atexit, re, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))"
        f"; atexit.register(lambda: open({str(peak_path)!r}, 'w').write(re.search("
        "r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))); "
        "from caliber.cli import main; main(sys.argv[1:])")
    with open(out_path, "wb") as out:
        done = subprocess.run([sys.executable, "-c", limited, "queue", "logs", wid],
                              stdout=out, stderr=subprocess.PIPE, timeout=120, check=False)
    assert done.returncode == 0 and done.stderr == b""
    peak = int(peak_path.read_text()) * 1024  # bytes (the kernel counts kilobytes)
    assert peak < 150 * 2**20, f"peak memory {peak} bytes for a log of 400 MiB"
    shown = hashlib.sha256()
    with open(out_path, "rb") as f:
        while chunk := f.read(1 << 20):
            shown.update(chunk)
    assert shown.hexdigest() == digest.hexdigest()


def test_queue_logs_into_a_pipe_closed_early_ends_quietly(
    tmp_path: Path, caliber_home: Path
) -> None:
    wid = queue_task(tmp_path, "loud", 200_000)
    done = caliber_run("pinion", "init", "p", "-a", "1", "-w", "0")
    assert done.returncode == 0, done.stderr
    process = subprocess.Popen([sys.executable, "-m", "caliber", "queue", "logs", wid],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(100).startswith(b"line 000000000 ")
    process.stdout.close()  # as `| head` does
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""
    process.stderr.close()


# --- the cap: a real pinion, a workload printing far past it ---------------------------


def test_a_pinion_keeps_the_head_a_marker_and_the_tail_of_a_log_past_its_cap(
    tmp_path: Path, caliber_home: Path
) -> None:
    lines = 300_000  # 30 MB, printed for long enough that the pinion cuts while it runs
    wid = queue_task(tmp_path, "loud", lines)
    done = caliber_run("pinion", "init", "p", "-a", "1", "-w", "0", "--log-max", "256K")
    assert done.returncode == 0, done.stderr
    assert status_of(wid) == "completed"
    folder = run_folder(caliber_home, wid)
    log = (folder / OUTPUT_FILE).read_bytes()
    assert len(log) <= 256 * 1024
    _, tail = check_cut(log, printed=lines * 100, line=b"line")
    assert tail[-1] == lines - 1 and len(tail) >= (64 - 4) * 1024 // 100 - 2  # a quarter or more
    assert MARKER_LINE.search(log).group(2) == b"256K"  # type: ignore[union-attr]
    assert os.stat(folder / OUTPUT_FILE).st_blocks * 512 <= 260 * 1024  # no hole at rest
    shown = caliber_run("queue", "logs", wid)
    assert shown.returncode == 0 and shown.stdout == log
    output = caliber.get_results(wid).output
    assert output is not None and output.endswith(f"line {lines - 1:09d} ".ljust(99, "x") + "\n")


def test_a_log_under_its_cap_and_no_cap_are_left_alone(
    tmp_path: Path, caliber_home: Path
) -> None:
    small = queue_task(tmp_path, "loud", 1000)
    big = queue_task(tmp_path, "loud", 5000)
    done = caliber_run("pinion", "init", "p", "-a", "1", "-w", "0", "--log-max", "128K",
                       env={**os.environ, "CALIBER_PINION_LOG_MAX": "0"})
    assert done.returncode == 0, done.stderr  # the option over its variable
    assert (run_folder(caliber_home, small) / OUTPUT_FILE).stat().st_size == 100_000
    assert len(MARKER_LINE.findall((run_folder(caliber_home, big) / OUTPUT_FILE).read_bytes())) == 1
    more = queue_task(tmp_path, "loud", 5000)
    done = caliber_run("pinion", "init", "p", "-a", "1", "-w", "0",
                       env={**os.environ, "CALIBER_PINION_LOG_MAX": "0"})
    assert done.returncode == 0, done.stderr
    assert (run_folder(caliber_home, more) / OUTPUT_FILE).stat().st_size == 500_000
    assert not (run_folder(caliber_home, more) / LAYOUT_FILE).exists()


@pytest.mark.parametrize("modes", [("collapse", "punch", "copy"), ("punch", "copy"), ("copy",)])
def test_each_way_of_cutting_keeps_every_tail_line_while_a_process_appends(
    tmp_path: Path, modes: tuple[str, ...]
) -> None:
    """The ways the file systems allow (collapse, punch a hole, copy), with a real process
    appending as the workload does: head, marker and tail, and the disk use bounded."""
    log = tmp_path / OUTPUT_FILE
    log.write_bytes(b"")
    lines = 400_000
    writer = subprocess.Popen([sys.executable, "-c", f"""
import os
fd = os.open({str(log)!r}, os.O_WRONLY | os.O_APPEND)
for i in range({lines}):
    os.write(fd, (b"line %09d " % i).ljust(99, b"w") + b"\\n")
"""])
    cap = LogCap(tmp_path, 1 << 20, modes=modes)
    most = 0
    while writer.poll() is None:
        cap._next_check = 0.0  # look at every turn, not only every tenth of a second
        cap.tick()
        most = max(most, os.stat(log).st_blocks * 512)
    cap.finish()
    data = log.read_bytes()
    assert len(data) <= 1 << 20 and b"\0" not in data
    _, tail = check_cut(data, printed=lines * 100, line=b"line", lossy=modes == ("copy",))
    assert tail[-1] == lines - 1
    assert cap.modes[0] == modes[0]  # this disk has them all (ext4, XFS; else skip)
    assert most < 16 << 20  # far below the 40 MB printed
    assert b"".join(stream(tmp_path)) == data
    layout = read_layout(tmp_path)
    assert layout is not None and not layout.busy and layout.tail_at == layout.head


def test_a_cap_too_small_for_the_blocks_still_cuts_by_copying(tmp_path: Path) -> None:
    log = tmp_path / OUTPUT_FILE
    log.write_bytes(b"".join(b"line %09d " % i + b"z" * 84 + b"\n" for i in range(1000)))
    cap = LogCap(tmp_path, 6000)  # smaller than two blocks
    cap.finish()
    data = log.read_bytes()
    assert len(data) <= 6000 and cap.modes == ["copy"]
    check_cut(data, printed=100_000, line=b"line")


# --- queue logs -f: cut, truncated, replaced ---------------------------------------------


def follower(workload_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "caliber", "queue", "logs", workload_id, "-f"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_follow_says_when_output_was_cut_before_it_was_read_and_goes_on_after_the_cut(
    tmp_path: Path, caliber_home: Path
) -> None:
    markers = str(tmp_path / "marker")
    first, second = 2000, 100_000  # 200 KB (past the head of a 256K cap), then 10 MB
    wid = queue_task(tmp_path, "phases", first, second, markers)
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--log-max", "256K")
    process = follower(wid)
    assert process.stdout is not None and process.stderr is not None
    try:
        seen = b""
        while not seen.endswith(b"phase one done\n"):
            seen += process.stdout.readline()
        os.kill(process.pid, signal.SIGSTOP)  # the follower falls behind...
        Path(markers + ".1").touch()
        wait_for(lambda: os.path.exists(markers + ".printed"), what="phase two")
        folder = run_folder(caliber_home, wid)
        wait_for(lambda: read_layout(folder) is not None
                 and (folder / OUTPUT_FILE).stat().st_size <= 256 * 1024,
                 what="the cut")  # ... and the pinion cuts the log meanwhile
        os.kill(process.pid, signal.SIGCONT)
        Path(markers + ".2").touch()
        out, err = process.communicate(timeout=60)
    finally:
        Path(markers + ".1").touch()
        Path(markers + ".2").touch()
        stop(pinion, signal.SIGTERM)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.communicate()
    assert process.returncode == 0
    notice = re.fullmatch(rb"caliber: (\d+) bytes of output were cut from output.log \(over its "
                          rb"cap\) before they were read: going on after the cut\n", err)
    assert notice is not None, err
    shown = seen + out
    assert shown.endswith(b"phase two done\nthe end\n") and MARKER_LINE.search(shown) is None
    ones = [int(x) for x in re.findall(rb"^one (\d{9}) ", shown, re.M)]
    assert ones == list(range(first))  # all of phase one, read before the cut
    twos = [int(x) for x in re.findall(rb"^two (\d{9}) ", shown, re.M)]
    assert twos == list(range(twos[0], second)) and twos[0] > 0
    missing = int(notice.group(1))  # what it says it missed is exactly what is not shown
    printed = first * 100 + second * 100 + len(b"phase one done\nphase two done\n")
    assert len(shown) - len(b"the end\n") + missing == printed


def test_follow_notices_a_truncated_and_a_replaced_log_and_shows_what_follows(
    tmp_path: Path, caliber_home: Path
) -> None:
    markers = str(tmp_path / "marker")
    wid = queue_task(tmp_path, "steps", markers)
    pinion = start_pinion("p", "-a", "1", "-w", "0")
    process = follower(wid)
    assert process.stdout is not None and process.stderr is not None
    try:
        assert [process.stdout.readline() for _ in range(3)] == [
            b"before 0\n", b"before 1\n", b"before 2\n"]
        log = run_folder(caliber_home, wid) / OUTPUT_FILE
        os.truncate(log, 0)  # as `: > output.log` or a log rotation's copytruncate
        Path(markers + ".1").touch()
        assert process.stdout.readline() == b"after truncation\n"
        assert re.fullmatch(rb"caliber: output.log was truncated \(to (0|17) bytes\): reading "
                            rb"it again from its start\n", process.stderr.readline())
        new = log.with_name("new.log")
        new.write_bytes(b"a new file\n")
        os.replace(new, log)  # as a log rotation that moves the file away
        assert process.stdout.readline() == b"a new file\n"
        assert process.stderr.readline() == (
            b"caliber: output.log was replaced by another file: reading that from its start\n")
        with open(log, "ab") as f:
            f.write(b"written to the new file\n")
        assert process.stdout.readline() == b"written to the new file\n"
        Path(markers + ".2").touch()
        Path(markers + ".3").touch()
        out, err = process.communicate(timeout=60)
    finally:
        for n in (1, 2, 3):
            Path(f"{markers}.{n}").touch()
        stop(pinion, signal.SIGTERM)
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and out == b"" and err == b""
    assert status_of(wid) == "completed"


# --- the setting -------------------------------------------------------------------------


def test_sizes_read_and_written() -> None:
    assert parse_size("65536") == 65536 and parse_size("100M") == 100 << 20
    assert parse_size(" 1g ") == 1 << 30 and parse_size("2KiB") == 2048
    assert parse_size("0") == 0 and parse_size("10B") == 10
    for bad in ("", "1.5G", "-1", "M", "12Q", "1e9", "10iB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert format_size(1 << 30) == "1G" and format_size(100 << 20) == "100M"
    assert format_size(1000) == "1000" and format_size(1536) == "1536"


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--log-max", "lots"], {}, "--log-max"),
    (["--log-max", "1K"], {}, "--log-max"),
    (["--log-max", "1e17"], {}, "--log-max"),
    (["--log-max", "2048T"], {}, "--log-max"),
    ([], {"CALIBER_PINION_LOG_MAX": "99999999999999999999"}, "CALIBER_PINION_LOG_MAX"),
    ([], {"CALIBER_PINION_LOG_MAX": "1.5G"}, "CALIBER_PINION_LOG_MAX"),
    ([], {"CALIBER_PINION_LOG_MAX": "100"}, "CALIBER_PINION_LOG_MAX"),
])
def test_a_bad_cap_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], named: str
) -> None:
    done = caliber_run("pinion", "init", "p", "-a", "1", *args, env={**os.environ, **env})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count(b"\n") == 1 and named.encode() in done.stderr
    assert done.stderr.startswith(b"caliber: error: ")
