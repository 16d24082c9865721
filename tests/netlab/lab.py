"""The NAT lab: Linux network namespaces wired as a small internet.

Topology (every namespace is named ``<prefix><role>``)::

    rendezvous host  203.0.113.10 (+ .11, a second address as in RFC 5780)
          |
    "internet" namespace: a router, no default route, loss and delay here
          |                           |
    site a: router (NAT)      site b: host without NAT, 198.51.100.12
    WAN 198.51.100.11
          |
    private host 10.0.1.2/24 (default route via the router, 10.0.1.1)

Each attachment to the internet is a veth pair created directly inside the
two lab namespaces it joins, so nothing ever appears in the machine's own
namespace, and no lab namespace has a link to a real interface.  The
internet namespace routes only the two documentation ranges and drops the
rest.  Every lab process runs inside a lab namespace (``ip netns exec``);
this module itself only runs ``ip``/``nft``/``iptables``/``conntrack``.

IPv6 (``Lab(ipv6=True)``, or per site ``lab.site(..., ipv6=True)``): the
internet also routes 2001:db8::/32 (RFC 3849), the rendezvous host gets
2001:db8:ffff::10 beside its IPv4 addresses, a NAT site's router gets
2001:db8:100::<11 + index> on its WAN and routes the site's
2001:db8:<index + 1>::/64 to its host (::2) without NAT66, behind a
home-router firewall (rules.router_ruleset6); a site without NAT gets one
address of 2001:db8:100::/64 on its host.  Without it nothing in the lab has
an IPv6 address, and the internet drops every IPv6 packet it would forward.

The prefix is ``pl<owner pid>x<random>-``: a later lab removes namespaces
left by a crashed run (their owner pid is gone) and leaves live labs alone.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .rules import WAN, NatType, internet_ruleset, loss_rules, router_ruleset, router_ruleset6

DELAY_PROGRAM = Path(__file__).with_name("delay.py")
TOOLS = {"ip": "iproute2", "nft": "nftables", "iptables": "iptables", "conntrack": "conntrack", "sysctl": "procps"}
OPTIONAL_TOOLS = {"miniupnpd": "miniupnpd-nftables"}  # only the tests that use them need them
# miniupnpd's chains under its default names (table "filter", family inet),
# as Debian's /etc/miniupnpd/nft_init.sh makes them, but forwarding by default
# (the lab's own netlab_fw table does the filtering).
MINIUPNPD_TABLES = """
table inet filter {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"""
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
PREFIX_RE = re.compile(r"^pl(\d+)x[0-9a-f]{4}-")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")

RENDEZVOUS_ADDRESSES = ("203.0.113.10", "203.0.113.11")
RENDEZVOUS_GATEWAY = "203.0.113.1"
PUBLIC_GATEWAY = "198.51.100.1"
RENDEZVOUS_ADDRESS6 = "2001:db8:ffff::10"
GATEWAY6 = "2001:db8:ffff::1"  # the internet router's IPv6 address on every attachment
PUBLIC_PREFIX6 = "2001:db8:100::"  # routers' WAN and no-NAT hosts: <prefix><11 + index>
FIRST_PUBLIC_HOST = 11
DEFAULT_MAPPING_TIMEOUT = 120
DELAY_QUEUE = 0


class LabError(RuntimeError):
    """Building, changing or tearing down the lab failed."""


@dataclass(frozen=True)
class Host:
    """A namespace you can run programs in, and its interface addresses."""

    name: str
    netns: str
    addresses: tuple[str, ...]
    addresses6: tuple[str, ...] = ()  # IPv6 (global; a lab with ipv6 only)

    @property
    def address(self) -> str:
        """The host's primary address (private for a host behind a NAT)."""
        return self.addresses[0]

    @property
    def address6(self) -> str | None:
        """The host's IPv6 address, if it has one."""
        return self.addresses6[0] if self.addresses6 else None


@dataclass(frozen=True)
class Site:
    """A private host, behind its NAT router unless ``nat`` is NONE."""

    name: str
    nat: NatType
    host: Host
    router: Host | None

    @property
    def public_address(self) -> str:
        """The address the internet sees: the router's WAN, or the host's own."""
        return self.router.address if self.router is not None else self.host.address

    @property
    def public_address6(self) -> str | None:
        """The host's global IPv6 address (no NAT66: the internet sees it as is)."""
        return self.host.address6


Target = Host | Site


def tool(name: str) -> str:
    """The absolute path of one of the lab's tools; the sbin directories are
    searched too, since a root shell's PATH does not always have them."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN])
    path = shutil.which(name, path=search)
    if path is None:
        raise LabError(
            f"missing tool {name} (Debian package {TOOLS.get(name, OPTIONAL_TOOLS.get(name, name))}): run scripts/system-deps.sh as root"
        )
    return path


def unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None: only a missing root or missing
    kernel features count.  Missing tools are the installer's fault and
    make :class:`Lab` fail loudly instead (``scripts/system-deps.sh``)."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, nftables)"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    try:
        tool("ip"), tool("nft")
    except LabError:
        return None  # Lab() names the missing package
    probe = f"pl{os.getpid()}x{secrets.token_hex(2)}-probe"
    try:
        made = subprocess.run([tool("ip"), "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()}"
        nat = subprocess.run(
            [tool("ip"), "netns", "exec", probe, tool("nft"), "-f", "-"],
            input="table ip t { chain c { type nat hook postrouting priority srcnat; masquerade fully-random; }; }",
            capture_output=True,
            text=True,
        )
        if nat.returncode != 0:
            return f"this kernel lacks nftables NAT: {nat.stderr.strip()}"
    finally:
        subprocess.run([tool("ip"), "netns", "del", probe], capture_output=True)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lab_namespaces() -> list[str]:
    listing = subprocess.run([tool("ip"), "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip() and PREFIX_RE.match(line.split()[0])]


def _remove_namespace(netns: str) -> None:
    """Kill every process inside ``netns`` (all started by a lab), then delete it."""
    pids = subprocess.run([tool("ip"), "netns", "pids", netns], capture_output=True, text=True).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [int(pid) for pid in pids if _pid_alive(int(pid))]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 1.0
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if _pid_alive(pid) and not _is_zombie(pid)]
            time.sleep(0.02)
        if not alive:
            break
    result = subprocess.run([tool("ip"), "netns", "del", netns], capture_output=True, text=True)
    if result.returncode != 0 and netns in _lab_namespaces():
        raise LabError(f"ip netns del {netns}: {result.stderr.strip()}")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def remove_stale_namespaces() -> list[str]:
    """Delete lab namespaces whose owning process is gone; return their names."""
    stale = [ns for ns in _lab_namespaces() if not _pid_alive(int(PREFIX_RE.match(ns).group(1)))]  # type: ignore[union-attr]
    for netns in stale:
        _remove_namespace(netns)
    return stale


class Lab:
    """A NAT lab; use as a context manager (teardown runs even on error).

    >>> with Lab() as lab:
    ...     a = lab.site("a", NatType.SYMMETRIC)
    ...     lab.run(a, ["python3", "-c", "print(1)"])
    """

    def __init__(self, *, ipv6: bool = False) -> None:
        self.prefix = f"pl{os.getpid()}x{secrets.token_hex(2)}-"
        self.internet = f"{self.prefix}inet"
        self.ipv6 = ipv6  # the internet and the rendezvous have IPv6; sites do by default
        self.rendezvous = Host(
            "rendezvous", f"{self.prefix}rv", RENDEZVOUS_ADDRESSES, (RENDEZVOUS_ADDRESS6,) if ipv6 else ()
        )
        self.sites: dict[str, Site] = {}
        self._attachments = 0
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._delay: subprocess.Popen[str] | None = None
        self._delay_ms = 0.0
        self._started = False

    # -- life cycle ---------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Build the internet namespace and the rendezvous host."""
        for name in TOOLS:
            tool(name)  # fail now, naming the package, rather than half-way
        remove_stale_namespaces()
        self._started = True
        self._add_namespace(self.internet)
        self._sysctl(self.internet, "net.ipv4.ip_forward=1")
        self._nft(self.internet, internet_ruleset())
        outer = f"s{self._attachments}"
        self._attach_public(self.rendezvous.netns, RENDEZVOUS_ADDRESSES, RENDEZVOUS_GATEWAY)
        if self.ipv6:
            self._sysctl(self.internet, "net.ipv6.conf.all.forwarding=1")
            self._attach_public6(self.rendezvous.netns, outer, "eth0", RENDEZVOUS_ADDRESS6)

    def close(self) -> None:
        """Stop every lab process and delete every lab namespace (and so every veth)."""
        errors: list[str] = []
        if self._delay is not None:
            self._stop_delay()
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                errors.append(f"process {process.pid} did not exit")
        self._processes.clear()
        for netns in reversed(self._namespaces):
            try:
                _remove_namespace(netns)
            except LabError as exc:
                errors.append(str(exc))
        self._namespaces.clear()
        # Anything with our prefix that a failed step left unrecorded.
        for netns in _lab_namespaces():
            if netns.startswith(self.prefix):
                try:
                    _remove_namespace(netns)
                except LabError as exc:
                    errors.append(str(exc))
        if errors:
            raise LabError("; ".join(errors))

    @property
    def namespaces(self) -> list[str]:
        """The names of the namespaces this lab has created so far."""
        return list(self._namespaces)

    # -- building -------------------------------------------------------------

    def site(
        self, name: str, nat: NatType, *, mapping_timeout: int = DEFAULT_MAPPING_TIMEOUT, ipv6: bool | None = None
    ) -> Site:
        """Add a site: a private host behind a router of type ``nat``, or for
        NatType.NONE a host directly on the internet.  ``ipv6`` (default: the
        lab's): the host also has a global IPv6 address (see the module
        docstring); the lab must have been made with ``ipv6=True``.

        ``mapping_timeout`` (seconds) is how long an idle UDP mapping lives
        on the router (conntrack's UDP timeouts, and the full-cone table).
        """
        if not self._started:
            raise LabError("start the lab (use it as a context manager) before adding sites")
        if mapping_timeout < 1:
            raise ValueError(f"mapping_timeout must be at least 1 s, not {mapping_timeout}")
        if not NAME_RE.match(name) or name in self.sites or name in ("inet", "rv"):
            raise ValueError(f"site name {name!r} must be new, 1-12 lowercase letters or digits, letter first")
        with_ipv6 = self.ipv6 if ipv6 is None else ipv6
        if with_ipv6 and not self.ipv6:
            raise LabError("a site with IPv6 needs a lab with IPv6: Lab(ipv6=True)")
        index = len(self.sites)
        public = f"198.51.100.{FIRST_PUBLIC_HOST + index}"
        public6 = f"{PUBLIC_PREFIX6}{FIRST_PUBLIC_HOST + index}"
        if nat is NatType.NONE:
            host = Host(name, f"{self.prefix}{name}", (public,), (public6,) if with_ipv6 else ())
            outer = f"s{self._attachments}"
            self._attach_public(host.netns, host.addresses, PUBLIC_GATEWAY)
            if with_ipv6:
                self._attach_public6(host.netns, outer, "eth0", public6)
            site = Site(name, nat, host, None)
        else:
            subnet = f"10.0.{index + 1}"
            subnet6 = f"2001:db8:{index + 1}::"
            router = Host(
                f"{name}-router",
                f"{self.prefix}{name}-r",
                (public, f"{subnet}.1"),
                (public6, f"{subnet6}1") if with_ipv6 else (),
            )
            host = Host(name, f"{self.prefix}{name}", (f"{subnet}.2",), (f"{subnet6}2",) if with_ipv6 else ())
            outer = f"s{self._attachments}"
            self._attach_public(router.netns, (public,), PUBLIC_GATEWAY, ifname="wan")
            self._add_namespace(host.netns)
            self._ip(router.netns, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            self._ip(router.netns, "addr", "add", f"{subnet}.1/24", "dev", "lan")
            self._ip(router.netns, "link", "set", "lan", "up")
            self._ip(host.netns, "addr", "add", f"{subnet}.2/24", "dev", "eth0")
            self._ip(host.netns, "link", "set", "eth0", "up")
            self._ip(host.netns, "route", "add", "default", "via", f"{subnet}.1")
            self._sysctl(router.netns, "net.ipv4.ip_forward=1")
            self._nft(router.netns, router_ruleset(nat, host.address, mapping_timeout))
            if with_ipv6:
                self._site6(router, host, outer, subnet6)
            # Per-namespace conntrack timeouts: unreplied and replied UDP flows.
            self._sysctl(
                router.netns,
                f"net.netfilter.nf_conntrack_udp_timeout={mapping_timeout}",
                f"net.netfilter.nf_conntrack_udp_timeout_stream={mapping_timeout}",
            )
            site = Site(name, nat, host, router)
        self.sites[name] = site
        return site

    def _site6(self, router: Host, host: Host, outer: str, subnet6: str) -> None:
        """A NAT site's IPv6: the router's WAN address, the site's /64 routed
        to it from the internet, the host on the /64 with its default route
        via the router, and the router's firewall (no NAT66)."""
        public6, lan6 = router.addresses6
        self._attach_public6(router.netns, outer, "wan", public6)
        self._ip(self.internet, "-6", "route", "add", f"{subnet6}/64", "via", public6, "dev", outer)
        self._ip(router.netns, "-6", "addr", "add", f"{lan6}/64", "dev", "lan", "nodad")
        self._ip(host.netns, "-6", "addr", "add", f"{host.addresses6[0]}/64", "dev", "eth0", "nodad")
        self._ip(host.netns, "-6", "route", "add", "default", "via", lan6, "dev", "eth0")
        self._sysctl(router.netns, "net.ipv6.conf.all.forwarding=1")
        self._nft(router.netns, router_ruleset6())

    def _attach_public6(self, netns: str, outer: str, ifname: str, address: str) -> None:
        """IPv6 on an attachment :meth:`_attach_public` made: ``address``/128
        on the inside, the internet's gateway address on the outside, routes
        both ways.  No duplicate address detection: the lab's addresses are
        unique by construction, and a tentative address could not be used
        for the second or so DAD takes."""
        self._ip(self.internet, "-6", "addr", "add", f"{GATEWAY6}/128", "dev", outer, "nodad")
        self._ip(self.internet, "-6", "route", "add", f"{address}/128", "dev", outer)
        self._ip(netns, "-6", "addr", "add", f"{address}/128", "dev", ifname, "nodad")
        self._ip(netns, "-6", "route", "add", GATEWAY6, "dev", ifname)
        self._ip(netns, "-6", "route", "add", "default", "via", GATEWAY6, "dev", ifname, "src", address)

    def _add_namespace(self, netns: str) -> None:
        self._namespaces.append(netns)  # recorded first: a half-made one is removed too
        self._check([tool("ip"), "netns", "add", netns])
        self._ip(netns, "link", "set", "lo", "up")

    def _attach_public(self, netns: str, addresses: Sequence[str], gateway: str, ifname: str = "eth0") -> None:
        """A namespace on the internet: a veth to the internet router, /32
        addresses, an on-link route to the gateway, and a default route that
        leads only into the internet namespace."""
        self._add_namespace(netns)
        outer = f"s{self._attachments}"
        self._attachments += 1
        self._ip(self.internet, "link", "add", outer, "type", "veth", "peer", "name", ifname, "netns", netns)
        # The gateway address sits on every internet-side veth (Linux allows
        # one address on many interfaces), so each link is a /32 pair.
        self._ip(self.internet, "addr", "add", f"{gateway}/32", "dev", outer)
        self._ip(self.internet, "link", "set", outer, "up")
        for address in addresses:
            self._ip(self.internet, "route", "add", f"{address}/32", "dev", outer)
            self._ip(netns, "addr", "add", f"{address}/32", "dev", ifname)
        self._ip(netns, "link", "set", ifname, "up")
        self._ip(netns, "route", "add", gateway, "dev", ifname, "scope", "link")
        self._ip(netns, "route", "add", "default", "via", gateway, "dev", ifname, "src", addresses[0])

    # -- running programs --------------------------------------------------

    def _netns(self, target: Target) -> str:
        host = target.host if isinstance(target, Site) else target
        if host.netns not in self._namespaces:
            raise LabError(f"{host.name} is not a host of this lab")
        return host.netns

    def command(self, target: Target, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside ``target``'s namespace (a
        Site means its private host); for asyncio.create_subprocess_exec.
        Processes left running are killed at teardown."""
        return [tool("ip"), "netns", "exec", self._netns(target), *argv]

    def run(self, target: Target, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside ``target``; captures text output and times
        out after 30 s unless told otherwise."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 30)
        return subprocess.run(self.command(target, argv), **kwargs)

    def popen(self, target: Target, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen inside ``target``; killed at teardown if still running."""
        process = subprocess.Popen(self.command(target, argv), **kwargs)
        self._processes.append(process)
        return process

    def address(self, target: Target) -> str:
        """The target's own primary address (private behind a NAT)."""
        return (target.host if isinstance(target, Site) else target).address

    def start_miniupnpd(
        self, site: Site, work_dir: Path, stun: tuple[str, int], *, upnp: bool = False
    ) -> subprocess.Popen[Any]:
        """Run Debian's miniupnpd (nftables build) on ``site``'s router, with
        NAT-PMP and PCP on its LAN side and UPnP off (``upnp``: UPnP IGD on
        and NAT-PMP and PCP off, port 5351 closed): the router grants port
        mappings to its private host.  Returns once it listens; killed at
        teardown.  Its log is ``work_dir/<site>-miniupnpd.log``.  (UPnP's
        SSDP, multicast included, stays on the router's LAN link, inside the
        lab.)

        miniupnpd refuses to map while its WAN address is a reserved one (the
        lab's are RFC 5737 documentation addresses) unless STUN says that
        address is public and unfiltered: ``stun`` is the STUN server to ask
        (the rendezvous, which answers RFC 5780 change requests), whose
        answers the router's own firewall lets in."""
        if site.router is None:
            raise LabError(f"site {site.name} has no NAT router")
        router = site.router
        # The chains miniupnpd fills (its default names), DNATed packets let
        # through the lab's own firewall (as for the full cone), and the STUN
        # server's answers to the router itself, from any of its addresses.
        self._nft(router.netns, MINIUPNPD_TABLES)
        self._nft(
            router.netns,
            f'insert rule ip netlab_fw forward iifname "{WAN}" ct status dnat accept\n'
            f'insert rule ip netlab_fw input iifname "{WAN}" ip saddr {{ {", ".join(RENDEZVOUS_ADDRESSES)} }} accept\n'
            # The router's own datagrams (STUN) keep their ports: no masquerade.
            f'insert rule ip netlab_nat out oifname "{WAN}" ip saddr {router.address} accept\n',
        )
        config = work_dir / f"{site.name}-miniupnpd.conf"
        config.write_text(
            "\n".join(
                (
                    f"ext_ifname={WAN}",
                    f"listening_ip={router.addresses[1]}",
                    f"enable_upnp={'yes' if upnp else 'no'}",
                    f"enable_natpmp={'no' if upnp else 'yes'}",  # NAT-PMP and PCP
                    "http_port=0",  # UPnP's description and control: any free port
                    "ipv6_disable=yes",
                    "secure_mode=yes",
                    "system_uptime=no",
                    "uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b",
                    "min_lifetime=120",
                    "max_lifetime=86400",
                    "ext_perform_stun=yes",
                    f"ext_stun_host={stun[0]}",
                    f"ext_stun_port={stun[1]}",
                    "allow 1024-65535 10.0.0.0/8 1024-65535",
                    "deny 0-65535 0.0.0.0/0 0-65535",
                    "",
                )
            )
        )
        log_path = work_dir / f"{site.name}-miniupnpd.log"
        log = open(log_path, "w")
        argv = [tool("miniupnpd"), "-d", "-f", str(config), "-P", str(work_dir / f"{site.name}-miniupnpd.pid")]
        process = subprocess.Popen([tool("ip"), "netns", "exec", router.netns, *argv], stdout=log, stderr=log)
        log.close()
        self._processes.append(process)
        deadline = time.monotonic() + 10.0
        ready = "HTTP listening on port" if upnp else "Listening for NAT-PMP/PCP traffic"
        while ready not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"miniupnpd did not start on {router.name}: {log_path.read_text()[-800:]}")
            time.sleep(0.02)
        return process

    def nft_list(self, target: Host, table: str) -> str:
        """``nft list table`` of ``table`` (e.g. ``"inet filter"``) in ``target``'s namespace."""
        result = subprocess.run(
            [tool("ip"), "netns", "exec", target.netns, tool("nft"), "list", "table", *table.split()],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise LabError(f"nft list table {table}: {result.stderr.strip()}")
        return result.stdout

    # -- conditions ----------------------------------------------------------

    def set_link(self, *, loss_percent: float = 0.0, delay_ms: float = 0.0) -> None:
        """Loss and one-way delay for every packet crossing the internet, in
        both directions (a round trip through it takes 2 x ``delay_ms``).
        Zero removes each."""
        if delay_ms < 0:
            raise ValueError(f"delay_ms must not be negative, not {delay_ms}")
        self._nft(self.internet, loss_rules(loss_percent))
        if delay_ms != self._delay_ms:
            if self._delay is not None:
                self._stop_delay()
            if delay_ms > 0:
                self._start_delay(delay_ms)

    def _start_delay(self, delay_ms: float) -> None:
        argv = [sys.executable, str(DELAY_PROGRAM), "--queue", str(DELAY_QUEUE), "--delay-ms", str(delay_ms)]
        # stderr is inherited, not piped: nobody would read a pipe while the
        # program runs, and pytest shows captured output on failure.
        process = subprocess.Popen(
            [tool("ip"), "netns", "exec", self.internet, *argv], stdout=subprocess.PIPE, text=True
        )
        self._delay = process
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10.0)
        line = process.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self._stop_delay()
            raise LabError(f"delay program did not start (exit status {process.returncode})")
        # Only now queue packets: with no program bound, queued packets drop.
        # (One queue for both families: the kernel's queues ignore the family.)
        for iptables in self._iptables():
            self._check(self._delay_rule(iptables, "-A"))
        self._delay_ms = delay_ms

    def _stop_delay(self) -> None:
        # Unqueue first, so no packet is queued to a program that is gone.
        for iptables in self._iptables():
            subprocess.run(self._delay_rule(iptables, "-D"), capture_output=True)
        process, self._delay = self._delay, None
        self._delay_ms = 0.0
        if process is None:
            return
        process.terminate()
        try:
            process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()

    def _iptables(self) -> tuple[str, ...]:
        return ("iptables", "ip6tables") if self.ipv6 else ("iptables",)

    def _delay_rule(self, iptables: str, action: str) -> list[str]:
        """``iptables`` adding (-A) or deleting (-D) the rule that queues the
        internet's forwarded packets to the delay program."""
        return [
            tool("ip"), "netns", "exec", self.internet,
            tool(iptables), "-w", action, "FORWARD", "-j", "NFQUEUE", "--queue-num", str(DELAY_QUEUE),
        ]  # fmt: skip

    @property
    def delay_pid(self) -> int | None:
        """The delay program's pid while one runs."""
        return self._delay.pid if self._delay is not None else None

    def flush_conntrack(self, site: Site) -> None:
        """Forget every NAT mapping and filter state of ``site``'s router, as
        a router reboot would.  Symmetric sites get new external ports on
        the next datagram; cone sites usually get the same port back (Linux
        keeps a free source port), but outsiders are filtered again until
        the host sends."""
        if site.router is None:
            raise LabError(f"site {site.name} has no NAT router")
        self._check([tool("ip"), "netns", "exec", site.router.netns, tool("conntrack"), "-F"])
        if site.nat is NatType.FULL_CONE:
            self._nft(site.router.netns, "flush map ip netlab_nat fullcone\n")

    # -- helpers -------------------------------------------------------------

    def _check(self, argv: list[str], input: str | None = None) -> None:
        result = subprocess.run(argv, input=input, capture_output=True, text=True)
        if result.returncode != 0:
            raise LabError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")

    def _ip(self, netns: str, *args: str) -> None:
        self._check([tool("ip"), "-n", netns, *args])

    def _nft(self, netns: str, ruleset: str) -> None:
        self._check([tool("ip"), "netns", "exec", netns, tool("nft"), "-f", "-"], input=ruleset)

    def _sysctl(self, netns: str, *settings: str) -> None:
        self._check([tool("ip"), "netns", "exec", netns, tool("sysctl"), "-q", "-w", *settings])
