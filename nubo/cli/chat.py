"""`nubo chat`: a terminal chat client over the REST API and `/ws` (works with scripted stdin too).

Lines typed are sent to the open conversation; lines starting with ``/`` are commands (``/help``). Live events
are printed as they arrive: messages, edits, deletions, typing, presence, read markers, notifications, lobby
text. When the socket drops the client reconnects with ``?last_event_id=`` (so nothing is missed or shown
twice) and re-sends the messages not acknowledged yet with their original `client_id` (the server stores each
once). At end of input it waits for pending acknowledgements, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import uuid
from typing import Any

import httpx
import typer
import websockets
from rich.text import Text
from websockets.exceptions import ConnectionClosed, InvalidStatus

from nubo.cli.common import console, fail, settings_or_exit

HELP = (
    "/list  conversations | /open N|ID  switch | /history  last messages | /read  mark read | "
    "/typing  show you are typing | /lobby TEXT  public lobby | /quit"
)
COMMANDS = ("help", "list", "open", "history", "read", "typing", "lobby", "quit")
ACK_WAIT_SECONDS = 10.0


class ChatError(Exception):
    """A problem the user must fix (bad credentials, unknown conversation...)."""


class ChatClient:
    """State of one `nubo chat` session."""

    def __init__(self, url: str, token: str | None, username: str | None, password: str | None) -> None:
        self.url = url.rstrip("/")
        self.ws_url = self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/ws"
        self.token = token
        self.credentials = (username, password)
        self.http = httpx.AsyncClient(base_url=self.url, timeout=15.0)
        self.conversation: str | None = None
        self.conversations: list[dict[str, Any]] = []
        self.names: dict[str, str] = {}
        self.last_event_id: int | None = None
        self.pending: dict[str, dict[str, Any]] = {}
        self.ws: Any = None
        self.connected = asyncio.Event()
        self.stopping = False
        self.acked = asyncio.Event()

    # ---- REST -------------------------------------------------------------------------------------------

    async def authenticate(self) -> None:
        if self.token:
            return
        username, password = self.credentials
        response = await self.http.post("/login", json={"username": username, "password": password})
        if response.status_code != 200:
            raise ChatError(f"login failed: {_error(response)}")
        self.token = response.json()["access_token"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, headers=self.headers, **kwargs)
        if response.status_code >= 400:
            raise ChatError(f"{method} {path}: {_error(response)}")
        return response.json() if response.content else None

    async def list_conversations(self) -> None:
        self.conversations = (await self.api("GET", "/conversations", params={"limit": 50}))["items"]
        if not self.conversations:
            say("no conversations yet", "dim")
        for number, conv in enumerate(self.conversations, 1):
            title = conv["title"] or f"direct with {await self.username(conv.get('peer_id'))}"
            last = (conv.get("last_message") or {}).get("text") or ""
            unread = f" ({conv['unread_count']} unread)" if conv["unread_count"] else ""
            say(f"{number:>2}. {title}{unread}  {last[:40]}")
        if self.conversations:
            say("/open N opens conversation N", "dim")

    async def username(self, user_id: str | None) -> str:
        """A user's username (asked once, then remembered); the id's start when the user cannot be seen."""
        if not user_id:
            return "?"
        if user_id not in self.names:
            response = await self.http.get(f"/users/{user_id}", headers=self.headers)
            if response.status_code != 200:
                return user_id[:8]
            self.names[user_id] = response.json()["username"]
        return self.names[user_id]

    async def open(self, ref: str) -> None:
        if ref.isdigit():
            if not 0 < int(ref) <= len(self.conversations):
                count = len(self.conversations)
                hint = f"/list shows 1 to {count}" if count else "there are no conversations yet"
                raise ChatError(f"no conversation number {ref}: {hint}")
            ref = self.conversations[int(ref) - 1]["id"]
        view = await self.api("GET", f"/conversations/{ref}")
        self.conversation = view["id"]
        self.names.update({m["user_id"]: m["username"] for m in view["members"]})
        online = [m["username"] for m in view["members"] if m["online"]]
        title = view["title"] or "direct conversation"
        say(f"== {title} ({view['id']}); online: {', '.join(online) or 'nobody'}", "bold")
        await self.history()

    async def history(self) -> None:
        if self.conversation is None:
            return
        page = await self.api("GET", f"/conversations/{self.conversation}/messages", params={"limit": 20})
        for message in reversed(page["items"]):
            self.print_message(message)

    # ---- socket -----------------------------------------------------------------------------------------

    async def connection_loop(self) -> None:
        backoff = 0.5
        while not self.stopping:
            query = f"?last_event_id={self.last_event_id}" if self.last_event_id is not None else ""
            try:
                async with websockets.connect(
                    self.ws_url + query, additional_headers=self.headers, open_timeout=10, max_size=2**20
                ) as ws:
                    self.ws = ws
                    backoff = 0.5
                    async for raw in ws:
                        await self.on_frame(raw)
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    say(f"connection refused ({exc.response.status_code}): log in again", "red")
                    self.stopping = True
                    self.connected.set()
                    return
            except (OSError, ConnectionClosed, TimeoutError):
                pass
            self.ws = None
            self.connected.clear()
            if not self.stopping:
                say(f"disconnected; reconnecting in {backoff:.1f} s", "yellow")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def on_frame(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            # Not an envelope: lobby text, even when it parses as JSON (`42`, `"x"`).
            say(f"[lobby] {raw if isinstance(raw, str) else raw.decode(errors='replace')}", "cyan")
            return
        if isinstance(event.get("event_id"), int) and event.get("type") != "resync":
            self.last_event_id = max(self.last_event_id or 0, event["event_id"])
        handler = getattr(self, "on_" + str(event.get("type", "")).replace(".", "_"), None)
        if handler is not None:
            await handler(event)

    async def on_hello(self, event: dict[str, Any]) -> None:
        resumed = self.last_event_id is not None
        self.last_event_id = event["last_event_id"]
        say("reconnected (missed events follow)" if resumed else "connected", "green")
        self.connected.set()
        for frame in list(self.pending.values()):  # not acknowledged: send again, same client_id
            await self.ws.send(json.dumps(frame))

    async def on_message_new(self, event: dict[str, Any]) -> None:
        message = event["message"]
        if message["conversation_id"] == self.conversation:
            self.print_message(message)
        else:
            say(
                f"[{message['conversation_id'][:8]}] {self.name(message['sender_id'])}: {message['content']}",
                "dim",
            )

    async def on_message_edited(self, event: dict[str, Any]) -> None:
        message = event["message"]
        say(f"(edited) {self.name(message['sender_id'])}: {message['content']}", "dim")

    async def on_message_deleted(self, event: dict[str, Any]) -> None:
        say(f"(a message was deleted: {event['message_id']})", "dim")

    async def on_typing(self, event: dict[str, Any]) -> None:
        if event["conversation_id"] == self.conversation:
            say(f"… {self.name(event['user_id'])} is typing", "dim")

    async def on_presence(self, event: dict[str, Any]) -> None:
        say(f"● {self.name(event['user_id'])} is {'online' if event['online'] else 'offline'}", "dim")

    async def on_read(self, event: dict[str, Any]) -> None:
        if event["conversation_id"] == self.conversation:
            say(f"✓ read by {self.name(event['user_id'])}", "dim")

    async def on_notification(self, event: dict[str, Any]) -> None:
        note = event["notification"]
        say(f"🔔 {note['kind']} from {self.name(note.get('actor_id') or '')}", "magenta")

    async def on_post_new(self, event: dict[str, Any]) -> None:
        post = event["post"]
        say(
            f"📝 new post by {self.name(post.get('user_id') or '')}: {(post.get('content') or '')[:60]}",
            "magenta",
        )

    async def on_resync(self, event: dict[str, Any]) -> None:
        say("too much was missed: reloading the conversation", "yellow")
        await self.history()

    async def on_ack(self, event: dict[str, Any]) -> None:
        self.pending.pop(event.get("client_id") or "", None)
        say(f"✓ sent ({event['message_id']})", "green")
        self.acked.set()

    async def on_error(self, event: dict[str, Any]) -> None:
        self.pending.pop(event.get("client_id") or "", None)
        say(f"error: {event.get('error')} ({event.get('code')})", "red")
        self.acked.set()

    # ---- input ------------------------------------------------------------------------------------------

    async def send_frame(self, frame: dict[str, Any] | str) -> None:
        await asyncio.wait_for(self.connected.wait(), 30)
        if self.ws is not None:
            await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def on_line(self, line: str) -> bool:
        """Handle one input line; False means quit."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return True
        if line.startswith("/"):
            return await self.command(line)
        if self.conversation is None:
            say("no conversation open: /list then /open ID", "yellow")
            return True
        client_id = uuid.uuid4().hex
        frame = {
            "type": "message.send",
            "conversation_id": self.conversation,
            "content": line,
            "client_id": client_id,
        }
        self.pending[client_id] = frame
        await self.send_frame(frame)
        return True

    async def command(self, line: str) -> bool:
        name, _, arg = line[1:].partition(" ")
        if name == "quit":
            return False
        if name == "list":
            await self.list_conversations()
        elif name == "open" and arg:
            await self.open(arg.strip())
        elif name == "history":
            await self.history()
        elif name == "read" and self.conversation:
            result = await self.api("POST", f"/conversations/{self.conversation}/read", json={})
            say(f"marked read; {result['unread_count']} unread", "dim")
        elif name == "typing" and self.conversation:
            await self.send_frame({"type": "typing", "conversation_id": self.conversation})
        elif name == "lobby" and arg.strip() and not arg.lstrip().startswith(("{", "[")):
            await self.send_frame(arg)
        elif name in COMMANDS:
            say(HELP, "dim")  # /help, or a command missing what it needs (/open without ID, /read with none open)
        else:
            say(f"unknown command /{name}: /help lists the commands", "yellow")
        return True

    async def input_loop(self, lines: asyncio.Queue[str | None]) -> None:
        while True:
            line = await lines.get()
            if line is None:
                return
            try:
                if not await self.on_line(line):
                    return
            except ChatError as exc:
                say(str(exc), "red")

    async def wait_for_acks(self) -> None:
        deadline = asyncio.get_running_loop().time() + ACK_WAIT_SECONDS
        while self.pending and asyncio.get_running_loop().time() < deadline and not self.stopping:
            self.acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acked.wait(), 0.5)
        if self.pending:
            say(f"{len(self.pending)} message(s) not acknowledged", "red")

    def name(self, user_id: str) -> str:
        return self.names.get(user_id, user_id[:8] or "?")

    def print_message(self, message: dict[str, Any]) -> None:
        when = str(message.get("created_at") or "")[11:16]
        content = message["content"] if message.get("content") is not None else "(deleted)"
        say(f"[{when}] {self.name(message['sender_id'])}: {content}")


def say(text: str, style: str = "") -> None:
    """Print one line; user content is never interpreted as markup."""
    console.print(Text(text, style=style), highlight=False, soft_wrap=True)


def _error(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('error')} ({body.get('code')})"
    except ValueError:
        return f"HTTP {response.status_code}"


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """A daemon thread: blocking reads never keep the process alive after /quit."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line)
    loop.call_soon_threadsafe(lines.put_nowait, None)


async def run_chat(client: ChatClient, conversation: str | None) -> None:
    try:
        await client.authenticate()
        await client.list_conversations()
        if conversation:
            await client.open(conversation)
        socket_task = asyncio.create_task(client.connection_loop())
        await asyncio.wait_for(client.connected.wait(), 30)
        if not client.stopping:
            lines: asyncio.Queue[str | None] = asyncio.Queue()
            threading.Thread(target=_read_stdin, args=(asyncio.get_running_loop(), lines), daemon=True).start()
            await client.input_loop(lines)
            await client.wait_for_acks()
        client.stopping = True
        socket_task.cancel()
        await asyncio.gather(socket_task, return_exceptions=True)
    finally:
        await client.http.aclose()


def chat(
    url: str | None = typer.Option(None, help="Base URL of a nubo server (default http://127.0.0.1:PORT, PORT 8080)."),
    token: str | None = typer.Option(None, envvar="NUBO_TOKEN", help="An access token (or use --username)."),
    username: str | None = typer.Option(None, help="Log in with this username or email."),
    password: str | None = typer.Option(None, envvar="NUBO_PASSWORD", help="Password for --username."),
    conversation: str | None = typer.Option(None, help="Open this conversation id at start."),
) -> None:
    """Chat in the terminal: list conversations, show history, send lines, print live events."""
    if not token and not (username and password):
        fail("give --token, or --username and --password", code=2)
    url = url or f"http://127.0.0.1:{settings_or_exit().port}"  # where `nubo serve` listens by default
    client = ChatClient(url, token, username, password)
    try:
        asyncio.run(run_chat(client, conversation))
    except ChatError as exc:
        fail(str(exc))
    except (httpx.HTTPError, OSError, TimeoutError) as exc:
        fail(f"cannot reach {url}: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
