"""Authenticated `GET /me` against `/ping` on one `nubo serve` (1 worker), plus login throughput and p99.

Setup: a fresh database/prefix (`nubo db init`), USERS users inserted directly (one argon2 hash shared, so
setup is quick) with one session each. wrk's Lua script picks a random user's access token per request, so
every `/me` pays the real per-request work: JWT verification, the session check (Redis mirror), the per-user
rate limit at its default (600/minute, atomic Lua in Redis) and the user read through the tiers.
`/ping` and `/me` run in interleaved rounds (order alternating); the median of the per-round ratios is kept.
Target: `/me` req/s >= 0.5 x `/ping` req/s. Login is argon2id-bound (m=19 MiB, t=2, p=1, off the event
loop): reported as measured, with the login rate limit lifted for this run only (every request comes from
127.0.0.1, which the default 10 per 5 minutes would refuse after ten).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    RESULTS_DIR,
    BenchOptions,
    BenchOutput,
    Metric,
    WrkResult,
    bench_main,
    init_db,
    isolated_env,
    median,
    nubo_server,
    print_table,
    run_wrk,
)

USERS = 1000
PASSWORD = "bench-password-123"
TARGET_RATIO = 0.5
ENV = {"NUBO_RATE_LOGIN": "1000000/minute", "NUBO_LOG_LEVEL": "warning"}


async def _make_users(env: Mapping[str, str], count: int) -> list[tuple[str, str]]:
    """(username, access token) for `count` new users, each with one live session."""
    from nubo import accounts
    from nubo.accounts import security
    from nubo.ids import new_id
    from nubo.root import open_root
    from nubo.settings import load_settings

    stores = (await open_root(load_settings(env, env_file=None), wait_for_postgres=True)).stores
    try:
        password_hash = await security.hash_password(PASSWORD)
        rows = [(new_id(), f"bench{i:05d}") for i in range(count)]
        async with stores.pg.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO auth.users (id, username, email, password_hash, first_name, last_name) "
                "VALUES (%s, %s, %s, %s, 'Bench', 'User')",
                [(uid, name, f"{name}@example.com", password_hash) for uid, name in rows],
            )
        users = []
        for uid, name in rows:
            row = {"id": uid, "username": name, "grade": 1}
            issued = await accounts.open_session(stores, row, accounts.ClientInfo(user_agent="bench"))
            users.append((name, issued.access_token))
        return users
    finally:
        await stores.close()


def _lua_list(values: Sequence[str]) -> str:
    return "{" + ",".join(json.dumps(v) for v in values) + "}"


def me_script(tokens: Sequence[str]) -> Path:
    """wrk script: GET /me with a random user's bearer token per request."""
    lua = (
        f"local tokens = {_lua_list(tokens)}\n"
        "request = function()\n"
        "  local t = tokens[math.random(#tokens)]\n"
        "  return wrk.format('GET', '/me', {['Authorization'] = 'Bearer ' .. t})\n"
        "end\n"
    )
    return _write(lua)


def login_script(usernames: Sequence[str]) -> Path:
    """wrk script: POST /login as a random user (right password) per request."""
    bodies = [json.dumps({"username": name, "password": PASSWORD}) for name in usernames]
    lua = (
        f"local bodies = {_lua_list(bodies)}\n"
        "request = function()\n"
        "  return wrk.format('POST', '/login', {['Content-Type'] = 'application/json'},"
        " bodies[math.random(#bodies)])\n"
        "end\n"
    )
    return _write(lua)


def _write(text: str) -> Path:
    with tempfile.NamedTemporaryFile("w", prefix="nubo-wrk-auth-", suffix=".lua", delete=False) as handle:
        handle.write(text)
    return Path(handle.name)


def _warm_every_user(url: str, tokens: Sequence[str]) -> None:
    """One /me per user before measuring: a user's first read goes through Mongo and PostgreSQL and fills
    the Redis tier; the measured runs then see the steady state of an active user base."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for token in tokens:
            response = client.get("/me", headers={"Authorization": f"Bearer {token}"})
            if response.status_code != 200:
                raise RuntimeError(f"/me answered {response.status_code}: {response.text}")


def measure(options: BenchOptions) -> BenchOutput:
    with isolated_env(ENV) as env:
        init_db(env)
        users = asyncio.run(_make_users(env, USERS))
        scripts = {"me": me_script([t for _, t in users]), "login": login_script([u for u, _ in users])}
        try:
            with nubo_server(env) as server:
                assert server.process is not None
                pid = server.process.pid
                _warm_every_user(server.url, [t for _, t in users])
                runs = _ping_and_me_rounds(server.url, pid, scripts["me"], options)
                login_options = BenchOptions(
                    duration=options.duration,
                    threads=options.threads,
                    connections=min(options.connections, 16),
                    rounds=1,
                    warmup=0,
                )
                login = run_wrk(server.url + "/login", login_options, script=scripts["login"], cpu_of=pid)
        finally:
            for path in scripts.values():
                path.unlink(missing_ok=True)
    return summarize(runs, login)


def _ping_and_me_rounds(url: str, pid: int, me: Path, options: BenchOptions) -> dict[str, list[WrkResult]]:
    targets = {"ping": (url + "/ping", None), "me": (url + "/me", me)}
    for target, script in targets.values():
        run_wrk(target, options, duration=options.warmup, script=script)
    runs: dict[str, list[WrkResult]] = {"ping": [], "me": []}
    for index in range(options.rounds):
        order = ["ping", "me"] if index % 2 == 0 else ["me", "ping"]
        for name in order:
            target, script = targets[name]
            runs[name].append(run_wrk(target, options, script=script, cpu_of=pid))
    return runs


def summarize(runs: dict[str, list[WrkResult]], login: WrkResult) -> BenchOutput:
    ping, me = runs["ping"], runs["me"]
    ratios = [m.requests_per_s / p.requests_per_s for m, p in zip(me, ping, strict=True)]
    cpu = {name: median([r.server_cpu_us_per_request or 0.0 for r in results]) for name, results in runs.items()}
    errors = sum(r.errors for r in ping + me) + login.errors
    metrics = [
        Metric("/ping", median([r.requests_per_s for r in ping]), "req/s"),
        Metric("GET /me (authenticated)", median([r.requests_per_s for r in me]), "req/s"),
        Metric("/me / /ping req/s (median of rounds)", median(ratios), "ratio", (">=", TARGET_RATIO)),
        Metric("/ping p99", median([r.p99_ms for r in ping]), "ms"),
        Metric("/me p99", median([r.p99_ms for r in me]), "ms"),
        Metric("/ping server CPU per request", cpu["ping"], "us"),
        Metric("/me server CPU per request", cpu["me"], "us"),
        Metric(
            "/ping / /me CPU per request",
            cpu["ping"] / cpu["me"] if cpu["me"] else 0.0,
            "ratio",
            (">=", TARGET_RATIO),
        ),
        Metric("POST /login (argon2id-bound)", login.requests_per_s, "req/s"),
        Metric("POST /login p50", login.p50_ms, "ms"),
        Metric("POST /login p99", login.p99_ms, "ms"),
        Metric("POST /login server CPU per request", login.server_cpu_us_per_request or 0.0, "us"),
        Metric("errors (non-2xx, socket)", errors, "count", ("<=", 0)),
    ]
    rounds = {name: [r.summary() for r in results] for name, results in runs.items()}
    details: dict[str, Any] = {
        "users": USERS,
        "round_ratios": ratios,
        "rounds": rounds,
        "login": login.summary(),
        "env": ENV,
    }
    return BenchOutput(metrics, details)


def _out_path(argv: Sequence[str]) -> Path:
    """Where `bench_main` wrote the result (its `--out`, else the default)."""
    for index, arg in enumerate(argv):
        if arg.startswith("--out="):
            return Path(arg.split("=", 1)[1])
        if arg == "--out" and index + 1 < len(argv):
            return Path(argv[index + 1])
    return RESULTS_DIR / "auth.json"


if __name__ == "__main__":
    bench_main("auth", "Authenticated GET /me vs /ping (same run), and login throughput", measure)
    print_table([json.loads(_out_path(sys.argv[1:]).read_text())])
