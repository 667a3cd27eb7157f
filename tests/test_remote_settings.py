"""Remote queue settings: precedence, ``.caliber/.env``, hosts, tokens from local accounts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from caliber.errors import ConfigError
from caliber.settings import load_remote_settings, normalise_host, read_env_file


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "here"
    (folder / ".caliber").mkdir(parents=True)
    monkeypatch.chdir(folder)
    return folder


def write_env(folder: Path, text: str) -> None:
    (folder / ".caliber" / ".env").write_text(text)


def test_no_project_means_the_local_queue(workdir: Path) -> None:
    assert load_remote_settings() is None
    write_env(workdir, "CALIBER_SPECKLE_HOST=https://speckle.example.org\n")
    assert load_remote_settings() is None


def test_env_file_is_read(workdir: Path) -> None:
    write_env(workdir, """
# the office server
export CALIBER_SPECKLE_HOST = "http://127.0.0.1:3000/"
CALIBER_SPECKLE_PROJECT='12345abcde'   # from the project's address
CALIBER_SPECKLE_TOKEN=abc#def
CALIBER_SPECKLE_SETTLE=0.5
""")
    settings = load_remote_settings()
    assert settings is not None
    assert settings.host == "http://127.0.0.1:3000" and not settings.use_ssl
    assert settings.netloc == "127.0.0.1:3000"
    assert settings.project == "12345abcde"
    assert settings.model == "main"
    assert settings.token == "abc#def"
    assert settings.settle == 0.5


def test_arguments_beat_environment_beat_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_env(workdir, "CALIBER_SPECKLE_HOST=file.example.org\nCALIBER_SPECKLE_PROJECT=fromfile\n"
                       "CALIBER_SPECKLE_MODEL=filemodel\n")
    settings = load_remote_settings()
    assert settings is not None
    assert (settings.host, settings.project, settings.model) == (
        "https://file.example.org", "fromfile", "filemodel")
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", "fromenv")
    monkeypatch.setenv("CALIBER_SPECKLE_MODEL", "envmodel")
    settings = load_remote_settings()
    assert settings is not None and (settings.project, settings.model) == ("fromenv", "envmodel")
    settings = load_remote_settings(project="fromarg", model="argmodel")
    assert settings is not None and (settings.project, settings.model) == ("fromarg", "argmodel")


def test_project_without_host_is_one_clear_error(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="CALIBER_SPECKLE_HOST"):
        load_remote_settings(project="12345abcde")


@pytest.mark.parametrize("text", ["just words", "=value"])
def test_bad_env_file_line(workdir: Path, text: str) -> None:
    write_env(workdir, f"# fine\n{text}\n")
    with pytest.raises(ConfigError, match=r"\.env, line 2"):
        load_remote_settings()


def test_bad_numbers(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SPECKLE_HOST", "https://x.example.org")
    monkeypatch.setenv("CALIBER_SPECKLE_SETTLE", "soon")
    with pytest.raises(ConfigError, match="CALIBER_SPECKLE_SETTLE"):
        load_remote_settings(project="p")


@pytest.mark.parametrize(("given", "expected"), [
    ("app.speckle.systems", "https://app.speckle.systems"),
    ("https://App.Speckle.Systems/", "https://app.speckle.systems"),
    ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
])
def test_hosts(given: str, expected: str) -> None:
    assert normalise_host(given) == expected


@pytest.mark.parametrize("given", ["ftp://x.org", "https://x.org/projects/abc", "https://"])
def test_bad_hosts(given: str) -> None:
    with pytest.raises(ConfigError):
        normalise_host(given)


def test_env_file_missing_is_fine(tmp_path: Path) -> None:
    assert read_env_file(tmp_path / "nothing") == {}


# --- tokens from Speckle Manager's accounts ---------------------------------------------------


@pytest.mark.speckle
def test_token_from_the_account_of_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    pytest.importorskip("specklepy")
    from caliber.queue.speckle_adapter import account_token
    from tests.speckle_fixtures import write_account
    from tests.speckle_server import SpeckleTestServer

    monkeypatch.setenv("SPECKLE_USERDATA_PATH", str(tmp_path / "userdata"))
    server = SpeckleTestServer(port=4567)  # never started: only its address is used
    write_account(tmp_path / "userdata", server, "tok-en")
    assert account_token("http://127.0.0.1:4567") == "tok-en"
    with pytest.raises(ConfigError, match=r"no token for http://127\.0\.0\.1:4568.*Speckle "
                                          r"Manager.*127\.0\.0\.1:4567"):
        account_token("http://127.0.0.1:4568")


@pytest.mark.speckle
def test_no_accounts_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("specklepy")
    from caliber.queue.speckle_adapter import account_token

    monkeypatch.setenv("SPECKLE_USERDATA_PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="set CALIBER_SPECKLE_TOKEN, or add an account"):
        account_token("https://speckle.example.org")


def test_missing_specklepy_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from caliber.queue.speckle_adapter import import_specklepy

    monkeypatch.setitem(sys.modules, "specklepy.api.client", None)
    with pytest.raises(ConfigError, match=r"caliber-workflows\[speckle\]"):
        import_specklepy()


def test_local_flag_and_no_project_open_the_local_queue(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from caliber.queue.select import open_backend
    from caliber.queue.sqlite import SQLiteBackend

    with open_backend() as backend:  # type: ignore[attr-defined]
        assert isinstance(backend, SQLiteBackend)
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", "12345abcde")  # and no host: local wins
    with open_backend(local=True) as backend:  # type: ignore[attr-defined]
        assert isinstance(backend, SQLiteBackend)
