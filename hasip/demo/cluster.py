"""The cluster part of ``hasip demo``: a private ZooKeeper and three hasip
nodes on loopback (127.0.0.1:5161-5163) that replicate their state, with
SIPp playing two Asterisk nodes (:5073, :5074) and the phones.

Agent 1003 registers through n1; phone 1001 then reaches it through n2 and
n3, which learnt the registration from n1; n1 is killed with -9 and the
agent is still reached through n2. Every node holds the same bindings
(digest) and the calls' CDRs are written once. VIPs and their takeover
need network namespaces and root: the tests and ``bench/failover.py``
show them."""

from __future__ import annotations

import time
from pathlib import Path

from hasip.demo.node import NodeProcess, control_get, write_secret
from hasip.demo.sipp import Sipp, wait_for_stats
from hasip.demo.zookeeper import ZooKeeper, zookeeper_missing

NODES = {"n1": 5161, "n2": 5162, "n3": 5163}


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _control(name: str, path: str, token: str) -> dict:
    return control_get(9170 + int(name[1:]), path, token)


def _config(work: Path, name: str, zk: str) -> Path:
    i = int(name[1:])
    path = work / f"{name}.toml"
    path.write_text(f'''[node]
name = "{name}"
[sip]
listen = ["udp:127.0.0.1:{NODES[name]}"]
[metrics]
listen = "127.0.0.1:{9160 + i}"
[control]
listen = "127.0.0.1:{9170 + i}"
token_file = "{work / 'control.token'}"
[location]
sqlite_path = "{work / name}.sqlite"
[auth]
demo_users = true
secret = "the demo cluster's nonce secret"
[dispatcher]
destinations = ["1 sip:127.0.0.1:5073", "1 sip:127.0.0.1:5074"]
[cluster]
zookeeper = "{zk}"
zookeeper_user = "hasip"
zookeeper_password_file = "{work / 'zookeeper.password'}"
[replication]
listen = "127.0.0.1:{5190 + i}"
secret = "the demo cluster's replication secret"
''')
    return path


def _call_agent(work: Path, node: str, port: int, calls: int) -> int:
    caller = Sipp("uac_auth.xml", port, work, remote=f"127.0.0.1:{NODES[node]}", calls=calls,
                  rate=10, call_length_ms=300, service="1003",
                  extra=("-au", "1001", "-ap", "demo1001", "-key", "caller", "1001")).start()
    caller.wait(calls / 10 + 30)
    return caller.counter("SuccessfulCall(C)")


def run_cluster_demo(work: Path) -> bool:
    missing = zookeeper_missing()
    if missing:
        _say(f"cluster part skipped: {missing}")
        return True
    _say("cluster: a private ZooKeeper and three nodes on loopback (n1 :5161, n2 :5162, "
         "n3 :5163) replicating registrations, dialogs and Asterisk health")
    zk = ZooKeeper(work, "127.0.0.1", base_port=2191).start()
    # The control API's token (the same on every node) and the cluster's
    # ZooKeeper password, in files of mode 0600.
    token = write_secret(work / "control.token")
    write_secret(work / "zookeeper.password")
    answering = [Sipp("uas.xml", port, work).start() for port in (5073, 5074, 5083)]
    nodes: dict[str, NodeProcess] = {}
    ok = True
    try:
        for s in answering:
            wait_for_stats(s)
        for name, port in NODES.items():
            nodes[name] = NodeProcess(_config(work, name, zk.hosts), work, "127.0.0.1", port,
                                      metrics_url=f"http://127.0.0.1:{9160 + int(name[1:])}"
                                                  "/metrics").start(ready_timeout=60)
            sync = _control(name, "/replication", token)["sync"]
            _say(f"{name} up, {sync['state']} from {sync.get('source') or 'nobody (first)'}")
        _say("agent 1003 registers through n1")
        reg = Sipp("register.xml", 5084, work, remote="127.0.0.1:5161", calls=1,
                   service="1003", extra=("-au", "1003", "-ap", "demo1003", "-key",
                                          "contact_port", "5083", "-key", "expires", "3600"))
        reg.start().wait(30)
        ok &= reg.counter("SuccessfulCall(C)") == 1
        time.sleep(0.5)
        views = {n: _control(n, "/location", token) for n in NODES}
        same = len({v["digest"] for v in views.values()}) == 1
        _say("bindings per node: " + ", ".join(f"{n} {v['bindings']}" for n, v in views.items())
             + (" (byte-equal)" if same else " (DIFFERENT)"))
        ok &= same and all(v["bindings"] == 1 for v in views.values())
        reached = {}
        for name, port in (("n2", 5092), ("n3", 5093)):
            reached[name] = _call_agent(work, name, port, 5)
            _say(f"phone 1001 -> agent 1003 through {name}: {reached[name]}/5 calls completed")
        _say("kill -9 n1 (the node the agent registered through)")
        nodes["n1"].kill()
        reached["n2 after"] = _call_agent(work, "n2", 5094, 5)
        _say(f"phone 1001 -> agent 1003 through n2 after n1 died: {reached['n2 after']}/5 "
             "calls completed")
        ok &= all(v == 5 for v in reached.values())
        time.sleep(0.5)
        status = {n: _control(n, "/dialogs", token)["dialogs"] for n in ("n2", "n3")}
        _say(f"dialogs still open: {status} (every call ended on every survivor)")
        ok &= not any(status.values())
        return ok
    finally:
        for node in nodes.values():
            node.kill()
        for s in answering:
            s.stop()
        zk.stop()
