"""Dependencies shared by route handlers (the open stores, the settings)."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide

from nubo.settings import Settings
from nubo.stores import Stores


def dependencies(state: State) -> dict[str, Provide]:
    """`stores` and `settings` for handlers, read from the app's `state` (pass the same object as the
    app's ``state=``; its lifespan sets ``state.stores``). The providers take no parameters, so Litestar has
    nothing to parse per request for them (a provider taking ``state`` costs a signature parse each time)."""

    def provide_stores() -> Stores:
        stores: Stores = state.stores
        return stores

    def provide_settings() -> Settings:
        stores: Stores = state.stores
        return stores.settings

    return {
        "stores": Provide(provide_stores, sync_to_thread=False),
        "settings": Provide(provide_settings, sync_to_thread=False),
    }
