"""The NAT lab itself: each NAT type maps and filters as RFC 4787 names it,
loss and delay are what was asked for, and teardown leaves nothing behind.

Every datagram here is sent by a small program (tests/netlab/udptool.py)
running inside a lab namespace; this process only starts them and reads
their JSON lines.  Runs as root; skips only without root or without kernel
support for namespaces and NAT.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from netlab import UDPTOOL, Lab, LabError, NatType, Site, remove_stale_namespaces, tool, unavailable_reason

pytestmark = pytest.mark.network

RV = "203.0.113.10"
ECHO = f"{RV}:3478"
CONE_TYPES = (NatType.FULL_CONE, NatType.PORT_RESTRICTED)


def require_lab() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def udptool(*args: str) -> list[str]:
    return [sys.executable, str(UDPTOOL), *args]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def port(address: str) -> int:
    return int(address.rpartition(":")[2])


def host_part(address: str) -> str:
    return address.rpartition(":")[0]


def start(lab: Lab, target: Any, *args: str) -> subprocess.Popen[str]:
    """Start a udptool command in ``target``, its JSON lines on a pipe."""
    return lab.popen(target, udptool(*args), stdout=subprocess.PIPE, text=True)


def first_line(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"udptool exited with {process.wait()} before its first line"
    record: dict[str, Any] = json.loads(line)
    return record


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab()
    with Lab() as lab:
        for name, nat in (
            ("fc", NatType.FULL_CONE),
            ("pr", NatType.PORT_RESTRICTED),
            ("sy", NatType.SYMMETRIC),
            ("pub", NatType.NONE),
            ("y", NatType.NONE),
        ):
            lab.site(name, nat)
        # Echo servers: the rendezvous host (two ports) and a second public host Y.
        first_line(start(lab, lab.rendezvous, "echo", "--bind", ECHO, "--bind", f"{RV}:3479"))
        first_line(start(lab, lab.sites["y"], "echo", "--bind", f"{lab.sites['y'].public_address}:3478"))
        yield lab


def site_of(lab: Lab, nat: NatType) -> Site:
    return next(site for name, site in lab.sites.items() if site.nat is nat and name != "y")


def probe(lab: Lab, site: Site, *targets: str, local_port: int = 0) -> dict[str, Any]:
    args = ["probe", "--port", str(local_port)]
    for target in targets:
        args += ["--to", target]
    result = lab.run(site, udptool(*args))
    assert result.returncode == 0, result.stderr
    return json_lines(result.stdout)[0]


@pytest.mark.parametrize("nat", list(NatType), ids=lambda nat: nat.value)
def test_mapping_is_endpoint_independent_except_for_symmetric(lab: Lab, nat: NatType) -> None:
    site = site_of(lab, nat)
    y_echo = f"{lab.sites['y'].public_address}:3478"
    result = probe(lab, site, ECHO, y_echo)
    seen_rv, seen_y = result["seen"][ECHO], result["seen"][y_echo]
    assert host_part(seen_rv) == host_part(seen_y) == site.public_address
    if nat is NatType.SYMMETRIC:
        assert port(seen_rv) != port(seen_y), result
    else:
        assert port(seen_rv) == port(seen_y), result
    if nat is NatType.NONE:
        # No NAT: the rendezvous sees the host's own address and port.
        assert seen_rv == f"{lab.address(site)}:{port(result['local'])}"
    else:
        assert host_part(seen_rv) != lab.address(site)


@pytest.mark.parametrize("nat", list(NatType), ids=lambda nat: nat.value)
def test_filtering_lets_in_only_what_the_nat_type_allows(lab: Lab, nat: NatType) -> None:
    site = site_of(lab, nat)
    # The host asks the rendezvous echo where it sees it, then listens.
    command = udptool("probe", "--to", ECHO, "--then", "later:0.2", "--listen", "10")
    listener = lab.popen(site, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    mapped = first_line(listener)["seen"][ECHO]
    # Meanwhile, two endpoints the host never sent to try the mapping:
    # another host, and the rendezvous address from another port.
    for sender, args in ((lab.sites["y"], []), (lab.rendezvous, ["--port", "3480"])):
        data = "unsolicited" if sender is lab.sites["y"] else "otherport"
        sent = lab.run(sender, udptool("send", "--to", mapped, "--data", data, *args))
        assert sent.returncode == 0, sent.stderr
    # Only once both have sent (however long that took), the host asks the
    # echo for one more answer 0.2 s later ("last": the control that a
    # contacted endpoint may still send, and the end of the listening).
    out, _ = listener.communicate("go\n", timeout=20)
    arrived = {record["data"] for record in json_lines(out)}
    if nat in (NatType.FULL_CONE, NatType.NONE):
        assert arrived == {"unsolicited", "otherport", "last"}
    else:
        assert arrived == {"last"}


@pytest.mark.parametrize("nat", CONE_TYPES, ids=lambda nat: nat.value)
def test_an_early_punch_does_not_move_a_cone_mapping(lab: Lab, nat: NatType) -> None:
    # Hole punching's usual race: the peer's punch reaches the NAT before
    # the host has sent to that peer.  Plain masquerade would record the
    # punch as a connection holding the external port and give the host's
    # own datagram to the peer another port; the router firewall prevents it.
    site, y = site_of(lab, nat), lab.sites["y"]
    local_port = 40002 + list(CONE_TYPES).index(nat)
    y_port = 3490 + list(CONE_TYPES).index(nat)
    mapped = probe(lab, site, ECHO, local_port=local_port)["seen"][ECHO]
    punch = lab.run(y, udptool("send", "--to", mapped, "--data", "punch", "--port", str(y_port)))
    assert punch.returncode == 0, punch.stderr
    y_echo = f"{y.public_address}:{y_port}"
    first_line(start(lab, y, "echo", "--bind", y_echo))
    assert probe(lab, site, y_echo, local_port=local_port)["seen"][y_echo] == mapped


def test_flush_conntrack_forgets_mappings_and_filter_state(lab: Lab) -> None:
    symmetric = site_of(lab, NatType.SYMMETRIC)
    before = probe(lab, symmetric, ECHO, local_port=40001)["seen"][ECHO]
    again = probe(lab, symmetric, ECHO, local_port=40001)["seen"][ECHO]
    assert again == before  # the mapping lives on without a flush
    lab.flush_conntrack(symmetric)
    after = probe(lab, symmetric, ECHO, local_port=40001)["seen"][ECHO]
    assert port(after) != port(before)

    # Cone sites: the echo's later answer, and anyone else, are now unsolicited.
    cones = [site_of(lab, nat) for nat in CONE_TYPES]
    listeners = [start(lab, site, "probe", "--to", ECHO, "--data", "later:1.0", "--listen", "2.5") for site in cones]
    mapped = [first_line(listener)["seen"][ECHO] for listener in listeners]
    for site in cones:
        lab.flush_conntrack(site)
    for address in mapped:
        sent = lab.run(lab.sites["y"], udptool("send", "--to", address, "--data", "unsolicited"))
        assert sent.returncode == 0, sent.stderr
    for listener in listeners:
        out, _ = listener.communicate(timeout=10)
        assert json_lines(out) == []


def test_mapping_timeout_expires_idle_mappings(lab: Lab) -> None:
    sites = [lab.site(f"short{i}", nat, mapping_timeout=1) for i, nat in enumerate(CONE_TYPES)]
    listeners = [start(lab, site, "probe", "--to", ECHO, "--data", "later:2.5", "--listen", "3.5") for site in sites]
    for site, listener in zip(sites, listeners, strict=True):
        assert host_part(first_line(listener)["seen"][ECHO]) == site.public_address
    for listener in listeners:
        out, _ = listener.communicate(timeout=10)
        assert json_lines(out) == []  # idle for 2.5 s > 1 s: the mapping was gone


def count_delivered(lab: Lab, count: int) -> int:
    sink = start(lab, lab.rendezvous, "sink", "--bind", f"{RV}:5000", "--idle", "1.0")
    first_line(sink)
    sent = lab.run(site_of(lab, NatType.PORT_RESTRICTED), udptool("blast", "--to", f"{RV}:5000", "--count", str(count)))
    assert sent.returncode == 0, sent.stderr
    out, _ = sink.communicate(timeout=15)
    return int(json_lines(out)[-1]["count"])


def test_loss_drops_about_the_share_asked_for(lab: Lab) -> None:
    assert count_delivered(lab, 500) == 500  # control: no loss by default
    lab.set_link(loss_percent=30)
    try:
        delivered = count_delivered(lab, 500)
    finally:
        lab.set_link()
    lost = (500 - delivered) / 500
    print(f"loss 30% asked, {lost:.1%} measured ({delivered}/500 delivered)")
    assert 0.20 <= lost <= 0.40


def rtts(lab: Lab, count: int) -> list[float]:
    result = lab.run(site_of(lab, NatType.PORT_RESTRICTED), udptool("ping", "--to", ECHO, "--count", str(count)))
    assert result.returncode == 0, result.stderr
    return list(json_lines(result.stdout)[0]["rtts_ms"])


def test_delay_adds_its_one_way_time_in_each_direction(lab: Lab) -> None:
    lab.set_link(delay_ms=50)
    try:
        assert lab.delay_pid is not None
        delayed = rtts(lab, 10)
    finally:
        lab.set_link()
    plain = rtts(lab, 10)
    print(
        f"delay 50 ms one way: RTT median {statistics.median(delayed):.1f} ms "
        f"(min {min(delayed):.1f}, max {max(delayed):.1f}); without: {statistics.median(plain):.2f} ms"
    )
    assert len(delayed) == 10 and len(plain) == 10
    assert 90 <= statistics.median(delayed) <= 200
    assert min(delayed) >= 95  # every packet waits, both ways
    assert statistics.median(plain) < 20  # and removing it really removes it
    assert lab.delay_pid is None


def test_lab_namespaces_have_no_way_out(lab: Lab) -> None:
    for netns in lab.namespaces:
        links = subprocess.run(
            [tool("ip"), "-n", netns, "-d", "-o", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        for line in links.splitlines():
            # Only loopback and veths whose peers are in lab namespaces
            # (a peer elsewhere would show as "link-netnsid" of a non-lab ns).
            assert " lo: " in line or " veth " in line, line
    internet_routes = subprocess.run(
        [tool("ip"), "-n", lab.internet, "route", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert "default" not in internet_routes
    for route in internet_routes.splitlines():
        assert route.startswith(("198.51.100.", "203.0.113.")), route


# -- IPv6 -------------------------------------------------------------------

# Inside a lab host: bind [::]:PORT, print "ready", then per stdin line
# "send HOST PORT TEXT" send TEXT there; print every datagram received as
# {"from": [host, port], "data": text} until one reads "reply" (10 s at most).
V6_HOST = """
import json, select, socket, sys
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
line = sys.stdin.readline().split()
sock.sendto(line[3].encode(), (line[1], int(line[2])))
while select.select([sock], [], [], 10.0)[0]:
    data, source = sock.recvfrom(2048)
    print(json.dumps({"from": list(source[:2]), "data": data.decode()}), flush=True)
    if data == b"reply":
        break
"""

# The outside host: wait (10 s at most) for one datagram on [::]:7001, then
# send "unsolicited" to its sender's address from [::]:7002 (a port the
# sender never sent to), then "reply" from 7001; print where it came from.
V6_ANSWER = """
import json, socket
answer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
answer.bind(("::", 7001))
stranger = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
stranger.bind(("::", 7002))
print("ready", flush=True)
answer.settimeout(10.0)
data, source = answer.recvfrom(2048)
stranger.sendto(b"unsolicited", source[:2])
answer.sendto(b"reply", source[:2])
print(json.dumps({"seen": list(source[:2])}), flush=True)
"""


def test_ipv6_sites_have_no_nat66_and_a_firewall_that_lets_in_only_replies() -> None:
    """A site with IPv6 keeps its host's global address and port (no NAT66,
    so a symmetric IPv4 NAT changes nothing there), and its router lets in
    what answers the host's own traffic and nothing else: the same datagram
    from a port the host never sent to is dropped.  Checked in order: the
    outside host sends the stranger's datagram first, on the same path."""
    require_lab()
    with Lab(ipv6=True) as lab:
        inside = lab.site("a", NatType.SYMMETRIC)
        outside = lab.site("y", NatType.NONE)
        assert inside.public_address6 == "2001:db8:1::2" and outside.public_address6 == "2001:db8:100::12"
        answerer = lab.popen(outside, [sys.executable, "-c", V6_ANSWER], stdout=subprocess.PIPE, text=True)
        assert answerer.stdout is not None and answerer.stdout.readline().strip() == "ready"
        host = lab.popen(
            inside, [sys.executable, "-c", V6_HOST, "7000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert host.stdout is not None and host.stdin is not None and host.stdout.readline().strip() == "ready"
        host.stdin.write(f"send {outside.public_address6} 7001 hello\n")
        host.stdin.flush()
        seen = json_lines(answerer.communicate(timeout=20)[0])
        received = json_lines(host.communicate(timeout=20)[0])
        # And the internet routes only the lab's IPv6 prefix, as it does IPv4.
        routes = subprocess.run(
            [tool("ip"), "-n", lab.internet, "-6", "route", "show"], capture_output=True, text=True, check=True
        ).stdout
        fence = subprocess.run(
            [tool("ip"), "netns", "exec", lab.internet, tool("nft"), "list", "table", "inet", "netlab"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    assert seen == [{"seen": ["2001:db8:1::2", 7000]}]  # the host's own address and port
    assert received == [{"from": ["2001:db8:100::12", 7001], "data": "reply"}]
    assert "default" not in routes
    for route in routes.splitlines():
        assert route.startswith(("2001:db8:", "fe80::")), route  # the lab's, and the veths' own link-local
    assert "ip6 daddr != 2001:db8::/32 drop" in fence


# -- teardown -------------------------------------------------------------


def netns_names() -> set[str]:
    out = subprocess.run([tool("ip"), "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def root_links() -> set[str]:
    out = subprocess.run([tool("ip"), "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1] for line in out.splitlines()}


def busy_lab(lab: Lab) -> list[subprocess.Popen[bytes]]:
    """Sites of every kind, a delay program, and two lingering processes:
    one the lab started, one started through lab.command() alone."""
    for name, nat in (("a", NatType.SYMMETRIC), ("b", NatType.FULL_CONE), ("c", NatType.NONE)):
        lab.site(name, nat)
    lab.set_link(loss_percent=5, delay_ms=10)
    tracked = lab.popen(lab.sites["a"], ["sleep", "60"])
    untracked = subprocess.Popen(lab.command(lab.sites["c"], ["sleep", "60"]))
    return [tracked, untracked]


def assert_gone(
    lab: Lab, namespaces: list[str], processes: list[subprocess.Popen[bytes]], delay_pid: int, links_before: set[str]
) -> None:
    assert not {ns for ns in netns_names() if ns.startswith(lab.prefix)}
    assert set(namespaces) & netns_names() == set()
    assert root_links() == links_before
    for process in processes:
        assert process.wait(timeout=5) is not None
    assert not os.path.exists(f"/proc/{delay_pid}")  # stopped and reaped


def test_teardown_removes_everything() -> None:
    require_lab()
    links_before = root_links()
    with Lab() as lab:
        processes = busy_lab(lab)
        namespaces, delay_pid = lab.namespaces, lab.delay_pid
        assert delay_pid is not None and len(namespaces) == 7
        assert set(namespaces) <= netns_names()
    assert_gone(lab, namespaces, processes, delay_pid, links_before)


def test_teardown_removes_everything_when_the_body_raises() -> None:
    require_lab()
    links_before = root_links()
    with pytest.raises(RuntimeError, match="boom"):
        with Lab() as lab:
            processes = busy_lab(lab)
            namespaces, delay_pid = lab.namespaces, lab.delay_pid or 0
            assert delay_pid
            raise RuntimeError("boom")
    assert_gone(lab, namespaces, processes, delay_pid, links_before)


def test_start_removes_stale_namespaces_of_dead_owners_only() -> None:
    require_lab()
    # A pid above pid_max belongs to no process, now or later.
    dead_pid = int(open("/proc/sys/kernel/pid_max").read()) + 1
    stale = f"pl{dead_pid}x0a0a-inet"
    live = f"pl{os.getpid()}x0b0b-inet"  # a concurrent lab of a live owner
    try:
        for netns in (stale, live):
            subprocess.run([tool("ip"), "netns", "add", netns], check=True)
        with Lab():
            names = netns_names()
            assert stale not in names
            assert live in names
    finally:
        for netns in (stale, live):
            subprocess.run([tool("ip"), "netns", "del", netns], capture_output=True)
    assert remove_stale_namespaces() == []


def test_bad_requests_raise_declared_errors(lab: Lab) -> None:
    with pytest.raises(ValueError, match="site name"):
        lab.site("fc", NatType.FULL_CONE)  # taken
    with pytest.raises(ValueError, match="loss_percent"):
        lab.set_link(loss_percent=101)
    with pytest.raises(LabError, match="no NAT router"):
        lab.flush_conntrack(lab.sites["pub"])
