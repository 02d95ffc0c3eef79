"""Settings in force: where tlq keeps its database, broker and artifacts.

Every setting comes from an environment variable, each of which is also a flag on the root command. With
nothing set, tlq needs no server: SQLite holds the database and, through kombu's SQLAlchemy transport, the
broker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

ENV_HOME = "TLQ_HOME"
ENV_DATABASE_URL = "TLQ_DATABASE_URL"
ENV_BROKER_URL = "TLQ_BROKER_URL"
ENV_ARTIFACTS_DIR = "TLQ_ARTIFACTS_DIR"
ENV_VISIBILITY_TIMEOUT = "TLQ_VISIBILITY_TIMEOUT"
ENV_MODEL_CACHE = "TLQ_MODEL_CACHE"
ENV_FEATURE_CACHE_MB = "TLQ_FEATURE_CACHE_MB"

DEFAULT_MODEL_CACHE = 2  # built models a worker process keeps
DEFAULT_FEATURE_CACHE_MB = 2048.0  # size bound of the on-disk feature cache
VISIBILITY_TIMEOUT_EXAMPLE = 3600.0  # Redis's own default, used when TLQ_VISIBILITY_TIMEOUT is not set

# Reliability timings: (environment variable, default seconds, what it means).
TIMINGS = {
    "stale_after_s": ("TLQ_STALE_AFTER", 60.0, "seconds without a heartbeat before a running job is recovered"),
    "db_outage_s": ("TLQ_DB_OUTAGE_S", 120.0, "seconds a running job rides out an unreachable database"),
    "stall_after_s": ("TLQ_STALL_AFTER", 900.0, "seconds a running job may make no progress before it is ended"),
}


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
    if has_password:
        url = f"{scheme}://{user}:{quote(password, safe='')}@{location}"
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


@dataclass(frozen=True)
class Settings:
    """What a CLI call or a worker process runs against.

    Attributes:
        home: Folder for the default SQLite files and artifacts.
        database_url: SQLAlchemy URL of the job database.
        broker_url: Celery broker URL.
        artifacts_dir: Folder under which each job writes its artifacts.
        stale_after_s: A running job whose heartbeat is this old (``TLQ_STALE_AFTER``) is recovered.
        db_outage_s: How long a running job rides out an unreachable database (``TLQ_DB_OUTAGE_S``).
        stall_after_s: A running job whose task made no step for this long is ended (``TLQ_STALL_AFTER``).
        visibility_timeout_s: Redis's visibility timeout (``TLQ_VISIBILITY_TIMEOUT``); None keeps Redis's 1 h.
        model_cache: Built models a worker process keeps (``TLQ_MODEL_CACHE``); 0 keeps none.
        feature_cache_mb: Size bound of the feature cache in MB (``TLQ_FEATURE_CACHE_MB``); 0 turns it off.
    """

    home: Path
    database_url: str
    broker_url: str
    artifacts_dir: Path
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    stale_after_s: float = TIMINGS["stale_after_s"][1]
    db_outage_s: float = TIMINGS["db_outage_s"][1]
    stall_after_s: float = TIMINGS["stall_after_s"][1]
    visibility_timeout_s: float | None = None
    model_cache: int = DEFAULT_MODEL_CACHE
    feature_cache_mb: float = DEFAULT_FEATURE_CACHE_MB

    @classmethod
    def load(
        cls,
        home: str | os.PathLike | None = None,
        database_url: str | None = None,
        broker_url: str | None = None,
        artifacts_dir: str | os.PathLike | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Builds settings from explicit values, then the environment, then the defaults, in that order."""
        env = os.environ if environ is None else environ
        sources: dict[str, str] = {}

        def pick(name: str, explicit, env_name: str, default):
            if explicit not in (None, ""):
                sources[name] = "flag"
                return explicit
            if env.get(env_name):
                sources[name] = env_name
                return env[env_name]
            sources[name] = "default"
            return default

        home_path = Path(pick("home", home, ENV_HOME, "~/.tlq")).expanduser().resolve()
        db = pick("database_url", database_url, ENV_DATABASE_URL, f"sqlite:///{home_path / 'tlq.sqlite'}")
        broker = pick("broker_url", broker_url, ENV_BROKER_URL, f"sqla+sqlite:///{home_path / 'broker.sqlite'}")
        artifacts = Path(pick("artifacts_dir", artifacts_dir, ENV_ARTIFACTS_DIR, home_path / "artifacts"))
        for name, variable in (
            *((name, variable) for name, (variable, _, _) in TIMINGS.items()),
            ("visibility_timeout_s", ENV_VISIBILITY_TIMEOUT),
            ("model_cache", ENV_MODEL_CACHE),
            ("feature_cache_mb", ENV_FEATURE_CACHE_MB),
        ):
            if env.get(variable, "").strip():
                sources[name] = variable
        return cls(
            home=home_path,
            database_url=normalize_database_url(str(db)),
            broker_url=normalize_broker_url(str(broker)),
            artifacts_dir=artifacts.expanduser().resolve(),
            sources=sources,
            **{name: _seconds(env, variable, default) for name, (variable, default, _) in TIMINGS.items()},
            visibility_timeout_s=_seconds(env, ENV_VISIBILITY_TIMEOUT, None, example=VISIBILITY_TIMEOUT_EXAMPLE),
            model_cache=_count(env, ENV_MODEL_CACHE, DEFAULT_MODEL_CACHE, "models", "0 keeps none"),
            feature_cache_mb=_megabytes(env, ENV_FEATURE_CACHE_MB, DEFAULT_FEATURE_CACHE_MB),
        )

    def as_env(self) -> dict[str, str]:
        """The environment variables that make a child process (a worker, say) use these settings."""
        return {
            ENV_HOME: str(self.home),
            ENV_DATABASE_URL: self.database_url,
            ENV_BROKER_URL: self.broker_url,
            ENV_ARTIFACTS_DIR: str(self.artifacts_dir),
            **{variable: f"{getattr(self, name):g}" for name, (variable, _, _) in TIMINGS.items()},
            # Empty means unset: Redis's own timeout, even where the parent's environment sets one.
            ENV_VISIBILITY_TIMEOUT: "" if self.visibility_timeout_s is None else _number(self.visibility_timeout_s),
            ENV_MODEL_CACHE: str(self.model_cache),
            ENV_FEATURE_CACHE_MB: _number(self.feature_cache_mb),
        }

    def describe(self) -> dict[str, dict[str, str]]:
        """Settings with passwords masked and where each came from, for `tlq config`."""
        values = {
            "home": str(self.home),
            "database_url": mask_url(self.database_url),
            "broker_url": mask_url(self.broker_url),
            "artifacts_dir": str(self.artifacts_dir),
            **{name: _number(getattr(self, name)) for name in TIMINGS},
            "visibility_timeout_s": "unset (Redis's 1 h)"
            if self.visibility_timeout_s is None
            else _number(self.visibility_timeout_s),
            "model_cache": str(self.model_cache),
            "feature_cache_mb": _number(self.feature_cache_mb),
        }
        return {k: {"value": v, "source": self.sources.get(k, "default")} for k, v in values.items()}

    @property
    def broker_is_embedded(self) -> bool:
        """True when the broker is kombu's SQLAlchemy transport (no server to run)."""
        return self.broker_url.startswith(("sqla+", "sqlalchemy+"))


def _seconds(
    env: Mapping[str, str], variable: str, default: float | None, example: float | None = None
) -> float | None:
    """A number of seconds above 0 from ``variable``; ``default`` when it is unset or empty."""
    text = env.get(variable, "").strip()
    if not text:
        return default
    value = _float(text)
    if not value > 0 or value == float("inf"):
        suggestion = default if example is None else example
        raise SettingsError(f"{variable}={text!r} is not a number of seconds above 0; set it to, say, {suggestion:g}")
    return value


def _count(env: Mapping[str, str], variable: str, default: int, what: str, zero: str) -> int:
    """A whole number, 0 or more, from ``variable``; ``default`` when it is unset or empty."""
    text = env.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise SettingsError(
            f"{variable}={text!r} is not a whole number of {what}, 0 or more; set it to, say, {default} ({zero})"
        )
    return value


def _megabytes(env: Mapping[str, str], variable: str, default: float) -> float:
    """A number of megabytes, 0 or more, from ``variable``; ``default`` when it is unset or empty."""
    text = env.get(variable, "").strip()
    if not text:
        return default
    value = _float(text)
    if not value >= 0 or value == float("inf"):
        raise SettingsError(
            f"{variable}={text!r} is not a number of megabytes, 0 or more; set it to, say, {default:g} "
            "(0 turns the cache off)"
        )
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _number(value: float) -> str:
    """``value`` as text that reads back exactly: 2048, not 2048.0."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
