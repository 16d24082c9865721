"""``webpeer chat``: the terminal interface, in the course project's words.

It starts in the original menu (``1.MY ID 2.LIST 3.CONNECT 4.EXIT``, with
CONNECT's two questions worded as they were) and adds slash commands:
``/open ID`` makes a conversation current (plain lines then go there),
``/close``, ``/list``, ``/history [N]``, ``/me``, ``/quit``, ``/help``.
Incoming messages print at once as ``Received Incoming Message From NAME
#ID (direct): TEXT``; each status change of our messages prints as it comes.

It talks to a :class:`webpeer.peerclient.PeerClient` only, so it is the same
whether the peer runs in this process or in a ``webpeer`` it attached to.

Why prompt_toolkit: messages arrive while the user is typing, and the line
being typed must survive them.  prompt_toolkit's ``patch_stdout`` prints
above the prompt and redraws the prompt with the typed text and cursor
where they were, and ``prompt_async`` runs in our asyncio loop, so one loop
does the network and the keyboard (no input() thread, no hand-made escape
sequences).  A full-screen UI (textual) would hide the scrollback that the
menu's plain lines belong in, and could not be driven as simply by tmux.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import sys
from collections.abc import Callable, Iterator

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout

from .api import JSON, ApiError
from .peerclient import EventStream, PeerClient

MENU = "1.MY ID 2.LIST 3.CONNECT 4.EXIT"
ASK_ID = "Enter the id of client you want to connect: "
ASK_TEXT = "Enter the message you want to send: "
HELP = (
    "Menu: 1 my id, 2 list, 3 connect (send one message), 4 exit.  Commands: /open ID (then plain lines go "
    "to ID), /close (back to the menu), /list, /history [N], /me, /quit"
)
HISTORY_DEFAULT = 20


class Mode(enum.Enum):
    MENU = "menu"
    ASK_ID = "ask id"  # CONNECT's first question
    ASK_TEXT = "ask text"  # CONNECT's second question
    CHAT = "chat"  # a conversation is open: plain lines are messages


class ChatUI:
    """The state of one terminal session; ``say`` prints a line above the prompt."""

    def __init__(self, client: PeerClient, say: Callable[[str], None] = print) -> None:
        self.client = client
        self.say = say
        self.mode = Mode.MENU
        self.current: int | None = None  # the open conversation (CHAT), or CONNECT's chosen id
        self.me: JSON = {}
        self.peers: dict[int, JSON] = {}
        self.outgoing: dict[str, str] = {}  # our messages' ids -> the status last shown
        self.targets: dict[str, int] = {}  # our messages' ids -> the peer they go to
        self.done = False

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        session: PromptSession[str] = PromptSession()
        with patch_stdout(raw=True), _logs_above_prompt():
            events = await self.client.subscribe()
            # The first event (hello: who we are, the peers) before the
            # first prompt, so the greeting comes before it.
            await self.on_event(await events.next())
            listener = asyncio.create_task(self._follow(events))
            prompt: asyncio.Task[str] | None = None
            try:
                while not self.done and not listener.done():
                    prompt = asyncio.create_task(session.prompt_async(self.prompt()))
                    await asyncio.wait({prompt, listener}, return_when=asyncio.FIRST_COMPLETED)
                    if not prompt.done():
                        break  # the peer went away under us
                    try:
                        line = prompt.result()
                    except (EOFError, KeyboardInterrupt):
                        break
                    await self.handle(line)
            finally:
                # Also when we are cancelled (SIGTERM): the prompt gives the
                # terminal back as it was before we print or exit.
                if prompt is not None and not prompt.done():
                    prompt.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await prompt
                listener.cancel()
                await events.close()
            if listener.done() and not listener.cancelled() and (error := listener.exception()) is not None:
                # The peer we are attached to went away: not the user's
                # choice, so the chat ends with an error (exit status 1).
                reason = error.message if isinstance(error, ApiError) else str(error)
                raise ApiError(502, f"the peer stopped: {reason}") from error

    def prompt(self) -> str:
        if self.mode is Mode.ASK_ID:
            return ASK_ID
        if self.mode is Mode.ASK_TEXT:
            return ASK_TEXT
        if self.mode is Mode.CHAT and self.current is not None:
            return f"to {self.who(self.current)}> "
        return "> "

    # ------------------------------------------------------------ typed lines

    async def handle(self, line: str) -> None:
        text = line.strip()
        try:
            if text.startswith("/"):
                await self.command(text)
            elif self.mode is Mode.ASK_ID:
                self.ask_text(text)
            elif self.mode is Mode.ASK_TEXT:
                assert self.current is not None
                to, self.current, self.mode = self.current, None, Mode.MENU
                if text:
                    await self.send(to, line)
                self.say(MENU)
            elif self.mode is Mode.CHAT:
                if text and self.current is not None:
                    await self.send(self.current, line)
            else:
                await self.menu(text)
        except ApiError as error:
            self.say(f"Error: {error.message}")

    async def menu(self, choice: str) -> None:
        if choice == "1":
            self.show_me()
        elif choice == "2":
            await self.show_list()
        elif choice == "3":
            self.mode = Mode.ASK_ID
            return
        elif choice == "4":
            await self.exit()
            return
        elif choice:
            self.say("Choose 1, 2, 3 or 4 (or /help)")
        self.say(MENU)

    def ask_text(self, text: str) -> None:
        peer_id = parse_id(text)
        if peer_id is None:
            self.say(f"Not a peer id: {text!r}")
            self.mode = Mode.MENU
            self.say(MENU)
            return
        self.current, self.mode = peer_id, Mode.ASK_TEXT

    async def command(self, text: str) -> None:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name == "/open":
            peer_id = parse_id(rest)
            if peer_id is None:
                self.say("Usage: /open ID")
                return
            self.current, self.mode = peer_id, Mode.CHAT
            self.say(f"Talking to {self.who(peer_id)}: plain lines are sent there (/close for the menu)")
        elif name == "/close":
            self.current, self.mode = None, Mode.MENU
            self.say(MENU)
        elif name == "/list":
            await self.show_list()
        elif name == "/history":
            await self.show_history(rest)
        elif name == "/me":
            self.show_me()
        elif name in ("/quit", "/exit"):
            await self.exit()
        elif name == "/help":
            self.say(HELP)
        else:
            self.say(f"Unknown command {name} ({HELP})")

    async def send(self, to: int, text: str) -> None:
        message = await self.client.send(to, text)
        self.show_status(message["id"], to, message["status"], message.get("error"))

    async def exit(self) -> None:
        if self.client.attached:
            self.say("Detached; the webpeer this terminal used goes on running (stop it to unregister).")
        else:
            self.say("Unregistering. Bye.")
        self.done = True

    # ------------------------------------------------------------ what is shown

    def who(self, peer_id: int) -> str:
        name = self.peers.get(peer_id, {}).get("name")
        return f"{name} #{peer_id}" if name else f"#{peer_id}"

    def show_me(self) -> None:
        me = self.me
        if me.get("id") is None:
            self.say(f"Not registered yet (server {me.get('server')}: {me.get('server_state')})")
            return
        address = me.get("public_address") or "unknown"
        self.say(f"Your Id is: {me['id']}  name: {me['name'] or '-'}  fingerprint: {me['fingerprint']}  ({address})")

    async def show_list(self) -> None:
        self.peers = {peer["id"]: peer for peer in await self.client.peers()}
        online = [peer for peer in self.peers.values() if peer["online"]]
        if not online:
            self.say("No other peer is online.")
        for peer in online:
            connection = peer.get("connection")
            how = connection["state"] if connection else "not connected"
            if connection and connection.get("address"):
                how += f" {connection['address']}"
            self.say(f"{peer['id']},{peer['name'] or '-'},{peer['fingerprint']},{how}")

    async def show_history(self, arg: str) -> None:
        if self.current is None:
            self.say("No conversation is open: /open ID first")
            return
        count = int(arg) if arg.isdigit() and int(arg) > 0 else HISTORY_DEFAULT
        for message in (await self.client.messages(self.current))[-count:]:
            mine = message["from"] == self.me.get("id")
            who = "You" if mine else self.who(message["from"])
            status = f" [{message['status']}]" if mine else ""
            self.say(f"{who}: {message['text']}{status}")

    def show_status(self, message_id: str, to: int, status: str, error: str | None) -> None:
        """A line when one of our messages' status changes, not for repeats."""
        if self.outgoing.get(message_id) == status:
            return
        self.outgoing[message_id] = status
        self.say(f"Message to {self.who(to)}: {status}" + (f" ({error})" if error else ""))

    # ------------------------------------------------------------ the peer's events

    async def _follow(self, events: EventStream) -> None:
        while True:
            await self.on_event(await events.next())

    async def on_event(self, event: JSON) -> None:
        kind = event["type"]
        if kind == "hello":
            self.peers = {peer["id"]: peer for peer in event["peers"]}
            self.on_me(event["me"])
        elif kind == "me":
            self.on_me(event["me"])
        elif kind == "peers":
            self.peers = {peer["id"]: peer for peer in event["peers"]}
        elif kind == "connection" and event["peer"] in self.peers:
            self.peers[event["peer"]]["connection"] = event["connection"]
        elif kind == "message":
            message = event["message"]
            if message["from"] == self.me.get("id"):
                self.targets[message["id"]] = message["to"]
                self.show_status(message["id"], message["to"], message["status"], message.get("error"))
            else:
                await self.incoming(message)
        elif kind == "status" and event["id"] in self.targets:
            self.show_status(event["id"], self.targets[event["id"]], event["status"], event.get("error"))
        elif kind == "resync":
            self.peers = {peer["id"]: peer for peer in await self.client.peers()}
            self.on_me(await self.client.me())

    def on_me(self, me: JSON) -> None:
        first = self.me.get("id") is None and me.get("id") is not None
        if not self.me:
            self.say(f"Registering with the rendezvous server {me['server']}...")
        self.me = me
        if first:
            self.say(f"You Have Been Registered Successfully. Your Id is: {me['id']}")
            self.say(MENU)

    async def incoming(self, message: JSON) -> None:
        sender = message["from"]
        if not self.peers.get(sender, {}).get("connection"):
            # A peer that reached us before our next LIST or its "connection"
            # event: ask, so the line has its name and link.
            self.peers = {peer["id"]: peer for peer in await self.client.peers()}
        connection = self.peers.get(sender, {}).get("connection")
        how = connection["state"] if connection else "connecting"
        self.say(f"Received Incoming Message From {self.who(sender)} ({how}): {message['text']}")


@contextlib.contextmanager
def _logs_above_prompt() -> Iterator[None]:
    """Point the log's stream handlers at the patched stderr, so a warning
    prints above the prompt like a message instead of through it."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    previous = [h.setStream(sys.stderr) for h in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, previous, strict=True):
            if stream is not None:
                handler.setStream(stream)


def parse_id(text: str) -> int | None:
    text = text.strip().lstrip("#")
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 2**32 else None
