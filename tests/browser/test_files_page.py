"""Files through the page, with real processes (the ``peers`` fixture of
test_two_peers.py: a rendezvous, alice and bob, one headless Chromium page
each): alice attaches a picture and drops a file; bob sees the offers with a
progress bar and Accept, accepts, and sees the picture inline."""

from __future__ import annotations

import struct
import zlib

import test_two_peers
from playwright.async_api import expect
from test_two_peers import WAIT_MS, Peer

peers = test_two_peers.peers


def png(width: int, height: int) -> bytes:
    """A real PNG (RGB, every pixel the same), so the browser can decode it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x20\x80\xc0" * width for _ in range(height))
    header = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def file_row(peer: Peer, name: str):
    return peer.testid("file").filter(has_text=name)


async def test_a_picture_attached_on_one_page_shows_inline_on_the_other(peers: tuple[Peer, Peer]) -> None:
    alice, bob = peers
    await alice.page.locator(alice.peer_item(2)).click()
    await bob.page.locator(bob.peer_item(1)).click()
    await expect(alice.testid("attach-button")).to_be_enabled(timeout=WAIT_MS)

    await alice.testid("file-input").set_input_files(
        files=[{"name": "pic.png", "mimeType": "image/png", "buffer": png(40, 30)}]
    )
    # Dropping onto the conversation sends too.
    await alice.page.evaluate(
        """() => {
          const data = new DataTransfer();
          data.items.add(new File(["dropped text"], "dropped.txt", { type: "text/plain" }));
          const target = document.querySelector('[data-testid="conversation"]');
          target.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
        }"""
    )
    for name in ("pic.png", "dropped.txt"):
        await expect(file_row(alice, name)).to_have_attribute("data-status", "offered", timeout=WAIT_MS)
        offer = file_row(bob, name)
        await expect(offer).to_have_attribute("data-status", "offered", timeout=WAIT_MS)
        await expect(offer.locator('[data-testid="file-progress"]')).to_be_visible()
        await offer.locator('[data-testid="file-accept"]').click()
        await expect(offer).to_have_attribute("data-status", "complete", timeout=WAIT_MS)
        await expect(file_row(alice, name)).to_have_attribute("data-status", "complete", timeout=WAIT_MS)

    thumb = file_row(bob, "pic.png").locator('[data-testid="file-thumb"]')
    await expect(thumb).to_be_visible()
    # Decoded: the browser shows the picture (40 pixels wide), not a broken image.
    image = await thumb.element_handle()
    await bob.page.wait_for_function("img => img.complete && img.naturalWidth === 40", arg=image, timeout=WAIT_MS)
    await expect(file_row(bob, "dropped.txt").locator('[data-testid="file-thumb"]')).to_have_count(0)
    # The page heard of it over the websocket (offer first, complete last).
    events = [e for f in bob.ws_in for e in (f["events"] if f.get("type") == "batch" else [f])]
    kinds = [e["kind"] for e in events if e.get("type") == "file" and e["file"]["name"] == "pic.png"]
    assert kinds[0] == "offer" and kinds[-1] == "complete"

    # Bob accepts alice's files up to 1 MB by themselves (the conversation's
    # "files from this peer" choice): the next one completes with no click.
    await bob.testid("auto-accept-select").select_option("1000000")
    await expect(bob.testid("auto-accept-select")).to_have_value("1000000", timeout=WAIT_MS)
    await bob.page.wait_for_function(
        """async () => {
          const peers = await (await fetch("/api/peers")).json();
          return peers.some((p) => p.id === 1 && p.auto_accept_bytes === 1000000);
        }""",
        timeout=WAIT_MS,
    )
    await alice.testid("file-input").set_input_files(
        files=[{"name": "auto.txt", "mimeType": "text/plain", "buffer": b"accepted by itself"}]
    )
    await expect(file_row(bob, "auto.txt")).to_have_attribute("data-status", "complete", timeout=WAIT_MS)
    await expect(file_row(alice, "auto.txt")).to_have_attribute("data-status", "complete", timeout=WAIT_MS)
    for peer in peers:
        assert not peer.page_errors and not peer.csp_errors, (peer.page_errors, peer.csp_errors)
