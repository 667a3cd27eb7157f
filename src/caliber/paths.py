"""Where Caliber keeps its files.

``CALIBER_HOME`` (environment or ``.caliber/.env``, see :mod:`caliber.settings`) moves
everything (database, runs, key) into one folder; otherwise the platform's user data folder
holds the database and runs, and the user config folder the key.
"""

from __future__ import annotations

from pathlib import Path

from caliber.settings import lookup

APP_NAME = "caliber"


def home() -> Path:
    """The data folder: ``$CALIBER_HOME`` or the platform's user data folder."""
    env = lookup("CALIBER_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return user_data_path(APP_NAME, appauthor=False)


def config_dir() -> Path:
    """The config folder (the secret key lives here): ``$CALIBER_HOME`` or the platform's."""
    env = lookup("CALIBER_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_path

    return user_config_path(APP_NAME, appauthor=False)


def database_path() -> Path:
    """The local SQLite database: the queue and the results store."""
    return home() / "caliber.db"


def runs_dir() -> Path:
    """Where pinions make a working folder for every run."""
    return home() / "runs"
