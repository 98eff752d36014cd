"""``hasip demo``: one node on its embedded defaults (UDP and TCP on
127.0.0.1:5060, next hops 127.0.0.1:5071 and :5072), two SIPp answering
nodes, a SIPp caller; prints what happened."""

from __future__ import annotations

import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hasip.demo.node import NodeProcess
from hasip.demo.sipp import Sipp, sipp_binary, wait_for_stats


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _metric_totals(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(rf'^{name}{{\w+="([^"]*)"}} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def run_demo(calls: int = 200, rate: int = 50) -> int:
    if sipp_binary() is None:
        print("hasip demo: sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hasip-demo-"))
    _say(f"working directory {work}")
    answerers = [Sipp("uas.xml", port, work).start() for port in (5071, 5072)]
    node = NodeProcess(None, work)
    caller: Sipp | None = None
    try:
        _say("starting two SIPp answering nodes on 127.0.0.1:5071 and :5072")
        for a in answerers:
            wait_for_stats(a)
        _say("starting hasip on its embedded defaults (udp+tcp 127.0.0.1:5060, metrics :9060)")
        node.start()
        _say(f"node answers OPTIONS; placing {calls} calls at {rate}/s through it")
        caller = Sipp("uac.xml", 5090, work, remote="127.0.0.1:5060", calls=calls, rate=rate,
                      call_length_ms=500).start()
        started = time.monotonic()
        timeout = calls / rate + 60
        while caller.proc is not None and caller.proc.poll() is None:
            if time.monotonic() - started > timeout:
                caller.stop()
                break
            time.sleep(1.0)
            done = caller.counter("SuccessfulCall(C)") + caller.counter("FailedCall(C)")
            _say(f"progress: {done}/{calls} calls finished")
        ok = caller.counter("SuccessfulCall(C)")
        failed = caller.counter("FailedCall(C)")
        for a in answerers:
            a.stop()  # a soft exit: finishes its calls and writes its statistics
        per_node = {a.name: a.counter("SuccessfulCall(C)") for a in answerers}
        with urllib.request.urlopen("http://127.0.0.1:9060/metrics", timeout=5) as resp:
            text = resp.read().decode()
        print()
        print("hasip demo results")
        print(f"  calls placed      {calls}")
        print(f"  calls completed   {ok}")
        print(f"  calls failed      {failed}")
        for name, count in per_node.items():
            print(f"  answered by {name:<14} {count}")
        for metric, title in (("hasip_sip_requests_received_total", "requests received"),
                              ("hasip_sip_requests_forwarded_total", "requests forwarded"),
                              ("hasip_sip_responses_sent_total", "responses sent")):
            totals = _metric_totals(text, metric)
            shown = ", ".join(f"{k} {int(v)}" for k, v in sorted(totals.items()))
            print(f"  {title:<17} {shown}")
        print()
        _say("stopping the node with SIGTERM (graceful shutdown)")
        rc = node.terminate()
        _say(f"node exited with {rc}; log: {node.log_path}")
        return 0 if ok == calls and failed == 0 and rc == 0 else 1
    finally:
        if caller is not None:
            caller.stop()
        for a in answerers:
            a.stop()
        node.kill()
