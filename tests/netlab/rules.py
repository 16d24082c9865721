"""nftables rulesets for the NAT lab's routers and its internet namespace.

Pure functions from a few parameters to ruleset text (``nft -f -`` input),
so the behaviour of each NAT type can be read in one place.

Terms are RFC 4787's: *mapping* is which external address:port the NAT
picks for an internal socket (endpoint-independent: one for every
destination; address-and-port-dependent: a new one per destination);
*filtering* is which outside senders may reach that mapping.
"""

from __future__ import annotations

import enum

WAN = "wan"
"""The router's interface toward the internet namespace."""

LAB_PREFIXES = ("198.51.100.0/24", "203.0.113.0/24")
"""The only destinations the internet namespace forwards to (RFC 5737)."""

LAB_PREFIX6 = "2001:db8::/32"
"""The only IPv6 destinations it forwards to (RFC 3849, documentation)."""


class NatType(enum.Enum):
    """How a site's router treats its private host's UDP traffic."""

    FULL_CONE = "full-cone"
    """Endpoint-independent mapping and filtering: once the private host has
    sent from a port, anyone may send to that port's mapping."""

    PORT_RESTRICTED = "port-restricted"
    """Endpoint-independent mapping (Linux keeps the source port when it is
    free), address-and-port-dependent filtering: only the exact address:port
    the host sent to may answer."""

    SYMMETRIC = "symmetric"
    """Address-and-port-dependent mapping (a random external port for every
    new destination) and the same filtering as port-restricted."""

    NONE = "none"
    """No router: the host sits on the internet with a public address."""


def router_ruleset(nat: NatType, private_host: str, mapping_timeout: int) -> str:
    """The whole ruleset of a NAT router whose private host is ``private_host``.

    The firewall is what makes the cone and symmetric types behave as named:
    without it, an unsolicited inbound datagram (an early punch) would be
    confirmed as a new conntrack entry holding the external port, and the
    host's own later outbound datagram would then be given another port,
    turning the mapping symmetric for that flow.  Dropping at ``input`` and
    ``forward`` keeps such entries unconfirmed, so they vanish.
    """
    if nat is NatType.NONE:
        raise ValueError("a site without NAT has no router")
    masquerade = "masquerade fully-random" if nat is NatType.SYMMETRIC else "masquerade"
    full_cone = nat is NatType.FULL_CONE
    # Full cone: Linux has no such NAT, so remember every external UDP port
    # the host has sent from (after masquerade picked it, hence the filter
    # chain after srcnat) together with the host's own port, and send
    # anything arriving at that external port to the host.  The entry lives
    # ``mapping_timeout`` seconds after the host's last outbound datagram.
    cone_map = (
        f"""
  map fullcone {{
    type inet_service : inet_service
    flags timeout
  }}
  chain cone_in {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{WAN}" meta l4proto udp dnat to {private_host} : udp dport map @fullcone
  }}
  chain cone_record {{
    type filter hook postrouting priority srcnat + 10; policy accept;
    oifname "{WAN}" meta l4proto udp update @fullcone {{ udp sport timeout {mapping_timeout}s : ct original proto-src }}
  }}"""
        if full_cone
        else ""
    )
    accept_cone = f'\n    iifname "{WAN}" ct status dnat accept' if full_cone else ""
    return f"""
table ip netlab_nat {{
  chain out {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{WAN}" {masquerade}
  }}{cone_map}
}}
table ip netlab_fw {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{WAN}" ct state established,related accept
    iifname "{WAN}" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{WAN}" ct state established,related accept{accept_cone}
    iifname "{WAN}" drop
  }}
}}
"""


def router_ruleset6() -> str:
    """A site router's IPv6 firewall, as home routers have it: no NAT (the
    host has a global address), everything outbound allowed, inbound only
    what belongs to a flow the host started (a UDP reply from exactly the
    address:port it sent to).  So a direct IPv6 path still needs both sides
    to send, but no port ever changes: symmetric IPv4 NATs do not matter."""
    return f"""
table ip6 netlab_fw6 {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{WAN}" ct state established,related accept
    iifname "{WAN}" drop
  }}
}}
"""


def internet_ruleset() -> str:
    """The internet namespace's table: a fence, and an empty chain for loss.

    The fence is a second guard besides the missing default route: nothing is
    forwarded to an address outside the lab's documentation ranges.
    """
    ranges = ", ".join(LAB_PREFIXES)
    return f"""
table inet netlab {{
  chain fence {{
    type filter hook forward priority filter - 20; policy accept;
    ip6 daddr != {LAB_PREFIX6} drop
    ip daddr != {{ {ranges} }} drop
  }}
  chain loss {{
    type filter hook forward priority filter - 10; policy accept;
  }}
}}
"""


def loss_rules(loss_percent: float) -> str:
    """Replace the internet's loss rule: drop each forwarded packet with this
    probability (in hundredths of a percent), whichever way it goes."""
    if not 0.0 <= loss_percent <= 100.0:
        raise ValueError(f"loss_percent must be within 0..100, not {loss_percent}")
    text = "flush chain inet netlab loss\n"
    threshold = round(loss_percent * 100)
    if threshold:
        text += f"add rule inet netlab loss numgen random mod 10000 < {threshold} drop\n"
    return text
