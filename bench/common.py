"""Shared benchmark helpers, and the runner behind `bench/run`.

A benchmark is a module `bench/bench_<name>.py` that ends with ``bench_main("<name>", "<title>", measure)``.
`measure(options)` gets a :class:`BenchOptions` and returns a :class:`BenchOutput` (metrics with optional
targets, plus free-form details); `bench_main` writes it as JSON (``--out``, default
``bench/results/<name>.json``). `bench/run [names...]` runs each module in its own process, merges their
files into ``bench/results/latest.json`` and prints one table.

Helpers for the measuring itself:
- :func:`isolated_env`: a full environment for nubo processes with a fresh PostgreSQL database, Mongo
  database and Redis prefix (created and dropped like the test fixtures), services found like the tests do.
- :func:`init_db`: ``nubo db init`` on that environment; :func:`nubo_server`: a real ``nubo serve``.
- :func:`run_wrk`: Debian's wrk (``-t2 -c64 -d10s --latency`` by default, optional Lua script built by
  :func:`wrk_script` for method/body/headers), parsed into requests/s, p50 and p99.
- :func:`pin_to_server_cpu`: on machines with >= 2 CPUs, servers share one CPU and wrk gets the others, so
  the load generator does not steal the server's core.

`bench/run --switch NAME` also runs each benchmark a performance switch serves with it off (see
:mod:`bench.switches`); the setting reaches the servers through :data:`SERVER_ENV_VARIABLE`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.helpers.harness` is imported from the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from tests.helpers.harness import ServerProcess, free_port, new_run_id, run_nubo, service_env, with_database  # noqa: E402

BENCH_DIR = ROOT / "bench"
# Settings `bench/run` gives every nubo process of one benchmark run (``NAME=value`` pairs, space-separated),
# e.g. ``NUBO_NEAR_CACHE=off``: the way `--switch` turns a switch off. A NUBO_ name, so servers never see it.
SERVER_ENV_VARIABLE = "NUBO_BENCH_SERVER_ENV"
RESULTS_DIR = BENCH_DIR / "results"
WRK = os.environ.get("NUBO_WRK", "/usr/bin/wrk")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    "<=": lambda value, bound: value <= bound,
    ">": lambda value, bound: value > bound,
    "<": lambda value, bound: value < bound,
}


# --- results ------------------------------------------------------------------------------------------------


@dataclass
class Metric:
    """One measured number; with a target (``(">=", 0.9)``) it also says whether the target is met."""

    name: str
    value: float
    unit: str
    target: tuple[str, float] | None = None

    @property
    def ok(self) -> bool | None:
        if self.target is None:
            return None
        op, bound = self.target
        return _OPS[op](self.value, bound)

    def as_json(self) -> dict[str, Any]:
        target = f"{self.target[0]} {self.target[1]:g}" if self.target else None
        return {"name": self.name, "value": self.value, "unit": self.unit, "target": target, "ok": self.ok}


@dataclass
class BenchOutput:
    """What a benchmark's `measure` returns."""

    metrics: list[Metric]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchOptions:
    """Load settings shared by every benchmark (the `bench/run` flags)."""

    duration: int = 10
    threads: int = 2
    connections: int = 64
    rounds: int = 3
    warmup: int = 2


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": WRK if Path(WRK).exists() else None,
    }


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- wrk ----------------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """Parsed `wrk --latency` output."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx responses plus socket errors
    server_cpu_us_per_request: float | None = None  # CPU the server spent per request (see `cpu_of`)
    raw: str = field(repr=False, default="")

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "raw"}


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Requests/s, p50, p99, request and error counts from wrk's `--latency` report."""
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", output, re.M)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+(\S+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    if not (rps and p50 and p99 and total):
        raise ValueError(f"unexpected wrk output:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    socket_errors = re.search(r"Socket errors:\s*connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non2xx.group(1)) if non2xx else 0
    errors += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return WrkResult(
        float(rps.group(1)),
        _latency_ms(p50.group(1)),
        _latency_ms(p99.group(1)),
        int(total.group(1)),
        errors,
        raw=output,
    )


def wrk_script(method: str = "GET", body: str | None = None, headers: Mapping[str, str] | None = None) -> Path:
    """A Lua script setting wrk's method, body and headers (the caller deletes it, or lets tmp do it)."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items()]
    handle, name = tempfile.mkstemp(prefix="nubo-wrk-", suffix=".lua")
    with os.fdopen(handle, "w") as script:
        script.write("\n".join(lines) + "\n")
    return Path(name)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc), threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str,
    options: BenchOptions,
    *,
    duration: int | None = None,
    script: Path | None = None,
    headers: Mapping[str, str] | None = None,
    cpu_of: int | None = None,
) -> WrkResult:
    """Load `url` with wrk (threads/connections/duration from `options`) and parse the report.

    With `cpu_of` (the server's pid), also measure the server's CPU time per request: unlike requests/s,
    it barely moves when other processes compete for the machine.
    """
    if not Path(WRK).exists():
        raise RuntimeError(f"wrk not found at {WRK}: apt-get install wrk (or set NUBO_WRK)")
    seconds = duration or options.duration
    cmd = [WRK, f"-t{options.threads}", f"-c{options.connections}", f"-d{seconds}s", "--latency"]
    cmd += [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    if script is not None:
        cmd += ["-s", str(script)]
    cpu_before = process_cpu_seconds(cpu_of) if cpu_of else 0.0
    done = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 60, preexec_fn=_pin_to_load_cpus
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout)
    if cpu_of and result.requests:
        result.server_cpu_us_per_request = (process_cpu_seconds(cpu_of) - cpu_before) * 1e6 / result.requests
    return result


# --- CPU placement ------------------------------------------------------------------------------------------


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_to_server_cpu(pid: int) -> int | None:
    """Pin a server process to the last CPU (when there are >= 2); returns the CPU or None."""
    cpus = _cpus()
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(pid, {cpus[-1]})
    return cpus[-1]


def _pin_to_load_cpus() -> None:
    cpus = _cpus()
    if len(cpus) >= 2:
        os.sched_setaffinity(0, set(cpus[:-1]))


# --- environments and servers -------------------------------------------------------------------------------


def runner_server_env() -> dict[str, str]:
    """The settings `bench/run` gave this benchmark run for its nubo processes (:data:`SERVER_ENV_VARIABLE`)."""
    pairs = (pair.split("=", 1) for pair in os.environ.get(SERVER_ENV_VARIABLE, "").split() if "=" in pair)
    return {name: value for name, value in pairs}


def switched_on(setting: str) -> bool:
    """Whether the performance switch `setting` (e.g. ``NUBO_REDIS_AUTOPIPELINE``) is on for this run."""
    from nubo.settings import parse_switch

    return parse_switch(setting, runner_server_env().get(setting, "on"))


@contextlib.contextmanager
def isolated_env(overrides: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Subprocess env on a fresh PostgreSQL database, Mongo database and Redis prefix, dropped after."""
    import psycopg
    from pymongo import MongoClient
    from redis import Redis

    from nubo.settings import load_settings
    from tests.helpers.buckets import remove_bucket

    base = service_env()
    name = "nubo_bench_" + new_run_id()
    with psycopg.connect(base["NUBO_POSTGRES_URL"], autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUBO_") and k != "JWT_SECRET"}
    env.update(
        {
            "NUBO_POSTGRES_URL": with_database(base["NUBO_POSTGRES_URL"], name),
            "NUBO_MONGO_URL": base["NUBO_MONGO_URL"],
            "NUBO_MONGO_DB": name,
            "NUBO_REDIS_URL": base["NUBO_REDIS_URL"],
            "NUBO_REDIS_PREFIX": f"{name}:",
            "NUBO_S3_ENDPOINT": base["NUBO_S3_ENDPOINT"],
            "NUBO_S3_ACCESS_KEY": base["NUBO_S3_ACCESS_KEY"],
            "NUBO_S3_SECRET_KEY": base["NUBO_S3_SECRET_KEY"],
            "NUBO_S3_BUCKET": name.replace("_", "-"),
            # Measure what ships: production mode, default log level.
            "NUBO_ENV": "prod",
            "JWT_SECRET": secrets.token_urlsafe(48),
            "PYTHONPATH": str(ROOT),
            **(overrides or {}),
            **runner_server_env(),
        }
    )
    try:
        yield env
    finally:
        with psycopg.connect(base["NUBO_POSTGRES_URL"], autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with MongoClient[dict[str, Any]](base["NUBO_MONGO_URL"], serverSelectionTimeoutMS=5000) as client:
            client.drop_database(name)
        with Redis.from_url(base["NUBO_REDIS_URL"]) as redis:
            keys = list(redis.scan_iter(match=f"{name}:*", count=1000))
            for start in range(0, len(keys), 500):
                redis.unlink(*keys[start : start + 500])
        remove_bucket(load_settings(env, env_file=None))


def init_db(env: Mapping[str, str]) -> None:
    """`nubo db init` on `env` (needed by every benchmark that touches tables)."""
    done = run_nubo(["db", "init"], env, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"nubo db init failed:\n{done.stdout}\n{done.stderr}")


@contextlib.contextmanager
def nubo_server(env: Mapping[str, str], args: Sequence[str] = (), *, pin: bool = True) -> Iterator[ServerProcess]:
    """A real `nubo serve` (1 worker unless `args` says otherwise), ready on /readyz; SIGTERM at exit."""
    server = ServerProcess(env=dict(env))
    try:
        server.start(args=tuple(args))
        if pin and server.process is not None:
            pin_to_server_cpu(server.process.pid)
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class RunningServer:
    """Base URL and pid of a server started by :func:`python_server`."""

    url: str
    pid: int


@contextlib.contextmanager
def python_server(
    args: Sequence[str], env: Mapping[str, str], ready_path: str, *, pin: bool = True, timeout: float = 30.0
) -> Iterator[RunningServer]:
    """Run ``python <args...> <port>`` (e.g. a bare uvicorn app); yield it once `ready_path` answers 200."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, *args, str(port)], env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_http(url + ready_path, process, log, timeout)
            if pin:
                pin_to_server_cpu(process.pid)
            yield RunningServer(url, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s")


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# --- one benchmark's entry point ----------------------------------------------------------------------------


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchOptions()
    parser.add_argument("--duration", type=int, default=defaults.duration, help="seconds of load per wrk run")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="wrk threads (-t)")
    parser.add_argument("--connections", type=int, default=defaults.connections, help="wrk connections (-c)")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="seconds of warm-up load")


def options_from(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        duration=args.duration,
        threads=args.threads,
        connections=args.connections,
        rounds=args.rounds,
        warmup=args.warmup,
    )


def bench_main(name: str, title: str, measure: Callable[[BenchOptions], BenchOutput]) -> None:
    """Command-line entry of one benchmark: measure, then write its JSON result file."""
    parser = argparse.ArgumentParser(prog=f"bench_{name}", description=title)
    add_load_arguments(parser)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json")
    args = parser.parse_args()
    options = options_from(args)
    started = now_iso()
    output = measure(options)
    write_json(
        args.out,
        {
            "name": name,
            "title": title,
            "started_at": started,
            "finished_at": now_iso(),
            "options": asdict(options),
            "machine": machine_info(),
            "server_env": runner_server_env(),
            "metrics": [metric.as_json() for metric in output.metrics],
            "details": output.details,
        },
    )


# --- the runner (`bench/run`) -------------------------------------------------------------------------------


def available() -> dict[str, Path]:
    return {path.stem.removeprefix("bench_"): path for path in sorted(BENCH_DIR.glob("bench_*.py"))}


def run_one(
    name: str, args: argparse.Namespace, variant: str = "", server_env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run `bench_<name>` in its own process, its nubo processes getting `server_env` (a `variant` of the
    run, e.g. ``near-cache-off``, writes its own result file); its result, or an error entry if it failed."""
    out = RESULTS_DIR / (f"{name}.{variant}.json" if variant else f"{name}.json")
    out.unlink(missing_ok=True)
    keys = ("duration", "threads", "connections", "rounds", "warmup")
    flags = [f"--{key}={getattr(args, key)}" for key in keys]
    cmd = [sys.executable, "-m", f"bench.bench_{name}", *flags, f"--out={out}"]
    passed = " ".join(f"{key}={value}" for key, value in (server_env or {}).items())
    env = {**os.environ, "PYTHONPATH": str(ROOT), SERVER_ENV_VARIABLE: passed}
    print(f"bench/run: {name}" + (f" with {passed}" if passed else ""), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env)
    if done.returncode != 0 or not out.exists():
        return {"name": name, "error": f"exited with {done.returncode}", "metrics": []}
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def print_table(results: Sequence[Mapping[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="nubo benchmarks")
    for column, justify in (
        ("bench", "left"),
        ("metric", "left"),
        ("value", "right"),
        ("unit", "left"),
        ("target", "left"),
        ("", "center"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    marks = {True: "[green]ok[/]", False: "[red]MISSED[/]", None: ""}
    for result in results:
        if "error" in result:
            table.add_row(result["name"], "[red]failed[/]", "", "", "", result["error"])
        for metric in result["metrics"]:
            table.add_row(
                result["name"],
                metric["name"],
                f"{metric['value']:,.2f}",
                metric["unit"],
                metric["target"] or "",
                marks[metric["ok"]],
            )
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """`bench/run [NAME ...]`: run benchmarks, write bench/results/latest.json, print a table."""
    names = available()
    parser = argparse.ArgumentParser(prog="bench/run", description="Run nubo's benchmarks, print one table.")
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(names)})"
    )
    add_load_arguments(parser)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--switch",
        action="append",
        default=[],
        metavar="SWITCH",
        help="also run each benchmark SWITCH serves with it off, and compare (autopipeline, near-cache, "
        "rate-leases, metrics or all; repeatable)",
    )
    parser.add_argument(
        "--switch-rounds",
        type=int,
        default=1,
        metavar="N",
        help="with --switch: run the on and off runs N times, order reversed every other time (median)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
    if not shutil.which(WRK):
        parser.error(f"wrk not found at {WRK} (apt-get install wrk, or set NUBO_WRK)")
    from bench import switches

    try:
        chosen = switches.switch_names(args.switch)
    except ValueError as exc:
        parser.error(str(exc))
    results, comparisons = switches.run_switched(
        args.names or list(names), chosen, args, run_one, rounds=max(1, args.switch_rounds)
    )
    latest = write_json(
        RESULTS_DIR / "latest.json",
        {
            "generated_at": now_iso(),
            "machine": machine_info(),
            "benches": {r["name"]: r for r in results},
            "switches": [{k: v for k, v in c.items() if k != "off"} for c in comparisons],
        },
    )
    print_table(results)
    if comparisons:
        switches.print_comparisons(comparisons)
    print(f"results: {latest.relative_to(ROOT)}")
    failed = any("error" in r for r in results) or any("error" in c["off"] for c in comparisons)
    missed = any(metric["ok"] is False for r in results for metric in r["metrics"])
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
