"""A far site for tests: a network namespace joined to this one by a veth pair
whose both ends are shaped by a ``tbf`` qdisc (a real bandwidth limit).

>>> with SlowLink.create("40mbit") as link:
...     sw = SeaweedFS.start(tmp, ip=link.ns_ip, netns=link.name)

Needs root, ``ip`` and ``tc`` (iproute2) and the ``tbf`` qdisc. Names are
unique per link; :meth:`SlowLink.remove` deletes the namespace (which
deletes the veth pair) and is idempotent. Traffic stays on the veth pair.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass

from ..errors import UnavailableError


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise UnavailableError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")


def unavailable_reason() -> str | None:
    """Why a SlowLink cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) not installed"
    return None


@dataclass
class SlowLink:
    """A namespace ``name`` reachable at ``ns_ip`` from ``host_ip`` through a veth pair limited to ``rate``."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    rate: str

    @classmethod
    def create(cls, rate: str = "40mbit", burst: str = "64kb") -> SlowLink:
        """Make the namespace and the shaped veth pair (``rate``: tc units, e.g. 40mbit)."""
        reason = unavailable_reason()
        if reason:
            raise UnavailableError(reason)
        tag = uuid.uuid4().hex[:8]
        net = random.randrange(0, 64) * 4  # a /30 inside 10.233.<a>.0/24
        a = random.randrange(1, 255)
        link = cls(f"scns-{tag}", f"sch{tag}", f"scn{tag}", f"10.233.{a}.{net + 1}", f"10.233.{a}.{net + 2}", rate)
        try:
            _run("ip", "netns", "add", link.name)
            _run("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
            _run("ip", "link", "set", link.ns_if, "netns", link.name)
            _run("ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
            _run("ip", "link", "set", link.host_if, "up")
            ns = ("ip", "netns", "exec", link.name)
            _run(*ns, "ip", "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if)
            _run(*ns, "ip", "link", "set", link.ns_if, "up")
            _run(*ns, "ip", "link", "set", "lo", "up")
            _run("tc", "qdisc", "add", "dev", link.host_if, "root", "tbf", "rate", rate, "burst", burst, "latency", "100ms")
            _run(*ns, "tc", "qdisc", "add", "dev", link.ns_if, "root", "tbf", "rate", rate, "burst", burst, "latency", "100ms")
        except BaseException:
            link.remove()
            raise
        return link

    def remove(self) -> None:
        """Delete the namespace and the veth pair (idempotent)."""
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    def __enter__(self) -> SlowLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
