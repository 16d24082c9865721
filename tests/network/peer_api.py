"""Runs INSIDE a lab namespace: talks to the webpeer of that namespace on its
own 127.0.0.1 (the root namespace cannot, and must not, reach it).

    python peer_api.py PORT TOKEN me
    python peer_api.py PORT TOKEN peers
    python peer_api.py PORT TOKEN send TO TEXT
    python peer_api.py PORT TOKEN messages PEER
    python peer_api.py PORT TOKEN burst TO COUNT PREFIX   (COUNT messages "PREFIX 0" ... in order)
    python peer_api.py PORT TOKEN stream TO COUNT PREFIX HOLD_AT
                                                          (COUNT messages, one every 10 ms; before
                                                          message HOLD_AT waits for a direct path;
                                                          prints each one's id and the path the
                                                          page knew when it was posted)
    python peer_api.py PORT TOKEN send-wait TO TEXT        (POST, then wait for `delivered` on the
                                                           page's websocket; prints the seconds it
                                                           took and the wall-clock time of the POST)
    python peer_api.py PORT TOKEN group-create NAME ID,ID...
    python peer_api.py PORT TOKEN group-burst GROUP COUNT PREFIX
    python peer_api.py PORT TOKEN group-messages GROUP
    python peer_api.py PORT TOKEN watch FROM TEXT          (websocket; prints "ready", then the
                                                           wall-clock time the message from FROM
                                                           with TEXT arrived)

Every namespace shares the machine's clock, so wall-clock times taken in
two of them compare.

Prints the JSON answer on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request


def call(port: int, token: str, method: str, path: str, body: object = None) -> object:
    base = f"http://127.0.0.1:{port}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Origin", base)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def events(frame_data: str) -> list[dict]:
    """One websocket frame's events: events ready together come as a batch."""
    event = json.loads(frame_data)
    return event["events"] if event.get("type") == "batch" else [event]


async def watch(port: int, token: str, sender: int, text: str) -> dict[str, float]:
    import aiohttp  # the project venv's; only this command needs it

    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/ws?token={token}", headers={"Origin": base}) as ws:
            print("ready", flush=True)
            async for frame in ws:
                for event in events(frame.data):
                    message = event.get("message") if event.get("type") == "message" else None
                    if message and message["from"] == sender and message["text"] == text:
                        return {"at": time.time()}
    raise SystemExit("websocket closed before the message came")


async def send_wait(port: int, token: str, to: int, text: str) -> dict[str, object]:
    """POST a message with the page's websocket open, and wait there for its
    `delivered` status (no polling: that would load the peer while timed)."""
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    headers = {"Origin": base, "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/ws?token={token}", headers={"Origin": base}) as ws:
            delivered: set[str] = set()
            connection = None  # the path as the page last heard of it
            posted_at = time.time()
            started = time.monotonic()
            async with session.post(f"{base}/api/messages", json={"to": to, "text": text}, headers=headers) as reply:
                reply.raise_for_status()
                message_id = (await reply.json())["id"]
            while message_id not in delivered:
                for event in events((await ws.receive()).data):
                    if event.get("type") == "status" and event.get("status") == "delivered":
                        delivered.add(event["id"])
                    elif event.get("type") == "connection" and event.get("peer") == to:
                        connection = event["connection"]
            return {
                "id": message_id,
                "seconds": time.monotonic() - started,
                "posted_at": posted_at,
                "connection": connection,
            }


async def stream(port: int, token: str, to: int, count: int, prefix: str, hold_at: int) -> list[dict[str, object]]:
    """Messages posted at a steady pace while the page's websocket follows
    the path to ``to``: the ones before ``hold_at`` go whatever the path,
    the rest only once it is direct, so the stream spans a relayed -> direct
    move when there is one."""
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    headers = {"Origin": base, "Authorization": f"Bearer {token}"}
    path: dict[str, str | None] = {"state": None}
    direct = asyncio.Event()

    async def follow(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            for event in events(frame.data):
                if event.get("type") == "connection" and event.get("peer") == to:
                    state = (event.get("connection") or {}).get("state")
                    path["state"] = state
                    if state == "direct":
                        direct.set()
                    else:
                        direct.clear()

    sent: list[dict[str, object]] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/ws?token={token}", headers={"Origin": base}) as ws:
            follower = asyncio.create_task(follow(ws))
            try:
                for i in range(count):
                    if i == hold_at:
                        await asyncio.wait_for(direct.wait(), 60)
                    body = {"to": to, "text": f"{prefix} {i}"}
                    async with session.post(f"{base}/api/messages", json=body, headers=headers) as reply:
                        reply.raise_for_status()
                        sent.append({"id": (await reply.json())["id"], "path": path["state"]})
                    await asyncio.sleep(0.01)
            finally:
                follower.cancel()
    return sent


def main() -> None:
    port, token, command, *args = sys.argv[1:]
    if command == "me":
        answer = call(int(port), token, "GET", "/api/me")
    elif command == "peers":
        answer = call(int(port), token, "GET", "/api/peers")
    elif command == "send":
        answer = call(int(port), token, "POST", "/api/messages", {"to": int(args[0]), "text": args[1]})
    elif command == "burst":
        to, count, prefix = int(args[0]), int(args[1]), args[2]
        answer = [
            call(int(port), token, "POST", "/api/messages", {"to": to, "text": f"{prefix} {i}"})["id"]
            for i in range(count)
        ]
    elif command == "stream":
        to, count, prefix, hold_at = int(args[0]), int(args[1]), args[2], int(args[3])
        answer = asyncio.run(asyncio.wait_for(stream(int(port), token, to, count, prefix, hold_at), 120))
    elif command == "send-wait":
        answer = asyncio.run(asyncio.wait_for(send_wait(int(port), token, int(args[0]), args[1]), 30))
    elif command == "watch":
        answer = asyncio.run(asyncio.wait_for(watch(int(port), token, int(args[0]), args[1]), 30))
    elif command == "group-create":
        members = [int(peer) for peer in args[1].split(",")]
        answer = call(int(port), token, "POST", "/api/groups", {"name": args[0], "members": members})
    elif command == "group-burst":
        group, count, prefix = args[0], int(args[1]), args[2]
        path = f"/api/groups/{group}/messages"
        answer = [call(int(port), token, "POST", path, {"text": f"{prefix} {i}"})["id"] for i in range(count)]
    elif command == "group-messages":
        answer = call(int(port), token, "GET", f"/api/groups/{args[0]}/messages?limit=5000")
    elif command == "messages":
        limit = int(args[1]) if len(args) > 1 else 500
        answer = call(int(port), token, "GET", f"/api/messages?peer={int(args[0])}&limit={limit}")
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
