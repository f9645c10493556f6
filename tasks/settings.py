"""Every ``AML_SMEAR_*`` environment variable, parsed here and nowhere else (pydantic-settings).

The environment is what every process of a deployment shares: the worker's, its flow-run
processes', the Dask workers' (which inherit it), and ``aml-smear``'s. Each concern has a small
settings class whose fields are the variables it reads (``cache_max_mb`` is
``AML_SMEAR_CACHE_MAX_MB``), with their types, bounds and defaults. ``Class.read()`` builds one
from the environment as it is at that moment (a test's ``monkeypatch.setenv``, or what the CLI
sets for its workers, is seen at the next read) and reads only that class's variables: a bad
value fails what reads it, with a :class:`SettingError` naming the variable, the value and what
it accepts, and nothing else. An empty variable counts as unset.

Other modules only write variables (:func:`tasks.registry.allow_model_file`; the CLI for its
worker processes): tests/tasks/test_settings.py fails if one reads an ``AML_SMEAR_*`` variable
itself. The CLI's options that default to a variable (click's ``envvar``: ``--debug``,
``--s3-endpoint-url``, ``serve --scheduler/--workers``) name one of these fields, with its bounds
(tests/app/test_cli_defaults.py). The table of every variable is in docs/reference.md, "Environment variables": its rows
for these classes are :func:`table_rows` (``python -m tasks.settings`` prints them; the same test
keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from aml_model.config import Positive, accepted

__all__ = [
    "MAX_LINK_EXPIRY_SECONDS",
    "PREFIX",
    "SETTINGS",
    "CacheSettings",
    "DaskSettings",
    "DebugSettings",
    "LinkSettings",
    "PrivacySettings",
    "RegistrySettings",
    "S3Settings",
    "SettingError",
    "table_rows",
    "variable",
]

PREFIX = "AML_SMEAR_"
#: S3's limit on a SigV4 presigned URL's lifetime, seconds (7 days).
MAX_LINK_EXPIRY_SECONDS = 7 * 24 * 3600


class SettingError(ValueError):
    """An ``AML_SMEAR_*`` variable holds a value its setting does not accept."""


class _Environment(EnvSettingsSource):
    """The environment source over a given mapping (a deployment's ``env``, a test's dict)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class _Settings(BaseSettings):
    """The variables of one concern. ``read_by`` says what reads them (for the table)."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_ignore_empty=True, frozen=True, extra="ignore"
    )
    read_by: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
        )  # the process environment only: no .env file, no secrets folder

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings as ``environ`` (``os.environ`` by default) holds them now.

        Raises:
            SettingError: a variable's value is not one its setting accepts; the message names it.
        """
        try:
            if environ is None:
                return cls()
            return cls(_build_sources=((_Environment(cls, environ),), {}))
        except ValidationError as error:
            raise SettingError(_message(cls, error)) from None


def variable(name: str) -> str:
    """The environment variable of the setting ``name`` (``cache_max_mb`` -> ``AML_SMEAR_CACHE_MAX_MB``)."""
    return PREFIX + name.upper()


def _message(cls: type[_Settings], error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        if not item["loc"]:  # a check of several variables: its own message
            problems.append(
                str(item["ctx"]["error"]) if "error" in item.get("ctx", {}) else item["msg"]
            )
            continue
        name = str(item["loc"][0])
        info = cls.model_fields[name]
        problems.append(
            f"{variable(name)}={item['input']!r} is invalid: expected "
            f"{accepted(info.annotation, info.metadata)}"
        )
    return "; ".join(problems)


class DebugSettings(_Settings):
    read_by: ClassVar[str] = "flows.logs.debug_requested (the CLI's `--debug` sets it)"

    debug: bool = Field(
        False,
        description="Full tracebacks and TensorFlow's C++ logs in the terminal, "
        "as `aml-smear --debug`.",
    )


class S3Settings(_Settings):
    read_by: ClassVar[str] = "the CLI (`--s3-endpoint-url`)"

    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO) for `s3://` URLs, as `--s3-endpoint-url`."
    )


class DaskSettings(_Settings):
    read_by: ClassVar[str] = (
        "app.serve.dask_runner_from_environment (deployed and served flow runs); the "
        "CLI's `serve` (`--scheduler`, `--workers`)"
    )

    dask_scheduler: str | None = Field(
        None,
        description="Address of an existing Dask scheduler "
        "(`tcp://HOST:8786`) for a flow run's tasks; not with "
        "`AML_SMEAR_DASK_WORKERS`.",
    )
    dask_workers: Positive | None = Field(
        None, description="Workers of the LocalCluster a flow run starts (unset: one per CPU core)."
    )


class RegistrySettings(_Settings):
    read_by: ClassVar[str] = (
        "tasks.registry.allowed_model_prefixes (the CLI adds the file its `--model` names)"
    )

    model_prefixes: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated folders or URL prefixes where a "
        "`model` given as a path may lie, besides the "
        "store's `models/`; any other path is refused.",
    )

    @field_validator("model_prefixes", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(entry.strip() for entry in value.split(",") if entry.strip())
        return value


class CacheSettings(_Settings):
    read_by: ClassVar[str] = (
        "tasks.store_cache.LocalCacheSettings.from_env (every process that loads a model)"
    )

    cache_dir: str | None = Field(
        None,
        description="Folder of the local copies of remote models and weights "
        "(unset: `$XDG_CACHE_HOME/aml-smear`, else "
        "`~/.cache/aml-smear`); the user's own, mode 0700.",
    )
    cache_max_mb: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        2048, description="Size cap of that folder, MB; files used longest ago are removed first."
    )


class LinkSettings(_Settings):
    read_by: ClassVar[str] = "tasks.links.link_expiry (the flow runs that publish report links)"

    link_expiry_seconds: Annotated[int, Field(ge=0, le=MAX_LINK_EXPIRY_SECONDS)] | None = Field(
        None,
        description="Lifetime of presigned S3 report links, seconds (unset: 7 days, and nothing presigned "
        "with temporary credentials); 0 presigns nothing.",
    )

    @field_validator("link_expiry_seconds", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


class PrivacySettings(_Settings):
    read_by: ClassVar[str] = "tasks.privacy (flow runs: what they send to Prefect)"

    patient_id_key: SecretStr | None = Field(
        None,
        description="Key of the HMAC-SHA256 pseudonyms that replace "
        "patient ids in what is sent to Prefect; never a "
        "deployment's job variable.",
    )
    pseudonymise: bool = Field(
        False,
        description="Makes `AML_SMEAR_PATIENT_ID_KEY` mandatory: a flow run without it fails.",
    )

    @model_validator(mode="after")
    def _key_when_required(self) -> Self:
        if self.pseudonymise and self.patient_id_key is None:
            message = (
                f"{variable('pseudonymise')} is set but {variable('patient_id_key')} is not: set the key in "
                f"the environment of the process that runs the flows (not in a deployment's job variables)"
            )
            raise ValueError(message)
        return self

    @property
    def key(self) -> bytes | None:
        """The pseudonyms' key; None: patient ids are sent as they are."""
        return (
            None if self.patient_id_key is None else self.patient_id_key.get_secret_value().encode()
        )


#: Every settings class, in the table's order.
SETTINGS: tuple[type[_Settings], ...] = (
    DebugSettings,
    S3Settings,
    DaskSettings,
    RegistrySettings,
    CacheSettings,
    LinkSettings,
    PrivacySettings,
)


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, tuple):
        return ", ".join(value) or "none"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def table_rows() -> list[str]:
    """The Markdown rows of docs/reference.md's environment table for the variables parsed here:
    variable | accepts | default | what | read by."""
    rows = []
    for cls in SETTINGS:
        for name, info in cls.model_fields.items():
            rows.append(
                f"| `{variable(name)}` | {accepted(info.annotation, info.metadata)} | "
                f"{_default(info.default)} | {info.description} | {cls.read_by} |"
            )
    return rows


if __name__ == "__main__":
    print("\n".join(table_rows()))
