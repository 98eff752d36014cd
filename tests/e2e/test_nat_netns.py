"""A phone behind a real NAT: network namespaces and iptables MASQUERADE,
addresses from 198.18.0.0/15 only.

    [phone ns] 198.18.1.2 --- 198.18.1.1 [nat ns, MASQUERADE] 198.19.0.2 --- 198.19.0.1 [node]

The phone (tests/e2e/sipphone.py, one UDP socket) registers to the node at
198.19.0.1; a trusted gateway on 127.0.0.2 calls it; the call must reach it
through its NAT mapping, and the node's OPTIONS pings must keep arriving.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hasip.demo.sipp import wait_for_stats
from tests.e2e.conftest import metric

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
        yield {"phone_ns": phone_ns, "nat_ns": nat_ns}
    finally:
        subprocess.run(["ip", "link", "del", veth_node], capture_output=True)
        for ns in (phone_ns, nat_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_phone_behind_masquerade_registers_gets_calls_and_pings(make_node, sipp, nat_network,
                                                                 tmp_path: Path) -> None:
    # The node listens on loopback (the gateway) and on the address the phone sees.
    node = make_node(auth={"trusted": ["127.0.0.2/32"]}, nat={"ping_interval": 1.0},
                     sip={"listen": ["udp:127.0.0.1:{port}", f"udp:{NODE_IP}:{{port}}"]})
    out = tmp_path / "phone.json"
    script = Path(__file__).with_name("sipphone.py")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    phone_log = tmp_path / "phone.log"
    with open(phone_log, "wb") as log:
        phone = subprocess.Popen(
            ["ip", "netns", "exec", nat_network["phone_ns"], sys.executable, str(script),
             "--bind", f"{PHONE_IP}:5060", "--proxy", f"{NODE_IP}:{node.sip_port}", "--user",
             "1010", "--password", "demo1010", "--duration", "6", "--out", str(out)],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        registered = Path(str(out) + ".registered")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not registered.exists():
            time.sleep(0.1)
        assert registered.exists(), phone_log.read_text()
        assert json.loads(registered.read_text())["register"] == 200
        gateway = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=2, rate=5,
                       service="1010", local_ip="127.0.0.2")
        assert gateway.wait(20) == 0, gateway.errors()
        wait_for_stats(gateway)
        assert gateway.counter("SuccessfulCall(C)") == 2
        phone.wait(20)
    finally:
        if phone.poll() is None:
            phone.kill()
            phone.wait()
    result = json.loads(out.read_text())
    assert result["INVITE"] == 2 and result["BYE"] == 2
    assert result["OPTIONS"] >= 3  # pings through the NAT mapping, about one a second
    text = node.metrics()
    assert metric(text, "hasip_nat_detected_total", 'method="REGISTER"') >= 1
    assert metric(text, "hasip_nat_pings_total", 'result="answered"') >= 2
