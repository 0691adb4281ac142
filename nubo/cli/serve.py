"""`nubo serve`: run the API under uvicorn."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from types import FrameType

import typer
import uvicorn

from nubo.cli.common import err_console, settings_or_exit
from nubo.logs import configure_logging
from nubo.metrics import MULTIPROC_ENV, clear_multiprocess_dir
from nubo.server.ws_protocol import DenialCompletesHandshake
from nubo.settings import SettingsError, dev_key_exposure


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _share_metrics_between_workers() -> str | None:
    """prometheus-client's multiprocess mode: each worker writes its values to files of one directory that a
    scrape of any worker merges. Set before the workers start (they read it when they import the client);
    the files of a previous run are removed. Returns the directory when it was created here (to remove)."""
    given = os.environ.get(MULTIPROC_ENV)
    directory = given or tempfile.mkdtemp(prefix="nubo-metrics-")
    clear_multiprocess_dir(directory)
    os.environ[MULTIPROC_ENV] = directory
    return None if given else directory


def serve(
    host: str | None = typer.Option(None, help="Interface to bind (default NUBO_HOST or 0.0.0.0)."),
    port: int | None = typer.Option(None, help="Port to listen on (default PORT or 8080).", min=0, max=65535),
    workers: int = typer.Option(1, help="Worker processes.", min=1),
    flush_cache: bool = typer.Option(False, "--flush-cache", help="Delete nubo's Redis keys (prefix only) at start."),
) -> None:
    """Run the REST API and the /ws WebSocket (Litestar under uvicorn)."""
    settings = settings_or_exit()
    configure_logging(settings.log_level)
    bind = host or settings.host
    try:
        warning = dev_key_exposure(settings, bind)
    except SettingsError as exc:
        err_console.print(f"[bold red]config error[/]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if warning is not None:
        err_console.print(f"[bold yellow]warning[/]: {warning}", highlight=False, soft_wrap=True)
    if flush_cache:
        from nubo.cli.cache import flush_prefix

        flush_prefix(settings)
    # Workers re-read settings from the environment, so CLI overrides travel through it.
    if port is not None:
        os.environ["PORT"] = str(port)
    created = _share_metrics_between_workers() if workers > 1 else None
    # uvicorn drains on SIGTERM, then re-raises the signal it caught, so the process would die "killed by
    # SIGTERM" (exit -15/143). It restores this handler first: a completed drain exits 0 for Docker/systemd.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        uvicorn.run(
            "nubo.server.app:create_app_from_env",
            factory=True,
            host=bind,
            port=port if port is not None else settings.port,
            workers=workers,
            ws=DenialCompletesHandshake,  # a refused upgrade is not an ERROR (see nubo.server.ws_protocol)
            ws_max_size=settings.ws_max_frame_bytes,
            ws_per_message_deflate=False,  # ~37 KB of zlib state per socket; chat frames are small
            access_log=False,  # uvicorn's access log would print `?token=` query strings
            log_config=None,
            timeout_graceful_shutdown=10,
            server_header=False,
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=",".join(settings.trusted_proxies) or None,
        )
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
