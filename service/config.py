"""Settings: defaults, `COPYBANDIT_*` environment overrides, validation at start-up.

Every setting is read once, when the app (or a CLI command) starts, and bad values stop it with a
message that names each variable, one to a line, and says what would be accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from generation.model import cache_dir_problem, device_problem, folder_problem

ENV_PREFIX = "COPYBANDIT_"
ENVIRONMENTS = ("development", "test", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Development defaults only; production refuses them (see validate()).
DEV_SECRET = "dev-only-not-secret"


class ConfigError(ValueError):
    """Settings missing or malformed: one line of the message for each, naming its variable.
    All of them at once, so an operator fixes them in one restart, not one restart apiece."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    database_url: str = "sqlite:///var/copybandit.db"
    # "on": test each pooled PostgreSQL connection with a round trip before every use. Off, a
    # connection the server dropped fails one request (503) and the pool reconnects.
    database_pre_ping: str = "off"
    # Keys the HMAC of user ids: the raw id is never stored, and the same user maps to the same
    # hash only while this key stays the same.
    user_id_key: str = DEV_SECRET
    secret_key: str = DEV_SECRET
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    # How stale a worker's view of the counters may be before a decision reloads it.
    snapshot_ttl_seconds: float = 1.0
    # Posterior draws behind each recorded propensity: every block of decisions is drawn with at
    # least this many (bandits.blocks), and busy segments' blocks grow to it.
    propensity_samples: int = 1024
    max_request_bytes: int = 1024 * 1024
    # Serving requests (decide, events) per second per API key in each worker; 0 turns it off.
    rate_limit_per_second: float = 1000.0
    rate_limit_burst: float = 2000.0
    # How long a worker trusts an API key it has checked; a revoked key lasts at most this long.
    key_cache_seconds: float = 5.0
    log_level: str = "INFO"
    # "json": one JSON object per line (time, level, logger, message, process, exception).
    log_format: str = "text"
    # Generation: a local Hugging Face model folder, or "" for the bundled SmolLM2-135M GGUF.
    model: str = ""
    model_cache_dir: str = "var/models"
    model_device: str = "cpu"
    model_dtype: str = "float32"
    copy_min_chars: int = 20
    copy_max_chars: int = 140
    # Comma-separated; empty keeps generation.lint.DEFAULT_BANNED_PHRASES, "," bans none.
    banned_phrases: str = ""
    generation_batch_size: int = 16
    generation_max_rounds: int = 4
    # The lifecycle job (retire, declare, regenerate); "off" leaves it to `copybandit lifecycle`.
    scheduler: str = "on"
    lifecycle_interval_seconds: float = 900.0
    # How long a dashboard sign-in lasts before the marketer signs in again.
    dashboard_session_hours: float = 12.0
    # Proxies in front of `serve` that append the client's address to X-Forwarded-For. Behind one
    # the socket's address is the proxy's, shared by every marketer: the sign-in limits per client
    # address then counted everyone's wrong passwords together. 0: the header is not read (any
    # client could write anything in it).
    trusted_proxies: int = 0

    def validate(self) -> Settings:
        problems: list[str] = []
        _require(
            problems,
            self.env in ENVIRONMENTS,
            "ENV",
            f"must be one of {', '.join(ENVIRONMENTS)}",
            self.env,
        )
        _require(
            problems,
            _is_usable_database_url(self.database_url),
            "DATABASE_URL",
            "must be a sqlite:///path or postgresql://user@host/db URL (driver: psycopg 3)",
            display_url(self.database_url),
        )
        _require(
            problems, 1 <= self.port <= 65535, "PORT", "must be between 1 and 65535", self.port
        )
        _require(
            problems, 1 <= self.workers <= 64, "WORKERS", "must be between 1 and 64", self.workers
        )
        # Upper bounds here and below also keep out inf, which a float setting parses: it passed
        # ">= 0", then each use failed (the scheduler's slot arithmetic on every tick).
        _require(
            problems,
            0 <= self.snapshot_ttl_seconds <= 3600,
            "SNAPSHOT_TTL_SECONDS",
            "must be between 0 and 3600",
            self.snapshot_ttl_seconds,
        )
        _require(
            problems,
            100 <= self.propensity_samples <= 1_000_000,
            "PROPENSITY_SAMPLES",
            "must be between 100 and 1000000",
            self.propensity_samples,
        )
        _require(
            problems,
            0 <= self.rate_limit_per_second <= 1_000_000,
            "RATE_LIMIT_PER_SECOND",
            "must be between 0 and 1000000 (0 turns rate limiting off)",
            self.rate_limit_per_second,
        )
        _require(
            problems,
            1 <= self.rate_limit_burst <= 10_000_000,
            "RATE_LIMIT_BURST",
            "must be between 1 and 10000000",
            self.rate_limit_burst,
        )
        _require(
            problems,
            0 <= self.key_cache_seconds <= 300,
            "KEY_CACHE_SECONDS",
            "must be between 0 and 300",
            self.key_cache_seconds,
        )
        _require(
            problems,
            self.max_request_bytes >= 1024,
            "MAX_REQUEST_BYTES",
            "must be >= 1024",
            self.max_request_bytes,
        )
        # Each bound named where it alone is wrong; COPY_MAX_CHARS=5 was blamed on COPY_MIN_CHARS.
        _require(
            problems,
            self.copy_min_chars >= 1,
            "COPY_MIN_CHARS",
            "must be >= 1",
            self.copy_min_chars,
        )
        _require(
            problems,
            self.copy_max_chars <= 1000,
            "COPY_MAX_CHARS",
            "must be at most 1000",
            self.copy_max_chars,
        )
        if self.copy_min_chars >= self.copy_max_chars:
            # Either may be the one set wrong, so the message blames neither.
            problems.append(
                f"{ENV_PREFIX}COPY_MIN_CHARS and {ENV_PREFIX}COPY_MAX_CHARS: the minimum"
                f" ({self.copy_min_chars}) must be below the maximum ({self.copy_max_chars})"
            )
        _require(
            problems,
            1 <= self.generation_batch_size <= 256,
            "GENERATION_BATCH_SIZE",
            "must be between 1 and 256",
            self.generation_batch_size,
        )
        _require(
            problems,
            1 <= self.generation_max_rounds <= 20,
            "GENERATION_MAX_ROUNDS",
            "must be between 1 and 20",
            self.generation_max_rounds,
        )
        _require(
            problems,
            self.model_dtype in ("float32", "bfloat16", "float16"),
            "MODEL_DTYPE",
            "must be float32, bfloat16 or float16",
            self.model_dtype,
        )
        _require(
            problems,
            self.scheduler in ("on", "off"),
            "SCHEDULER",
            "must be on or off",
            self.scheduler,
        )
        _require(
            problems,
            self.log_level in LOG_LEVELS,
            "LOG_LEVEL",
            f"must be one of {', '.join(LOG_LEVELS)} (any case)",
            self.log_level,
        )
        _require(
            problems,
            self.log_format in ("text", "json"),
            "LOG_FORMAT",
            "must be text or json",
            self.log_format,
        )
        _require(
            problems,
            self.database_pre_ping in ("on", "off"),
            "DATABASE_PRE_PING",
            "must be on or off",
            self.database_pre_ping,
        )
        # The scheduler's slots are milliseconds in a BIGINT: a year keeps them far inside it.
        _require(
            problems,
            1 <= self.lifecycle_interval_seconds <= 365 * 24 * 3600,
            "LIFECYCLE_INTERVAL_SECONDS",
            "must be between 1 and 31536000 (a year)",
            self.lifecycle_interval_seconds,
        )
        _require(
            problems,
            0 < self.dashboard_session_hours <= 24 * 30,
            "DASHBOARD_SESSION_HOURS",
            "must be above 0 and at most 720",
            self.dashboard_session_hours,
        )
        _require(
            problems,
            0 <= self.trusted_proxies <= 10,
            "TRUSTED_PROXIES",
            "must be between 0 and 10",
            self.trusted_proxies,
        )
        if self.env == "production":
            for name in ("user_id_key", "secret_key"):
                value = getattr(self, name)
                _require(
                    problems,
                    value != DEV_SECRET and len(value) >= 32,
                    name.upper(),
                    "must be set to a random value of at least 32 characters in production",
                    "<default>" if value == DEV_SECRET else "<too short>",
                )
            # One value for both lets whoever learns one (it is in every host's environment)
            # forge the other: sign a dashboard session, or link hashed user ids back to people.
            _require(
                problems,
                self.user_id_key != self.secret_key or self.user_id_key == DEV_SECRET,
                "SECRET_KEY",
                "must differ from COPYBANDIT_USER_ID_KEY in production",
                "<the same value>",
            )
        if problems:
            raise ConfigError(*problems)
        return self

    def validate_model(self) -> Settings:
        """What loading the model needs: its device, its folder, or the default model's cache.
        Only the commands that may load it check these, so the others run where the cache cannot
        be made (a read-only working directory) and skip torch's import (about 1 s)."""
        for name in _MODEL_SETTINGS:
            # A cache folder so named was made, and the job failed writing the weights into it.
            if _has_undecodable_bytes(getattr(self, name)):
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} {_NOT_UTF8}")
        _refuse(device_problem(self.model_device), "MODEL_DEVICE", self.model_device)
        if self.model:
            _refuse(folder_problem(Path(self.model)), "MODEL", self.model)
        else:
            cache_problem = cache_dir_problem(Path(self.model_cache_dir))
            _refuse(cache_problem, "MODEL_CACHE_DIR", self.model_cache_dir)
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _is_usable_database_url(url: str) -> bool:
    """One SQLAlchemy can parse, for a database and driver copybandit runs on (another parsed
    here and failed later, with a traceback from the first command)."""
    parsed = _parsed_url(url)
    if parsed is None:
        return False
    if parsed.get_backend_name() == "sqlite":
        return parsed.get_driver_name() == "pysqlite"
    return is_postgresql_url(url)


def is_postgresql_url(url: str) -> bool:
    """A PostgreSQL URL copybandit runs on (psycopg 3: see normalize_database_url)."""
    parsed = _parsed_url(url)
    return parsed is not None and (parsed.get_backend_name(), parsed.get_driver_name()) == (
        "postgresql",
        "psycopg",
    )


# libpq takes a password as a query parameter too (postgresql://app@db/shop?password=...).
_SECRET_PARAMETERS = ("password", "sslpassword")


def display_url(url: str | sa.URL) -> str:
    """The URL to show a person: its passwords hidden, and its other parts as written, where
    SQLAlchemy percent-encodes them (sqlite:///%3Amemory%3A, a path's colons)."""
    parsed = _parsed_url(url)
    if parsed is None:
        return _unparsed_url_masked(str(url))
    hidden = {name: "***" for name in _SECRET_PARAMETERS if name in parsed.query}
    rendered = parsed.update_query_dict(hidden).render_as_string(hide_password=True)
    return urllib.parse.unquote(rendered)


def _parsed_url(url: str | sa.URL) -> sa.URL | None:
    """The URL as SQLAlchemy reads it; None where it cannot, or where it reads a host that holds
    an @: a password with one unescaped @ (app:p@ss@db) parses as password "p" and host "ss@db",
    so the rest of the password was shown, and the driver printed it resolving that host."""
    try:
        parsed = sa.engine.make_url(url)
        parsed.port  # noqa: B018  a port that is not a number raises only when read
    except (sa.exc.ArgumentError, ValueError):
        return None
    return None if parsed.host is not None and "@" in parsed.host else parsed


def _unparsed_url_masked(url: str) -> str:
    """A URL SQLAlchemy could not parse (a password holding an unescaped @ or :, say), with
    everything between :// and the last @ hidden, and its query too: which part is the password
    cannot be told, and the refusal that shows it was printed in clear."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    credentials, at, location = rest.rpartition("@")
    location, question_mark, _ = location.partition("?")
    return f"{scheme}://{'***' if credentials else ''}{at}{location}{question_mark and '?***'}"


def _require(problems: list[str], ok: bool, name: str, rule: str, value: object) -> None:
    if not ok:
        problems.append(f"{ENV_PREFIX}{name} {rule}, got {value!r}")


def _refuse(problem: str | None, name: str, value: object) -> None:
    """_require for a check that says what is wrong itself."""
    if problem is not None:
        raise ConfigError(f"{ENV_PREFIX}{name} {problem}, got {value!r}")


def _parse(field: dataclasses.Field[Any], raw: str) -> object:
    kind: Callable[[str], object] = {"int": int, "float": float}.get(str(field.type), str)
    text = raw.strip()
    try:
        # int() and float() read any script's digits: "٣" (Arabic-Indic three) was port 3. And
        # underscores, which the API's numbers (?before=1_000) and a shell's do not.
        if kind is not str and (not text.isascii() or "_" in text):
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise ConfigError(
            f"{ENV_PREFIX}{field.name.upper()} must be {'an' if kind is int else 'a'} "
            f"{field.type!s}, got {raw!r}"
        ) from None


def load_settings(
    overrides: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then `COPYBANDIT_<NAME>` variables, then `overrides` (tests), validated."""
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, object] = {}
    unparsed: list[str] = []
    for name, field in fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and _has_undecodable_bytes(raw) and name not in _MODEL_SETTINGS:
            # Python keeps such bytes as lone surrogates, which nothing encodes again: the value
            # passed, then its first use was a traceback (a database URL shown or connected to,
            # the user-id key on every decision). Not shown: it may be a secret, or a URL with a
            # password.
            unparsed.append(f"{ENV_PREFIX}{name.upper()} {_NOT_UTF8}")
        elif raw is not None and raw != "":
            try:
                values[name] = _parse(field, raw)
            except ConfigError as exc:
                unparsed.extend(exc.problems)
    for name, value in (overrides or {}).items():
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = value
    settings = Settings(**values)  # type: ignore[arg-type]
    settings = dataclasses.replace(
        settings,
        database_url=normalize_database_url(settings.database_url),
        # The JSON log lines spell levels in lower case; either spelling configures them.
        log_level=str(settings.log_level).upper(),
    )
    if unparsed:
        # With the other settings' problems in the same message (those unparsed left at their
        # defaults): a port that is not a number and a default secret are fixed in one restart.
        try:
            settings.validate()
        except ConfigError as exc:
            unparsed.extend(exc.problems)
        raise ConfigError(*unparsed)
    return settings


# Checked by validate_model alone, as the rest of what loading the model needs is.
_MODEL_SETTINGS = ("model", "model_device", "model_cache_dir")
_NOT_UTF8 = "holds bytes that are not UTF-8; check the encoding of the file or shell that sets it"


def _has_undecodable_bytes(value: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in value)


# Read by the test suite and the benchmarks, or by one command's option (simulate --key), not by
# the service.
_NOT_SETTINGS = ("TEST_DATABASE_URL", "KILL_SEED", "BENCH_MAKE_STARTED", "SIM_KEY")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """`COPYBANDIT_*` variables that name no setting, each with the setting it may have meant:
    a misspelt one is otherwise ignored and its default used without a word."""
    environ = os.environ if environ is None else environ
    known = [f.name.upper() for f in dataclasses.fields(Settings)] + list(_NOT_SETTINGS)
    unknown = []
    for name in sorted(environ):
        suffix = name[len(ENV_PREFIX) :]
        if name.startswith(ENV_PREFIX) and suffix not in known:
            # Without the prefix they share, any two names looked alike.
            close = difflib.get_close_matches(suffix, known, n=1)
            unknown.append(f"{name} (did you mean {ENV_PREFIX}{close[0]}?)" if close else name)
    return unknown


def normalize_database_url(url: str) -> str:
    """Pin PostgreSQL to psycopg 3 and anchor relative SQLite paths at the working directory."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            return "sqlite:///" + str(Path(path).resolve())
    return url
