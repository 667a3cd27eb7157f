"""The model of every ``CALIBER_*`` variable (pydantic-settings): name, type, default, bounds,
meaning.

Field ``speckle_host`` is the variable ``CALIBER_SPECKLE_HOST``, and so on. Its one source is
:func:`caliber.settings.environment` (the environment over a trusted ``.caliber/.env``, parsed
by python-dotenv), after the values given in code; docs/settings.md is the table of these
fields (a test keeps the two equal). Every number has its bounds in
:data:`caliber.settings.BOUNDS`, shared with the command-line options that are its twins. A
bad value is a :class:`caliber.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from caliber.errors import ConfigError
from caliber.settings import (
    BOUNDS,
    DEFAULT_ARRAY_INLINE_MAX,
    DEFAULT_ATTEMPTS,
    DEFAULT_CANCEL_GRACE,
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MIN_LEASE,
    DEFAULT_MODEL,
    DEFAULT_SETTLE,
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT,
    PREFIX,
    check_child_start,
    environment,
)
from caliber.sizes import (
    DEFAULT_LOG_MAX,
    DEFAULT_OUTPUT_MAX,
    DEFAULT_OUTPUT_TOTAL_MAX,
    MAX_LOG_MAX,
    MAX_OUTPUT_MAX,
    MIN_LOG_MAX,
    format_size,
    parse_size,
)


class Settings(BaseSettings):
    """Every setting of Caliber; see docs/settings.md."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    home: Path | None = Field(None, description=(
        "the folder of the database, the runs and the key file (default: the platform's "
        "user data and config folders)"))
    secret_key: SecretStr | None = Field(None, description=(
        "the key that signs and verifies run-secrets, at least 16 characters (default: the "
        "key file secret.key, made on first use)"))
    child_start: Literal["fork", "spawn"] | None = Field(None, description=(
        "how a pinion starts a workload's process: fork or spawn (default: fork where the "
        "system has it)"))
    queue_url: SecretStr | None = Field(None, description=(
        "the queue, as a URL: sqlite:///path/caliber.db, postgresql://user@host:5432/db, "
        "speckle://host/PROJECT/MODEL or memory://NAME; set, it is used instead of the "
        "Speckle settings and the local queue (--queue); a password in it is never printed"))
    speckle_host: str | None = Field(None, description=(
        "the Speckle server, e.g. https://app.speckle.systems (no scheme means https)"))
    speckle_project: str | None = Field(None, description=(
        "the Speckle project id; set means the remote queue (--project)"))
    speckle_model: str = Field(DEFAULT_MODEL, description=(
        "the model holding the remote queue, made if missing (--model)"))
    speckle_token: SecretStr | None = Field(None, description=(
        "a personal access token (default: the Speckle Manager account of the host); never "
        "printed"))
    speckle_settle: float = Field(DEFAULT_SETTLE, description=(
        "seconds a remote claim waits before it reads the log again"))
    speckle_min_lease: float = Field(DEFAULT_MIN_LEASE, description=(
        "shortest lease on the remote queue, in seconds"))
    speckle_timeout: float = Field(DEFAULT_TIMEOUT, description=(
        "seconds any one request to the server may take"))
    pinion_attempts: int = Field(DEFAULT_ATTEMPTS, description=(
        "empty looks in a row before a pinion stops, 0: never (pinion init -a)"))
    pinion_wait: float = Field(DEFAULT_WAIT, description=(
        "seconds between a pinion's looks for work (pinion init -w)"))
    pinion_lease: float = Field(DEFAULT_LEASE, description=(
        "seconds a claimed workload is held without renewal (pinion init --lease)"))
    pinion_timeout: float | None = Field(None, description=(
        "seconds a workload may run before it is stopped and failed (pinion init --timeout; "
        "default: no limit)"))
    pinion_max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, description=(
        "claims of one workload (after pinions died) before it is failed "
        "(pinion init --max-attempts)"))
    pinion_cancel_grace: float = Field(DEFAULT_CANCEL_GRACE, description=(
        "seconds a pinion gives a task it stops (queue cancel --now, or past its time limit) "
        "between SIGTERM and SIGKILL (pinion init --cancel-grace)"))
    pinion_concurrency: int = Field(DEFAULT_CONCURRENCY, description=(
        "workloads a pinion runs at once, each in its own process and run folder "
        "(pinion init --concurrency)"))
    pinion_keep_runs: int | None = Field(None, description=(
        "run folders of finished workloads a pinion keeps, the newest (pinion init "
        "--keep-runs; default: all)"))
    pinion_preload: str | None = Field(None, description=(
        "modules a pinion imports once, before it starts the workloads' processes, so that "
        "workloads using them start with them loaded, comma-separated (pinion init "
        "--preload numpy,scipy)"))
    pinion_log_max: int = Field(DEFAULT_LOG_MAX, description=(
        "bytes a run's output.log keeps (1 GiB); past them its middle is cut out, with a "
        "line saying so; suffixes K, M, G, 0: no cap (pinion init --log-max 100M)"))
    array_inline_max: int = Field(DEFAULT_ARRAY_INLINE_MAX, description=(
        "bytes a numpy array (or pandas frame) of a result may take and still be stored as "
        "JSON; a bigger one is stored as binary beside the Results"))
    output_max: int = Field(DEFAULT_OUTPUT_MAX, description=(
        "bytes of one result file (a workflow's outputs=) kept at most (2 GiB); a bigger one "
        "is not kept and its Results say so; suffixes K, M, G, T, 0: no limit (read where "
        "the workflow runs: the pinion's machine)"))
    output_total_max: int = Field(DEFAULT_OUTPUT_TOTAL_MAX, description=(
        "bytes of all the result files of one run kept at most (10 GiB); the files past it "
        "are not kept and the Results say so; suffixes K, M, G, T, 0: no limit"))
    notify_url: str | None = Field(None, description=(
        "an http(s) address a pinion POSTs JSON to when a workload ends (a Slack or Teams "
        "incoming webhook takes it)"))
    notify_smtp: SecretStr | None = Field(None, description=(
        "smtp://[user[:password]@]host[:port] (STARTTLS when offered) or smtps://...: the "
        "server a pinion sends an e-mail through when a workload ends; never printed"))
    notify_email: str | None = Field(None, description=(
        "whom that e-mail goes to, comma-separated"))
    notify_email_from: str | None = Field(None, description=(
        "the e-mail's sender (default: caliber@ this machine's name)"))
    dashboard_token: SecretStr | None = Field(None, description=(
        "the token every request to caliber dashboard needs, 16 characters or more "
        "(default: a new random one per start); never printed but in its address"))

    @classmethod
    def variable(cls, field: str) -> str:
        """``CALIBER_SPECKLE_HOST`` for ``speckle_host``."""
        return PREFIX + field.upper()

    @classmethod
    def load(cls, **given: object) -> Settings:
        values = {k: v for k, v in given.items()
                  if v is not None and not (isinstance(v, str) and not v.strip())}
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValidationError as exc:
            error = exc.errors()[0]
            name = cls.variable(str(error["loc"][0])) if error["loc"] else "a setting"
            raise ConfigError(f"{name}: {error['msg']}, got {error.get('input')!r}") from exc

    @field_validator(*BOUNDS, mode="before")
    @classmethod
    def _number(cls, raw: Any, info: Any) -> Any:
        if raw is None:
            return raw
        try:
            return BOUNDS[info.field_name].check(raw)
        except ValueError as exc:
            raise ConfigError(f"{cls.variable(info.field_name)} {exc}") from None

    @field_validator("child_start", mode="before")
    @classmethod
    def _child_start(cls, raw: Any) -> Any:
        return raw if raw is None else check_child_start(str(raw))

    @field_validator("secret_key", mode="before")
    @classmethod
    def _secret_key(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            from caliber.errors import SecretKeyError
            from caliber.queue.secret import key_from_setting

            try:
                key_from_setting(raw)
            except SecretKeyError as exc:
                raise ConfigError(str(exc)) from None
        return raw

    @field_validator("pinion_log_max", mode="before")
    @classmethod
    def _size(cls, raw: Any, info: Any) -> Any:
        try:
            size = raw if isinstance(raw, int) else parse_size(str(raw))
        except ValueError:
            size = -1
        if size != 0 and not MIN_LOG_MAX <= size <= MAX_LOG_MAX:
            raise ConfigError(f"{cls.variable(info.field_name)} must be a size in bytes such as "
                              f"100M: 0 (no cap), or from {format_size(MIN_LOG_MAX)} to "
                              f"{format_size(MAX_LOG_MAX)}, got {raw!r}")
        return size

    @field_validator("output_max", "output_total_max", mode="before")
    @classmethod
    def _output_size(cls, raw: Any, info: Any) -> Any:
        try:
            size = raw if isinstance(raw, int) else parse_size(str(raw))
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_OUTPUT_MAX:
            raise ConfigError(f"{cls.variable(info.field_name)} must be a size in bytes such as "
                              f"2G: 0 (no limit), or up to {format_size(MAX_OUTPUT_MAX)}, "
                              f"got {raw!r}")
        return size

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Environment(settings_cls)


class _Environment(PydanticBaseSettingsSource):
    """The environment over ``.caliber/.env`` (:func:`caliber.settings.environment`)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return environment().get(PREFIX + field_name.upper()), field_name, False

    def __call__(self) -> dict[str, Any]:
        values = environment()
        return {name: values[PREFIX + name.upper()] for name in self.settings_cls.model_fields
                if PREFIX + name.upper() in values}
