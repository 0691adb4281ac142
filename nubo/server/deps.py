"""Dependencies shared by route handlers (the stores, the settings, the realtime hub), read from the running
composition root (:mod:`nubo.root`) that the app's lifespan put in its state."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide

from nubo.realtime.hub import Hub
from nubo.root import Root
from nubo.settings import Settings
from nubo.stores import Stores


def dependencies(state: State) -> dict[str, Provide]:
    """`stores`, `settings` and `hub` for handlers, read from the app's `state` (pass the same object as the
    app's ``state=``; its lifespan sets ``state.root``). The providers take no parameters, so Litestar has
    nothing to parse per request for them (a provider taking ``state`` costs a signature parse each time)."""

    def provide_stores() -> Stores:
        root: Root = state.root
        return root.stores

    def provide_settings() -> Settings:
        root: Root = state.root
        return root.settings

    def provide_hub() -> Hub:
        root: Root = state.root
        return root.hub

    return {
        "stores": Provide(provide_stores, sync_to_thread=False),
        "settings": Provide(provide_settings, sync_to_thread=False),
        "hub": Provide(provide_hub, sync_to_thread=False),
    }
