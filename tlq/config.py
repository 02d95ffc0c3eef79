"""Settings in force: where tlq keeps its database, broker and artifacts, and how its workers behave.

All of them are fields of one pydantic-settings model, ``Settings``, each read from its ``TLQ_*`` environment
variable (the field's alias); the four places also have a flag on the root command. With nothing set, tlq needs
no server: SQLite holds the database and, through kombu's SQLAlchemy transport, the broker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class SettingsError(ValueError):
    """A setting has a value tlq cannot use; the message names the variable and the fix."""


MASK = "***"
_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.-]*://"
_URL_IN_TEXT = re.compile(_SCHEME + r"\S+")
_NEXT_URL = re.compile(f";(?={_SCHEME})")  # kombu's failover lists: "redis://a;redis://b"
_TRAILING_PUNCTUATION = ".,;:!?'\")]}>"
# Query keys and key=value pairs (libpq's DSNs, psycopg's messages) whose value is a secret.
_SECRET_KEYS = r"password|passwd|pwd|sslpassword|secret|token|access_token|api_key|apikey"
_SECRET_IN_QUERY = re.compile(rf"(?i)(?P<key>[?&](?:{_SECRET_KEYS})=)[^&#]*")
_SECRET_ASSIGNMENT = re.compile(rf"(?i)\b(?P<key>(?:{_SECRET_KEYS})\s*=\s*)(?:'[^']*'|\"[^\"]*\"|[^\s&;,)]+)")
_DRIVERLESS_POSTGRES = re.compile(r"^(postgres|postgresql)://")


def mask_url(url: str) -> str:
    """Returns ``url`` with its password and any secret query value replaced by ``***``.

    For `tlq config`, logs and error messages. SQLAlchemy renders database URLs (and the database behind a
    ``sqla+`` broker), kombu renders other broker URLs, so what is hidden is what those libraries read as the
    password. One step comes first, because neither library can know where a password with a raw ``/`` or
    ``@`` ends (``redis://:p@ss/word@host``: each shows a piece of it): the user info is taken to run to the
    *last* ``@`` and is percent-encoded before they parse it. That can hide more than the password, never less.
    A URL with no password and no secret query key is returned exactly as written.
    """
    return ";".join(_mask_one(part) for part in _NEXT_URL.split(url))


def mask_secrets_in(text: str) -> str:
    """Returns ``text`` with every URL in it masked as ``mask_url`` does, and every ``password=...`` pair too.

    For error messages and tracebacks that embed a URL or a libpq DSN, before they are logged or stored
    (``jobs.error``). A URL runs to the next whitespace, less trailing punctuation or quotes.
    """
    text = _URL_IN_TEXT.sub(lambda m: _mask_in_text(m.group()), text)
    return _SECRET_ASSIGNMENT.sub(lambda m: m.group("key") + MASK, text)


def _mask_in_text(token: str) -> str:
    url = token.rstrip(_TRAILING_PUNCTUATION)
    return mask_url(url) + token[len(url) :]


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, location = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    has_password = bool(sep and at and colon and "/" not in user)
    if has_password:  # escaped whatever it holds (a byte no locale decodes, say): it is hidden next, never shown
        url = f"{scheme}://{user}:{quote(password, safe='', errors='backslashreplace')}@{location}"
    base, question, query = url.partition("?")
    query = _SECRET_IN_QUERY.sub(lambda m: m.group("key") + MASK, question + query)
    if not has_password:
        return base + query  # as written, bar a secret query value
    try:
        return _render_without_password(base) + query
    except Exception:  # unparseable (a bad port, say): masking must still hide, never raise, on an error path
        return f"{scheme}://{MASK}@{base.rpartition('@')[2]}{query}"


def _render_without_password(url: str) -> str:
    from kombu.transport import TRANSPORT_ALIASES
    from kombu.utils.url import sanitize_url
    from sqlalchemy.engine import make_url

    scheme = url.partition("://")[0]
    prefix, plus, _ = scheme.partition("+")
    if plus and prefix in ("sqla", "sqlalchemy"):  # kombu's SQLAlchemy transport: the rest is a database URL
        return f"{prefix}+{_render_without_password(url[len(prefix) + 1 :])}"
    if scheme in TRANSPORT_ALIASES:
        return sanitize_url(url, mask=MASK)
    return make_url(url).render_as_string(hide_password=True)


def encode_password(url: str) -> str:
    """Percent-encodes a password that holds a raw ``@``, ``/`` or ``#``, so that drivers end it where
    ``mask_url`` does: at the last ``@`` before the query.

    SQLAlchemy ends a password at its first ``@`` and kombu at the first ``/``; either then connects to a host
    or database made of the rest of the password, and its error message quotes that piece, unmasked. Escapes
    already in the password are kept. A URL whose password holds none of these characters is returned as written.
    """
    scheme, sep, rest = url.partition("://")
    location, question, query = rest.partition("?")
    userinfo, at, host = location.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (sep and at and colon) or "/" in user or not any(c in password for c in "@/#"):
        return url
    return f"{scheme}://{user}:{quote(password, safe='%')}@{host}{question}{query}"


def normalize_database_url(url: str) -> str:
    """Maps a plain ``postgresql://`` (or ``postgres://``) URL to the psycopg driver tlq ships, its password
    encoded as ``encode_password`` says."""
    return encode_password(_DRIVERLESS_POSTGRES.sub("postgresql+psycopg://", url))


def normalize_broker_url(url: str) -> str:
    """Accepts ``sqlite:///file`` as a broker URL by routing it through kombu's SQLAlchemy transport; passwords
    are encoded as ``encode_password`` says."""
    if url.startswith("sqlite:"):
        return "sqla+" + url
    if url.startswith(("sqla+postgres://", "sqla+postgresql://")):
        return "sqla+" + normalize_database_url(url[len("sqla+") :])
    return ";".join(encode_password(part) for part in _NEXT_URL.split(url))


def _seconds(variable: str, default: float | None, meaning: str, example: float | None = None) -> Any:
    """A field for a number of seconds above 0, read from ``variable``."""
    fix = f"is not a number of seconds above 0; set it to, say, {example or default:g}"
    return Field(default, alias=variable, description=meaning, json_schema_extra={"fix": fix})


Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FLAGS = ("home", "database_url", "broker_url", "artifacts_dir")  # the settings the root command has a flag for


class Settings(BaseSettings):
    """What a CLI call or a worker process runs against; build it with ``Settings.load``.

    Each field's alias is its environment variable and its description says what it means (the README's
    Configuration section lists the same). Frozen, and equal to another whose values are equal, wherever
    those values came from (``sources``).
    """

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", case_sensitive=True, validate_default=True, protected_namespaces=()
    )

    home: Path = Field(
        Path("~/.tlq"), alias="TLQ_HOME", description="folder for the default SQLite files and artifacts"
    )
    database_url: str = Field("", alias="TLQ_DATABASE_URL", description="SQLAlchemy URL of the job database")
    broker_url: str = Field("", alias="TLQ_BROKER_URL", description="Celery broker URL")
    artifacts_dir: Path = Field(
        None, alias="TLQ_ARTIFACTS_DIR", description="folder under which each job writes its artifacts"
    )
    stale_after_s: Seconds = _seconds(
        "TLQ_STALE_AFTER", 60.0, "seconds without a heartbeat before a running job is recovered"
    )
    db_outage_s: Seconds = _seconds("TLQ_DB_OUTAGE_S", 120.0, "seconds a running job rides out an unreachable database")
    stall_after_s: Seconds = _seconds(
        "TLQ_STALL_AFTER", 900.0, "seconds a running job may make no progress before it is ended"
    )
    visibility_timeout_s: Seconds | None = _seconds(
        "TLQ_VISIBILITY_TIMEOUT", None, "Redis's visibility timeout; unset keeps Redis's own 1 h", example=3600.0
    )
    model_cache: int = Field(
        2,
        ge=0,
        alias="TLQ_MODEL_CACHE",
        description="built models a worker process keeps; 0 keeps none",
        json_schema_extra={"fix": "is not a whole number of models, 0 or more; set it to, say, 2 (0 keeps none)"},
    )
    feature_cache_mb: float = Field(
        2048.0,
        ge=0,
        allow_inf_nan=False,
        alias="TLQ_FEATURE_CACHE_MB",
        description="size bound of the on-disk feature cache in MB; 0 turns it off",
        json_schema_extra={
            "fix": "is not a number of megabytes, 0 or more; set it to, say, 2048 (0 turns the cache off)"
        },
    )
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values passed in. ``load`` reads the variables itself, from ``os.environ`` or the mapping a
        test passes, so that it knows where each value came from; a ``.env`` file or a secrets folder, which
        pydantic-settings would otherwise read, never changes a setting."""
        return (init_settings,)

    @classmethod
    def load(
        cls,
        home: str | os.PathLike | None = None,
        database_url: str | None = None,
        broker_url: str | None = None,
        artifacts_dir: str | os.PathLike | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Builds settings from explicit values (the root command's flags), then the environment (``environ``,
        else ``os.environ``), then the defaults, in that order.

        Raises:
            SettingsError: A value tlq cannot use; its one-line message names the variable (or flag) and the fix.
        """
        explicit = dict(zip(FLAGS, (home, database_url, broker_url, artifacts_dir), strict=True))
        fields = cls.model_fields
        flags = {fields[name].alias: value for name, value in explicit.items() if value not in (None, "")}
        variables = TlqVariables(cls, os.environ if environ is None else environ)()
        sources = {
            name: "flag" if field.alias in flags else field.alias if field.alias in variables else "default"
            for name, field in fields.items()
            if name in FLAGS or field.alias in variables
        }
        values = variables | flags
        try:
            settings = cls(**values)
        except ValidationError as exc:
            raise SettingsError(_explain(cls, exc, values, flags)) from None
        settings._sources = sources
        return settings

    @property
    def sources(self) -> Mapping[str, str]:
        """Where each setting came from: ``flag``, its variable, or ``default`` (absent: the default)."""
        return MappingProxyType(self._sources)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str, info: ValidationInfo) -> str:
        return normalize_database_url(_utf8(value) or f"sqlite:///{_home(info) / 'tlq.sqlite'}")

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str, info: ValidationInfo) -> str:
        return normalize_broker_url(_utf8(value) or f"sqla+sqlite:///{_home(info) / 'broker.sqlite'}")

    @field_validator("artifacts_dir", mode="before")
    @classmethod
    def _artifacts_dir(cls, value: Any, info: ValidationInfo) -> Any:
        return _home(info) / "artifacts" if value in (None, "") else value

    @field_validator("home", "artifacts_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        try:
            return value.expanduser().resolve()
        except RuntimeError as exc:  # "~someone" who is not a user here, or no home directory at all
            raise ValueError(f"{str(exc).rstrip('.')}; give the full path") from None

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__ == other.__dict__  # the values; not their sources

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    def as_env(self) -> dict[str, str]:
        """The environment variables that make a child process (a worker, say) use these settings.

        An unset visibility timeout is passed as empty, which reads as unset: Redis's own timeout, even where the
        parent's environment sets one.
        """
        return {field.alias: _text(getattr(self, name)) for name, field in type(self).model_fields.items()}

    def describe(self) -> dict[str, dict[str, str]]:
        """Every setting with passwords masked and where it came from, for `tlq config`."""
        described = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:  # only the visibility timeout may be unset
                shown = "unset (Redis's 1 h)"
            else:
                shown = mask_url(value) if name.endswith("_url") else _text(value)
            described[name] = {"value": shown, "source": self.sources.get(name, "default")}
        return described

    @property
    def broker_is_embedded(self) -> bool:
        """True when the broker is kombu's SQLAlchemy transport (no server to run)."""
        return self.broker_url.startswith(("sqla+", "sqlalchemy+"))


class TlqVariables(PydanticBaseSettingsSource):
    """pydantic-settings' source of each setting's ``TLQ_*`` variable (its alias), from ``environ``: ``os.environ``,
    or the mapping a test passes. A blank value counts as unset; variables that name no setting are ignored."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (self.environ.get(field.alias, "").strip() or None), field.alias, False

    def __call__(self) -> dict[str, str]:
        found = (self.get_field_value(field, name) for name, field in self.settings_cls.model_fields.items())
        return {variable: value for value, variable, _ in found if value is not None}


def _utf8(url: str) -> str:
    """``url``, unless its user or password holds a byte the locale could not decode (``os.environ`` keeps it as a
    lone surrogate), which no driver can send: refused here, in one line, masked. A path (SQLite's) may hold one."""
    try:
        url.partition("://")[2].rpartition("@")[0].encode()
    except UnicodeEncodeError:
        raise ValueError("its user or password holds a byte that is not UTF-8 text; write it in UTF-8") from None
    return url


def _home(info: ValidationInfo) -> Path:
    """The validated home, which the derived defaults sit under (any path where home itself failed)."""
    return info.data.get("home", Path())


def _explain(cls: type[Settings], exc: ValidationError, values: Mapping[str, Any], flags: Mapping[str, Any]) -> str:
    """pydantic's first error as one line that names the variable, or the flag, and the fix."""
    error = exc.errors()[0]
    variable = str(error["loc"][0]) if error["loc"] else ""
    extra = next((f.json_schema_extra for f in cls.model_fields.values() if f.alias == variable), None)
    fix = extra.get("fix") if isinstance(extra, dict) else None
    where = f"--{variable[len('TLQ_') :].lower().replace('_', '-')}" if variable in flags else variable
    fix = fix or f"cannot be used: {error['msg'].removeprefix('Value error, ')}"  # a path that cannot be resolved
    shown = str(values.get(variable, ""))
    shown = mask_url(shown) if variable.endswith("_URL") else shown  # a URL's password never shows, here too
    return f"{where}={shown!r} {fix}"


def _text(value: object) -> str:
    """A setting as the text its variable takes: numbers as ``_number`` writes them, None as empty (unset)."""
    if value is None:
        return ""
    return _number(value) if isinstance(value, float) else str(value)


def _number(value: float) -> str:
    """``value`` as text that reads back exactly: 2048, not 2048.0."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
