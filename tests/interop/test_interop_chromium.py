"""Headless Chromium's WebRTC stack gathers a server-reflexive candidate from us.

Debian's ``chromium`` (scripts/system-deps.sh installs it) is driven by
Playwright; ``playwright install`` is never needed, as the browser is the
system one.  The page is about:blank: an RTCPeerConnection with only our
``stun:`` URL, a data channel so that there is something to gather for, and
``setLocalDescription`` to start gathering.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from browser.chromium import chromium_path
from playwright.async_api import Page, async_playwright

from rendezvous.server import RendezvousServer

pytestmark = pytest.mark.interop

# Every flag below was checked under strace: with them, the only datagram the
# browser sends is the STUN Binding to our server.  (It still connect()s
# UDP sockets to 8.8.8.8:53 and 2001:4860:4860::8888 to learn the default
# local address, but a UDP connect() sends nothing.)
CHROMIUM_ARGS = [
    # As root in a container there are no user namespaces for the sandbox.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Even with the flags above the browser resolves clients2.google.com,
    # update.googleapis.com and accounts.google.com at start.  Every host name
    # fails at once instead, with no DNS query; IP literals such as our
    # stun: URL are not resolved, so they still work.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    # Otherwise host candidates hide behind random .local names, which the
    # browser announces by multicast mDNS (224.0.0.251): traffic that would
    # leave the loopback.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # Without this the loopback interface is ignored when networks are listed:
    # where `lo` is the only interface (an empty network namespace, tried) the
    # browser gathers nothing at all.  With it, gathering works there too.
    "--allow-loopback-in-peer-connection",
]

GATHER_TIMEOUT_MS = 10_000

# Resolves once gathering completes (the null candidate) or the timeout fires.
GATHER_JS = """
async ([url, timeoutMs]) => {
  const pc = new RTCPeerConnection({iceServers: [{urls: url}]});
  const candidates = [];
  const errors = [];
  pc.onicecandidateerror = (e) => errors.push(`${e.errorCode} ${e.errorText} (${e.url})`);
  const finished = new Promise((resolve) => {
    pc.onicecandidate = (e) => {
      if (e.candidate) {
        candidates.push({line: e.candidate.candidate, url: e.candidate.url || ''});
      } else {
        resolve('complete');
      }
    };
    setTimeout(() => resolve('timeout'), timeoutMs);
  });
  pc.createDataChannel('interop');
  await pc.setLocalDescription(await pc.createOffer());
  const outcome = await finished;
  pc.close();
  return {outcome, candidates, errors};
}
"""


@dataclass(frozen=True)
class Candidate:
    """The fields of an SDP candidate line (RFC 8839 section 5.1) we check."""

    kind: str
    address: str
    port: int
    related_address: str | None
    related_port: int | None
    url: str

    @classmethod
    def parse(cls, line: str, url: str) -> Candidate:
        # candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> [raddr <a> rport <p>] ...
        fields = line.split()
        assert fields[6] == "typ", line
        extras = dict(zip(fields[8::2], fields[9::2], strict=False))
        rport = extras.get("rport")
        return cls(
            fields[7], fields[4], int(fields[5]), extras.get("raddr"), None if rport is None else int(rport), url
        )


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        # launch() gives every run a fresh temporary profile.
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


def stun_url(host: str, port: int) -> str:
    return f"stun:[{host}]:{port}" if ":" in host else f"stun:{host}:{port}"


async def test_chromium_gathers_a_server_reflexive_candidate(
    stun_server: RendezvousServer, page: Page, server_stats: Callable[[RendezvousServer], dict[str, int]]
) -> None:
    host, port = stun_server.address
    url = stun_url(host, port)
    result: dict[str, Any] = await page.evaluate(GATHER_JS, [url, GATHER_TIMEOUT_MS])

    assert result["outcome"] == "complete", result
    assert result["errors"] == [], result
    candidates = [Candidate.parse(c["line"], c["url"]) for c in result["candidates"]]
    srflx = [c for c in candidates if c.kind == "srflx"]
    assert srflx, f"no srflx candidate in {result['candidates']}"
    for candidate in srflx:
        # The browser names the STUN server each srflx came from: ours.
        # (Chromium writes an IPv6 one without brackets: stun:::1:PORT.)
        assert candidate.url in (url, f"stun:{host}:{port}"), candidate
        assert candidate.address == host, candidate
        if candidate.related_port:
            # No NAT on the loopback: the mapped port is the browser socket's
            # own port (its host candidate), so our port encoding is exact.
            assert candidate.port == candidate.related_port, candidate
    counters = server_stats(stun_server)
    # Each srflx candidate came from one of our Binding responses.
    assert counters["binding"] >= len(srflx)
    assert counters.get("dropped", 0) == 0
