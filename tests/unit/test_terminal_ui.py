"""The terminal's menu, commands and event lines, against an in-memory
PeerClient (tests/integration/test_terminal.py drives the real one in tmux)."""

from __future__ import annotations

import asyncio

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from webpeer.api import JSON, ApiError
from webpeer.peerclient import EventStream
from webpeer.terminal import ASK_ID, ASK_TEXT, MENU, ChatUI, Mode

BOB = {
    "id": 3,
    "name": "bob",
    "fingerprint": "BOBB-FPFP",
    "online": True,
    "connection": {"state": "direct", "address": "127.0.0.1:5"},
}


class FakeStream:
    def __init__(self, events: list[JSON]) -> None:
        self.events: asyncio.Queue[JSON] = asyncio.Queue()
        for event in events:
            self.events.put_nowait(event)

    async def next(self) -> JSON:
        return await self.events.get()

    async def close(self) -> None:
        pass


class FakePeer:
    attached = False

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    async def me(self) -> JSON:
        return {"id": 2, "name": "alice", "fingerprint": "ALIC-EFPF", "server": "s:1"}

    async def peers(self) -> list[JSON]:
        return [BOB]

    async def messages(self, peer_id: int, limit: int = 500) -> list[JSON]:
        return [{"from": 3, "to": 2, "text": "hi", "status": "received"}]

    async def send(self, to: int, text: str) -> JSON:
        if to == 99:
            raise ApiError(404, "unknown peer 99")
        self.sent.append((to, text))
        return {"id": f"m{len(self.sent)}", "to": to, "from": 2, "status": "queued", "error": None}

    async def subscribe(self) -> EventStream:
        return FakeStream([])


def ui() -> tuple[ChatUI, FakePeer, list[str]]:
    lines: list[str] = []
    peer = FakePeer()
    chat = ChatUI(peer, lines.append)
    chat.me = {"id": 2, "name": "alice", "fingerprint": "ALIC-EFPF", "public_address": "1.2.3.4:5", "server": "s:1"}
    chat.peers = {3: dict(BOB)}
    return chat, peer, lines


async def test_the_menu_in_the_original_words() -> None:
    chat, peer, lines = ui()
    await chat.handle("1")
    assert lines[0].startswith("Your Id is: 2 ") and "fingerprint: ALIC-EFPF" in lines[0]
    await chat.handle("2")
    assert "3,bob,BOBB-FPFP,direct 127.0.0.1:5" in lines
    await chat.handle("3")
    assert chat.prompt() == ASK_ID == "Enter the id of client you want to connect: "
    await chat.handle("3")
    assert chat.prompt() == ASK_TEXT == "Enter the message you want to send: "
    await chat.handle("Hello from 2 to 3")
    assert peer.sent == [(3, "Hello from 2 to 3")] and chat.mode is Mode.MENU
    assert lines[-2:] == ["Message to bob #3: queued", MENU]
    await chat.handle("4")
    assert chat.done


async def test_open_then_plain_lines_and_errors() -> None:
    chat, peer, lines = ui()
    await chat.handle("/open 3")
    await chat.handle("one")
    await chat.handle("2")  # in a conversation a digit is a message
    assert peer.sent == [(3, "one"), (3, "2")] and chat.prompt() == "to bob #3> "
    await chat.handle("/history 1")
    assert lines[-1] == "bob #3: hi"
    await chat.handle("/open 99")
    await chat.handle("x")
    assert lines[-1] == "Error: unknown peer 99"


async def test_incoming_and_status_lines_from_events() -> None:
    chat, _, lines = ui()
    stream = FakeStream(
        [
            {"type": "message", "message": {"id": "in", "from": 3, "to": 2, "text": "yo", "status": "received"}},
            {"type": "message", "message": {"id": "out", "from": 2, "to": 3, "text": "a", "status": "sending"}},
            {"type": "status", "id": "out", "status": "sending", "error": None},
            {"type": "status", "id": "out", "status": "delivered", "error": None},
        ]
    )
    task = asyncio.create_task(chat._follow(stream))
    while stream.events.qsize():
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    assert lines == [
        "Received Incoming Message From bob #3 (direct): yo",
        "Message to bob #3: sending",
        "Message to bob #3: delivered",
    ]


class StreamThatEnds(FakeStream):
    """The hello, then the websocket closes (the attached webpeer stopped)."""

    async def next(self) -> JSON:
        if self.events.qsize():
            return await self.events.get()
        raise ApiError(502, "the webpeer closed its websocket (it stopped?)")


class PeerThatStops(FakePeer):
    attached = True

    async def subscribe(self) -> EventStream:
        me = await self.me()
        return StreamThatEnds([{"type": "hello", "me": me, "peers": [BOB]}])


async def test_the_chat_ends_with_an_error_when_its_peer_goes_away() -> None:
    # A real prompt_toolkit session, on a pipe instead of a terminal.
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        lines: list[str] = []
        chat = ChatUI(PeerThatStops(), lines.append)
        with pytest.raises(ApiError, match=r"^the peer stopped: the webpeer closed its websocket") as raised:
            await asyncio.wait_for(chat.run(), 20)
    assert raised.value.status == 502  # the command line turns it into exit status 1
    assert not chat.done  # not the user's EXIT


async def test_exit_from_the_menu_ends_the_chat_without_an_error() -> None:
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        lines: list[str] = []
        chat = ChatUI(PeerThatStopsNot(), lines.append)
        keys.send_text("4\n")
        await asyncio.wait_for(chat.run(), 20)
    assert chat.done
    assert lines[-1].startswith("Detached")


class PeerThatStopsNot(FakePeer):
    attached = True

    async def subscribe(self) -> EventStream:
        me = await self.me()
        return FakeStream([{"type": "hello", "me": me, "peers": [BOB]}])
