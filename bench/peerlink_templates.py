"""Request templates for the peerlink scenarios of the UDP benchmark.

    python bench/peerlink_templates.py PORT COUNT METHOD

Registers COUNT peers with the rendezvous server on 127.0.0.1:PORT, each from
its own socket (bound to 127.0.0.1:0), closes the sockets, and prints one
line per peer: `<its port> <hex of a METHOD request>` (refresh, list or
connect).  The generator then binds those ports, so each request comes from
the address its peer registered from.  The SESSION attribute does not cover
the transaction id, so the generator may rewrite it.  CONNECT asks for the
next peer's id (round robin), so every target is a registered peer.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rendezvous.client import RendezvousClient, session_request  # noqa: E402
from rendezvous.stun import Attr, Method, encode  # noqa: E402


async def main(port: int, count: int, method: str) -> None:
    server = ("127.0.0.1", port)
    clients = []
    for i in range(count):
        client = await RendezvousClient(server, nickname=f"bench{i}").open()
        await client.register()
        clients.append(client)
    lines = []
    for i, client in enumerate(clients):
        reg = client.registration
        assert reg is not None
        if method == "refresh":
            request = session_request(Method.REFRESH, reg.session, (Attr.TTL, 60))
        elif method == "list":
            request = session_request(Method.LIST, reg.session, (Attr.LIMIT, 20))
        elif method == "connect":
            target = clients[(i + 1) % count].registration
            assert target is not None
            request = session_request(Method.CONNECT, reg.session, (Attr.PEER_ID, target.peer_id))
        else:
            raise SystemExit(f"unknown method {method!r}")
        lines.append(f"{client.address[1]} {encode(request, fingerprint=False).hex()}")
    for client in clients:
        client.close()
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
