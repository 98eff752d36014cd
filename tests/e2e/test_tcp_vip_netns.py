"""A TCP phone registered through a VIP stays reachable after its node is
killed and the VIP moves (network namespaces, ZooKeeper, replication): the
new owner has the binding but not the phone's connection, so it connects to
the registered Contact, from the VIP (the address the binding's socket
names, bound with IP_FREEBIND), and the call reaches the phone."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_replication_netns import wait_same_location, write_users
from tests.e2e.vipcluster import (
    ASTERISK_IP,
    CLIENT_IP,
    ROOT,
    VIP_A,
    VIP_B,
    Cluster,
    cluster_missing,
    vip_cluster,
)


@pytest.fixture
def tcp_cluster(tmp_path: Path) -> Iterator[Cluster]:
    missing = cluster_missing()
    if missing:
        pytest.skip(missing)
    users = write_users(tmp_path, 20000, 5)
    yield from vip_cluster(tmp_path, 1, replication=True, users_file=users,
                           nodes=("n1", "n2"), extra_listen=[f"tcp:{VIP_A}:5060"])


def _call(cluster: Cluster, user: str) -> int | None:
    """An INVITE from the Asterisk side to ``user`` through VIP_A (UDP): the final status."""
    code = f"""
import socket, time, uuid
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{ASTERISK_IP}", 0))
port = s.getsockname()[1]
call = uuid.uuid4().hex
s.sendto((f"INVITE sip:{user}@{VIP_A}:5060 SIP/2.0\\r\\n"
          f"Via: SIP/2.0/UDP {ASTERISK_IP}:{{port}};branch=z9hG4bK{{call[:10]}};rport\\r\\n"
          "Max-Forwards: 70\\r\\nFrom: <sip:gw@{ASTERISK_IP}>;tag=g\\r\\n"
          "To: <sip:{user}@{VIP_A}>\\r\\n"
          f"Call-ID: {{call}}\\r\\nCSeq: 1 INVITE\\r\\n"
          "Content-Length: 0\\r\\n\\r\\n").encode(), ("{VIP_A}", 5060))
deadline = time.monotonic() + 8
while time.monotonic() < deadline:
    s.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        status = int(s.recv(65535).split(b" ")[1])
    except OSError:
        break
    if status >= 200:
        print(status)
        break
"""
    res = cluster.lab.run("ast", [sys.executable, "-c", code], timeout=30)
    return int(res.stdout.strip()) if res.returncode == 0 and res.stdout.strip() else None


def test_tcp_phone_is_reached_from_the_vip_after_a_takeover(tcp_cluster, tmp_path) -> None:
    cluster = tcp_cluster
    out = tmp_path / "tcpphone.json"
    phone = subprocess.Popen(
        ["ip", "netns", "exec", cluster.lab.ns("client"), sys.executable, "-m",
         "tests.e2e.tcpphone", "--bind", CLIENT_IP, "--proxy", f"{VIP_A}:5060",
         "--user", "20003", "--password", "pw20003", "--duration", "40", "--out", str(out)],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        registered = Path(str(out) + ".registered")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not registered.exists():
            time.sleep(0.2)
        assert registered.exists(), cluster.log("n1")
        assert json.loads(registered.read_text())["register"] == 200
        wait_same_location(cluster, ("n1", "n2"), 1)
        cluster.nodes["n1"].kill()
        cluster.wait_owners({VIP_A: "n2", VIP_B: "n2"}, timeout=15)
        assert _call(cluster, "20003") == 486, cluster.log("n2")
        phone.wait(45)
        result = json.loads(out.read_text())
        print(f"TCP phone after the takeover: {result}")
        assert result["flow_closed"] is True          # its connection died with n1
        assert result["invites"] == 1
        assert result["invite_peer"] == VIP_A          # n2 dialled from the VIP
        assert result["invite_uri"] == f"sip:20003@{CLIENT_IP}:5075;transport=tcp"
        log = cluster.log("n2", tail=0)
        bad = [line for line in log.splitlines()
               if "level=error" in line or "Traceback" in line]
        assert not bad, bad
    finally:
        if phone.poll() is None:
            phone.kill()
            phone.wait(5)
