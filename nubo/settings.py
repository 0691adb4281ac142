"""Typed settings read once from the environment and an optional `.env` file (docs/architecture.md §12).

Every bad value raises :class:`SettingsError` naming the variable, so commands can print one line and exit 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

DEV_JWT_SECRET = "nubo-dev-only-secret-never-use-in-production!"
MIN_PROD_SECRET_BYTES = 32
ENVIRONMENTS = ("dev", "test", "prod")

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "k": 1024, "mb": 1024**2, "m": 1024**2, "gb": 1024**3, "g": 1024**3}


class SettingsError(ValueError):
    """A configuration variable has a value nubo cannot use."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class RateLimit:
    """`amount` hits per `seconds`, parsed from strings such as ``10/5m`` or ``300/minute``."""

    amount: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.amount}/{self.seconds}s"


@dataclass(frozen=True)
class Settings:
    """Everything nubo reads from its environment; build it with :func:`load_settings`."""

    postgres_url: str = "postgresql://nubo:nubo@127.0.0.1:5432/nubo"
    mongo_url: str = "mongodb://127.0.0.1:27017/"
    mongo_db: str = "nubo_recent"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "nubo:"
    jwt_secret: str = DEV_JWT_SECRET
    jwt_issuer: str = "nubo"
    jwt_audience: str = "nubo-api"
    access_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 86400
    host: str = "0.0.0.0"
    port: int = 8080
    env: str = "dev"
    retention_days: int = 30
    redis_memory_budget: int = 0
    redis_memory_margin: str = "10%"
    near_cache_entries: int = 100_000
    # Hand-built infrastructure, each with a switch to measure it against the plain path (bench/run --switch).
    redis_autopipeline: bool = True
    near_cache: bool = True
    rate_leases: bool = True
    feed_fanout_max_followers: int = 1000
    feed_catchup_seconds: int = 5
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    rate_login: RateLimit = RateLimit(10, 300)
    rate_signup: RateLimit = RateLimit(5, 1800)
    rate_default: RateLimit = RateLimit(600, 60)
    rate_messages: RateLimit = RateLimit(60, 10)
    max_body_bytes: int = 1024 * 1024
    ws_max_frame_bytes: int = 64 * 1024
    ws_queue_size: int = 256
    moderator_grade: int = 5
    log_level: str = "info"
    # Write pipeline (docs/write-pipeline.md): view counts and the feed precompute.
    view_flush_seconds: int = 5
    precompute: bool = True
    precompute_max_lag_ms: int = 20
    precompute_max_cpu_percent: int = 50
    precompute_active_seconds: int = 86400
    # Metrics (docs/metrics.md): `/metrics` on or off, and the bearer token it requires (empty: open, except prod).
    metrics: bool = True
    metrics_token: str = ""
    # Reliability (docs/reliability.md)
    redis_stall_ms: int = 250  # how long a send waits for Redis before its events are left to the relay
    drain_seconds: int = 10  # SIGTERM: how long in-flight sends get before sockets are closed
    test_fault: str = ""  # NUBO_TEST_FAULT: a fault point for tests only (never set it in production)
    extra: Mapping[str, str] = field(default_factory=dict)
    # Whether NUBO_ENV was given (not defaulted): the dev JWT key may then serve off loopback. Not a value:
    # left out of comparisons.
    env_explicit: bool = field(default=False, compare=False)
    rate_reports: RateLimit = RateLimit(30, 3600)
    # Media on S3-compatible object storage (docs/media.md). The defaults match `scripts/services`.
    s3_endpoint: str = "http://127.0.0.1:8333"
    s3_bucket: str = "nubo-media"
    s3_access_key: str = "nubo"
    s3_secret_key: str = "nubo-dev-secret"
    s3_region: str = "us-east-1"
    s3_public_base_url: str = ""  # set: reads get <base>/<key> URLs (a public bucket) instead of presigned GETs
    s3_upload_expiry: int = 300
    s3_url_expiry: int = 3600
    media_max_image_bytes: int = 20 * 1024**2
    media_max_video_bytes: int = 200 * 1024**2
    media_max_pixels: int = 50_000_000
    media_daily_quota: int = 1024**3

    @property
    def is_prod(self) -> bool:
        return self.env == "prod"

    def memory_margin_bytes(self, budget: int) -> int:
        """The margin kept free under `budget`, from a percentage or an absolute size."""
        margin = self.redis_memory_margin.strip()
        if margin.endswith("%"):
            return budget * int(margin[:-1]) // 100
        return parse_size("NUBO_REDIS_MEMORY_MARGIN", margin)


def parse_size(variable: str, raw: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", raw)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise SettingsError(variable, f"expected a size such as 512mb or 1048576, got {raw!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


_PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}


def parse_rate(variable: str, raw: str) -> RateLimit:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*", raw.lower())
    # A zero window ("10/0m") would divide by zero in the limiter: rejected like a zero amount.
    if not match or match.group(3) not in _PERIODS or int(match.group(1)) < 1 or int(match.group(2) or 1) < 1:
        raise SettingsError(variable, f"expected a rate such as 10/5minutes or 300/minute, got {raw!r}")
    count = int(match.group(2) or 1)
    return RateLimit(int(match.group(1)), count * _PERIODS[match.group(3)])


def parse_duration(variable: str, raw: str) -> int:
    """Seconds from ``900``, ``15m``, ``1h``, ``30d``."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", raw.lower())
    if not match or (match.group(2) and match.group(2) not in _PERIODS) or int(match.group(1)) < 1:
        raise SettingsError(variable, f"expected a duration such as 900, 15m, 1h or 30d, got {raw!r}")
    return int(match.group(1)) * _PERIODS.get(match.group(2) or "s", 1)


def _int(variable: str, raw: str, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(variable, f"expected an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise SettingsError(variable, f"must be {bounds}, got {value}")
    return value


def _url(variable: str, raw: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not (parts.hostname or parts.path):
        raise SettingsError(variable, f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
    try:
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        raise SettingsError(variable, "the URL has an invalid port") from None
    return raw


_SWITCH_VALUES = {
    "1": True,
    "true": True,
    "on": True,
    "yes": True,
    "0": False,
    "false": False,
    "off": False,
    "no": False,
}


def parse_switch(variable: str, raw: str) -> bool:
    """``on``/``off`` (also ``true``/``false``, ``yes``/``no``, ``1``/``0``, any case)."""
    value = _SWITCH_VALUES.get(raw.strip().lower())
    if value is None:
        raise SettingsError(variable, f"expected on or off, got {raw!r}")
    return value


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Build :class:`Settings` from `environ` (default ``os.environ``) over values from `env_file`."""
    values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)

    def get(name: str) -> str | None:
        raw = values.get(name)
        return raw if raw not in (None, "") else None

    kwargs: dict[str, object] = {}
    env = get("NUBO_ENV") or "dev"
    if env not in ENVIRONMENTS:
        raise SettingsError("NUBO_ENV", f"expected one of {', '.join(ENVIRONMENTS)}, got {env!r}")
    kwargs["env"] = env
    kwargs["env_explicit"] = get("NUBO_ENV") is not None
    if (raw := get("NUBO_POSTGRES_URL")) is not None:
        kwargs["postgres_url"] = _url("NUBO_POSTGRES_URL", raw, ("postgresql", "postgres"))
    if (raw := get("NUBO_MONGO_URL")) is not None:
        kwargs["mongo_url"] = _url("NUBO_MONGO_URL", raw, ("mongodb", "mongodb+srv"))
    if (raw := get("NUBO_REDIS_URL")) is not None:
        kwargs["redis_url"] = _url("NUBO_REDIS_URL", raw, ("redis", "rediss", "unix"))
    if (raw := get("NUBO_MONGO_DB")) is not None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,63}", raw):
            raise SettingsError("NUBO_MONGO_DB", f"not a valid database name: {raw!r}")
        kwargs["mongo_db"] = raw
    if (raw := values.get("NUBO_REDIS_PREFIX")) is not None:
        if not raw.strip():
            raise SettingsError("NUBO_REDIS_PREFIX", "must not be empty or blank (unset it for the default nubo:)")
        if any(ch in raw for ch in "*?[] \n"):
            raise SettingsError("NUBO_REDIS_PREFIX", "must not contain spaces or glob characters (* ? [ ])")
        kwargs["redis_prefix"] = raw
    secret = get("JWT_SECRET")
    if env == "prod" and (secret is None or len(secret.encode()) < MIN_PROD_SECRET_BYTES):
        raise SettingsError("JWT_SECRET", f"must be set to at least {MIN_PROD_SECRET_BYTES} bytes when NUBO_ENV=prod")
    if secret is not None:
        kwargs["jwt_secret"] = secret
    if (raw := get("PORT")) is not None:
        kwargs["port"] = _int("PORT", raw, 0, 65535)
    if (raw := get("NUBO_HOST")) is not None:
        kwargs["host"] = raw
    int_settings = {
        "NUBO_RETENTION_DAYS": ("retention_days", 1),
        "NUBO_WS_QUEUE_SIZE": ("ws_queue_size", 1),
        "NUBO_MODERATOR_GRADE": ("moderator_grade", 0),
        "NUBO_NEAR_CACHE_ENTRIES": ("near_cache_entries", 0),
        "NUBO_FEED_FANOUT_MAX_FOLLOWERS": ("feed_fanout_max_followers", 0),
        "NUBO_REDIS_STALL_MS": ("redis_stall_ms", 1),
        "NUBO_DRAIN_SECONDS": ("drain_seconds", 1),
    }
    for name, (attr, minimum) in int_settings.items():
        if (raw := get(name)) is not None:
            kwargs[attr] = _int(name, raw, minimum)
    size_settings = {
        "NUBO_REDIS_MEMORY_BUDGET": "redis_memory_budget",
        "NUBO_MAX_BODY": "max_body_bytes",
        "NUBO_WS_MAX_FRAME": "ws_max_frame_bytes",
    }
    for name, attr in size_settings.items():
        if (raw := get(name)) is not None:
            kwargs[attr] = parse_size(name, raw)
    if (raw := get("NUBO_REDIS_MEMORY_MARGIN")) is not None:
        if raw.strip().endswith("%"):
            _int("NUBO_REDIS_MEMORY_MARGIN", raw.strip()[:-1], 0, 90)
        else:
            parse_size("NUBO_REDIS_MEMORY_MARGIN", raw)
        kwargs["redis_memory_margin"] = raw
    duration_settings = {
        "NUBO_ACCESS_TOKEN_TTL": "access_token_ttl",
        "NUBO_REFRESH_TOKEN_TTL": "refresh_token_ttl",
        "NUBO_FEED_CATCHUP": "feed_catchup_seconds",
    }
    for name, attr in duration_settings.items():
        if (raw := get(name)) is not None:
            kwargs[attr] = parse_duration(name, raw)
    rate_settings = {
        "NUBO_RATE_LOGIN": "rate_login",
        "NUBO_RATE_SIGNUP": "rate_signup",
        "NUBO_RATE_DEFAULT": "rate_default",
        "NUBO_RATE_MESSAGES": "rate_messages",
        "NUBO_RATE_REPORTS": "rate_reports",
    }
    for name, attr in rate_settings.items():
        if (raw := get(name)) is not None:
            kwargs[attr] = parse_rate(name, raw)
    switch_settings = {
        "NUBO_REDIS_AUTOPIPELINE": "redis_autopipeline",
        "NUBO_NEAR_CACHE": "near_cache",
        "NUBO_RATE_LEASES": "rate_leases",
    }
    for name, attr in switch_settings.items():
        if (raw := get(name)) is not None:
            kwargs[attr] = parse_switch(name, raw)
    if (raw := get("NUBO_ALLOWED_ORIGINS")) is not None:
        kwargs["allowed_origins"] = _list(raw)
    if (raw := get("NUBO_TRUSTED_PROXIES")) is not None:
        kwargs["trusted_proxies"] = _list(raw)
    for name, attr in (("NUBO_JWT_ISSUER", "jwt_issuer"), ("NUBO_JWT_AUDIENCE", "jwt_audience")):
        if (raw := get(name)) is not None:
            kwargs[attr] = raw
    if (raw := get("NUBO_TEST_FAULT")) is not None:
        kwargs["test_fault"] = raw
    if (raw := get("NUBO_LOG_LEVEL")) is not None:
        if raw.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError("NUBO_LOG_LEVEL", f"expected debug, info, warning or error, got {raw!r}")
        kwargs["log_level"] = raw.lower()
    kwargs.update(_media_settings(get))
    _write_pipeline_settings(get, kwargs)
    if (raw := get("NUBO_METRICS")) is not None:
        kwargs["metrics"] = parse_switch("NUBO_METRICS", raw)
    if (raw := get("NUBO_METRICS_TOKEN")) is not None:
        if len(raw) < 16 or not raw.isascii() or any(ch.isspace() for ch in raw):
            raise SettingsError("NUBO_METRICS_TOKEN", "must be at least 16 ASCII characters without spaces")
        kwargs["metrics_token"] = raw
    return Settings(**kwargs)  # type: ignore[arg-type]


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def dev_key_exposure(settings: Settings, host: str) -> str | None:
    """A warning when the built-in development JWT key serves on a non-loopback `host` under an explicit
    ``NUBO_ENV=dev``; :class:`SettingsError` when NUBO_ENV was not set explicitly (anyone who reads the source
    could mint tokens). None when the key is not the development one or the bind is loopback only."""
    if settings.jwt_secret != DEV_JWT_SECRET or host in LOOPBACK_HOSTS or host.startswith("127."):
        return None
    if not (settings.env_explicit and settings.env == "dev"):
        raise SettingsError(
            "JWT_SECRET",
            f"the built-in development key must not serve on {host}: set JWT_SECRET, bind 127.0.0.1, "
            "or set NUBO_ENV=dev explicitly",
        )
    return f"the built-in development JWT key serves on {host}: anyone can mint tokens (set JWT_SECRET)"


def _media_settings(get: Callable[[str], str | None]) -> dict[str, object]:
    """The object storage and media settings (docs/media.md)."""
    kwargs: dict[str, object] = {}
    if (raw := get("NUBO_S3_ENDPOINT")) is not None:
        kwargs["s3_endpoint"] = _url("NUBO_S3_ENDPOINT", raw, ("http", "https"))
    if (raw := get("NUBO_S3_PUBLIC_BASE_URL")) is not None:
        kwargs["s3_public_base_url"] = _url("NUBO_S3_PUBLIC_BASE_URL", raw, ("http", "https"))
    if (raw := get("NUBO_S3_BUCKET")) is not None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", raw):
            raise SettingsError("NUBO_S3_BUCKET", f"not a valid bucket name: {raw!r}")
        kwargs["s3_bucket"] = raw
    for name, attr in (
        ("NUBO_S3_ACCESS_KEY", "s3_access_key"),
        ("NUBO_S3_SECRET_KEY", "s3_secret_key"),
        ("NUBO_S3_REGION", "s3_region"),
    ):
        if (raw := get(name)) is not None:
            kwargs[attr] = raw
    for name, attr in (("NUBO_S3_UPLOAD_EXPIRY", "s3_upload_expiry"), ("NUBO_S3_URL_EXPIRY", "s3_url_expiry")):
        if (raw := get(name)) is not None:
            kwargs[attr] = min(parse_duration(name, raw), 7 * 86400)  # SigV4 presigned URLs live 7 days at most
    for name, attr in (
        ("NUBO_MEDIA_MAX_IMAGE", "media_max_image_bytes"),
        ("NUBO_MEDIA_MAX_VIDEO", "media_max_video_bytes"),
        ("NUBO_MEDIA_DAILY_QUOTA", "media_daily_quota"),
    ):
        if (raw := get(name)) is not None:
            kwargs[attr] = parse_size(name, raw)
    if (raw := get("NUBO_MEDIA_MAX_PIXELS")) is not None:
        kwargs["media_max_pixels"] = _int("NUBO_MEDIA_MAX_PIXELS", raw, 1)
    return kwargs


def _write_pipeline_settings(get: Callable[[str], str | None], kwargs: dict[str, object]) -> None:
    """The settings of the view flusher and the feed precompute (docs/write-pipeline.md)."""
    if (raw := get("NUBO_VIEW_FLUSH")) is not None:
        kwargs["view_flush_seconds"] = parse_duration("NUBO_VIEW_FLUSH", raw)
    if (raw := get("NUBO_PRECOMPUTE")) is not None:
        kwargs["precompute"] = parse_switch("NUBO_PRECOMPUTE", raw)
    if (raw := get("NUBO_PRECOMPUTE_MAX_LAG_MS")) is not None:
        kwargs["precompute_max_lag_ms"] = _int("NUBO_PRECOMPUTE_MAX_LAG_MS", raw, 1, 10_000)
    if (raw := get("NUBO_PRECOMPUTE_MAX_CPU")) is not None:
        kwargs["precompute_max_cpu_percent"] = _int("NUBO_PRECOMPUTE_MAX_CPU", raw, 1, 100)
    if (raw := get("NUBO_PRECOMPUTE_ACTIVE")) is not None:
        kwargs["precompute_active_seconds"] = parse_duration("NUBO_PRECOMPUTE_ACTIVE", raw)
