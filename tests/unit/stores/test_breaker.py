"""The per-store circuit breaker's states and the classification of store errors (no service needed)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import PoolTimeout
from redis.exceptions import ConnectionError as RedisConnectionError

from nubo.stores.breaker import FAILURES_TO_OPEN, Breakers, StoreUnavailable, store_of


def test_store_errors_are_classified_by_store() -> None:
    assert store_of(PoolTimeout("no connection")) == "postgres"
    assert store_of(psycopg.OperationalError("gone")) == "postgres"
    assert store_of(RedisConnectionError("refused")) == "redis"
    assert store_of(StoreUnavailable("mongo")) == "mongo"
    assert store_of(ValueError("a bug")) is None


def test_a_breaker_opens_after_failed_probes_and_closes_on_one_good_one() -> None:
    breakers = Breakers()
    breaker = breakers.by_store["postgres"]
    for _ in range(FAILURES_TO_OPEN - 1):
        breaker.failed("refused")
    breakers.require("postgres")  # one failure is not an outage
    breaker.failed("refused")
    with pytest.raises(StoreUnavailable) as refused:
        breakers.require("redis", "postgres")
    assert refused.value.status == 503 and refused.value.code == "store_unavailable"
    assert refused.value.store == "postgres"
    breaker.succeeded()
    breakers.require("postgres")


def test_a_stall_seen_by_a_request_holds_until_a_good_probe() -> None:
    breakers = Breakers()
    breakers.stalled("redis")
    assert breakers.is_open("redis")
    breakers.by_store["redis"].succeeded()
    assert not breakers.is_open("redis")
