"""`nubo db import` against raw COPY of the same data (target: import rows/s >= 0.5 x raw COPY rows/s).

One generated community in the import format (tests/helpers/community.py; 10k users, 200k follows, 100k
posts, 5k comments, 10k likes: the issue's size), each side on a fresh database with the same schema:

- **import**: the real `nubo db import --json` command; rows/s from its own report (reading, validating,
  checking against the database, COPY in one transaction, then the 30-day Mongo copies);
- **raw COPY**: the same rows, already converted to tuples in memory (not timed), COPYed in one transaction
  through the same binary COPY statements: only what PostgreSQL itself costs (constraints, indexes, WAL).

`--rounds` alternates the two sides; the medians are compared. Rows are spread over 3 years (few Mongo
copies), as an operator's migration would be.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BenchOptions, BenchOutput, Metric, bench_main, init_db, isolated_env, median
from nubo.importing import checked_rows, find_sources
from nubo.root import open_root
from nubo.settings import load_settings
from nubo.stores.bulk import COPY_TABLES, bulk_session
from tests.helpers.community import CommunitySize, write_community
from tests.helpers.harness import run_nubo

SIZE = CommunitySize(users=10_000, follows=200_000, posts=100_000, comments=5_000, likes=10_000)
RATIO_TARGET = 0.5


def run_import(directory: Path) -> dict[str, Any]:
    """The report of the real command on a fresh database."""
    with isolated_env() as env:
        init_db(env)
        done = run_nubo(["db", "import", "--json", str(directory)], env, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"nubo db import failed:\n{done.stdout}\n{done.stderr}")
        report: dict[str, Any] = json.loads(done.stdout)
    return report


async def _raw_copy(env: dict[str, str], directory: Path) -> float:
    root = await open_root(load_settings(env, env_file=None), wait_for_postgres=True, pg_max_size=3)
    try:
        # The tuples COPY writes, prepared by the import's own checks (untimed: raw COPY is the database's cost).
        rows = await checked_rows(root.stores, find_sources([directory]))
        started = time.perf_counter()
        async with bulk_session(root.stores) as session:
            for kind, tuples in rows.items():
                await session.copy(COPY_TABLES[kind], tuples)
        seconds = time.perf_counter() - started
        return sum(len(t) for t in rows.values()) / seconds
    finally:
        await root.close()


def run_raw_copy(directory: Path) -> float:
    with isolated_env() as env:
        init_db(env)
        return asyncio.run(_raw_copy(env, directory))


def measure(options: BenchOptions) -> BenchOutput:
    rounds = max(1, min(options.rounds, 3))
    with tempfile.TemporaryDirectory(prefix="nubo-import-") as tmp:
        directory = Path(tmp)
        write_community(directory, SIZE, seed=5, days=3 * 365)
        whole: list[float] = []
        postgres: list[float] = []
        raw: list[float] = []
        reports: list[dict[str, Any]] = []
        for _ in range(rounds):
            report = run_import(directory)
            whole.append(float(report["rows_per_second"]))
            postgres.append(float(report["postgres_rows_per_second"]))
            reports.append({k: report[k] for k in ("loaded", "mongo_copies", "seconds", "seconds_postgres")})
            raw.append(run_raw_copy(directory))
            print(
                f"import {whole[-1]:,.0f} rows/s ({postgres[-1]:,.0f} without the Mongo copies), "
                f"raw COPY {raw[-1]:,.0f} rows/s",
                file=sys.stderr,
            )
    whole_rate, postgres_rate, raw_rate = median(whole), median(postgres), median(raw)
    return BenchOutput(
        metrics=[
            Metric("import rows/s (whole command)", round(whole_rate), "rows/s"),
            Metric("import rows/s (PostgreSQL part)", round(postgres_rate), "rows/s"),
            Metric("raw COPY rows/s", round(raw_rate), "rows/s"),
            Metric("import (whole) / raw COPY", round(whole_rate / raw_rate, 3), "x", (">=", RATIO_TARGET)),
            Metric("import (PostgreSQL part) / raw COPY", round(postgres_rate / raw_rate, 3), "x"),
        ],
        details={
            "size": SIZE.__dict__,
            "rows": SIZE.rows,
            "whole": whole,
            "postgres": postgres,
            "raw": raw,
            "reports": reports,
        },
    )


if __name__ == "__main__":
    bench_main("import", "nubo db import rows/s vs raw COPY of the same data", measure)
