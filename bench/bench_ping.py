"""`/ping` of `nubo serve` (1 worker) against a bare Litestar app with the same handler (`bench/bare_app.py`).

Both servers run at once, pinned to the same CPU; wrk loads one at a time, in interleaved rounds (order
alternating each round so drift hits both alike); the median of the rounds is kept. Target: nubo's
requests/s >= 0.9 x the bare app's, and likewise its CPU time per request (bare / nubo >= 0.9), which stays
meaningful when other processes load the machine.
"""

from __future__ import annotations

from typing import Any

import httpx

from bench.common import (
    BenchOptions,
    BenchOutput,
    Metric,
    RunningServer,
    WrkResult,
    bench_main,
    init_db,
    isolated_env,
    median,
    nubo_server,
    python_server,
    run_wrk,
)

TARGET_RATIO = 0.9
EXPECTED_BODY = {"message": "pong"}


def check_ping(url: str) -> dict[str, str]:
    """Both servers must answer the seed's exact body before being measured; returns the response headers."""
    response = httpx.get(url, timeout=5.0)
    if response.status_code != 200 or response.json() != EXPECTED_BODY:
        raise RuntimeError(f"{url} answered {response.status_code} {response.text!r}")
    return dict(response.headers)


def load_rounds(servers: dict[str, RunningServer], options: BenchOptions) -> dict[str, list[WrkResult]]:
    """Warm each server up, then run `options.rounds` interleaved wrk runs per server."""
    for server in servers.values():
        run_wrk(server.url + "/ping", options, duration=options.warmup)
    runs: dict[str, list[WrkResult]] = {name: [] for name in servers}
    for round_index in range(options.rounds):
        order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
        for name in order:
            runs[name].append(run_wrk(servers[name].url + "/ping", options, cpu_of=servers[name].pid))
    return runs


def cpu_per_request(results: list[WrkResult]) -> float:
    return median([r.server_cpu_us_per_request or 0.0 for r in results])


def summarize(runs: dict[str, list[WrkResult]]) -> BenchOutput:
    nubo, bare = runs["nubo"], runs["bare"]
    nubo_rps = median([r.requests_per_s for r in nubo])
    bare_rps = median([r.requests_per_s for r in bare])
    errors = sum(r.errors for r in nubo + bare)
    round_ratios = [n.requests_per_s / b.requests_per_s for n, b in zip(nubo, bare, strict=True)]
    metrics = [
        Metric("nubo serve /ping", nubo_rps, "req/s"),
        Metric("nubo serve /ping p50", median([r.p50_ms for r in nubo]), "ms"),
        Metric("nubo serve /ping p99", median([r.p99_ms for r in nubo]), "ms"),
        Metric("bare Litestar /ping", bare_rps, "req/s"),
        Metric("bare Litestar /ping p99", median([r.p99_ms for r in bare]), "ms"),
        # Paired rounds ran back to back, so the median of their ratios cancels machine-wide drift.
        Metric("nubo / bare req/s (median of rounds)", median(round_ratios), "ratio", (">=", TARGET_RATIO)),
        Metric("nubo / bare req/s (ratio of medians)", nubo_rps / bare_rps, "ratio"),
        Metric("nubo serve CPU per request", cpu_per_request(nubo), "us"),
        Metric("bare Litestar CPU per request", cpu_per_request(bare), "us"),
        # CPU per request decides req/s on a saturated core, and it stays steady when other processes load
        # the machine (req/s does not): the same 0.9 target, measured the robust way.
        Metric(
            "bare / nubo CPU per request", cpu_per_request(bare) / cpu_per_request(nubo), "ratio", (">=", TARGET_RATIO)
        ),
        Metric("errors (non-2xx, socket)", errors, "count", ("<=", 0)),
    ]
    details: dict[str, Any] = {
        "rounds": {name: [r.summary() for r in results] for name, results in runs.items()},
        "round_ratios": round_ratios,
    }
    return BenchOutput(metrics, details)


def measure(options: BenchOptions) -> BenchOutput:
    with isolated_env() as env:
        init_db(env)  # a deployed server has its schema (its outbox worker polls a real table)
        with nubo_server(env) as nubo, python_server(["-m", "bench.bare_app"], env, "/ping") as bare:
            assert nubo.process is not None
            servers = {"nubo": RunningServer(nubo.url, nubo.process.pid), "bare": bare}
            headers = {name: check_ping(server.url + "/ping") for name, server in servers.items()}
            output = summarize(load_rounds(servers, options))
    output.details["response_headers"] = headers
    return output


if __name__ == "__main__":
    bench_main("ping", "/ping: nubo serve vs a bare Litestar app (same handler and uvicorn options)", measure)
