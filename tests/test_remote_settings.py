"""Remote queue settings: precedence, ``.caliber/.env``, hosts, tokens from local accounts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from caliber.errors import ConfigError
from caliber.settings import load_remote_settings, normalise_host
from caliber.settings_file import EnvFile, read_env_file


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
    assert read_env_file(tmp_path / "nothing") == EnvFile()


# --- tokens from Speckle Manager's accounts ---------------------------------------------------


@pytest.mark.speckle
def test_token_from_the_account_of_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    pytest.importorskip("specklepy")
    from caliber.queue.speckle.adapter import account_token
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
    from caliber.queue.speckle.adapter import account_token

    monkeypatch.setenv("SPECKLE_USERDATA_PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="set CALIBER_SPECKLE_TOKEN, or add an account"):
        account_token("https://speckle.example.org")


def test_missing_specklepy_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from caliber.queue.speckle.adapter import INSTALL_HINT, import_specklepy

    monkeypatch.setitem(sys.modules, "specklepy.api.client", None)
    with pytest.raises(ConfigError, match=f"needs specklepy .*{re.escape(INSTALL_HINT)}$"):
        import_specklepy()


def test_local_flag_and_no_project_open_the_local_queue(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from caliber.queue.registry import open_backend
    from caliber.queue.sqlite.backend import SQLiteBackend
    from caliber.queue.target import resolve_target

    with open_backend(resolve_target()) as backend:
        assert isinstance(backend, SQLiteBackend)
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", "12345abcde")  # and no host: local wins
    with open_backend(resolve_target(local=True)) as backend:
        assert isinstance(backend, SQLiteBackend)


# --- the one settings model -------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_every_variable_in_the_code_is_in_the_model_and_the_table() -> None:
    import re

    from caliber.settings import BOUNDS
    from caliber.settings_model import Settings

    used = set()
    for path in (REPO / "src" / "caliber").rglob("*.py"):
        used |= set(re.findall(r"CALIBER_[A-Z_]*[A-Z]", path.read_text(encoding="utf-8")))
    used -= {"CALIBER_SPECKLE"}  # the prefix, in messages
    declared = {Settings.variable(name) for name in Settings.model_fields}
    assert used <= declared, used - declared
    table = re.findall(r"^\| `(CALIBER_[A-Z_]+)` \|.*\| (.+) \| (.+) \|$",
                       (REPO / "docs" / "settings.md").read_text(encoding="utf-8"), re.M)
    assert [name for name, _, _ in table] == [Settings.variable(n) for n in Settings.model_fields]
    for name, values, default in table:  # the documented bounds and defaults are the model's
        field = name.removeprefix("CALIBER_").lower()
        value = Settings.model_fields[field].default
        if value is not None:
            assert default == f"`{value:g}`" if isinstance(value, float) else f"`{value}`"
        if field in BOUNDS:
            assert values == BOUNDS[field].describe(), name
    assert "`fork` or `spawn`" in dict((n, v) for n, v, _ in table)["CALIBER_CHILD_START"]


def test_every_variable_reads_environment_then_env_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from caliber.paths import home
    from caliber.queue.secret import load_key
    from caliber.settings import load_settings

    monkeypatch.delenv("CALIBER_HOME")
    write_env(workdir, "CALIBER_HOME=from-file\nCALIBER_PINION_WAIT=0.25\n"
                       "CALIBER_SECRET_KEY='key-from-the-file-0123'\nCALIBER_CHILD_START=spawn\n")
    assert home() == Path("from-file")
    assert load_key() == b"key-from-the-file-0123"
    assert load_settings().pinion_wait == 0.25
    assert load_settings().child_start == "spawn"
    monkeypatch.setenv("CALIBER_HOME", str(workdir / "from-env"))
    monkeypatch.setenv("CALIBER_PINION_WAIT", "  ")  # blank: unset, the file's value counts
    monkeypatch.setenv("CALIBER_SECRET_KEY", "0123456789abcdef0123")
    assert home() == workdir / "from-env"
    assert load_settings().pinion_wait == 0.25
    assert load_key() == b"0123456789abcdef0123"
    assert load_settings(pinion_wait=3).pinion_wait == 3


def test_tokens_and_keys_are_never_shown(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from caliber.settings import load_settings

    monkeypatch.setenv("CALIBER_SPECKLE_TOKEN", "tok-secret-value")
    monkeypatch.setenv("CALIBER_SECRET_KEY", "key-secret-value-0123")
    settings = load_settings()
    assert "secret-value" not in repr(settings) + str(settings)
    assert settings.speckle_token is not None
    assert settings.speckle_token.get_secret_value() == "tok-secret-value"


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("CALIBER_PINION_ATTEMPTS", "1.5", "must be a whole number from 0 to 1000000, got '1.5'"),
    ("CALIBER_PINION_MAX_ATTEMPTS", "0", "must be a whole number from 1 to 1000, got '0'"),
    ("CALIBER_PINION_TIMEOUT", "0",
     r"must be a number of seconds above 0, up to 31536000 \(365 days\), got '0'"),
    ("CALIBER_SPECKLE_TIMEOUT", "inf",
     r"must be a number of seconds from 0.1 to 3600 \(1 hour\), got 'inf'"),
])
def test_bad_values_name_the_variable(
    workdir: Path, name: str, raw: str, message: str
) -> None:
    from caliber.settings import load_settings

    write_env(workdir, f"{name}={raw}\n")
    with pytest.raises(ConfigError, match=f"^{name} {message}$"):
        load_settings()


def test_pinion_options_default_to_their_settings(
    workdir: Path, caliber_cmd: list[str]
) -> None:
    import subprocess

    write_env(workdir, "CALIBER_PINION_ATTEMPTS=2\nCALIBER_PINION_WAIT=0\n")
    done = subprocess.run([*caliber_cmd, "pinion", "init", "p", "--json"], capture_output=True,
                          text=True, check=True)
    assert "2 empty looks" in done.stderr
    done = subprocess.run([*caliber_cmd, "pinion", "init", "p", "-a", "1", "--json"],
                          capture_output=True, text=True, check=True)
    assert "1 empty looks" in done.stderr
    write_env(workdir, "CALIBER_PINION_WAIT=soon\n")
    done = subprocess.run([*caliber_cmd, "pinion", "init", "p"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == ("caliber: error: CALIBER_PINION_WAIT must be a number of seconds "
                           "from 0 to 86400 (1 day), got 'soon'\n")
    assert not (workdir / "runs").exists()


def test_local_queue_list_reads_its_settings_without_pydantic(workdir: Path) -> None:
    import subprocess

    write_env(workdir, "CALIBER_SPECKLE_MODEL=unused\n")
    code = ("import sys\nfrom caliber.cli import main\ntry:\n    main(['queue', 'list'])\n"
            "except SystemExit:\n    pass\nprint('pydantic' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines()[-1] == "False"
