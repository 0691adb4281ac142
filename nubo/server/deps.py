"""Dependencies shared by route handlers (the open stores, the settings)."""

from __future__ import annotations

from litestar.datastructures import State

from nubo.settings import Settings
from nubo.stores import Stores


def provide_stores(state: State) -> Stores:
    stores: Stores = state.stores
    return stores


def provide_settings(state: State) -> Settings:
    stores: Stores = state.stores
    return stores.settings
