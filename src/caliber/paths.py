"""Where Caliber keeps its files.

``CALIBER_HOME`` (environment or ``.caliber/.env``, see :mod:`caliber.settings`) moves
everything (database, runs, key) into one folder; otherwise the platform's user data folder
holds the database and runs, and the user config folder the key.
"""

from __future__ import annotations

from pathlib import Path

from caliber.errors import ConfigError
from caliber.settings import lookup

APP_NAME = "caliber"


def home() -> Path:
    """The data folder: ``$CALIBER_HOME`` or the platform's user data folder."""
    env = lookup("CALIBER_HOME")
    if env:
        return _folder(Path(env).expanduser(), "CALIBER_HOME")
    from platformdirs import user_data_path

    return _folder(user_data_path(APP_NAME, appauthor=False), "Caliber's data folder")


def config_dir() -> Path:
    """The config folder (the secret key lives here): ``$CALIBER_HOME`` or the platform's."""
    env = lookup("CALIBER_HOME")
    if env:
        return _folder(Path(env).expanduser(), "CALIBER_HOME")
    from platformdirs import user_config_path

    return _folder(user_config_path(APP_NAME, appauthor=False), "Caliber's config folder")


def _folder(path: Path, what: str) -> Path:
    """``path``, refused in one line (ConfigError) when something other than a folder is
    there: every file Caliber keeps would fail later with a less clear error."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is not a folder; point it at a folder (or move the "
                          "file away)")
    return path


def database_path() -> Path:
    """The local SQLite database: the queue and the results store."""
    return home() / "caliber.db"


def runs_dir() -> Path:
    """Where pinions make a working folder for every run."""
    return home() / "runs"
