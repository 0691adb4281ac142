"""Fixtures of the unit tests. None reaches a service: the store fixtures (`stores`, `db`, `client`, ...) are
defined for `tests/integration` only, so a unit test asking for one fails at setup.

`settings` here points every store at a closed port (port 1): code that tries to open a connection with it
fails at once instead of quietly using the developer's running services.
"""

from __future__ import annotations

import secrets

import pytest

from nubo.settings import Settings, load_settings

CLOSED_PORT_URLS = {
    "NUBO_POSTGRES_URL": "postgresql://unit@127.0.0.1:1/unit",
    "NUBO_MONGO_URL": "mongodb://127.0.0.1:1/",
    "NUBO_REDIS_URL": "redis://127.0.0.1:1/0",
}


@pytest.fixture
def settings() -> Settings:
    """Test settings with a random JWT secret and every store URL on a closed port."""
    return load_settings(
        {**CLOSED_PORT_URLS, "NUBO_ENV": "test", "JWT_SECRET": secrets.token_urlsafe(48)}, env_file=None
    )
