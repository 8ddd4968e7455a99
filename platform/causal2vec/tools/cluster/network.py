"""Linux network namespaces for Ray nodes on one machine: each node gets its own network stack and address, as if it
were its own machine (its own ports, its own interface; it reaches the others only through the network).

    root namespace        bridge c2v<tag>br, 10.23.<n>.1/24     (this process reaches every node through it)
    namespace c2v-<tag>-<node>   lo up; veth "c2vnet" 10.23.<n>.<k>/24, whose other end is on the bridge

Nothing is routed anywhere else: the addresses exist only on the veth pairs and the bridge made here, no forwarding
is switched on, and `remove()` deletes all of it. Needs root (CAP_NET_ADMIN) and iproute2; `available()` says
whether this process may, so a caller can fall back to nodes that share the loopback.
"""

from __future__ import annotations

import random
import secrets
import subprocess
from dataclasses import dataclass, field

from causal2vec.tools.cluster.nodes import ClusterError

IFACE = "c2vnet"  # a node's interface inside its namespace: the same name everywhere (GLOO_SOCKET_IFNAME=c2vnet)
PREFIX = "c2v"


def ip(*args: str, check: bool = True) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed: {out.stderr.strip()}")
    return out.stdout


def available() -> bool:
    """Whether this process can create (and delete) a network namespace."""
    probe = f"{PREFIX}-probe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except (ClusterError, OSError):
        return False
    ip("netns", "del", probe, check=False)
    return True


@dataclass
class NodeNetwork:
    """A private bridge and one namespace per node, on a /24 of 10.23.0.0/16 that no route here uses yet."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: str = ""  # "10.23.<n>", chosen by create()
    namespaces: dict[str, str] = field(default_factory=dict)  # node name -> namespace
    addresses: dict[str, str] = field(default_factory=dict)  # node name -> its address
    veths: list[str] = field(default_factory=list)  # root-side ends

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.tag}br"

    @property
    def gateway(self) -> str:
        """The bridge's own address: where this process talks to the nodes from."""
        return f"{self.subnet}.1"

    def create(self) -> None:
        used = ip("-4", "route", "show")
        free = [n for n in range(1, 255) if f"10.23.{n}." not in used]
        if not free:
            raise ClusterError("no free 10.23.<n>.0/24 subnet for the node network")
        self.subnet = f"10.23.{random.choice(free)}"
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, name: str) -> str:
        """A namespace for node `name`, wired to the bridge; returns its address."""
        k = len(self.namespaces) + 2
        ns, veth = f"{PREFIX}-{self.tag}-{name}", f"{PREFIX}{self.tag}h{k}"
        ip("netns", "add", ns)
        self.namespaces[name] = ns
        ip("link", "add", veth, "type", "veth", "peer", "name", IFACE, "netns", ns)
        self.veths.append(veth)
        ip("link", "set", veth, "master", self.bridge)
        ip("link", "set", veth, "up")
        address = f"{self.subnet}.{k}"
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", IFACE)
        ip("-n", ns, "link", "set", IFACE, "up")
        self.addresses[name] = address
        return address

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program inside node `name`'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[name]]

    def remove(self) -> None:
        """Delete every link and namespace made here (deleting a veth end deletes its peer)."""
        for veth in self.veths:
            ip("link", "del", veth, check=False)
        if self.subnet:
            ip("link", "del", self.bridge, check=False)
        for ns in self.namespaces.values():
            ip("netns", "del", ns, check=False)

    def leftovers(self) -> list[str]:
        """Namespaces and links of this network that still exist."""
        mine = f"{PREFIX}-{self.tag}-", f"{PREFIX}{self.tag}"
        names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
        links = [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").splitlines()]
        return [n for n in names + links if n.startswith(mine)]
