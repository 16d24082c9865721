"""Issue 3's browser test with real processes: one ``rendezvous`` and two
``webpeer``s (alice, bob) as subprocesses on loopback, one headless Chromium
page per peer, each in its own browser context so their cookies never mix.

Everything goes through the pages as a user would: pick the peer, type, press
Enter.  What travels between the peers is real (STUN to the server, QUIC
between the peers, SQLite history); nothing is faked.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    WebSocket,
    expect,
)
from processes import Child, free_udp_port, start_rendezvous, start_webpeer

XSS = "<img src=x onerror=alert(1)>"
WAIT_MS = 10_000
"""How long an expect() waits for the page; everything here happens in well under a second."""
SCREENSHOTS = {"alice": Path("/tmp/alice.png"), "bob": Path("/tmp/bob.png")}


async def stop(child: Child) -> None:
    """SIGTERM, then demand a clean exit (the peer unregisters and closes its store)."""
    name = child.log.stem if child.log is not None else "child"
    try:
        code = await child.stop()
    except TimeoutError:
        await child.kill()
        raise AssertionError(f"{name} did not exit on SIGTERM:\n{child.logged()}") from None
    assert code == 0, f"{name} exited with {code}:\n{child.logged()}"
    assert "Traceback" not in child.logged(), f"{name} logged a crash:\n{child.logged()}"


@dataclass
class Peer:
    """One webpeer process and the page opened at the URL it printed."""

    name: str
    url: str
    page: Page
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_errors: list[str] = field(default_factory=list)
    ws_in: list[dict] = field(default_factory=list)
    ws_out: list[dict] = field(default_factory=list)

    def testid(self, name: str, scope: str = "") -> Locator:
        return self.page.locator(f'{scope} [data-testid="{name}"]'.strip())

    def peer_item(self, peer_id: int) -> str:
        return f'[data-testid="peer-item"][data-peer-id="{peer_id}"]'

    def messages(self) -> Locator:
        return self.testid("message")

    def message(self, text: str) -> Locator:
        return self.messages().filter(has_text=text)

    def sent_texts(self) -> list[str]:
        """Texts this page asked its webpeer to send, in order (over the websocket)."""
        return [frame["text"] for frame in self.ws_out if frame.get("type") == "send"]

    def received(self, text: str) -> list[dict]:
        """``message`` events with this text that the webpeer pushed to the page."""
        events = [e for f in self.ws_in for e in (f["events"] if f.get("type") == "batch" else [f])]
        return [e for e in events if e.get("type") == "message" and e["message"]["text"] == text]

    async def my_id(self) -> int:
        await expect(self.testid("my-id")).to_have_text(re.compile(r"^[1-9][0-9]*$"), timeout=WAIT_MS)
        return int(await self.testid("my-id").inner_text())


def _json_frame(payload: str | bytes) -> dict:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def open_page(browser: Browser, name: str, url: str) -> Peer:
    context = await browser.new_context(viewport={"width": 1100, "height": 700})
    page = await context.new_page()
    peer = Peer(name, url, page)

    async def on_dialog(dialog: Dialog) -> None:
        peer.dialogs.append(dialog.message)
        await dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            peer.csp_errors.append(message.text)

    def on_websocket(ws: WebSocket) -> None:
        ws.on("framereceived", lambda payload: peer.ws_in.append(_json_frame(payload)))
        ws.on("framesent", lambda payload: peer.ws_out.append(_json_frame(payload)))

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: peer.page_errors.append(str(error)))
    page.on("console", on_console)
    page.on("websocket", on_websocket)
    response = await page.goto(url)
    assert response is not None and response.ok, url
    return peer


# On the session's loop with the shared Chromium (tests/browser/conftest.py).
@pytest_asyncio.fixture(loop_scope="session")
async def peers(tmp_path: Path, browser: Browser) -> AsyncIterator[tuple[Peer, Peer]]:
    """A rendezvous, then alice, then bob (so they get ids 1 and 2), each with its page."""
    port = free_udp_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    children: list[Child] = []
    pages: list[Peer] = []
    server = await start_rendezvous(port, tmp_path / "registry.sqlite3", log=logs / "rendezvous.log")
    try:
        try:
            for name in ("alice", "bob"):
                process = await start_webpeer(
                    f"127.0.0.1:{port}",
                    name,
                    tmp_path / name,
                    "--udp-host",
                    "127.0.0.1",
                    "--log-level",
                    "warning",
                    log=logs / f"{name}.log",
                )
                children.append(process)
                peer = await open_page(browser, name, process.url)
                pages.append(peer)
                # Wait for the registration so alice is id 1 and bob id 2.
                assert await peer.my_id() == len(pages)
            yield pages[0], pages[1]
        finally:
            for peer in pages:
                await peer.page.context.close()
        for process in reversed(children):
            await stop(process)
        await stop(server)
    finally:
        for process in [*children, server]:
            await process.kill()


async def test_two_real_peers_in_the_browser(peers: tuple[Peer, Peer]) -> None:
    alice, bob = peers
    for peer in peers:
        assert peer.page.url.endswith("/"), "the token left the address bar"
        await expect(peer.testid("my-name")).to_have_text(peer.name)
        await expect(peer.testid("server-status")).to_contain_text("registered with", timeout=WAIT_MS)
        await expect(peer.testid("my-address")).to_have_text(re.compile(r"^127\.0\.0\.1:\d+$"), timeout=WAIT_MS)
        await expect(peer.testid("disconnected-banner")).to_be_hidden()

    # Each lists the other, online (bob joined after alice's page was loaded: live update).
    bob_item = alice.page.locator(alice.peer_item(2))
    alice_item = bob.page.locator(bob.peer_item(1))
    await expect(bob_item).to_have_attribute("data-online", "true", timeout=WAIT_MS)
    await expect(bob_item.locator('[data-testid="peer-name"]')).to_have_text("bob")
    await expect(alice_item).to_have_attribute("data-online", "true", timeout=WAIT_MS)
    await expect(alice.testid("peer-item")).to_have_count(1)

    # Both open the conversation with the other; the lists are still empty.
    await alice_item.click()
    await bob_item.click()
    for peer, other in ((alice, 2), (bob, 1)):
        await expect(peer.testid("conversation")).to_have_attribute("data-peer-id", str(other))
        await expect(peer.testid("composer")).to_be_enabled()
    await expect(alice.testid("conversation-name")).to_have_text("bob")
    await expect(bob.testid("conversation-name")).to_have_text("alice")

    # 1. alice types and presses Enter: bob sees it live, alice sees it delivered.
    composer = alice.testid("composer")
    await composer.fill("hello bob")
    await composer.press("Enter")
    await expect(composer).to_have_value("")
    mine = alice.message("hello bob")
    await expect(mine).to_have_count(1, timeout=WAIT_MS)
    await expect(mine).to_have_class(re.compile(r"\bmine\b"))
    # bob's page has the conversation open and visible: it is delivered, then
    # read (bob's read receipt), which is what alice's page shows in the end.
    await expect(mine).to_have_attribute("data-status", "read", timeout=WAIT_MS)
    await expect(mine.locator('[data-testid="message-status"]')).to_have_text("read ✓✓")
    theirs = bob.message("hello bob")
    await expect(theirs).to_have_count(1, timeout=WAIT_MS)
    await expect(theirs).to_have_class(re.compile(r"\btheirs\b"))
    await expect(theirs.locator('[data-testid="message-text"]')).to_have_text("hello bob")
    # It came over bob's websocket as a message event from alice (not from a history fetch).
    [pushed] = bob.received("hello bob")
    assert (pushed["message"]["from"], pushed["message"]["to"]) == (1, 2)
    assert alice.sent_texts() == ["hello bob"]

    # Shift+Enter is a newline, not a send.  The later Enter proves the order:
    # had Shift+Enter sent "line one", it would be on the websocket first.
    await composer.press_sequentially("line one")
    await composer.press("Shift+Enter")
    await composer.press_sequentially("line two")
    await expect(composer).to_have_value("line one\nline two")
    assert alice.sent_texts() == ["hello bob"]
    await expect(alice.messages()).to_have_count(1)
    await composer.press("Enter")
    await expect(composer).to_have_value("")
    two_lines = bob.message("line two")
    await expect(two_lines).to_have_count(1, timeout=WAIT_MS)
    await expect(alice.message("line two")).to_have_attribute("data-status", "read", timeout=WAIT_MS)
    assert alice.sent_texts() == ["hello bob", "line one\nline two"]
    text_node = two_lines.locator('[data-testid="message-text"]')
    assert await text_node.evaluate("node => node.textContent") == "line one\nline two"
    await expect(bob.messages()).to_have_count(2)

    # 2. Reload both pages: the open conversation comes back from SQLite history.
    for peer in peers:
        await peer.page.reload()
        await expect(peer.testid("my-id")).to_have_text(re.compile(r"^[12]$"), timeout=WAIT_MS)
        await expect(peer.testid("message-text")).to_have_text(["hello bob", "line one line two"], timeout=WAIT_MS)
    await expect(alice.message("hello bob")).to_have_attribute("data-status", "read", timeout=WAIT_MS)
    await expect(bob.message("hello bob")).to_have_class(re.compile(r"\btheirs\b"))

    # 3. bob sends markup through his page; on alice's page it is text and runs nothing.
    bob_composer = bob.testid("composer")
    await bob_composer.fill(XSS)
    await bob_composer.press("Enter")
    hostile = alice.message(XSS)
    await expect(hostile).to_have_count(1, timeout=WAIT_MS)
    await expect(hostile).to_have_class(re.compile(r"\btheirs\b"))
    await expect(hostile.locator('[data-testid="message-text"]')).to_have_text(XSS)
    hostile_text = hostile.locator('[data-testid="message-text"]')
    assert await hostile_text.evaluate("node => node.textContent") == XSS
    await expect(bob.message(XSS)).to_have_attribute("data-status", "read", timeout=WAIT_MS)
    for peer in peers:
        await expect(peer.testid("message-text")).to_have_count(3)
        await expect(
            peer.page.locator('[data-testid="conversation"] img:not([data-testid="safety-qr"])')
        ).to_have_count(0)
        await expect(peer.page.locator('img:not([data-testid="safety-qr"])')).to_have_count(0)

    # 4. The pair talks directly, and alice's page says over which address.
    await expect(bob_item.locator('[data-testid="connection-state"]')).to_have_text("direct", timeout=WAIT_MS)
    await expect(bob_item.locator('[data-testid="connection-state"]')).to_have_attribute("data-state", "direct")
    # (Folded away in the header's "Connection details": its text, not what is on screen.)
    bob_address = (await bob.testid("my-address").text_content() or "").strip()
    await expect(bob_item.locator('[data-testid="connection-address"]')).to_have_text(bob_address)
    await expect(alice.testid("conversation-connection")).to_have_text(f"online · direct via {bob_address}")

    # 5. Screenshots for a human look (the report describes them).
    for peer in peers:
        await peer.page.screenshot(path=str(SCREENSHOTS[peer.name]))

    # Nothing ran that should not have, and the CSP blocked nothing of ours.
    for peer in peers:
        assert peer.dialogs == [], peer.name
        assert peer.page_errors == [], peer.name
        assert peer.csp_errors == [], peer.name
