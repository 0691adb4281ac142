"""A real Prometheus (built by `scripts/services prometheus-build`) scrapes two `nubo serve` instances, one of
them with two worker processes, after some traffic; a query for each metric family returns a plausible value.
Also: `promtool check rules` accepts ops/prometheus/rules.yml.

Where the Prometheus binary cannot be built (or with NUBO_TEST_PROMETHEUS_PARSER=1), the scrape test reads
both instances' `/metrics` with prometheus-client's own parser instead and evaluates the same checks (it says
so on stdout).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nubo import messaging
from nubo.stores import Stores
from tests.helpers.harness import ROOT, ServerProcess, free_port, wait_port
from tests.helpers.messaging import WsClient, make_users

pytestmark = pytest.mark.e2e

RULES = ROOT / "ops" / "prometheus" / "rules.yml"
POST_ROUTE = "/posts/{post_id}"

# (query, lowest plausible value): one per metric family, evaluated by Prometheus or by the fallback below.
CHECKS: list[tuple[str, float]] = [
    (f'sum(nubo_http_requests_total{{route="{POST_ROUTE}",method="GET",status="200"}})', 2),
    ('sum(nubo_http_request_duration_seconds_count{route="/posts",method="POST"})', 1),
    ("sum(nubo_ws_connections)", 2),
    ('sum(nubo_ws_frames_total{direction="in"})', 1),
    ('sum(nubo_ws_frames_total{direction="out"})', 4),
    ("sum(nubo_ws_send_ack_seconds_count)", 1),
    ("sum(nubo_ws_fanout_seconds_count)", 1),
    ("sum(nubo_ws_resyncs_total)", 1),
    ('sum(nubo_ws_closes_total{reason="queue_full"})', 0),
    ("sum(nubo_events_relay_lag_seconds_count)", 1),
    ('sum(nubo_tier_reads_total{entity="posts",result="hit"})', 1),
    ("sum(nubo_cache_evictions_total)", 0),
    ('sum(nubo_pg_pool_connections{state="idle"})', 1),
    ("sum(nubo_pg_pool_waiting_requests)", 0),
    ('sum(nubo_ratelimit_refusals_total{limit="login_ip"})', 1),
    ("min(nubo_store_up)", 1),
    ('max(nubo_outbox_depth_rows{outbox="projection"})', 0),
    ('max(nubo_outbox_oldest_age_seconds{outbox="projection"})', 0),
    ("max(nubo_redis_memory_used_bytes)", 1),
    ("max(nubo_redis_memory_budget_bytes)", 0),
]
_QUERY = re.compile(r"(sum|min|max)\((\w+)(?:\{(.*)\})?\)")


@pytest.fixture(scope="module")
def prometheus_bin() -> tuple[Path | None, str]:
    """The directory of promtool and prometheus, built once from the Go module proxy; or None and why not.
    `NUBO_TEST_PROMETHEUS_PARSER=1` skips the build (to run the parser path on purpose)."""
    if os.environ.get("NUBO_TEST_PROMETHEUS_PARSER") == "1":
        return None, "NUBO_TEST_PROMETHEUS_PARSER=1"
    result = subprocess.run(
        [str(ROOT / "scripts" / "services"), "prometheus-build"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        return None, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1]), ""


def test_alert_rules_pass_promtool(prometheus_bin: tuple[Path | None, str]) -> None:
    directory, why = prometheus_bin
    assert directory is not None, f"promtool could not be built: {why}"
    result = subprocess.run(
        [str(directory / "promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


@pytest.fixture(scope="module")
def two_instances(db: Stores, start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess, ServerProcess]:
    """Instance A with two workers (prometheus-client's multiprocess mode), instance B with one."""
    env = {"NUBO_RATE_LOGIN": "2/minute", "NUBO_RATE_MESSAGES": "1000/minute"}
    return start_server(env, args=("--workers", "2")), start_server(env)


async def _traffic(db: Stores, a: ServerProcess, b: ServerProcess) -> list[WsClient]:
    """Posts written on A and read on B, a refused login, a message over the sockets, a resync. Returns the
    sockets, left open so that the connection gauge has something to count."""
    alice, bob, carol = await make_users(db, "alice", "bob", "carol")
    async with httpx.AsyncClient(base_url=a.url) as on_a, httpx.AsyncClient(base_url=b.url) as on_b:
        created = await on_a.post("/posts", json={"content": "metrics"}, headers=alice.headers)
        assert created.status_code == 201, created.text
        for _ in range(3):
            read = await on_b.get(f"/posts/{created.json()['id']}", headers=bob.headers)
            assert read.status_code == 200, read.text
        statuses = [
            (await on_a.post("/login", json={"username": "nobody", "password": "wrong password 1"})).status_code
            for _ in range(3)
        ]
        assert statuses[-1] == 429, statuses
    view, _ = await messaging.create_conversation(db, alice.id, kind="direct", user_ids=[bob.id])
    sender = await WsClient.connect(a.ws_url, alice.token)
    receiver = await WsClient.connect(b.ws_url, bob.token)
    behind = await WsClient.connect(b.ws_url, carol.token, query="?last_event_id=999999")
    for client in (sender, receiver, behind):
        await client.hello()
    await sender.send({"type": "message.send", "conversation_id": str(view.id), "content": "hi", "client_id": "c1"})
    await sender.wait_for(lambda c: bool(c.events("ack")))
    await receiver.wait_for(lambda c: bool(c.events("message.new")))
    await behind.wait_for(lambda c: bool(c.events("resync")))
    await behind.close()
    return [sender, receiver]


def _start_prometheus(directory: Path, targets: list[str], data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = data / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{RULES}]\n"
        "scrape_configs:\n"
        "  - job_name: nubo\n"
        f"    static_configs: [{{targets: [{', '.join(repr(t) for t in targets)}]}}]\n"
    )
    process = subprocess.Popen(
        [
            str(directory / "prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={data / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=(data / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, 60)
    return process, f"http://127.0.0.1:{port}"


async def _query(http: httpx.AsyncClient, expr: str) -> float | None:
    reply = (await http.get("/api/v1/query", params={"query": expr})).json()
    assert reply["status"] == "success", reply
    result = reply["data"]["result"]
    return float(result[0]["value"][1]) if result else None


async def _prometheus_values(base: str, within: float = 60.0) -> dict[str, float | None]:
    """Each check's value once every one is plausible (or the last values seen when time runs out)."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        deadline = time.monotonic() + within
        while True:
            up = await _query(http, 'sum(up{job="nubo"})')
            values = {expr: await _query(http, expr) for expr, _ in CHECKS}
            if up == 2 and all(v is not None and v >= low for (e, low), v in zip(CHECKS, values.values(), strict=True)):
                return values
            if time.monotonic() > deadline:
                return values
            await asyncio.sleep(1)


def _parsed_values(texts: list[str]) -> dict[str, float | None]:
    """The same checks over prometheus-client's parse of both instances' exposition (no Prometheus)."""
    samples = [s for text in texts for family in text_string_to_metric_families(text) for s in family.samples]
    values: dict[str, float | None] = {}
    for expr, _ in CHECKS:
        match = _QUERY.fullmatch(expr)
        assert match is not None, expr
        how, name, selector = match.groups()
        wanted = dict(re.findall(r'(\w+)="([^"]*)"', selector or ""))
        found = [s.value for s in samples if s.name == name and wanted.items() <= s.labels.items()]
        values[expr] = {"sum": sum, "min": min, "max": max}[how](found) if found else None
    return values


@pytest.fixture
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="nubo-prom-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def test_prometheus_scrapes_two_instances(
    db: Stores,
    two_instances: tuple[ServerProcess, ServerProcess],
    prometheus_bin: tuple[Path | None, str],
    scratch: Path,
) -> None:
    a, b = two_instances
    sockets = await _traffic(db, a, b)
    try:
        directory, why = prometheus_bin
        if directory is not None:
            print("scraped by a real Prometheus", directory / "prometheus")
            process, base = _start_prometheus(directory, [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], scratch)
            try:
                values = await _prometheus_values(base)
            finally:
                process.terminate()
                process.wait(20)
        else:
            print("Prometheus could not be built; read with prometheus-client's parser instead:", why[-500:])
            await asyncio.sleep(2.5)  # one pool sample
            async with httpx.AsyncClient() as http:
                texts = [(await http.get(server.url + "/metrics")).text for server in (a, b)]
            values = _parsed_values(texts)
    finally:
        for client in sockets:
            await client.close()
    implausible = {
        expr: value for (expr, low), value in zip(CHECKS, values.values(), strict=True) if value is None or value < low
    }
    assert not implausible, implausible


async def test_workers_share_one_exposition(two_instances: tuple[ServerProcess, ServerProcess]) -> None:
    """Any worker of A answers for both: both pools (at least 2 connections each) are in every scrape."""
    a, _ = two_instances
    await asyncio.sleep(2.5)  # each worker samples its pool every 2 s
    async with httpx.AsyncClient(base_url=a.url) as http:
        for _ in range(4):
            text = (await http.get("/metrics")).text
            pool = [
                s
                for f in text_string_to_metric_families(text)
                if f.name == "nubo_pg_pool_connections"
                for s in f.samples
            ]
            assert sum(s.value for s in pool) >= 4, pool
