"""Calls whose media hasip sends through a real rtpengine (issue 15), on
loopback: SIPp phones with real RTP (the caller plays a stream, the callee
echoes it), tcpdump on both phones' media ports, rtpengine's own list of
sessions. The NAT case, with a NAT router in namespaces, is in
test_media_netns.py."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from hasip.demo.sipp import wait_for_stats
from tests.e2e.conftest import free_port, metric
from tests.e2e.mediaua import sdp_media
from tests.e2e.rtp import Capture, tcpdump_missing, write_stream

CALLER, CALLEE = "127.0.0.5", "127.0.0.6"
PACKETS = 100                                  # 2 s of audio


@pytest.fixture(autouse=True)
def _tcpdump() -> None:
    missing = tcpdump_missing()
    if missing:
        pytest.skip(missing)


def messages(tmp_path: Path, scenario: str) -> str:
    """What SIPp's -trace_msg logged for ``scenario``."""
    return "".join(p.read_text(errors="replace")
                   for p in sorted(tmp_path.glob(f"{scenario}_*_messages.log")))


def received_invite(log: str) -> str:
    at = log.index("INVITE sip:")
    return log[at:log.index("\n\n----", at) if "\n\n----" in log[at:] else len(log)]


def cdr_media(tmp_path: Path, port: int, timeout: float = 5.0) -> tuple[str, int, int]:
    """The media columns of the node's one CDR (SQLite, written behind)."""
    deadline = time.monotonic() + timeout
    while True:
        db = sqlite3.connect(tmp_path / f"location-{port}.db")
        try:
            rows = db.execute("SELECT media, media_packets, media_bytes FROM cdr").fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            db.close()
        if rows or time.monotonic() > deadline:
            assert len(rows) == 1, rows
            return rows[0]
        time.sleep(0.1)


def in_range(port: int, rtpe) -> bool:
    return rtpe.port_min <= port < rtpe.port_min + 200


def test_media_of_a_call_goes_through_rtpengine_both_ways(make_node, sipp, rtpengine,
                                                          tmp_path) -> None:
    rtpe = rtpengine()
    caller_mp, callee_mp = free_port(CALLER), free_port(CALLEE)
    callee = sipp("uas.xml", local_ip=CALLEE,
                  extra=("-rtp_echo", "-mp", str(callee_mp), "-trace_msg"))
    wait_for_stats(callee)
    node = make_node(next_hop=[f"sip:{CALLEE}:{callee.port}"],
                     media={"rtpengine": [rtpe.url], "relay": "always"})
    write_stream(tmp_path / "rtp.pcap", PACKETS)
    bpf = f"udp and ((dst host {CALLER} and dst port {caller_mp}) or " \
          f"(dst host {CALLEE} and dst port {callee_mp}))"
    with Capture(tmp_path / "media.pcap", "lo", bpf) as cap:
        caller = sipp("uac_media.xml", remote=f"127.0.0.1:{node.sip_port}", calls=1,
                      local_ip=CALLER, call_length_ms=3000,
                      extra=("-mp", str(caller_mp), "-trace_msg"))
        assert caller.wait(30) == 0, caller.errors()
    # The callee was offered rtpengine's address, the caller answered with it.
    offered = sdp_media(received_invite(messages(tmp_path, "uas")).encode())
    assert offered[0] == "127.0.0.1" and in_range(offered[1], rtpe), offered
    answered = sdp_media(messages(tmp_path, "uac_media").split("SIP/2.0 200 OK", 1)[1].encode())
    assert answered[0] == "127.0.0.1" and in_range(answered[1], rtpe), answered
    # Each phone got the audio, from rtpengine's ports and nowhere else.
    to_callee, to_caller = cap.received(CALLEE, callee_mp), cap.received(CALLER, caller_mp)
    print(f"offered {offered}, answered {answered}; callee got {to_callee}, "
          f"caller got {to_caller}")
    for got in (to_callee, to_caller):
        assert got, cap.flows()
        assert all(ip == "127.0.0.1" and in_range(port, rtpe) for ip, port in got)
        assert sum(got.values()) >= PACKETS * 0.95
    # BYE deleted the session: rtpengine holds none, and gave its figures.
    assert rtpe.calls() == []
    log = node.log()
    found = re.search(r"event=media_deleted .*packets=(\d+) ", log)
    assert found and int(found.group(1)) >= 2 * PACKETS * 0.95, log[-2000:]
    # ... and the call's CDR has them (written once they are in)
    row = cdr_media(tmp_path, node.sip_port)
    assert row[0] == rtpe.url and row[1] == int(found.group(1)) and row[2] >= row[1] * 172, row
    text = node.metrics()
    assert metric(text, "hasip_media_calls_total", 'decision="relayed"') == 1
    assert metric(text, "hasip_media_requests_total",
                  f'command="offer",result="ok",rtpengine="{rtpe.url}"') == 1
    assert metric(text, "hasip_media_requests_total",
                  f'command="delete",result="ok",rtpengine="{rtpe.url}"') == 1
    assert metric(text, "hasip_media_sessions", f'rtpengine="{rtpe.url}"') == 0
