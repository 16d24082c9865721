"""The NAT lab: real Linux NATs in network namespaces, for tests as root.

See ``lab.py`` for the topology and ``rules.py`` for what each NAT type does.
"""

from pathlib import Path

from .lab import Host, Lab, LabError, Site, remove_stale_namespaces, tool, unavailable_reason
from .rules import NatType

UDPTOOL = Path(__file__).with_name("udptool.py")
"""A stdlib-only UDP probe program to run inside lab hosts (see its docstring)."""

__all__ = [
    "Host",
    "Lab",
    "LabError",
    "NatType",
    "Site",
    "UDPTOOL",
    "remove_stale_namespaces",
    "tool",
    "unavailable_reason",
]
