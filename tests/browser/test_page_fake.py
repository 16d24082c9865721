"""The page in headless Chromium against the real web layer and a fake peer.

Debian's ``chromium`` driven by Playwright (``executable_path``, so
``playwright install`` is never needed); the site is a real 127.0.0.1 port.
What a peer controls is hostile here: a peer name and a message text are
``<img src=x onerror=alert(1)>``, and nothing may run (no dialog, no <img>).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, expect
from unit.fake_api import FakePeerApi

from webpeer.web import WebConfig, create_app, start_site

TOKEN = "browser-test-token_0123456789"
XSS = "<img src=x onerror=alert(1)>"
SCREENSHOT = Path("/tmp/webpeer.png")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Harness:
    api: FakePeerApi
    port: int
    page: Page
    runner: web.AppRunner | None
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start_site(self) -> None:
        app = create_app(WebConfig(port=self.port, token=TOKEN), self.api)
        self.runner = await start_site(app)

    async def stop_site(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def testid(self, name: str, scope: str = "") -> str:
        return f'{scope} [data-testid="{name}"]'.strip()

    def peer(self, peer_id: int) -> str:
        return f'[data-testid="peer-item"][data-peer-id="{peer_id}"]'


async def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for something the page makes happen on the server side."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# The shared Chromium (tests/browser/conftest.py), so the harness runs on the
# session's loop; each test still gets a fresh page in a context of its own
# (no cookies, storage or handlers carried over).
@pytest_asyncio.fixture(loop_scope="session")
async def harness(browser: Browser) -> AsyncIterator[Harness]:
    api = FakePeerApi(my_id=1, name="alice")
    api.add_peer(2, "bob")
    api.add_peer(3, XSS)
    api.add_peer(4, "carol", online=False, key_changed=True)
    page = await browser.new_page(viewport={"width": 1100, "height": 700})  # in a new context
    try:
        h = Harness(api, free_port(), page, None)

        async def on_dialog(dialog: Dialog) -> None:
            h.dialogs.append(dialog.message)
            await dialog.dismiss()

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                h.console_errors.append(message.text)

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: h.page_errors.append(str(error)))
        page.on("console", on_console)
        await h.start_site()
        try:
            yield h
        finally:
            await h.stop_site()
    finally:
        await page.context.close()


async def test_page_end_to_end_with_fake_peer(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    await page.goto(f"{h.url}?token={TOKEN}")
    assert page.url == h.url  # the token left the address bar

    # Header.
    await expect(page.locator(h.testid("my-id"))).to_have_text("1")
    await expect(page.locator(h.testid("my-name"))).to_have_text("alice")
    await expect(page.locator(h.testid("my-fingerprint"))).to_have_text("SHA256:fake-alice")
    await expect(page.locator(h.testid("my-address"))).to_have_text("127.0.0.1:40001")
    await expect(page.locator(h.testid("my-port-mapping"))).to_have_text("port mapped by router: 198.51.100.7:40001")
    await expect(page.locator(h.testid("server-status"))).to_contain_text("registered")
    await expect(page.locator(h.testid("disconnected-banner"))).to_be_hidden()

    # Sidebar: a hostile name is text; an offline peer with a changed key is flagged.
    await expect(page.locator(h.testid("peer-item"))).to_have_count(3)
    await expect(page.locator(h.testid("peer-name", h.peer(3)))).to_have_text(XSS)
    await expect(page.locator(h.testid("key-warning", h.peer(4)))).to_contain_text("key changed")
    await expect(page.locator(h.peer(4))).to_have_attribute("data-online", "false")
    await expect(page.locator(h.testid("connection-state", h.peer(2)))).to_have_text("not connected")

    # Open bob, type, Enter sends; Shift+Enter is a newline.
    await page.locator(h.peer(2)).click()
    await expect(page.locator(h.testid("conversation"))).to_have_attribute("data-peer-id", "2")
    await until(lambda: 2 in api.read_marks, "the page to mark bob read")
    composer = page.locator(h.testid("composer"))
    await composer.fill("hello bob")
    await composer.press("Enter")
    await until(lambda: api.sent == [(2, "hello bob")], "the fake to get the message")
    await expect(composer).to_have_value("")
    mine = page.locator(h.testid("message")).filter(has_text="hello bob")
    await expect(mine).to_have_count(1)
    await expect(mine).to_have_class("message mine")
    await expect(mine).to_have_attribute("data-status", "sending")
    message_id = api.messages(2)[0]["id"]
    await expect(mine).to_have_attribute("data-message-id", message_id)
    api.set_status(message_id, "delivered")
    await expect(mine).to_have_attribute("data-status", "delivered")
    await expect(page.locator(h.testid("message-status", f'[data-message-id="{message_id}"]'))).to_contain_text(
        "delivered"
    )

    await composer.press_sequentially("line one")
    await composer.press("Shift+Enter")
    await composer.press_sequentially("line two")
    await expect(composer).to_have_value("line one\nline two")
    await page.locator(h.testid("send-button")).click()
    await until(lambda: api.sent[-1:] == [(2, "line one\nline two")], "the two-line message")

    # Live: an incoming hostile text, a connection change, an unread count elsewhere.
    api.receive(2, XSS)
    incoming = page.locator(h.testid("message")).filter(has_text=XSS)
    await expect(incoming).to_have_count(1)
    await expect(incoming).to_have_class("message theirs")
    await expect(incoming.locator(h.testid("message-text"))).to_have_text(XSS)
    api.set_connection(2, "relayed", "127.0.0.1:3478")
    await expect(page.locator(h.testid("connection-state", h.peer(2)))).to_have_text("relayed")
    await expect(page.locator(h.testid("connection-address", h.peer(2)))).to_have_text("127.0.0.1:3478")
    api.receive(3, "psst")
    await expect(page.locator(h.testid("unread-badge", h.peer(3)))).to_have_text("1")
    await expect(page.locator(h.testid("unread-badge", h.peer(2)))).to_have_count(0)

    # Events published together reach the page as one batch frame; each is handled, in order.
    api.receive(2, "batched one")
    api.receive(2, "batched two")
    api.set_connection(2, "direct", "127.0.0.1:5001")
    await expect(page.locator(h.testid("message-text"))).to_have_text(
        ["hello bob", "line one\nline two", XSS, "batched one", "batched two"]
    )
    await expect(page.locator(h.testid("connection-state", h.peer(2)))).to_have_text("direct")

    # A refused peer says why; after dropped events ("resync") the page reloads its state.
    api.set_peer_error(4, "refused: a different key answered for id 4")
    await expect(page.locator(h.testid("peer-error", h.peer(4)))).to_have_text(
        "refused: a different key answered for id 4"
    )
    api.rename_quietly(2, "bobby")
    api.publish({"type": "resync"})
    await expect(page.locator(h.testid("peer-name", h.peer(2)))).to_have_text("bobby")
    await expect(page.locator(h.testid("conversation-name"))).to_have_text("bobby")

    # A failed message gets a Retry button that retries it.
    api.set_status(message_id, "failed", "peer unreachable")
    failed = page.locator(f'[data-message-id="{message_id}"]')
    await expect(failed).to_have_attribute("data-status", "failed")
    await expect(failed).to_contain_text("peer unreachable")
    await failed.locator(h.testid("retry-button")).click()
    await until(lambda: api.retried == [message_id], "the retry")
    await expect(failed).to_have_attribute("data-status", "sending")
    await expect(failed.locator(h.testid("retry-button"))).to_have_count(0)
    api.set_status(message_id, "failed", "still unreachable")  # leave one for the screenshot
    await expect(failed.locator(h.testid("retry-button"))).to_be_visible()

    # Reload: the open conversation and its history come back, oldest first.
    await page.reload()
    await expect(page.locator(h.testid("conversation"))).to_have_attribute("data-peer-id", "2")
    texts = page.locator(h.testid("message-text"))
    await expect(texts).to_have_text(["hello bob", "line one\nline two", XSS, "batched one", "batched two"])
    await expect(page.locator(h.testid("my-id"))).to_have_text("1")

    # Nothing hostile ran or was parsed as HTML, and the CSP blocked nothing of ours.
    # (The one <img> of the page's own is the safety view's QR code.)
    assert await page.locator('img:not([data-testid="safety-qr"])').count() == 0
    assert h.dialogs == []
    assert h.page_errors == []
    assert [e for e in h.console_errors if "Content Security Policy" in e] == []
    await page.screenshot(path=str(SCREENSHOT))

    # The site goes away: a visible banner; it comes back: the page reconnects by itself.
    await h.stop_site()
    await expect(page.locator(h.testid("disconnected-banner"))).to_be_visible()
    await h.start_site()
    await expect(page.locator(h.testid("disconnected-banner"))).to_be_hidden(timeout=15_000)
    api.receive(2, "after the restart")
    await expect(page.locator(h.testid("message")).filter(has_text="after the restart")).to_have_count(1)
    assert h.dialogs == []


async def test_page_without_token_does_not_work(harness: Harness) -> None:
    h, page = harness, harness.page
    response = await page.goto(h.url)
    assert response is not None and response.status == 401
    response = await page.goto(f"{h.url}?token=wrong")
    assert response is not None and response.status == 401
    assert h.api.subscribers == 0


async def test_a_changed_key_is_compared_and_accepted_then_the_held_message_goes(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    await page.goto(f"{h.url}?token={TOKEN}")
    await page.locator(h.peer(2)).click()
    composer = page.locator(h.testid("composer"))
    await expect(composer).to_be_enabled()
    await expect(page.locator(h.testid("safety-panel"))).to_be_hidden()

    # bob's key changes: the page warns, holds what waits, and will not send.
    await composer.fill("are you still bob?")
    await composer.press("Enter")
    await until(lambda: api.sent == [(2, "are you still bob?")], "the message")
    message_id = api.messages(2)[0]["id"]
    api.change_key(2)
    api.receive_from_new_key(2, "yes, new laptop")
    held = page.locator(f'[data-message-id="{message_id}"]')
    await expect(held).to_have_attribute("data-status", "held")
    await expect(held.locator(h.testid("message-error"))).to_have_text("key changed")
    await expect(page.locator(h.testid("key-warning", h.peer(2)))).to_contain_text("key changed")
    await expect(page.locator(h.testid("conversation-key-warning"))).to_be_visible()
    await expect(composer).to_be_disabled()
    await expect(page.locator(h.testid("send-button"))).to_be_disabled()
    await expect(page.locator(h.testid("composer-note"))).to_contain_text("Sending is held")
    await expect(page.locator(h.testid("message-text"))).to_have_text(["are you still bob?"])  # nothing hidden shows

    # The safety view: old and new fingerprints side by side, the number, its QR code.
    safety = api.safety(2)
    panel = page.locator(h.testid("safety-panel"))
    await expect(panel).to_be_visible()
    await expect(panel).to_have_attribute("data-trust", "changed")
    await expect(page.locator(h.testid("safety-old-fingerprint"))).to_have_text(safety["previous_fingerprint"])
    await expect(page.locator(h.testid("safety-their-fingerprint"))).to_have_text(safety["their_fingerprint"])
    assert safety["previous_fingerprint"] != safety["their_fingerprint"]
    await expect(page.locator(h.testid("safety-number"))).to_have_text(safety["safety_number"])
    qr = page.locator(h.testid("safety-qr"))
    await expect(qr).to_be_visible()
    await page.wait_for_function(
        "document.querySelector('[data-testid=\"safety-qr\"]').naturalWidth > 0"
    )  # the SVG loaded under the CSP
    await expect(page.locator(h.testid("trust-verify"))).to_be_visible()

    # Accept: the held message goes, the composer opens, the new key's message shows under the line.
    await page.locator(h.testid("trust-accept")).click()
    await until(lambda: api.trust_actions == [(2, "accept")], "the accept")
    await expect(held).to_have_attribute("data-status", "delivered")
    await expect(composer).to_be_enabled()
    await expect(page.locator(h.testid("composer-note"))).to_be_hidden()
    await expect(panel).to_be_hidden()
    await expect(page.locator(h.testid("key-warning", h.peer(2)))).to_have_count(0)
    await expect(page.locator(h.testid("message-text"))).to_have_text(["are you still bob?", "yes, new laptop"])
    await expect(page.locator(h.testid("key-change-line"))).to_have_count(1)

    # Mark as verified from the safety view: a badge in the peer list; a change now warns louder.
    await page.locator(h.testid("safety-button")).click()
    await expect(panel).to_be_visible()
    await page.locator(h.testid("trust-verify")).click()
    await expect(page.locator(h.testid("verified-badge", h.peer(2)))).to_be_visible()
    await expect(page.locator(h.testid("conversation-verified"))).to_be_visible()
    await page.locator(h.testid("safety-close")).click()
    await expect(panel).to_be_hidden()
    api.change_key(2)
    await expect(page.locator(h.testid("key-warning", h.peer(2)))).to_have_attribute("data-alarm", "true")
    await expect(panel).to_have_attribute("data-alarm", "true")
    await expect(page.locator(h.testid("safety-alarm"))).to_contain_text("VERIFIED")
    await expect(page.locator(h.testid("verified-badge", h.peer(2)))).to_have_count(0)

    # Block: the composer stays shut and says why.
    await page.locator(h.testid("trust-block")).click()
    await expect(page.locator(h.testid("key-blocked", h.peer(2)))).to_be_visible()
    await expect(page.locator(h.testid("composer-note"))).to_contain_text("blocked")
    await expect(composer).to_be_disabled()
    assert h.page_errors == [] and h.dialogs == []
    assert [e for e in h.console_errors if "Content Security Policy" in e] == []


async def test_the_header_says_how_the_server_is_doing(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    api._me.update(id=None, registered=False, server_state="connecting", public_address=None)
    await page.goto(f"{h.url}?token={TOKEN}")
    status, dot = page.locator(h.testid("server-status")), page.locator(h.testid("server-dot"))
    await expect(status).to_have_text("connecting to the server…")
    await expect(dot).to_have_attribute("data-state", "connecting")
    api._me.update(server_state="unreachable")
    api.publish({"type": "me", "me": api.me()})
    await expect(status).to_have_text("cannot reach the server 127.0.0.1:3478 (still trying)")
    await expect(dot).to_have_attribute("data-state", "down")
    api._me.update(id=1, registered=True, server_state="registered", public_address="127.0.0.1:40001")
    api.publish({"type": "me", "me": api.me()})
    await expect(status).to_have_text("registered with 127.0.0.1:3478")
    await expect(dot).to_have_attribute("data-state", "ok")
    assert h.page_errors == []


async def test_a_storage_fault_shows_a_banner_until_it_clears(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    await page.goto(f"{h.url}?token={TOKEN}")
    banner = page.locator(h.testid("storage-banner"))
    await expect(banner).to_be_hidden()
    api._me.update(storage_error="database or disk is full")
    api.publish({"type": "me", "me": api.me()})
    await expect(banner).to_be_visible()
    await expect(page.locator(h.testid("storage-text"))).to_contain_text("database or disk is full")
    api._me.update(storage_error=None)
    api.publish({"type": "me", "me": api.me()})
    await expect(banner).to_be_hidden()
    assert h.page_errors == []


async def test_a_queued_message_can_be_cancelled_and_a_bad_target_says_why(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    api.add_peer(5, "dave", online=False)
    await page.goto(f"{h.url}?token={TOKEN}")
    await page.locator(h.peer(5)).click()  # dave, offline: his messages wait queued
    composer = page.locator(h.testid("composer"))
    await composer.fill("never mind")
    await composer.press("Enter")
    await until(lambda: api.sent == [(5, "never mind")], "the fake to get the message")
    queued = page.locator(h.testid("message")).filter(has_text="never mind")
    await expect(queued).to_have_attribute("data-status", "queued")
    await queued.locator(h.testid("cancel-button")).click()
    message_id = api.messages(5)[0]["id"]
    await until(lambda: api.cancelled == [message_id], "the cancel")
    await expect(queued).to_have_attribute("data-status", "failed")
    await expect(queued.locator(h.testid("message-error"))).to_have_text("cancelled")
    await expect(queued.locator(h.testid("cancel-button"))).to_have_count(0)
    await expect(queued.locator(h.testid("retry-button"))).to_be_visible()
    # A delivered message has no Cancel button.
    api.set_status(message_id, "delivered")
    await expect(queued.locator(h.testid("cancel-button"))).to_have_count(0)

    # An id nobody was ever given: "Chat with id" refuses it; opened by its
    # address (#peer-999) a send fails on the page, saying so, and nothing is stored.
    await page.locator(h.testid("open-peer-id")).fill("999")
    await page.locator(h.testid("open-peer-button")).click()
    await expect(page.locator(h.testid("error-text"))).to_contain_text("unknown peer 999")
    await page.goto(f"{h.url}#peer-999")
    await page.reload()
    await expect(page.locator(h.testid("conversation"))).to_have_attribute("data-peer-id", "999")
    await composer.fill("hello?")
    await composer.press("Enter")
    refused = page.locator(h.testid("message")).filter(has_text="hello?")
    await expect(refused).to_have_attribute("data-status", "failed")
    await expect(refused.locator(h.testid("message-error"))).to_have_text("unknown peer 999")
    assert api.messages(999) == []
    assert h.page_errors == [] and h.dialogs == []


# Scrolls the message list to the top, then waits (each frame, up to 20 s)
# for the older page to be shown or the start line; returns the message count
# before and after, and where the message that was at the top was seen and is
# now (px from the list's top).
PAGE_BACK_ONCE = """async (list) => {
  const count = () => list.querySelectorAll('[data-testid=message]').length;
  const atStart = () => list.querySelector('[data-testid=conversation-start]') !== null;
  const before = count();
  list.scrollTop = 0;
  const top = list.querySelector('[data-testid=message]');
  const seenAt = top.getBoundingClientRect().top - list.getBoundingClientRect().top;
  const deadline = performance.now() + 20000;
  while (count() === before && !atStart()) {
    if (performance.now() > deadline) return "timeout";
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
  const kept = list.querySelector(`[data-message-id="${top.dataset.messageId}"]`);
  const offset = kept.getBoundingClientRect().top - list.getBoundingClientRect().top;
  return { before, count: count(), seenAt, offset };
}"""


async def test_scrolling_up_pages_back_to_the_first_of_5000_messages(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    api.add_history(2, 5000, start=1_700_000_000.0, step=30.0)
    await page.goto(f"{h.url}?token={TOKEN}")
    await page.locator(h.peer(2)).click()
    messages = page.locator(h.testid("message"))
    await expect(messages.last).to_have_attribute("data-message-id", api.messages(2)[-1]["id"])
    await expect(messages).to_have_count(200)  # the latest page
    start = page.locator(h.testid("conversation-start"))
    await expect(start).to_have_count(0)
    first_id = api.messages(2, 10_000)[0]["id"]

    # Scroll to the top again and again: each older page goes in front, and
    # what was at the top stays where the reader saw it.  One round trip a
    # page: the page scrolls, says where the top message was, waits for the
    # next page (or the start) and says where that message is then.
    for _ in range(40):
        if await start.count():
            break
        step = await page.locator(h.testid("message-list")).evaluate(PAGE_BACK_ONCE)
        assert step != "timeout", "no older page came within 20 s"
        if step["count"] == step["before"]:
            continue  # the last answer was empty: the start
        assert abs(step["offset"] - step["seenAt"]) <= 2, (
            f"the message that was at the top moved from {step['seenAt']}px to {step['offset']}px"
        )
    await expect(start).to_be_visible()
    await expect(messages).to_have_count(5000)
    await expect(messages.first).to_have_attribute("data-message-id", first_id)
    await expect(messages.first.locator(h.testid("message-text"))).to_have_text("old 0")
    ids = await messages.evaluate_all("ms => ms.map(m => m.dataset.messageId)")
    assert ids == [m["id"] for m in api.messages(2, 10_000)]  # no gap, no duplicate, in order
    assert h.page_errors == []


async def test_each_conversation_keeps_its_own_draft_across_a_reload(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    await page.goto(f"{h.url}?token={TOKEN}")
    composer = page.locator(h.testid("composer"))
    await page.locator(h.peer(2)).click()
    await composer.press_sequentially("half a thought for bob")
    await page.locator(h.peer(3)).click()
    await expect(composer).to_have_value("")  # bob's text does not follow
    await composer.fill("for the other one")
    await page.locator(h.peer(2)).click()
    await expect(composer).to_have_value("half a thought for bob")

    await page.reload()  # reopens bob's conversation (#peer-2)
    await expect(page.locator(h.testid("conversation"))).to_have_attribute("data-peer-id", "2")
    await expect(composer).to_have_value("half a thought for bob")
    await page.locator(h.peer(3)).click()
    await expect(composer).to_have_value("for the other one")

    # Sent: the draft is gone, here and after a reload.
    await composer.press("Enter")
    await until(lambda: api.sent == [(3, "for the other one")], "the message")
    await expect(composer).to_have_value("")
    await page.reload()
    await expect(page.locator(h.testid("conversation"))).to_have_attribute("data-peer-id", "3")
    await expect(composer).to_have_value("")
    await page.locator(h.peer(2)).click()
    await expect(composer).to_have_value("half a thought for bob")
    assert h.page_errors == []


# Records each desktop notification the page makes (the real one is made too).
NOTIFICATION_SPY = """
(() => {
  const Real = window.Notification;
  window.shownNotifications = [];
  class Spy extends Real {
    constructor(title, options) {
      super(title, options);
      window.shownNotifications.push({ title, body: options && options.body });
    }
  }
  Object.defineProperty(Spy, "permission", { get: () => Real.permission });
  Spy.requestPermission = (...args) => Real.requestPermission(...args);
  window.Notification = Spy;
})();
"""


async def test_unread_count_in_the_title_a_favicon_dot_and_desktop_notifications(harness: Harness) -> None:
    h, api = harness, harness.api
    browser = h.page.context.browser
    assert browser is not None
    context = await browser.new_context(permissions=["notifications"], viewport={"width": 1100, "height": 700})
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.add_init_script(NOTIFICATION_SPY)
        await page.goto(f"{h.url}?token={TOKEN}")
        await expect(page.locator(h.testid("peer-item"))).to_have_count(3)
        await expect(page).to_have_title("peerlink · alice")
        icon = page.locator(h.testid("favicon"))
        await expect(icon).to_have_attribute("href", "/static/favicon.svg")

        # Off until the user turns them on.
        await page.locator(h.peer(3)).click()
        api.receive(2, "not yet")
        await expect(page).to_have_title("(1) peerlink · alice")
        toggle = page.locator(h.testid("notify-toggle"))
        await expect(toggle).to_have_text("Desktop notifications: off")
        await toggle.click()
        await expect(toggle).to_have_text("Desktop notifications: on")
        await expect(toggle).to_have_attribute("aria-pressed", "true")

        api.receive(2, "are you there?")
        api.receive(2, f"and {XSS}")
        await expect(page).to_have_title("(3) peerlink · alice")
        await expect(icon).to_have_attribute("href", "/static/favicon-unread.svg")
        await page.wait_for_function("window.shownNotifications.length === 2")
        shown = await page.evaluate("window.shownNotifications")
        assert shown == [
            {"title": "bob #2", "body": "are you there?"},
            {"title": "bob #2", "body": f"and {XSS}"},
        ]

        # Nothing for the conversation being read; opening bob's clears the count and the dot.
        api.receive(3, "in the open chat")
        await expect(page.locator(h.testid("message-text"))).to_have_text(["in the open chat"])
        await page.locator(h.peer(2)).click()
        await expect(page).to_have_title("peerlink · alice")
        await expect(icon).to_have_attribute("href", "/static/favicon.svg")
        assert len(await page.evaluate("window.shownNotifications")) == 2

        # The switch survives a reload.
        await page.reload()
        await expect(page.locator(h.testid("notify-toggle"))).to_have_text("Desktop notifications: on")
        assert errors == []
        assert await page.locator('img:not([data-testid="safety-qr"])').count() == 0
    finally:
        await context.close()


async def test_an_unread_divider_when_a_conversation_opens_and_a_new_messages_button(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    api.add_history(2, 80, start=1_700_000_000.0)
    await page.goto(f"{h.url}?token={TOKEN}")
    await page.locator(h.peer(3)).click()
    for n in range(3):
        api.receive(2, f"unread {n}")
    await expect(page.locator(h.testid("unread-badge", h.peer(2)))).to_have_text("3")

    await page.locator(h.peer(2)).click()
    divider = page.locator(h.testid("unread-divider"))
    await expect(divider).to_have_text("3 new messages")
    await expect(divider).to_be_in_viewport()
    following = await divider.evaluate("d => d.nextElementSibling.querySelector('.message-text').textContent")
    assert following.startswith("unread 0")
    await expect(page.locator(h.testid("unread-badge", h.peer(2)))).to_have_count(0)
    assert await page.locator(h.testid("unread-divider")).count() == 1

    # Scrolled up, a new message does not move the list: a button says it came.
    button = page.locator(h.testid("new-messages"))
    await expect(button).to_be_hidden()
    message_list = page.locator(h.testid("message-list"))
    await message_list.evaluate("list => { list.scrollTop = 0; }")
    api.receive(2, "while you were up there")
    last = page.locator(h.testid("message")).last
    await expect(last).to_contain_text("while you were up there")
    await expect(button).to_be_visible()
    await expect(last).not_to_be_in_viewport()
    await button.click()
    await expect(button).to_be_hidden()
    await expect(last).to_be_in_viewport()

    # At the bottom, a new message just shows; my own never brings the button.
    api.receive(2, "at the bottom")
    # Wait for it to come (the last message before it was in view already):
    # one still on its way when peer 3 opens would be unread, with a divider.
    await expect(page.locator(h.testid("message")).last).to_contain_text("at the bottom")
    await expect(page.locator(h.testid("message")).last).to_be_in_viewport()
    await expect(button).to_be_hidden()

    # Opened again with nothing unread: no divider.
    await page.locator(h.peer(3)).click()
    await page.locator(h.peer(2)).click()
    await expect(page.locator(h.testid("message")).last).to_contain_text("at the bottom")
    await expect(divider).to_have_count(0)
    assert h.page_errors == []


async def test_day_separators_and_links_that_are_links_only_for_http(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    api.add_history(2, 3, start=1_709_294_400.0, step=3600.0)  # 2024-03-01 12:00 UTC, then hourly
    api.add_history(2, 2, start=1_709_380_800.0)  # the next day, noon UTC
    await page.goto(f"{h.url}?token={TOKEN}")
    await page.locator(h.peer(2)).click()
    text = (
        "see <https://example.org/a?b=1&c=2>. or (http://example.com/x_(y)) but not"
        " javascript:alert(1) nor data:text/html,hi nor ftp://files.example.org/f nor www.example.net"
    )
    api.receive(2, text)
    days = page.locator(h.testid("day-separator"))
    await expect(days).to_have_count(3)
    await expect(days.last).to_have_text("Today")
    await expect(days.first).to_contain_text("March")
    await expect(days.first).to_contain_text("2024")
    first_time = page.locator(h.testid("message")).first.locator("time")
    await expect(first_time).to_have_attribute("datetime", "2024-03-01T12:00:00.000Z")
    assert "2024" in (await first_time.get_attribute("title") or "")

    message = page.locator(h.testid("message")).last
    await expect(message.locator(h.testid("message-text"))).to_have_text(text)  # the text is all there
    links = message.locator(h.testid("message-link"))
    await expect(links).to_have_count(2)
    await expect(links.first).to_have_text("https://example.org/a?b=1&c=2")
    await expect(links.first).to_have_attribute("href", "https://example.org/a?b=1&c=2")
    await expect(links.first).to_have_attribute("target", "_blank")
    await expect(links.first).to_have_attribute("rel", "noopener noreferrer")
    await expect(links.last).to_have_text("http://example.com/x_(y)")
    assert await page.locator('a[href^="javascript"], a[href^="data"], a[href^="ftp"]').count() == 0
    assert await page.locator('img:not([data-testid="safety-qr"])').count() == 0
    assert h.page_errors == [] and h.dialogs == []


async def test_peers_ordered_by_last_activity_with_a_preview_and_no_chat_with_myself(harness: Harness) -> None:
    h, page, api = harness, harness.page, harness.api
    api.add_history(3, 2, start=1_700_000_000.0)  # old 0 (theirs), old 1 (mine)
    api.add_history(2, 1, start=1_600_000_000.0)
    await page.goto(f"{h.url}?token={TOKEN}")
    items = page.locator(h.testid("peer-item"))
    await expect(items).to_have_count(3)

    async def order() -> list[str | None]:
        return [await item.get_attribute("data-peer-id") for item in await items.all()]

    assert await order() == ["3", "2", "4"]  # carol (4) never talked: last
    await expect(page.locator(h.testid("peer-preview", h.peer(3)))).to_have_text("you: old 1")
    await expect(page.locator(h.testid("peer-preview", h.peer(4)))).to_have_count(0)

    api.receive(2, f"fresh {XSS}")
    await expect(page.locator(h.testid("peer-preview", h.peer(2)))).to_have_text(f"fresh {XSS}")
    await expect(items.first).to_have_attribute("data-peer-id", "2")
    await page.locator(h.peer(3)).click()
    await page.locator(h.testid("composer")).fill("back to you")
    await page.locator(h.testid("composer")).press("Enter")
    await expect(page.locator(h.testid("peer-preview", h.peer(3)))).to_have_text("you: back to you")
    await expect(items.first).to_have_attribute("data-peer-id", "3")
    await page.reload()  # the order and previews come from the server too
    await expect(items.first).to_have_attribute("data-peer-id", "3")
    await expect(page.locator(h.testid("peer-preview", h.peer(2)))).to_have_text(f"fresh {XSS}")

    # My own id in "Chat with id" opens nothing and says why.
    await page.locator(h.testid("open-peer-id")).fill("1")
    await page.locator(h.testid("open-peer-button")).click()
    await expect(page.locator(h.testid("error-text"))).to_contain_text("your own id")
    await expect(page.locator(h.testid("conversation"))).to_have_attribute("data-peer-id", "3")
    assert await page.locator('img:not([data-testid="safety-qr"])').count() == 0
    assert h.page_errors == []
