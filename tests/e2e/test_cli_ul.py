"""``hasip ul show`` / ``ul rm`` (kamcmd's ul.dump and ul.rm) against a
running node: a phone's REGISTER shows up with its contact and expiry, an
AoR can be looked up alone (exit 1 when nobody is registered), and ``rm``
takes the binding away so that a call to it finds nobody."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.e2e.conftest import invite, status_of


def ul(node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hasip", "ul", "-c", str(node.config_path),
                           *args], capture_output=True, text=True, timeout=30)


def test_ul_show_and_rm_on_a_live_node(phones, make_node, udp_peer) -> None:
    node = make_node(auth={"demo_users": True})
    phone = phones("1001", "demo1001")
    resp = phone.register(("127.0.0.1", node.sip_port), expires=600)
    assert resp is not None and resp.status == 200
    shown = ul(node, "show")
    assert shown.returncode == 0, shown.stderr
    assert "1001" in shown.stdout and "sip:1001@" in shown.stdout
    one = json.loads(ul(node, "show", "1001", "-o", "json").stdout)
    assert [b["aor"] for b in one] == ["1001"]
    assert 500 < one[0]["expires"] - time.time() <= 600
    assert ul(node, "show", "1002").returncode == 1
    removed = ul(node, "rm", "1001")
    assert removed.returncode == 0 and "1 binding(s) removed" in removed.stdout
    assert ul(node, "show", "1001").returncode == 1
    assert ul(node, "rm", "1001").returncode == 1        # nothing left to remove
    # a call to the removed user finds nobody (the next hop step: none configured)
    gateway = udp_peer()
    gateway.send(invite(gateway, f"sip:1001@127.0.0.1:{node.sip_port}"), node.sip_port)
    answers = [status_of(gateway.recv()) for _ in range(2)]
    assert 404 in answers, answers
