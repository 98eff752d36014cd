"""``hasip log-level`` against a running node (kamcmd corex.debug): the
level changes at once, what the log shows with it, and back."""

from __future__ import annotations

import subprocess
import sys
import time


def log_level(node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hasip", "log-level", "-c",
                           str(node.config_path), *args], capture_output=True, text=True,
                          timeout=30)


def wait_for(node, text: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while text not in node.log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_log_level_changes_what_the_log_shows(phones, make_node) -> None:
    node = make_node(auth={"demo_users": True})
    assert log_level(node).stdout.strip() == "info"
    phone = phones("1001", "demo1001")
    assert phone.register(("127.0.0.1", node.sip_port)).status == 200
    assert not wait_for(node, "event=register ", 0.5)       # a debug line: not at info
    changed = log_level(node, "debug")
    assert changed.returncode == 0 and changed.stdout.strip() == "log level debug (was info)"
    assert phone.register(("127.0.0.1", node.sip_port)).status == 200
    assert wait_for(node, "event=register aor=1001")
    assert log_level(node, "info").stdout.strip() == "log level info (was debug)"
    assert "event=log_level_changed level=debug was=info" in node.log()
    bad = log_level(node, "loud")
    assert bad.returncode == 2                               # argparse refuses it
