"""Test harness: real services, an isolated database/prefix per run, and real `nubo serve` subprocesses."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE_VARS = (
    "NUBO_POSTGRES_URL",
    "NUBO_MONGO_URL",
    "NUBO_REDIS_URL",
    "NUBO_S3_ENDPOINT",
    "NUBO_S3_ACCESS_KEY",
    "NUBO_S3_SECRET_KEY",
)


@cache
def service_env() -> dict[str, str]:
    """URLs of the running services: from the environment, else from `scripts/services --env` (which starts them)."""
    if all(os.environ.get(name) for name in SERVICE_VARS):
        return {name: os.environ[name] for name in (*SERVICE_VARS, "NUBO_MONGO_SERVER") if os.environ.get(name)}
    out = subprocess.run(
        [str(ROOT / "scripts" / "services"), "--env"], check=True, capture_output=True, text=True, timeout=900
    ).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    missing = [name for name in SERVICE_VARS if name not in env]
    if missing:
        raise RuntimeError(f"scripts/services --env did not print {missing}")
    return env


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A real `nubo serve` subprocess on its own port."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, *, wait_ready: bool = True, timeout: float = 30.0, args: tuple[str, ...] = ()) -> ServerProcess:
        log_dir = ROOT / ".services" / "test-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "nubo", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(cmd, env=self.env, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
        self.wait("/readyz" if wait_ready else "/healthz", timeout)
        return self

    def wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nubo serve exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            try:
                response = httpx.get(self.url + path, timeout=2.0)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"nubo serve not ready on {path}: {last}\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait for the drain, return the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def run_nubo(
    args: list[str], env: Mapping[str, str], timeout: float = 120.0, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `nubo` command (as `python -m nubo`) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "nubo", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        input=input_text,
    )


def new_run_id() -> str:
    return "t" + secrets.token_hex(5)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class DedicatedServer:
    """A throw-away server process on a free port, stoppable and restartable (for outage tests)."""

    stop_timeout = 10.0

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(self.stop_timeout)


class DedicatedRedis(DedicatedServer):
    """A `redis-server` without persistence: a restart comes back empty."""

    def __init__(self) -> None:
        super().__init__()
        binary = shutil.which("redis-server")
        assert binary, "redis-server must be on PATH for the outage test"
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
            str(self.port),
            "--daemonize",
            "no",
            "--bind",
            "127.0.0.1",
        ]


class DedicatedFerret(DedicatedServer):
    """A FerretDB (SQLite handler) whose data survives a stop/start in its `data_dir`."""

    stop_timeout = 20.0

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        binary = shutil.which("ferretdb") or str(Path.home() / "go" / "bin" / "ferretdb")
        assert Path(binary).exists(), "ferretdb binary needed for the Mongo outage test"
        self.binary, self.data_dir = binary, data_dir
        self.debug_port = free_port()

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--handler=sqlite",
            f"--sqlite-url=file:{self.data_dir}/",
            f"--listen-addr=127.0.0.1:{self.port}",
            f"--debug-addr=127.0.0.1:{self.debug_port}",
            f"--state-dir={self.data_dir}",
            "--telemetry=disable",
            "--log-level=ERROR",
        ]


def postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL binaries (what scripts/services uses), else those on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3].split(".")[0]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    assert initdb, "PostgreSQL binaries (initdb, postgres) are needed for the PostgreSQL outage tests"
    return Path(initdb).parent


INITDB_OPTIONS = ("--auth=trust", "--no-sync", "--encoding=UTF8", "--no-locale")


class DedicatedPostgres(DedicatedServer):
    """A throw-away PostgreSQL cluster (initdb into a new temp dir, trust auth on loopback, no fsync) whose
    data survives a stop/start; :meth:`remove` deletes it. As root it runs as the `postgres` user, as
    PostgreSQL requires (its directory is then made under /tmp, which that user can reach)."""

    stop_timeout = 20.0

    def __init__(self) -> None:
        super().__init__()
        self.bin = postgres_bin_dir()
        self.user = "postgres" if os.geteuid() == 0 else None
        base_dir = self.base_dir = Path(tempfile.mkdtemp(prefix="nubo-pg-"))
        self.data_dir = base_dir / "pgdata"
        self.socket_dir = base_dir / "pgsock"
        for path in (base_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            if self.user:
                shutil.chown(path, self.user)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres", *INITDB_OPTIONS],
            check=True,
            capture_output=True,
            user=self.user,
            cwd="/",
            timeout=120,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/nubo"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def command(self) -> list[str]:
        settings = ["listen_addresses=127.0.0.1", f"unix_socket_directories={self.socket_dir}", "fsync=off"]
        settings += ["synchronous_commit=off", "full_page_writes=off", "max_connections=200"]
        return [str(self.bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)] + [
            arg for item in settings for arg in ("-c", item)
        ]

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self.user, cwd="/"
        )
        wait_port(self.port)

    def create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
                    conn.execute("CREATE DATABASE nubo")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def remove(self) -> None:
        """Kill the server if it runs and delete its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, as when a server goes away."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(self.stop_timeout)


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> float:
    """Seconds until `condition()` held (polled every 5 ms); fails the test after `within` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def user_with_session(stores: Any) -> tuple[uuid.UUID, uuid.UUID]:
    """(user id, session id): a new user inserted directly (no password hashing) with one live session."""
    from nubo import accounts
    from nubo.ids import new_id

    user_id, name = new_id(), f"u{uuid.uuid4().hex[:12]}"
    async with stores.pg.connection() as conn:
        await conn.execute(
            "INSERT INTO auth.users (id, username, email, password_hash, first_name, last_name) "
            "VALUES (%s, %s, %s, 'x', 'Test', 'User')",
            (user_id, name, f"{name}@example.com"),
        )
    issued = await accounts.open_session(
        stores, {"id": user_id, "username": name, "grade": 1}, accounts.ClientInfo(user_agent="test")
    )
    return user_id, issued.session_id
