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
import subprocess
import sys
import time
from pathlib import Path

from hasip.demo.sipp import wait_for_stats
from tests.e2e.conftest import metric
from tests.e2e.natnet import NODE_IP, PHONE_IP


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
