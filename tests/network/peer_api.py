"""Runs INSIDE a lab namespace: talks to the webpeer of that namespace on its
own 127.0.0.1 (the root namespace cannot, and must not, reach it).

    python peer_api.py PORT TOKEN me
    python peer_api.py PORT TOKEN peers
    python peer_api.py PORT TOKEN send TO TEXT
    python peer_api.py PORT TOKEN messages PEER
    python peer_api.py PORT TOKEN burst TO COUNT PREFIX   (COUNT messages "PREFIX 0" ... in order)
    python peer_api.py PORT TOKEN send-wait TO TEXT        (POST, then poll every 5 ms until
                                                           delivered; prints the seconds it took)

Prints the JSON answer on stdout.
"""

from __future__ import annotations

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
        answer = [call(int(port), token, "POST", "/api/messages", {"to": to, "text": f"{prefix} {i}"})["id"]
                  for i in range(count)]
    elif command == "send-wait":
        started = time.monotonic()
        sent = call(int(port), token, "POST", "/api/messages", {"to": int(args[0]), "text": args[1]})
        while True:
            history = call(int(port), token, "GET", f"/api/messages?peer={int(args[0])}")
            if any(m["id"] == sent["id"] and m["status"] == "delivered" for m in history):  # type: ignore[union-attr]
                break
            if time.monotonic() - started > 30:
                raise SystemExit("not delivered within 30 s")
            time.sleep(0.005)
        answer = {"id": sent["id"], "seconds": time.monotonic() - started}  # type: ignore[index]
    elif command == "messages":
        answer = call(int(port), token, "GET", f"/api/messages?peer={int(args[0])}")
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
