"""The ``outputs=`` patterns and what they find in a run folder: relative globs with ``**``,
nothing outside the run folder, no link followed, folders taken whole, each file once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from caliber.errors import WorkflowDefinitionError
from caliber.workflow.outputs import check_pattern, check_patterns, find_outputs, open_found


def tree(root: Path, *files: str) -> Path:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return tree(tmp_path / "run", "report.pdf", "notes.txt", "fields/a.vtu", "fields/b.vtu",
                "fields/deep/c.vtu", "fields/readme.md", "mesh/part.odb", ".hidden.vtu",
                ".cache/x.vtu", "fields/.tmp.vtu", ".caliber/values/v.npy", "output.log")


def found(root: Path, *patterns: str) -> list[str]:
    return find_outputs(root, [check_pattern(p) for p in patterns]).files


@pytest.mark.parametrize(("pattern", "normal"), [
    ("report.pdf", "report.pdf"), ("./fields//*.vtu", "fields/*.vtu"), ("**/", "**"),
    ("fields/", "fields"), ("a/./b", "a/b"),
])
def test_patterns_are_normalised(pattern: str, normal: str) -> None:
    assert check_pattern(pattern) == normal


@pytest.mark.parametrize(("pattern", "why"), [
    ("", "empty"), ("  ", "empty"), ("/etc/passwd", "absolute"), ("C:/x", "absolute"),
    ("../up.txt", "'..'"), ("fields/../../x", "'..'"), ("fields\\a.vtu", "backslash"),
    (".", "names no file"), ("./", "names no file"), (".caliber/values/*", "Caliber's own"),
    ("a\x00b", "NUL"), (3, "empty"), (None, "empty"),
])
def test_patterns_that_would_leave_the_run_folder_are_refused(pattern: object, why: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=why):
        check_pattern(pattern)


def test_a_single_string_is_a_list_of_one_and_a_number_is_refused() -> None:
    assert check_patterns("report.pdf") == ["report.pdf"]
    with pytest.raises(WorkflowDefinitionError, match="list of patterns"):
        check_patterns(5)


def test_a_file_a_glob_and_double_star(run: Path) -> None:
    assert found(run, "report.pdf") == ["report.pdf"]
    assert found(run, "fields/*.vtu") == ["fields/a.vtu", "fields/b.vtu"]
    assert found(run, "fields/**/*.vtu") == ["fields/a.vtu", "fields/b.vtu",
                                             "fields/deep/c.vtu"]
    assert found(run, "**/*.vtu") == ["fields/a.vtu", "fields/b.vtu", "fields/deep/c.vtu"]
    assert found(run, "**/*.odb", "*.pdf") == ["mesh/part.odb", "report.pdf"]
    assert found(run, "fields/?.vtu") == ["fields/a.vtu", "fields/b.vtu"]
    assert found(run, "fields/[!a].vtu") == ["fields/b.vtu"]


def test_wildcards_skip_hidden_names_and_caliber_folder_is_never_looked_in(run: Path) -> None:
    everything = found(run, "**")
    assert ".hidden.vtu" not in everything and ".caliber/values/v.npy" not in everything
    assert not any(p.startswith(".cache") or "/.tmp" in p for p in everything)
    assert found(run, ".hidden.vtu") == [".hidden.vtu"]
    assert found(run, ".*.vtu") == [".hidden.vtu"]
    assert found(run, "fields/.*") == ["fields/.tmp.vtu"]


def test_a_folder_named_takes_every_file_inside(run: Path) -> None:
    assert found(run, "fields") == ["fields/.tmp.vtu", "fields/a.vtu", "fields/b.vtu",
                                    "fields/deep/c.vtu", "fields/readme.md"]
    assert found(run, "mes*") == ["mesh/part.odb"]


def test_each_file_once_however_many_patterns_match_it(run: Path) -> None:
    assert found(run, "fields/a.vtu", "fields/*.vtu", "**/a.vtu", "fields") == [
        "fields/.tmp.vtu", "fields/a.vtu", "fields/b.vtu", "fields/deep/c.vtu",
        "fields/readme.md"]


def test_patterns_that_match_nothing_are_listed(run: Path) -> None:
    (run / "empty").mkdir()
    result = find_outputs(run, ["*.pdf", "results/*.vtu", "none.txt", "empty", "**/*.xyz"])
    assert result.files == ["report.pdf"]
    assert result.unmatched == ["results/*.vtu", "none.txt", "empty", "**/*.xyz"]
    assert result.skipped == []


def test_links_are_never_followed_in_or_out(run: Path, tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", "secret.vtu", "dir/s.vtu")
    os.symlink("/etc/passwd", run / "passwd.vtu")
    os.symlink(outside / "secret.vtu", run / "fields/secret.vtu")
    os.symlink(outside / "dir", run / "linked")  # a folder out of the run folder
    os.symlink("report.pdf", run / "again.pdf")  # a link inside
    os.symlink(run / "fields", run / "fields2")  # a folder inside
    result = find_outputs(run, ["*.vtu", "fields/*.vtu", "linked/*.vtu", "**/s.vtu",
                                "again.pdf", "fields2/*", "linked"])
    assert result.files == ["fields/a.vtu", "fields/b.vtu"]
    assert [path for path, _ in result.skipped] == [
        "again.pdf", "fields/secret.vtu", "fields2", "linked", "passwd.vtu"]
    why = dict(result.skipped)
    assert why["passwd.vtu"] == ("a symbolic link (to /etc/passwd); links are not followed")
    assert result.unmatched == ["**/s.vtu"]  # '**' does not go through the link


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_what_is_not_a_regular_file_is_skipped_with_why(run: Path) -> None:
    os.mkfifo(run / "fields/pipe.vtu")
    result = find_outputs(run, ["fields/*.vtu"])
    assert result.files == ["fields/a.vtu", "fields/b.vtu"]
    assert result.skipped == [("fields/pipe.vtu", "not a regular file (a FIFO)")]


@pytest.mark.skipif(os.open not in os.supports_dir_fd, reason="no openat here")
def test_open_found_refuses_a_folder_swapped_for_a_link_meanwhile(run: Path,
                                                                  tmp_path: Path) -> None:
    fd = open_found(run, "fields/deep/c.vtu")
    assert os.read(fd, 100) == b"fields/deep/c.vtu"
    os.close(fd)
    outside = tree(tmp_path / "outside", "deep/c.vtu")
    os.rename(run / "fields", run / "fields-was")
    os.symlink(outside, run / "fields")  # found before, a link now
    with pytest.raises(OSError):
        open_found(run, "fields/deep/c.vtu")
    os.symlink("/etc/passwd", run / "p")
    with pytest.raises(OSError):
        open_found(run, "p")
    with pytest.raises(ValueError, match="not a regular file"):
        open_found(run, "mesh")


def test_a_name_that_cannot_come_back_as_it_is_is_not_kept(tmp_path: Path) -> None:
    from caliber.queue.blobs import FolderBlobStore
    from caliber.results.files import OutputLimits, keep_outputs

    run = tree(tmp_path / "run", "ok.vtu", "back\\slash.vtu", "tab\there.vtu")
    (run / os.fsdecode(b"caf\xe9.vtu")).write_bytes(b"latin-1 name")
    kept = keep_outputs(FolderBlobStore(tmp_path / "blobs"), run, ["*.vtu"],
                        OutputLimits(10**6, 10**6))
    assert [f["path"] for f in kept["files"]] == ["ok.vtu"]
    assert sorted(s["reason"] for s in kept["files_skipped"]) == [
        "its name holds a backslash or a control character",
        "its name holds a backslash or a control character",
        "its name is not UTF-8 text"]
    json.dumps(kept)  # every name as text that JSON (and the Results) can carry
