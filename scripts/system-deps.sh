#!/usr/bin/env bash
# Installs the Debian packages that the tests and benchmarks need, when run as
# root and when they are missing.  Not root: say what is missing and go on
# (the tests that need a missing tool skip with that reason).
set -euo pipefail

need=()
command -v turnutils_stunclient >/dev/null 2>&1 || need+=(coturn)
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v stun >/dev/null 2>&1 || need+=(stun-client)  # RFC 3489 client (tests/interop)
command -v chromium >/dev/null 2>&1 || need+=(chromium)     # WebRTC ICE gathering (tests/interop)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)  # the Redis registry (tests/integration/test_redis.py)
command -v tmux >/dev/null 2>&1 || need+=(tmux)             # a real terminal for webpeer chat (tests/integration/test_terminal.py)
# The NAT lab (tests/netlab): namespaces and veths, NAT rules, the NFQUEUE
# rule for delay, conntrack flushes, per-namespace sysctls.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v sysctl >/dev/null 2>&1 || need+=(procps)
# A router that grants port mappings (NAT-PMP/PCP) inside the lab's NAT
# namespaces (tests/network/test_port_mapping.py); /usr/sbin is not always on PATH.
[ -x /usr/sbin/miniupnpd ] || command -v miniupnpd >/dev/null 2>&1 || need+=(miniupnpd-nftables)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: not root; missing Debian packages: ${need[*]} (the tests that need them will skip)" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
