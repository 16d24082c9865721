"""How the page looks and holds up, in headless Chromium against the real web
layer and the fake peer: the first-run card, dark mode (the system's and the
theme button's), the one-pane layout of a phone, message grouping, and a
burst of 1,000 incoming messages with the conversation open.  The site runs
under pytest-aiohttp's ``aiohttp_client`` (on a fixed loopback port: the
config's port is part of the Host, Origin and cookie checks)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, expect
from pytest_aiohttp import AiohttpClient
from unit import fake_api
from unit.fake_api import FakePeerApi

from webpeer.web import WebConfig, create_app

TOKEN = "browser-looks-token_0123456789"
LIGHT_BG = "rgb(244, 245, 247)"  # app.css --bg, light
DARK_BG = "rgb(18, 21, 28)"  # app.css --bg, dark


async def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tid(name: str, scope: str = "") -> str:
    return f'{scope} [data-testid="{name}"]'.strip()


def peer(peer_id: int) -> str:
    return f'[data-testid="peer-item"][data-peer-id="{peer_id}"]'


@dataclass
class Site:
    api: FakePeerApi
    url: str
    browser: Browser
    errors: list[str]
    contexts: list[BrowserContext] = field(default_factory=list)

    async def page(self, width: int = 1100, height: int = 700, color_scheme: str = "light") -> Page:
        context = await self.browser.new_context(viewport={"width": width, "height": height}, color_scheme=color_scheme)  # type: ignore[arg-type]
        self.contexts.append(context)  # closed when the test ends
        page = await context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        await page.goto(f"{self.url}?token={TOKEN}")
        return page


# On the session's loop with the shared Chromium (tests/browser/conftest.py),
# so the site runs under that conftest's aiohttp_client for that loop.
@pytest_asyncio.fixture(loop_scope="session")
async def site(shared_loop_aiohttp_client: AiohttpClient, browser: Browser) -> AsyncIterator[Site]:
    api = FakePeerApi(my_id=1, name="alice")
    port = free_port()
    await shared_loop_aiohttp_client(
        create_app(WebConfig(port=port, token=TOKEN), api), server_kwargs={"host": "127.0.0.1", "port": port}
    )
    site = Site(api, f"http://127.0.0.1:{port}/", browser, [])
    try:
        yield site
    finally:
        for context in site.contexts:
            await context.close()


async def body_background(page: Page) -> str:
    return str(await page.evaluate("getComputedStyle(document.documentElement).backgroundColor"))


async def test_first_run_card_says_who_i_am_copies_my_id_and_goes_away(site: Site) -> None:
    page = await site.page()
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    card = page.locator(tid("welcome-card"))
    await expect(card).to_be_visible()
    await expect(page.locator(tid("welcome-name"))).to_have_text("alice #1")
    await expect(page.locator(tid("welcome-id"))).to_have_text("1")
    await expect(page.locator(tid("welcome-fingerprint"))).to_have_text("SHA256:fake-alice")
    # Connection details are folded away, still there for the curious.
    await expect(page.locator(tid("my-address"))).to_be_hidden()
    await page.locator(tid("me-details") + " summary").click()
    await expect(page.locator(tid("my-address"))).to_have_text("127.0.0.1:40001")
    await page.locator(tid("welcome-copy")).click()
    await expect(page.locator(tid("welcome-copied"))).to_have_text("Copied.")
    assert await page.evaluate("navigator.clipboard.readText()") == "1"
    await page.locator(tid("welcome-dismiss")).click()
    await expect(card).to_be_hidden()
    await page.reload()
    await expect(page.locator(tid("my-id"))).to_have_text("1")
    await expect(card).to_be_hidden()  # dismissed for good in this browser
    assert site.errors == []


async def test_the_card_is_not_shown_once_there_are_peers(site: Site) -> None:
    site.api.add_peer(2, "bob")
    page = await site.page()
    await expect(page.locator(peer(2))).to_have_count(1)
    await expect(page.locator(tid("welcome-card"))).to_be_hidden()


async def test_dark_mode_follows_the_system_and_the_theme_button(site: Site) -> None:
    page = await site.page(color_scheme="dark")
    await expect(page.locator(tid("my-id"))).to_have_text("1")
    assert await body_background(page) == DARK_BG
    button = page.locator(tid("theme-toggle"))
    await expect(button).to_have_text("Theme: auto")
    await button.click()  # auto -> dark
    await expect(button).to_have_text("Theme: dark")
    assert await body_background(page) == DARK_BG
    await button.click()  # dark -> light, though the system is dark
    await expect(button).to_have_text("Theme: light")
    assert await body_background(page) == LIGHT_BG
    await page.reload()
    await expect(button).to_have_text("Theme: light")  # kept in this browser
    assert await body_background(page) == LIGHT_BG
    light = await site.page(color_scheme="light")
    assert await body_background(light) == LIGHT_BG


async def test_a_phone_shows_the_list_then_the_conversation_then_the_list(site: Site) -> None:
    site.api.add_peer(2, "bob")
    page = await site.page(width=390, height=844)
    sidebar, conversation = page.locator(".sidebar"), page.locator(tid("conversation"))
    await expect(sidebar).to_be_visible()
    await expect(conversation).to_be_hidden()
    await page.locator(peer(2)).click()
    await expect(conversation).to_be_visible()
    await expect(sidebar).to_be_hidden()
    composer = page.locator(tid("composer"))
    await expect(composer).to_be_visible()
    # The messages get most of the screen.
    box = await page.locator(tid("message-list")).bounding_box()
    assert box is not None and box["height"] > 844 / 2
    await page.locator(tid("back-button")).click()
    await expect(sidebar).to_be_visible()
    await expect(conversation).to_be_hidden()
    wide = await site.page(width=1100, height=700)
    await expect(wide.locator(tid("back-button"))).to_be_hidden()
    await expect(wide.locator(".sidebar")).to_be_visible()
    await expect(wide.locator(tid("conversation"))).to_be_visible()


async def test_close_messages_from_one_side_are_grouped_and_say_who_wrote_them(site: Site) -> None:
    site.api.add_peer(2, "bob")
    page = await site.page()
    await page.locator(peer(2)).click()
    site.api.receive(2, "first")
    site.api.receive(2, "second")
    messages = page.locator(tid("message"))
    await expect(messages).to_have_count(2)
    await expect(messages.nth(0)).not_to_have_class("message theirs grouped")
    await expect(messages.nth(1)).to_have_class("message theirs grouped")
    assert await messages.nth(1).locator(".sr-only").text_content() == "bob: "
    await page.locator(tid("composer")).fill("mine")
    await page.locator(tid("composer")).press("Enter")
    await expect(messages).to_have_count(3)
    await expect(messages.nth(2)).to_have_class("message mine")  # the other side: a new group
    assert await messages.nth(2).locator(".sr-only").text_content() == "You: "


# Records, in the page, how many messages each change of the list added
# (one MutationObserver callback per drawing pass), in how many insertions,
# how many elements were taken out (a move is a removal and an insertion),
# and the long tasks.
WATCH_BURST = """() => {
  window.__burst = { passes: [], insertions: [], removed: 0, longTasks: [] };
  new PerformanceObserver((entries) => {
    for (const entry of entries.getEntries()) window.__burst.longTasks.push(Math.round(entry.duration));
  }).observe({ type: "longtask" });
  new MutationObserver((records) => {
    let added = 0;
    let insertions = 0;
    for (const record of records) {
      if (record.addedNodes.length > 0) insertions += 1;
      window.__burst.removed += record.removedNodes.length;
      for (const node of record.addedNodes) if (node.dataset && node.dataset.testid === "message") added += 1;
    }
    if (added > 0) {
      window.__burst.passes.push(added);
      window.__burst.insertions.push(insertions);
    }
  }).observe(document.querySelector('[data-testid="message-list"]'), { childList: true });
}"""


async def test_a_burst_of_1000_messages_is_drawn_in_slices_of_200_and_all_show_in_order(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole burst fits in the page's event queue, so the site writes it
    # in one or two websocket frames: the page has all 1,000 at once.
    monkeypatch.setattr(fake_api, "QUEUE_SIZE", 1100)
    site.api.add_peer(2, "bob")
    page = await site.page()
    await page.locator(peer(2)).click()
    await expect(page.locator(tid("conversation"))).to_have_attribute("data-peer-id", "2")
    await page.evaluate(WATCH_BURST)
    for n in range(1000):
        site.api.receive(2, f"burst {n}")
    texts = page.locator(tid("message-text"))
    await expect(texts).to_have_count(1000, timeout=20_000)
    assert await texts.all_text_contents() == [f"burst {n}" for n in range(1000)]
    burst = await page.evaluate("window.__burst")
    # Drawn in passes of at most 200 new messages (views/messages.js), never
    # all at once; how long each took is a benchmark figure (bench/PAGE.md).
    assert sum(burst["passes"]) == 1000
    assert max(burst["passes"]) <= 200, burst["passes"]
    # A pass costs what it adds: its new elements go in at the end as one
    # fragment, and nothing the list already held is taken out or moved.
    assert burst["insertions"] == [1] * len(burst["passes"]), burst["insertions"]
    assert burst["removed"] == 0
    print(f"passes {burst['passes']}, long tasks (ms) {burst['longTasks']}")
    list_box = page.locator(tid("message-list"))
    await expect(texts.nth(999)).to_be_in_viewport()  # the reader was at the end and stays there
    assert await list_box.evaluate("(list) => list.scrollHeight - list.scrollTop - list.clientHeight") < 80
    await expect(page.locator(tid("unread-badge"))).to_have_count(0)  # read as they came
    assert site.errors == []


# Counts the notes the page starts (WebAudio oscillators), before any script of the page runs.
COUNT_NOTES = """
window.__notes = 0;
const realStart = OscillatorNode.prototype.start;
OscillatorNode.prototype.start = function (...args) {
  window.__notes += 1;
  return realStart.apply(this, args);
};
"""


async def notes(page: Page) -> int:
    return int(await page.evaluate("window.__notes"))


async def test_the_new_message_sound_is_off_until_ticked_then_rings_for_other_conversations(site: Site) -> None:
    site.api.add_peer(2, "bob")
    site.api.add_peer(3, "carol")
    page = await site.page()
    await page.add_init_script(COUNT_NOTES)
    await page.reload()
    toggle = page.locator(tid("sound-toggle"))
    await expect(toggle).not_to_be_checked()  # off by default
    await page.locator(peer(2)).click()
    site.api.receive(3, "from carol, sound off")
    await expect(page.locator(peer(3)).locator(tid("unread-badge"))).to_have_text("1")
    assert await notes(page) == 0

    await toggle.check()  # plays the chime once as a sample: two notes
    await page.wait_for_function("() => window.__notes === 2")
    site.api.receive(2, "from bob, read as it comes")  # the open conversation: no sound
    await expect(page.locator(tid("message-text")).last).to_have_text("from bob, read as it comes")
    assert await notes(page) == 2
    site.api.receive(3, "from carol, sound on")
    await page.wait_for_function("() => window.__notes === 4")

    await page.reload()  # the choice is kept in this browser
    await expect(page.locator(tid("sound-toggle"))).to_be_checked()
    assert site.errors == []
