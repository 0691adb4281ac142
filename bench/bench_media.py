"""Media processing on a real `nubo serve` and the S3 server of `scripts/services`:

- `POST /media/{id}/complete` of a 4000x3000 JPEG (a phone photo, ~3 MB): p50 and p99 latency and the
  server's CPU per image, one worker, one complete at a time (the upload itself is not timed);
- upload-to-ready throughput with 2 workers: clients run the whole flow (grant, PUT to the presigned URL,
  complete) back to back for `--duration` seconds; images/s and the CPU per image of the two workers.

The run is bounded: `--rounds` x 5 completes (at least 10) and `--duration` seconds of throughput. The
target is on the server's CPU per image (under 1 s), steadier than latency when other processes share the
machine; the S3 server's own CPU is not counted.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.bench_content import member
from bench.common import (
    BenchOptions,
    BenchOutput,
    Metric,
    bench_main,
    init_db,
    isolated_env,
    median,
    nubo_server,
    process_cpu_seconds,
)

PHOTO_SIZE = (4000, 3000)
THROUGHPUT_CLIENTS = 4
CPU_MS_PER_IMAGE_TARGET = 1000.0  # CPU, not latency: the latency of a shared 2-core machine says little


def phone_photo() -> bytes:
    """A 4000x3000 JPEG with enough detail to weigh what a phone photo weighs, and an EXIF orientation."""
    noise = Image.effect_noise(PHOTO_SIZE, 40).convert("L")
    gradient = Image.linear_gradient("L").resize(PHOTO_SIZE)
    image = Image.merge("RGB", (noise, gradient, Image.eval(noise, lambda v: 255 - v)))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88, exif=exif)
    return out.getvalue()


async def upload(http: httpx.AsyncClient, headers: dict[str, str], data: bytes) -> str:
    """Grant and PUT; the media id, ready to complete."""
    granted = await http.post(
        "/media", json={"kind": "image", "content_type": "image/jpeg", "size": len(data)}, headers=headers
    )
    granted.raise_for_status()
    body = granted.json()
    sent = await http.put(body["upload"]["url"], content=data, headers=body["upload"]["headers"])
    sent.raise_for_status()
    media_id: str = body["media"]["id"]
    return media_id


async def complete_latencies(url: str, headers: dict[str, str], data: bytes, count: int, pid: int) -> dict[str, Any]:
    latencies: list[float] = []
    cpu = 0.0
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        for _ in range(count):
            media_id = await upload(http, headers, data)
            before, started = process_cpu_seconds(pid), time.perf_counter()
            (await http.post(f"/media/{media_id}/complete", headers=headers)).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            cpu += process_cpu_seconds(pid) - before
    ordered = sorted(latencies)
    return {
        "p50_ms": median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "cpu_ms_per_image": cpu * 1000 / count,
        "images": count,
        "latencies_ms": latencies,
    }


def children_cpu_seconds(pid: int) -> float:
    """CPU of the worker processes of a uvicorn master (its direct children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(process_cpu_seconds(int(child)) for child in children)


async def throughput(url: str, headers: list[dict[str, str]], data: bytes, seconds: float, pid: int) -> dict[str, Any]:
    done = errors = 0
    deadline = time.perf_counter() + seconds
    before = children_cpu_seconds(pid)

    async def client(own: dict[str, str]) -> None:
        nonlocal done, errors
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
            while time.perf_counter() < deadline:
                try:
                    media_id = await upload(http, own, data)
                    (await http.post(f"/media/{media_id}/complete", headers=own)).raise_for_status()
                    done += 1
                except httpx.HTTPError:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(h) for h in headers))
    elapsed = time.perf_counter() - started
    cpu = children_cpu_seconds(pid) - before
    return {
        "images_per_s": done / elapsed,
        "images": done,
        "errors": errors,
        "seconds": elapsed,
        "workers_cpu_ms_per_image": cpu * 1000 / max(done, 1),
    }


def measure(options: BenchOptions) -> BenchOutput:
    overrides = {
        **{name: "100000000/minute" for name in ("NUBO_RATE_DEFAULT", "NUBO_RATE_SIGNUP", "NUBO_RATE_LOGIN")},
        "NUBO_MEDIA_DAILY_QUOTA": "100gb",
    }
    data = phone_photo()
    count = max(10, options.rounds * 5)
    with isolated_env(overrides) as env:
        init_db(env)
        with nubo_server(env) as server:
            assert server.process is not None
            with httpx.Client(base_url=server.url, timeout=30.0) as http:
                _, headers = member(http, "photographer")
            single = asyncio.run(complete_latencies(server.url, headers, data, count, server.process.pid))
        with nubo_server(env, ["--workers", "2"], pin=False) as server:
            assert server.process is not None
            with httpx.Client(base_url=server.url, timeout=30.0) as http:
                clients = [member(http, f"uploader{n}")[1] for n in range(THROUGHPUT_CLIENTS)]
            flow = asyncio.run(throughput(server.url, clients, data, options.duration, server.process.pid))
    metrics = [
        Metric("complete 4000x3000 JPEG p50", single["p50_ms"], "ms"),
        Metric("complete 4000x3000 JPEG p99", single["p99_ms"], "ms"),
        Metric("complete server CPU per image", single["cpu_ms_per_image"], "ms", ("<", CPU_MS_PER_IMAGE_TARGET)),
        Metric("upload-to-ready, 2 workers", flow["images_per_s"], "images/s"),
        Metric("upload-to-ready workers CPU per image", flow["workers_cpu_ms_per_image"], "ms"),
        Metric("errors", flow["errors"], "count", ("<=", 0)),
    ]
    details = {"photo_bytes": len(data), "complete": single, "throughput": flow, "clients": THROUGHPUT_CLIENTS}
    return BenchOutput(metrics, details)


if __name__ == "__main__":
    bench_main("media", "Media: complete of a 4000x3000 JPEG, upload-to-ready throughput with 2 workers", measure)
