"""Helpers shared by the messaging, realtime and chat tests (no tests here): users with tokens, WS clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets

from nubo import accounts
from nubo.stores import Stores
from tests.helpers.frames import frame_problem

PASSWORD = "correct horse battery staple"


@dataclass
class ChatUser:
    """A real account with an open session and its access token."""

    id: uuid.UUID
    username: str
    token: str
    session_id: uuid.UUID

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_user(stores: Stores, prefix: str = "u") -> ChatUser:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    row = await accounts.signup(
        stores,
        accounts.NewUser(
            username=name,
            email=f"{name}@example.test",
            password=PASSWORD,
            first_name="Test",
            last_name=prefix,
        ),
    )
    tokens = await accounts.open_session(stores, row, accounts.ClientInfo(ip="127.0.0.1"))
    return ChatUser(row["id"], name, tokens.access_token, tokens.session_id)


async def make_users(stores: Stores, *prefixes: str) -> list[ChatUser]:
    return list(await asyncio.gather(*(make_user(stores, p) for p in prefixes)))


@dataclass
class WsClient:
    """A real WebSocket client collecting every frame it receives (JSON decoded when possible), each checked
    against the AsyncAPI document (:mod:`tests.helpers.frames`): a frame outside it fails the test."""

    ws: Any
    frames: list[Any] = field(default_factory=list)
    closed_code: int | None = None
    invalid: list[str] = field(default_factory=list)  # frames that do not fit the AsyncAPI document
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str | None = None,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> WsClient:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("max_size", 2**22)
        ws = await websockets.connect(url + query, additional_headers=all_headers, open_timeout=10, **kwargs)
        client = cls(ws)
        client._task = asyncio.create_task(client._collect())
        return client

    async def _collect(self) -> None:
        try:
            async for raw in self.ws:
                if (problem := frame_problem(raw)) is not None:
                    self.invalid.append(problem)
                try:
                    self.frames.append(json.loads(raw))
                except ValueError:
                    self.frames.append(raw)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_code = self.ws.close_code
            self._changed.set()

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def check_frames(self) -> None:
        """Fail the test when a received frame did not fit the AsyncAPI document."""
        assert not self.invalid, f"frames outside the AsyncAPI document: {self.invalid[:3]}"

    def events(self, type_: str) -> list[dict[str, Any]]:
        self.check_frames()
        return [f for f in self.frames if isinstance(f, dict) and f.get("type") == type_]

    async def wait_for(self, predicate: Callable[[WsClient], bool], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met; last frames: {self.frames[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def hello(self) -> dict[str, Any]:
        await self.wait_for(lambda c: bool(c.events("hello")))
        return self.events("hello")[0]

    async def close(self) -> None:
        await self.ws.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self.check_frames()
