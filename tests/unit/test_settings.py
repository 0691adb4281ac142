"""`nubo.settings.load_settings`: sizes, rates, durations, URLs, lists, prod secret rules and the `.env` file.

Every bad value raises a `SettingsError` naming its variable (the commands print it as one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nubo.settings import (
    DEV_JWT_SECRET,
    RateLimit,
    Settings,
    SettingsError,
    dev_key_exposure,
    load_settings,
    parse_duration,
    parse_rate,
    parse_size,
)


def load(**env: str) -> Settings:
    return load_settings(env, env_file=None)


def test_defaults_follow_the_design() -> None:
    settings = load()
    assert (settings.port, settings.mongo_db, settings.redis_prefix, settings.env) == (
        8080,
        "nubo_recent",
        "nubo:",
        "dev",
    )
    assert settings.retention_days == 30 and settings.jwt_secret == DEV_JWT_SECRET
    assert settings.ws_max_frame_bytes == 64 * 1024


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1048576", 1048576),
        ("512mb", 512 * 1024**2),
        ("64k", 64 * 1024),
        ("64KB", 64 * 1024),
        ("1g", 1024**3),
        (" 10 b ", 10),
        ("0", 0),
    ],
)
def test_sizes(raw: str, expected: int) -> None:
    assert parse_size("X", raw) == expected
    assert load(NUBO_REDIS_MEMORY_BUDGET=raw).redis_memory_budget == expected


@pytest.mark.parametrize("raw", ["12parsecs", "-5mb", "1.5gb", "mb", "ten"])
def test_bad_sizes_name_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(NUBO_WS_MAX_FRAME=raw)
    assert info.value.variable == "NUBO_WS_MAX_FRAME" and raw.strip() in str(info.value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "b", "k", "kb", "m", "mb", "g", "gb"]))
def test_size_units_multiply(amount: int, unit: str) -> None:
    factor = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}
    assert parse_size("X", f"{amount}{unit.upper()}") == amount * factor[unit]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("10/5m", RateLimit(10, 300)),
        ("300/minute", RateLimit(300, 60)),
        ("5/30minutes", RateLimit(5, 1800)),
        ("60/10s", RateLimit(60, 10)),
        ("1/h", RateLimit(1, 3600)),
        ("100 / 1 day", RateLimit(100, 86400)),
    ],
)
def test_rates(raw: str, expected: RateLimit) -> None:
    assert parse_rate("X", raw) == expected
    assert load(NUBO_RATE_LOGIN=raw).rate_login == expected


@pytest.mark.parametrize("raw", ["0/m", "10", "10/fortnight", "abc", "10/0m", "-1/m"])
def test_bad_rates_name_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(NUBO_RATE_MESSAGES=raw)
    assert info.value.variable == "NUBO_RATE_MESSAGES"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("900", 900),
        ("15m", 900),
        ("1h", 3600),
        ("30d", 30 * 86400),
        ("45s", 45),
        ("2 hours", 7200),
    ],
)
def test_durations(raw: str, expected: int) -> None:
    assert parse_duration("X", raw) == expected
    assert load(NUBO_ACCESS_TOKEN_TTL=raw).access_token_ttl == expected


@pytest.mark.parametrize("raw", ["0", "-5", "5x", "1.5h", "soon"])
def test_bad_durations_name_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(NUBO_REFRESH_TOKEN_TTL=raw)
    assert info.value.variable == "NUBO_REFRESH_TOKEN_TTL"


def test_memory_margin_percent_or_size() -> None:
    assert load(NUBO_REDIS_MEMORY_MARGIN="10%").memory_margin_bytes(1000) == 100
    assert load(NUBO_REDIS_MEMORY_MARGIN="64mb").memory_margin_bytes(1024**3) == 64 * 1024**2
    for bad in ("95%", "lots"):
        with pytest.raises(SettingsError, match="NUBO_REDIS_MEMORY_MARGIN"):
            load(NUBO_REDIS_MEMORY_MARGIN=bad)


def test_prod_requires_a_32_byte_secret() -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        load(NUBO_ENV="prod")
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        load(NUBO_ENV="prod", JWT_SECRET="x" * 31)
    assert load(NUBO_ENV="prod", JWT_SECRET="x" * 32).is_prod
    assert load(NUBO_ENV="test", JWT_SECRET="short").jwt_secret == "short"  # only prod insists


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("NUBO_POSTGRES_URL", "not-a-url"),
        ("NUBO_POSTGRES_URL", "postgresql://h:port/db"),
        ("NUBO_MONGO_URL", "postgresql://h/db"),
        ("NUBO_REDIS_PREFIX", "nubo:*"),
        ("NUBO_MONGO_DB", "bad name"),
        ("NUBO_LOG_LEVEL", "loud"),
        ("NUBO_MODERATOR_GRADE", "-1"),
        ("NUBO_WS_QUEUE_SIZE", "0"),
        ("NUBO_RATE_LEASES", "maybe"),
        ("NUBO_NEAR_CACHE", "2"),
    ],
)
def test_bad_values_name_their_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(**{variable: raw})
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")


def test_the_infrastructure_switches_are_on_unless_turned_off() -> None:
    """`NUBO_REDIS_AUTOPIPELINE`, `NUBO_NEAR_CACHE`, `NUBO_RATE_LEASES`: on by default (what ships)."""
    switches = ("redis_autopipeline", "near_cache", "rate_leases")
    assert [getattr(load(), name) for name in switches] == [True, True, True]
    off = load(NUBO_REDIS_AUTOPIPELINE="off", NUBO_NEAR_CACHE="0", NUBO_RATE_LEASES="False")
    assert [getattr(off, name) for name in switches] == [False, False, False]
    on = load(NUBO_REDIS_AUTOPIPELINE="ON", NUBO_NEAR_CACHE="yes", NUBO_RATE_LEASES=" 1 ")
    assert [getattr(on, name) for name in switches] == [True, True, True]


def test_lists_urls_and_empty_values() -> None:
    settings = load(
        NUBO_ALLOWED_ORIGINS="https://a.example, https://b.example,,",
        PORT="",
        NUBO_POSTGRES_URL="postgres://u:p@db:5433/nubo",
        NUBO_REDIS_URL="rediss://cache:6380/1",
    )
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.port == 8080  # an empty value means unset
    assert settings.postgres_url == "postgres://u:p@db:5433/nubo"


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9000\nNUBO_MONGO_DB=from_file\n")
    settings = load_settings({"NUBO_MONGO_DB": "from_env"}, env_file=env_file)
    assert settings.port == 9000 and settings.mongo_db == "from_env"
    assert load_settings({}, env_file=tmp_path / "missing.env").port == 8080


def test_feed_settings() -> None:
    assert (load().feed_fanout_max_followers, load().feed_catchup_seconds) == (1000, 5)
    tuned = load(NUBO_FEED_FANOUT_MAX_FOLLOWERS="0", NUBO_FEED_CATCHUP="1m")
    assert (tuned.feed_fanout_max_followers, tuned.feed_catchup_seconds) == (0, 60)
    for variable, raw in (("NUBO_FEED_FANOUT_MAX_FOLLOWERS", "-1"), ("NUBO_FEED_CATCHUP", "0")):
        with pytest.raises(SettingsError) as info:
            load(**{variable: raw})
        assert info.value.variable == variable


@pytest.mark.parametrize("raw", ["", " ", "\t"])
def test_an_empty_or_blank_redis_prefix_is_refused(raw: str) -> None:
    """An empty prefix used to become `nubo:` silently: `nubo cache flush` would empty the default namespace."""
    with pytest.raises(SettingsError) as info:
        load(NUBO_REDIS_PREFIX=raw)
    assert info.value.variable == "NUBO_REDIS_PREFIX"


def test_the_report_limit_is_a_setting() -> None:
    assert load().rate_reports == RateLimit(30, 3600)
    assert load(NUBO_RATE_REPORTS="5/minute").rate_reports == RateLimit(5, 60)
    with pytest.raises(SettingsError):
        load(NUBO_RATE_REPORTS="lots")


def test_the_development_key_off_loopback_needs_an_explicit_dev_env() -> None:
    with pytest.raises(SettingsError) as info:
        dev_key_exposure(load(), "0.0.0.0")
    assert info.value.variable == "JWT_SECRET"
    with pytest.raises(SettingsError):
        dev_key_exposure(load(NUBO_ENV="test"), "10.0.0.5")
    warning = dev_key_exposure(load(NUBO_ENV="dev"), "0.0.0.0")
    assert warning is not None and "JWT_SECRET" in warning
    assert dev_key_exposure(load(), "127.0.0.1") is None
    assert dev_key_exposure(load(), "::1") is None
    assert dev_key_exposure(load(JWT_SECRET="x" * 32), "0.0.0.0") is None


def test_media_settings() -> None:
    settings = load_settings(
        {
            "NUBO_S3_ENDPOINT": "https://s3.eu-west-1.amazonaws.com",
            "NUBO_S3_BUCKET": "my-photos",
            "NUBO_S3_REGION": "eu-west-1",
            "NUBO_S3_PUBLIC_BASE_URL": "https://cdn.example.org",
            "NUBO_S3_UPLOAD_EXPIRY": "2m",
            "NUBO_S3_URL_EXPIRY": "30d",
            "NUBO_MEDIA_MAX_IMAGE": "5mb",
            "NUBO_MEDIA_DAILY_QUOTA": "2gb",
            "NUBO_MEDIA_MAX_PIXELS": "1000",
        },
        env_file=None,
    )
    assert (settings.s3_endpoint, settings.s3_bucket, settings.s3_region) == (
        "https://s3.eu-west-1.amazonaws.com",
        "my-photos",
        "eu-west-1",
    )
    assert (settings.s3_upload_expiry, settings.s3_url_expiry) == (120, 7 * 86400)  # SigV4's 7-day maximum
    assert (settings.media_max_image_bytes, settings.media_daily_quota, settings.media_max_pixels) == (
        5 * 1024**2,
        2 * 1024**3,
        1000,
    )
    for variable, raw in (("NUBO_S3_BUCKET", "Bad_Bucket"), ("NUBO_S3_ENDPOINT", "s3.amazonaws.com")):
        with pytest.raises(SettingsError) as caught:
            load_settings({variable: raw}, env_file=None)
        assert caught.value.variable == variable
