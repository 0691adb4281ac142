"""The load monitor's verdict and the write pipeline's settings (no services)."""

from __future__ import annotations

import pytest

from nubo.precompute import LoadMonitor
from nubo.settings import SettingsError, load_settings


def test_a_lag_spike_counts_at_once_and_decays() -> None:
    monitor = LoadMonitor(max_lag_ms=20, max_cpu_percent=50)
    assert not monitor.busy
    monitor.sample(lag_ms=80, cpu_percent=10)
    assert monitor.busy and monitor.lag_ms == 80
    for _ in range(10):
        monitor.sample(lag_ms=0, cpu_percent=10)
    assert not monitor.busy


def test_sustained_cpu_makes_it_busy() -> None:
    monitor = LoadMonitor(max_lag_ms=20, max_cpu_percent=50)
    for _ in range(10):
        monitor.sample(lag_ms=0, cpu_percent=90)
    assert monitor.busy


def test_write_pipeline_settings() -> None:
    settings = load_settings(
        {
            "NUBO_VIEW_FLUSH": "2s",
            "NUBO_PRECOMPUTE": "off",
            "NUBO_PRECOMPUTE_MAX_LAG_MS": "15",
            "NUBO_PRECOMPUTE_MAX_CPU": "70",
            "NUBO_PRECOMPUTE_ACTIVE": "2h",
        },
        env_file=None,
    )
    assert (settings.view_flush_seconds, settings.precompute) == (2, False)
    assert (settings.precompute_max_lag_ms, settings.precompute_max_cpu_percent) == (15, 70)
    assert settings.precompute_active_seconds == 7200
    with pytest.raises(SettingsError, match="NUBO_PRECOMPUTE_MAX_CPU"):
        load_settings({"NUBO_PRECOMPUTE_MAX_CPU": "150"}, env_file=None)
