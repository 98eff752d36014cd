"""The health probes (issue 16, point 1) against running nodes: /healthz
(the process answers) and /readyz (serving, and in a cluster ZooKeeper
connected, the operator's drain off), asked without a token as Kubernetes
and load balancers ask them, still behind the Host and Origin checks; and
``hasip health``, which probes, scripts and the Ansible role run."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time

from hasip.demo.node import write_secret
from hasip.demo.zookeeper import ZooKeeper
from tests.e2e.conftest import free_port, invite


def probe(node, path: str, method: str = "GET", headers: dict[str, str] | None = None
          ) -> tuple[int, dict]:
    host, port = node.control.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def health(node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hasip", "health", "-c",
                           str(node.config_path), *args], capture_output=True, text=True,
                          timeout=30)


def wait_ready(node, want: bool, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = probe(node, "/readyz")
        if body.get("ready") is want or time.monotonic() > deadline:
            assert body.get("ready") is want, body
            assert status == (200 if want else 503)
            return body
        time.sleep(0.1)


def test_a_node_is_live_and_ready_and_says_so_without_a_token(make_node) -> None:
    node = make_node()
    assert probe(node, "/healthz") == (200, {"status": "serving"})
    assert probe(node, "/readyz") == (200, {"ready": True, "checks": {"serving": True}})
    res = health(node)
    assert (res.returncode, res.stdout.strip()) == (0, "ready"), res.stderr
    res = health(node, "--live", "-o", "json")
    assert res.returncode == 0 and json.loads(res.stdout) == {"http_status": 200,
                                                              "status": "serving"}
    # still the control API's rules: GET only, no foreign page, no other path
    assert probe(node, "/readyz", "POST", {"Content-Type": "application/json"})[0] == 405
    assert probe(node, "/readyz", headers={"Origin": "https://evil.example"})[0] == 403
    assert probe(node, "/dialogs")[0] == 401


def test_a_node_shutting_down_is_not_ready(make_node, udp_peer) -> None:
    """SIGTERM with a transaction in flight: the node drains for up to
    shutdown.grace, and meanwhile /readyz says 503 (serving: false) and
    ``hasip health`` exits 1, while /healthz still answers."""
    dead = free_port()
    node = make_node(next_hop=[f"sip:127.0.0.1:{dead}"], shutdown={"grace": 4.0})
    caller = udp_peer()
    caller.send(invite(caller, f"sip:agent@127.0.0.1:{node.sip_port}"), node.sip_port)
    assert caller.recv() is not None              # 100 Trying: the INVITE is in flight
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    body = wait_ready(node, False, timeout=3.0)
    assert body["checks"] == {"serving": False}
    res = health(node)
    assert res.returncode == 1 and "not ready: serving" in res.stderr
    assert probe(node, "/healthz")[0] == 200


def test_in_a_cluster_ready_needs_zookeeper_and_no_drain(make_node, zookeeper: ZooKeeper,
                                                         tmp_path) -> None:
    password_file = tmp_path / "zookeeper.password"
    write_secret(password_file)
    node = make_node(dispatcher={"destinations": ["1 sip:127.0.0.1:5999"]},
                     auth={"secret": "the cluster's shared secret"},
                     cluster={"zookeeper": zookeeper.hosts, "root": "/health",
                              "zookeeper_user": "hasip",
                              "zookeeper_password_file": str(password_file)})
    name = f"test-{node.sip_port}"
    body = wait_ready(node, True)
    assert body["checks"] == {"serving": True, "zookeeper": True, "not_drained": True}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hasip", *args, "--zookeeper",
                               zookeeper.hosts, "--root", "/health", "--zookeeper-user",
                               "hasip", "--zookeeper-password-file", str(password_file)],
                              capture_output=True, text=True, timeout=60)

    assert cli("drain", name).returncode == 0
    assert wait_ready(node, False)["checks"]["not_drained"] is False
    assert health(node).returncode == 1
    assert cli("undrain", name).returncode == 0
    wait_ready(node, True)
    zookeeper.stop()                              # the last test of this module
    assert wait_ready(node, False, timeout=15.0)["checks"]["zookeeper"] is False
    res = health(node)
    assert res.returncode == 1 and "zookeeper" in res.stderr
