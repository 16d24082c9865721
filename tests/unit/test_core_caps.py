"""ServerCore's caps on who goes online (issue 16, finding 7), pure, with
literal times: keyed peers online in all and per source IP, and the 503 a
registration gets when the registry is full.  (The registry's own cap and
the release of ids unseen for long: tests/unit/test_sqlite_registry.py.)"""

from __future__ import annotations

from test_core import T0, Harness, error_code, key

from rendezvous.client import public_key_bytes, register_request
from rendezvous.core import REGISTRY_FULL, SERVER_FULL, TOO_MANY_FROM_ADDRESS, ServerConfig
from rendezvous.stun import Attr, Message, MessageClass, Method, decode, encode
from rendezvous.tokens import registration_payload

OFFICE = "192.0.2.50"  # one NAT, many peers behind it


def refusal(h: Harness, n: int, address: tuple[str, int], now: float) -> tuple[int | None, str]:
    """Register key ``n`` from ``address``; the error code and phrase (None, "" on success)."""
    public_key = public_key_bytes(key(n))
    challenge = h.ask(register_request(public_key), address, now).get(Attr.CHALLENGE)
    signed = register_request(
        public_key, challenge=challenge, signature=key(n).sign(registration_payload(challenge, public_key))
    )
    reply = h.ask(signed, address, now)
    if reply.message_class == MessageClass.SUCCESS:
        h.sessions[address] = reply.get(Attr.SESSION)
        return None, ""
    return error_code(reply), reply.get(Attr.ERROR_CODE).reason


def test_one_address_holds_at_most_its_share_of_online_ids() -> None:
    h = Harness(ServerConfig(max_online_per_ip=2))
    assert refusal(h, 1, (OFFICE, 1001), T0) == (None, "")
    assert refusal(h, 2, (OFFICE, 1002), T0) == (None, "")
    assert refusal(h, 3, (OFFICE, 1003), T0) == (503, TOO_MANY_FROM_ADDRESS)
    assert h.core.stats[f"registrations_refused: {TOO_MANY_FROM_ADDRESS}"] == 1
    # Another address is not affected; one already online registers again.
    assert refusal(h, 4, ("198.51.100.9", 2000), T0) == (None, "")
    assert refusal(h, 1, (OFFICE, 1001), T0 + 1) == (None, "")
    # Refused, nobody went online: LIST from the office shows peers 2 and 4 only.
    listed = h.request(Method.LIST, (OFFICE, 1001), T0 + 1).get_all(Attr.PEER_ENTRY)
    assert sorted(e.peer_id for e in listed) == [2, 4]
    # One leaves: there is room for the third.
    assert h.request(Method.UNREGISTER, (OFFICE, 1002), T0 + 2).message_class == MessageClass.SUCCESS
    assert refusal(h, 3, (OFFICE, 1003), T0 + 2) == (None, "")
    # Expiry frees the share too (TTL 60 s; the office's two stop refreshing).
    assert refusal(h, 5, (OFFICE, 1005), T0 + 3) == (503, TOO_MANY_FROM_ADDRESS)
    h.core.handle_timer(T0 + 70)
    assert refusal(h, 5, (OFFICE, 1005), T0 + 70) == (None, "")


def test_a_peer_moving_to_a_full_address_is_refused_there() -> None:
    h = Harness(ServerConfig(max_online_per_ip=1))
    assert refusal(h, 1, (OFFICE, 1001), T0) == (None, "")
    assert refusal(h, 2, ("198.51.100.9", 2000), T0) == (None, "")
    assert refusal(h, 2, (OFFICE, 1002), T0 + 1) == (503, TOO_MANY_FROM_ADDRESS)
    # Moving away from it frees its place there.
    assert refusal(h, 1, ("203.0.113.5", 3000), T0 + 2) == (None, "")
    assert refusal(h, 2, (OFFICE, 1002), T0 + 3) == (None, "")


def test_past_max_online_new_peers_are_refused_and_online_ones_stay() -> None:
    h = Harness(ServerConfig(max_online=2))
    assert refusal(h, 1, ("192.0.2.1", 1), T0) == (None, "")
    assert refusal(h, 2, ("192.0.2.2", 2), T0) == (None, "")
    assert refusal(h, 3, ("192.0.2.3", 3), T0) == (503, SERVER_FULL)
    assert refusal(h, 2, ("192.0.2.2", 2), T0 + 1) == (None, "")  # already online: registers again


def test_a_full_registry_is_a_503_that_says_so() -> None:
    h = Harness()
    public_key = public_key_bytes(key(1))
    challenge = h.ask(register_request(public_key), ("192.0.2.1", 1), T0).get(Attr.CHALLENGE)
    signed: Message = register_request(
        public_key, challenge=challenge, signature=key(1).sign(registration_payload(challenge, public_key))
    )
    h.core.receive_datagram(encode(signed), ("192.0.2.1", 1), T0)
    [pending] = h.core.pending_registrations()
    h.core.fail_registration(pending, T0, REGISTRY_FULL)
    [(data, _)] = h.core.datagrams_to_send()
    reply = decode(data)
    assert (error_code(reply), reply.get(Attr.ERROR_CODE).reason) == (503, REGISTRY_FULL)
    assert len(h.core.directory) == 0
