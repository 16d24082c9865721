"""The script commands (``webpeer id``, ``peers``, ``send``, ``history``,
``listen``) and :func:`open_peer`, which gives them and ``webpeer chat`` a
peer to talk to.

A data dir has one peer process at most (webpeer/datadir.py).  When a
``webpeer`` already holds it, :func:`open_peer` attaches to that one over
its page's API (the lock file says the port, ``page.token`` the token);
when none does, it takes the lock and runs the peer in this process, for
as long as the command needs it (for ``chat`` and ``listen`` with the page
too, so that other commands can attach to them in turn).  Either way the
command sees a :class:`webpeer.peerclient.PeerClient`.

Exit status: 0 on success; 1 with one line on stderr (``webpeer: ...``)
when the peer refuses (the API's error message, e.g. ``unknown peer 99``),
a message fails, or a wait times out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import select
import stat
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from .api import JSON, ApiError
from .datadir import DataDirBusy, DataDirLock, read_token, write_token
from .node import NodeConfig, PeerNode
from .peerclient import HttpPeer, LocalPeer, PeerClient
from .quota import QuotaConfig
from .web import WebConfig, create_app, start_site

ATTACH_WAIT = 10.0  # how long to wait for a holder without a page to write its port or to end
REGISTER_WAIT = 10.0
LIST_WAIT = 1.0  # after registering, the first LIST answer comes within a round trip; margin for load
DELIVERY_GRACE = 3.0  # a briefly started peer waits this long for the receipt before it stops


class CommandError(Exception):
    """One line for the user; the command exits with status 1."""


def node_config(args: argparse.Namespace, data_dir: Path) -> NodeConfig:
    return NodeConfig(
        server=args.server[0],
        fallback_servers=args.server[1:],
        data_dir=data_dir,
        name=args.name,
        udp_host=args.udp_host,
        udp_port=args.udp_port,
        ttl=args.ttl,
        relay_only=args.relay_only,
        port_mapping=not args.no_port_mapping,
        mailbox=not args.no_mailbox,
        mailbox_after=max(0.0, args.mailbox_after),
        retention=args.retention_days * 24 * 3600,
        max_file_size=args.max_file_size,
        quota=QuotaConfig(messages_per_minute=args.peer_rate, stored_bytes=args.peer_quota_mb * 1_048_576),
    )


@dataclass(frozen=True)
class Opened:
    client: PeerClient
    page: str | None  # the page's URL when this process serves it


@asynccontextmanager
async def open_peer(args: argparse.Namespace, data_dir: Path, *, page_port: int | None) -> AsyncIterator[Opened]:
    """The peer of ``data_dir``: the running one, or one started here (and
    stopped, unregistering, on the way out).  ``page_port``: serve the page
    on it when started here (None: no page)."""
    lock = await _lock_or_holder(data_dir)
    if not isinstance(lock, DataDirLock):
        async with _attach(data_dir, *lock) as client:
            yield Opened(client, None)
        return
    try:
        node = PeerNode(node_config(args, data_dir))
        await node.start()
        runner = None
        try:
            url = None
            if page_port is not None:
                token = args.token or secrets.token_urlsafe(24)
                runner = await start_site(create_app(WebConfig(port=page_port, token=token), node), page_port)
                port = runner.addresses[0][1]
                write_token(data_dir, token)
                lock.record(port)
                url = f"http://127.0.0.1:{port}/?token={token}"
            yield Opened(LocalPeer(node), url)
        finally:
            if runner is not None:
                await runner.cleanup()
            await node.stop()
    finally:
        lock.release()


async def _lock_or_holder(data_dir: Path) -> DataDirLock | tuple[DataDirBusy, int]:
    """The data dir's lock, or who holds it and its page's port.  A holder
    with no page yet is starting (its port comes soon) or is another
    command's brief peer (it ends soon): ask again for a while."""
    deadline = time.monotonic() + ATTACH_WAIT
    while True:
        try:
            return DataDirLock.acquire(data_dir)
        except DataDirBusy as busy:
            if busy.port is not None:
                return busy, busy.port
            if time.monotonic() > deadline:
                raise CommandError(f"{busy} (and it serves no page to attach to)") from None
        await asyncio.sleep(0.1)


@asynccontextmanager
async def _attach(data_dir: Path, busy: DataDirBusy, port: int) -> AsyncIterator[PeerClient]:
    token = read_token(data_dir)
    if token is None:
        raise CommandError(f"the webpeer on {data_dir} (pid {busy.pid}) left no page.token to attach with")
    async with HttpPeer(port, token) as client:
        yield client


# ------------------------------------------------------------ waiting on the peer


async def registered(client: PeerClient, timeout: float = REGISTER_WAIT) -> JSON:
    """``me`` once the peer has its id from the server."""
    deadline = time.monotonic() + timeout
    while True:
        me = await client.me()
        if me["id"] is not None and me["registered"]:
            return me
        if time.monotonic() > deadline:
            raise CommandError(f"not registered with the rendezvous server {me['server']} after {timeout:g} s")
        await asyncio.sleep(0.05)


def peer_line(peer: JSON) -> str:
    """One peer for people: id, name, fingerprint, connection."""
    connection = peer.get("connection")
    if connection:
        how = connection["state"] + (f" {connection['address']}" if connection.get("address") else "")
    else:
        how = "online" if peer["online"] else "offline"
    return f"{peer['id']},{peer['name'] or '-'},{peer['fingerprint']},{how}"


def message_line(message: JSON) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(message["time"]))
    error = f" ({message['error']})" if message.get("error") else ""
    return f"{when} #{message['from']} -> #{message['to']} [{message['status']}{error}] {message['text']}"


# ------------------------------------------------------------ the commands


async def show_id(opened: Opened) -> None:
    me = await registered(opened.client)
    print(f"{me['id']} {me['fingerprint']}")


async def show_peers(opened: Opened, as_json: bool) -> None:
    await registered(opened.client)
    if not opened.client.attached:
        await asyncio.sleep(LIST_WAIT)  # just started: let the first LIST answer come
    peers = await opened.client.peers()
    if as_json:
        print(json.dumps(peers))
        return
    for peer in peers:
        if peer["online"]:
            print(peer_line(peer))


async def show_history(opened: Opened, peer_id: int, as_json: bool) -> None:
    messages = await opened.client.messages(peer_id)
    for message in messages:
        print(json.dumps(message) if as_json else message_line(message))


async def send(opened: Opened, to: int, text: str, wait: str, timeout: float) -> None:
    """Exit (return) once the message is ``wait`` (sent, or delivered); raise
    CommandError when it fails or the time is up."""
    client = opened.client
    deadline = time.monotonic() + timeout
    events = await client.subscribe()  # before sending: no status change can slip by
    try:
        await registered(client, timeout)
        try:
            message = await client.send(to, text)
        except ApiError as error:
            raise CommandError(error.message) from None
        status, why = message["status"], message.get("error")
        # Stored in the peer's mailbox at the server: it has left us, as a sent one has.
        wanted = ("delivered",) if wait == "delivered" else ("sent", "stored", "delivered")
        # When this process is the peer, stopping right after "sent" could
        # cut the link before the other side has the message: linger a
        # little for the receipt.
        linger = wait == "sent" and not client.attached
        while True:
            if status == "failed":
                raise CommandError(f"message to {to} failed: {why}")
            if status in wanted:
                if status == "delivered" or not linger:
                    break
                deadline = min(deadline, time.monotonic() + DELIVERY_GRACE)
            left = deadline - time.monotonic()
            if left <= 0:
                if status in wanted:
                    break
                raise CommandError(f"timed out after {timeout:g} s waiting for {wait} (the message is {status})")
            try:
                event = await asyncio.wait_for(events.next(), left)
            except TimeoutError:
                continue
            if event["type"] == "status" and event["id"] == message["id"]:
                status, why = event["status"], event.get("error")
            elif event["type"] == "resync":
                found = [m for m in await client.messages(to) if m["id"] == message["id"]]
                if found:
                    status, why = found[0]["status"], found[0].get("error")
        print(status)
    finally:
        await events.close()


async def listen(opened: Opened, as_json: bool) -> None:
    """One line per incoming message until the reader of stdout goes away
    (``| head -1``) or SIGINT/SIGTERM."""
    client = opened.client
    events = await client.subscribe()
    watch = asyncio.create_task(_stdout_closed())
    try:
        me = await registered(client)
        while True:
            next_event = asyncio.create_task(events.next())
            done, _ = await asyncio.wait({next_event, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done:
                next_event.cancel()
                return
            event = next_event.result()
            if event["type"] == "me" and event["me"]["id"] is not None:
                me = event["me"]
            if event["type"] != "message" or event["message"]["from"] == me["id"]:
                continue
            message = event["message"]
            line = json.dumps(message) if as_json else f"#{message['from']}: {message['text']}"
            try:
                print(line, flush=True)
            except BrokenPipeError:
                return
    finally:
        watch.cancel()
        await events.close()


async def _stdout_closed() -> None:
    """Returns when stdout is a pipe whose reader has gone: poll reports
    POLLERR on a pipe's write end with no readers, so ``listen | head -1``
    ends when head does, not at the next message.  Never returns for a
    terminal or a file (a write would tell; there is none to tell)."""
    fd = sys.stdout.fileno()
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        await asyncio.Event().wait()
    poller = select.poll()
    poller.register(fd, 0)  # no events asked for: POLLERR and POLLHUP come anyway
    while not poller.poll(0):
        await asyncio.sleep(0.2)
