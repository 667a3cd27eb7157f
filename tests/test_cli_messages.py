"""Small messages a newcomer meets: what an empty listing says, and seconds that are not numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from caliber.cli import main


def caliber(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    code = info.value.code
    out, err = capsys.readouterr()
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def pasta(pasta_exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "pasta"
    shutil.copytree(pasta_exported, folder)
    monkeypatch.chdir(folder)
    return folder


def test_an_empty_queue(capsys: pytest.CaptureFixture[str]) -> None:
    assert caliber(capsys, "queue", "list") == (0, "the queue is empty\n", "")


@pytest.mark.parametrize(("args", "expected"), [
    (["--pinion", "X"], "no workloads for pinion X"),
    (["--status", "failed"], "no workloads with status failed"),
    (["--pinion", "mypinion", "--status", "completed"],
     "no workloads for pinion mypinion with status completed"),
    (["--pinion", "mypinion", "--offset", "1"],
     "no workloads for pinion mypinion after the first 1"),
])
def test_an_empty_listing_names_its_filters(
    pasta: Path, args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # one workload in the queue: queued, for mypinion
    assert caliber(capsys, "workflow", "queue", "pasta.json", "-p", "mypinion")[0] == 0
    assert caliber(capsys, "queue", "list", *args) == (0, expected + "\n", "")


@pytest.mark.parametrize("option", ["-w", "--lease", "--timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "NaN", "1e400"])
def test_seconds_must_be_finite(
    option: str, value: str, capsys: pytest.CaptureFixture[str], caliber_home: Path
) -> None:
    code, out, err = caliber(capsys, "pinion", "init", "mypinion", "-a", "1", option, value)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("caliber: error: Invalid value for")
    assert "must be a number of seconds from" in err or "must be a number of seconds above" in err
    assert err.rstrip().endswith(f"got '{value}' (see 'caliber pinion init --help')")
    assert not caliber_home.exists()  # nothing opened, nothing written


def test_seconds_from_the_environment_must_be_finite(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALIBER_PINION_WAIT", "nan")
    code, _out, err = caliber(capsys, "pinion", "init", "mypinion", "-a", "1")
    assert code == 2 and err == ("caliber: error: CALIBER_PINION_WAIT must be a number of "
                                 "seconds from 0 to 86400 (1 day), got 'nan'\n")
