"""`bench/run --switch ...`: each benchmark a performance switch serves, run with the switch on and off.

nubo's hand-built infrastructure each has a setting that turns it off (``NUBO_REDIS_AUTOPIPELINE``,
``NUBO_NEAR_CACHE``, ``NUBO_RATE_LEASES``). Each one earns its place only by what it wins on the benchmarks
it serves, measured in the same run on the same machine (``NUBO_METRICS`` is compared the same way, for
what it costs). For every selected benchmark the runner runs it
as shipped (every switch on) and once per selected switch that serves it with that switch off (the others
on); the setting reaches the `nubo serve` processes (and the cache benchmark's own client) through
:data:`bench.common.SERVER_ENV_VARIABLE`. With ``--switch-rounds N`` the whole sequence runs N times, in
reverse order every other time, and each figure is the median of its N runs: on a shared machine the load
of other processes moves from one run to the next. The table puts both figures of each metric those
switches serve side by side, with their ratio and how much the switch wins (positive: on is better); the
ratio to `/ping` measured within the same run, and `/ping`'s own CPU per request, show how much of a
difference is the machine's.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Switch -> the benchmarks it serves.
SWITCHES: dict[str, tuple[str, ...]] = {
    "NUBO_REDIS_AUTOPIPELINE": ("auth", "content", "realtime", "cache"),
    "NUBO_NEAR_CACHE": ("auth", "content", "realtime"),
    "NUBO_RATE_LEASES": ("auth", "content", "realtime"),
    "NUBO_METRICS": ("ping", "content"),  # not a speed-up: its cost, goal within 5% of off (docs/metrics.md)
}
SHORT_NAMES = {
    "autopipeline": "NUBO_REDIS_AUTOPIPELINE",
    "near-cache": "NUBO_NEAR_CACHE",
    "rate-leases": "NUBO_RATE_LEASES",
    "metrics": "NUBO_METRICS",
}
# Benchmark -> the start of the names of the metrics the switches serve (the on/off table shows these).
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "auth": ("GET /me (authenticated)", "/me / /ping req/s", "/me p99", "/me server CPU", "/ping server CPU"),
    "content": ("GET /posts/{id}", "/ping", "POST /posts", "GET /feed"),
    "ping": ("nubo serve /ping", "nubo serve CPU"),
    "realtime": ("send->ack",),
    "cache": ("set elements/s", "indexed get"),
}
_HIGHER_IS_BETTER = {"req/s", "msg/s", "posts/s", "queries/s", "elements/s", "requests/s", "ratio"}
_LOWER_IS_BETTER = {"ms", "us"}

RunOne = Callable[[str, argparse.Namespace, str, Mapping[str, str]], dict[str, Any]]
_SHIPPED = ""  # the variant name of the as-shipped run


def switch_names(chosen: Sequence[str]) -> list[str]:
    """The settings named by `--switch` values (short names, setting names or ``all``), in a stable order."""
    if "all" in chosen:
        return list(SWITCHES)
    names = {SHORT_NAMES.get(name, name.upper()) for name in chosen}
    unknown = sorted(names - set(SWITCHES))
    if unknown:
        raise ValueError(f"unknown switch(es) {', '.join(unknown)}; known: all, {', '.join(SHORT_NAMES)}")
    return [name for name in SWITCHES if name in names]


def variant_name(switch: str) -> str:
    """The file-name tag of the run with `switch` off, e.g. ``near-cache-off``."""
    short = {setting: short for short, setting in SHORT_NAMES.items()}[switch]
    return f"{short}-off"


def run_switched(
    benches: Sequence[str], switches: Sequence[str], args: argparse.Namespace, run_one: RunOne, rounds: int = 1
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run each benchmark as shipped and with each switch serving it off, `rounds` times (order reversed
    every other round). Returns the as-shipped results and one comparison per (benchmark, switch)."""
    shipped: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    for bench in benches:
        variants = [_SHIPPED, *(switch for switch in switches if bench in SWITCHES[switch])]
        runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
        repeats = rounds if len(variants) > 1 else 1  # nothing to compare: one run
        for index in range(repeats):
            for variant in variants if index % 2 == 0 else variants[::-1]:
                tag = variant_name(variant) if variant else ""
                if repeats > 1:
                    tag = f"{tag}.r{index + 1}".lstrip(".")
                runs[variant].append(run_one(bench, args, tag, {variant: "off"} if variant else {}))
        on = median_result(runs[_SHIPPED])
        shipped.append(on)
        for switch in variants[1:]:
            off = median_result(runs[switch])
            comparisons.append({"bench": bench, "switch": switch, "rows": compare(bench, on, off), "off": off})
    return shipped, comparisons


def median_result(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first of `results`, each metric's value the median over all of them (a failed run if any)."""
    failed = [result for result in results if "error" in result]
    if failed or len(results) == 1:
        return failed[0] if failed else results[0]
    values: dict[str, list[float]] = {}
    for result in results:
        for metric in result["metrics"]:
            values.setdefault(metric["name"], []).append(float(metric["value"]))
    merged = dict(results[0])
    merged["metrics"] = [
        {**metric, "value": statistics.median(values[metric["name"]])} for metric in results[0]["metrics"]
    ]
    merged["runs"] = len(results)
    return merged


def compare(bench: str, on: Mapping[str, Any], off: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The key metrics of `bench` in both runs: on, off, on/off and the switch's win (a fraction)."""
    off_values = {metric["name"]: metric["value"] for metric in off.get("metrics", [])}
    rows = []
    for metric in on.get("metrics", []):
        if not metric["name"].startswith(KEY_METRICS.get(bench, ())) or metric["name"] not in off_values:
            continue
        on_value, off_value = float(metric["value"]), float(off_values[metric["name"]])
        rows.append(
            {
                "metric": metric["name"],
                "unit": metric["unit"],
                "on": on_value,
                "off": off_value,
                "on_over_off": on_value / off_value if off_value else None,
                "win": _win(metric["unit"], on_value, off_value),
            }
        )
    return rows


def _win(unit: str, on: float, off: float) -> float | None:
    """How much better the switch makes the metric: +0.15 = 15 % more throughput, or 15 % less time."""
    if unit in _HIGHER_IS_BETTER and off:
        return on / off - 1
    if unit in _LOWER_IS_BETTER and on:
        return off / on - 1
    return None


def print_comparisons(comparisons: Sequence[Mapping[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="performance switches: on (as shipped) vs off, same run")
    short = {setting: name for name, setting in SHORT_NAMES.items()}
    for column, justify in (
        ("bench", "left"),
        ("switch", "left"),
        ("metric", "left"),
        ("on", "right"),
        ("off", "right"),
        ("unit", "left"),
        ("on/off", "right"),
        ("switch wins", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for comparison in comparisons:
        if "error" in comparison["off"]:
            table.add_row(
                comparison["bench"], short[comparison["switch"]], "[red]off run failed[/]", "", "", "", "", ""
            )
        for row in comparison["rows"]:
            ratio = row["on_over_off"]
            win = row["win"]
            table.add_row(
                comparison["bench"],
                short[comparison["switch"]],
                row["metric"],
                f"{row['on']:,.2f}",
                f"{row['off']:,.2f}",
                row["unit"],
                "" if ratio is None else f"{ratio:.2f}",
                "" if win is None else f"{win:+.0%}",
            )
    console = Console()
    console.width = max(console.width, 132)  # one line per row, also when the output is not a terminal
    console.print(table)
