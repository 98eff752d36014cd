"""``hasip demo``: one node on its embedded defaults (UDP and TCP on
127.0.0.1:5060, next hops 127.0.0.1:5071 and :5072, the demo accounts (``auth.demo_users``),
bindings in SQLite), with SIPp playing everyone else:

* two Asterisk nodes answering on :5071 and :5072;
* agent 1002's phone, answering on :5081, registered with digest auth;
* phone 1001 placing calls, each challenged (407) and authenticated: most to
  a queue number (not registered: round-robin to the Asterisk nodes), some
  to agent 1002 (found in the location store).

Then the cluster part (``hasip.demo.cluster``): three nodes replicating
their state through a private ZooKeeper on loopback.

It prints what happened and exits 0 when every call completed and every
check passed."""

from __future__ import annotations

import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hasip.demo.cluster import run_cluster_demo
from hasip.demo.node import NodeProcess
from hasip.demo.sipp import Sipp, sipp_binary, wait_for_stats

NODE = "127.0.0.1:5060"


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _metric_totals(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(rf'^{name}{{(\w+="[^"]*"(?:,\w+="[^"]*")*)}} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def _run(caller: Sipp, calls: int, rate: int, what: str) -> tuple[int, int]:
    caller.start()
    started = time.monotonic()
    timeout = calls / rate + 60
    while caller.proc is not None and caller.proc.poll() is None:
        if time.monotonic() - started > timeout:
            caller.stop()
            break
        time.sleep(1.0)
        done = caller.counter("SuccessfulCall(C)") + caller.counter("FailedCall(C)")
        _say(f"progress ({what}): {done}/{calls} calls finished")
    return caller.counter("SuccessfulCall(C)"), caller.counter("FailedCall(C)")


def run_demo(calls: int = 200, rate: int = 50) -> int:
    if sipp_binary() is None:
        print("hasip demo: sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hasip-demo-"))
    _say(f"working directory {work}")
    asterisks = [Sipp("uas.xml", port, work).start() for port in (5071, 5072)]
    agent = Sipp("uas.xml", 5081, work).start()
    # The embedded defaults, and the demo accounts, which a node accepts
    # only when its configuration asks for them.
    config = work / "demo.toml"
    config.write_text("[auth]\ndemo_users = true\n")
    node = NodeProcess(config, work)
    started: list[Sipp] = []
    try:
        _say("starting two SIPp Asterisk nodes (:5071, :5072) and agent 1002's phone (:5081)")
        for s in (*asterisks, agent):
            wait_for_stats(s)
        _say("starting hasip on its embedded defaults and the demo accounts (udp+tcp "
             "127.0.0.1:5060, metrics :9060)")
        node.start()
        _say("agent 1002 registers (REGISTER, 401, REGISTER with credentials, 200)")
        reg = Sipp("register.xml", 5082, work, remote=NODE, calls=1, service="1002",
                   extra=("-au", "1002", "-ap", "demo1002", "-key", "contact_port", "5081",
                          "-key", "expires", "3600"))
        started.append(reg)
        registered, _ = _run(reg, 1, 1, "registration")
        to_agent = max(1, calls // 10)
        to_queue = calls - to_agent
        _say(f"phone 1001 calls the queue number 2000 {to_queue} times at {rate}/s "
             "(407, then authenticated; not registered: round-robin to Asterisk)")
        queue = Sipp("uac_auth.xml", 5090, work, remote=NODE, calls=to_queue, rate=rate,
                     call_length_ms=500, service="2000",
                     extra=("-au", "1001", "-ap", "demo1001", "-key", "caller", "1001"))
        started.append(queue)
        ok_queue, failed_queue = _run(queue, to_queue, rate, "queue")
        _say(f"phone 1001 calls agent 1002 {to_agent} times (found in the location store)")
        direct = Sipp("uac_auth.xml", 5091, work, remote=NODE, calls=to_agent, rate=rate,
                      call_length_ms=500, service="1002",
                      extra=("-au", "1001", "-ap", "demo1001", "-key", "caller", "1001"))
        started.append(direct)
        ok_agent, failed_agent = _run(direct, to_agent, rate, "agent")
        for s in (*asterisks, agent):
            s.stop()  # a soft exit: finishes its calls and writes its statistics
        per_node = {a.name: a.counter("SuccessfulCall(C)") for a in asterisks}
        with urllib.request.urlopen("http://127.0.0.1:9060/metrics", timeout=5) as resp:
            text = resp.read().decode()
        print()
        print("hasip demo results")
        print(f"  agent 1002 registered      {'yes' if registered == 1 else 'NO'}")
        print(f"  calls to the queue         {ok_queue}/{to_queue} completed, "
              f"{failed_queue} failed")
        for name, count in per_node.items():
            print(f"    answered by {name:<14} {count}")
        print(f"  calls to agent 1002        {ok_agent}/{to_agent} completed, "
              f"{failed_agent} failed (agent answered {agent.counter('SuccessfulCall(C)')})")
        for metric, title in (("hasip_sip_requests_received_total", "requests received"),
                              ("hasip_sip_responses_sent_total", "responses sent"),
                              ("hasip_auth_total", "authentication"),
                              ("hasip_location_lookups_total", "location lookups")):
            totals = _metric_totals(text, metric)
            shown = ", ".join(f"{k} {int(v)}" for k, v in sorted(totals.items()))
            print(f"  {title:<26} {shown}")
        print()
        _say("stopping the node with SIGTERM (graceful shutdown)")
        rc = node.terminate()
        _say(f"node exited with {rc}; log: {node.log_path}")
        success = (registered == 1 and ok_queue == to_queue and ok_agent == to_agent
                   and failed_queue == failed_agent == 0 and rc == 0)
        print()
        cluster_ok = run_cluster_demo(work)
        _say("cluster part: " + ("every check passed" if cluster_ok else "a check FAILED"))
        return 0 if success and cluster_ok else 1
    finally:
        for s in started:
            s.stop()
        for s in (*asterisks, agent):
            s.stop()
        node.kill()
