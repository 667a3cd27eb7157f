"""Where Caliber keeps its files.

``CALIBER_HOME`` (environment or ``.caliber/.env``, see :mod:`caliber.settings`) moves
everything (database, runs, key) into one folder; otherwise the platform's user data folder
holds the database and runs, and the user config folder the key.

Both folders are their user's alone: made 0700 where Caliber makes them, and when they exist
already, refused if another user owns them and tightened to 0700 if group or others may use
them (:func:`caliber.platform.own_folder`).
"""

from __future__ import annotations

from pathlib import Path

from caliber.errors import ConfigError
from caliber.platform import own_folder
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
    there (every file Caliber keeps would fail later with a less clear error) or another
    user's folder; tightened to 0700 when it is this user's and open to others. Not made
    here: what puts a file in it makes it, 0700 (:func:`~caliber.platform.make_private_folder`)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is not a folder; point it at a folder (or move the "
                          "file away)")
    own_folder(path, what)
    return path


def database_path() -> Path:
    """The local SQLite database: the queue and the results store."""
    return home() / "caliber.db"


def runs_dir() -> Path:
    """Where pinions make a working folder for every run."""
    return home() / "runs"
