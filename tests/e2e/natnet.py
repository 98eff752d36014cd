"""A NAT router built in network namespaces, addresses from 198.18.0.0/15
only, for the tests of phones behind NAT:

    [phone ns] 198.18.1.2 --- 198.18.1.1 [nat ns, MASQUERADE] 198.19.0.2 --- 198.19.0.1 [host]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

PHONE_IP, NAT_IN, NAT_OUT, NODE_IP = "198.18.1.2", "198.18.1.1", "198.19.0.2", "198.19.0.1"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages iproute2, iptables)"
    return None


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@pytest.fixture
def nat_network() -> Iterator[dict[str, str]]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    tag = uuid.uuid4().hex[:6]
    phone_ns, nat_ns = f"hsph{tag}", f"hsnat{tag}"
    veth_phone, veth_nat_in = f"hp{tag}", f"hn{tag}"
    veth_nat_out, veth_node = f"ho{tag}", f"hh{tag}"
    try:
        sh("ip", "netns", "add", phone_ns)
        sh("ip", "netns", "add", nat_ns)
        sh("ip", "link", "add", veth_phone, "type", "veth", "peer", "name", veth_nat_in)
        sh("ip", "link", "set", veth_phone, "netns", phone_ns)
        sh("ip", "link", "set", veth_nat_in, "netns", nat_ns)
        sh("ip", "link", "add", veth_nat_out, "type", "veth", "peer", "name", veth_node)
        sh("ip", "link", "set", veth_nat_out, "netns", nat_ns)
        ns_p = ("ip", "netns", "exec", phone_ns)
        ns_n = ("ip", "netns", "exec", nat_ns)
        sh(*ns_p, "ip", "addr", "add", f"{PHONE_IP}/24", "dev", veth_phone)
        sh(*ns_p, "ip", "link", "set", veth_phone, "up")
        sh(*ns_p, "ip", "link", "set", "lo", "up")
        sh(*ns_p, "ip", "route", "add", "default", "via", NAT_IN)
        sh(*ns_n, "ip", "addr", "add", f"{NAT_IN}/24", "dev", veth_nat_in)
        sh(*ns_n, "ip", "addr", "add", f"{NAT_OUT}/24", "dev", veth_nat_out)
        sh(*ns_n, "ip", "link", "set", veth_nat_in, "up")
        sh(*ns_n, "ip", "link", "set", veth_nat_out, "up")
        sh(*ns_n, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")  # no procps needed
        sh(*ns_n, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", veth_nat_out, "-j",
           "MASQUERADE")
        sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", veth_node)
        sh("ip", "link", "set", veth_node, "up")
        yield {"phone_ns": phone_ns, "nat_ns": nat_ns, "phone_dev": veth_phone,
               "host_dev": veth_node}
    finally:
        subprocess.run(["ip", "link", "del", veth_node], capture_output=True)
        for ns in (phone_ns, nat_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
