"""The metric definitions, the exposition and request-id validation, without any service."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from nubo.logs import JsonFormatter, accept_request_id, request_id_var
from nubo.metrics import Metrics, render


def test_every_family_is_named_nubo_area_what_unit_and_declared_once_per_instance() -> None:
    first, second = Metrics(), Metrics()  # own registries: two roots in one process do not collide
    names = {family.name for family in text_string_to_metric_families(render(first).decode())}
    assert names == {family.name for family in text_string_to_metric_families(render(second).decode())}
    assert all(name.startswith("nubo_") for name in names)
    assert {"nubo_http_request_duration_seconds", "nubo_ws_connections", "nubo_tier_reads"} <= names


def test_known_labels_start_at_zero_and_scraped_families_are_appended() -> None:
    from prometheus_client.core import GaugeMetricFamily

    metrics = Metrics()
    metrics.http_requests.labels("/posts/{post_id}", "GET", "200").inc()
    scraped = GaugeMetricFamily("nubo_store_up", "up", labels=["store"])
    scraped.add_metric(["redis"], 1)
    text = render(metrics, [scraped]).decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert Sample("nubo_ws_closes_total", {"reason": "queue_full"}, 0.0) in samples
    assert (
        Sample("nubo_http_requests_total", {"route": "/posts/{post_id}", "method": "GET", "status": "200"}, 1.0)
        in samples
    )
    assert Sample("nubo_store_up", {"store": "redis"}, 1.0) in samples


@pytest.mark.parametrize("given", ["abc", "edge-7f3a:42", "a" * 128, "trace/1@x+y=z.q_r"])
def test_safe_request_ids_are_kept(given: str) -> None:
    assert accept_request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "a" * 129, "has space", "new\nline", 'quote"', "é"])
def test_unsafe_request_ids_are_replaced(given: str | None) -> None:
    made = accept_request_id(given)
    assert made != given and len(made) == 32 and int(made, 16) >= 0


def test_log_lines_carry_the_request_id_of_their_context() -> None:
    record = logging.makeLogRecord({"msg": "something", "levelname": "INFO", "name": "t"})
    assert "request_id" not in JsonFormatter().format(record)
    token = request_id_var.set("r-1")
    try:
        assert '"request_id": "r-1"' in JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
