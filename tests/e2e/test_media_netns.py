"""Two phones call through hasip, one of them behind a real NAT router
(network namespaces, iptables MASQUERADE, tests/e2e/natnet.py), and the
media goes through a real rtpengine by the seed's rule (relay when a party
is behind NAT, the default): SIPp plays audio on both sides, tcpdump on
each side shows it arriving from rtpengine, the NATed phone is offered
rtpengine's address, and after BYE rtpengine holds no session.

    [phone ns] 1010 at 198.18.1.2 -- NAT -- 198.19.0.1: hasip, rtpengine -- 127.0.0.2: caller
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, metric
from tests.e2e.natnet import NAT_OUT, NODE_IP, PHONE_IP
from tests.e2e.rtp import Capture, tcpdump_missing, write_stream

CALLER = "127.0.0.2"
PACKETS = 100


def trace(tmp_path: Path, scenario: str) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted(tmp_path.glob(f"{scenario}_*_messages.log")))


def sdp_of_first(log: str, start_line: str) -> tuple[str, int]:
    text = log[log.index(start_line):]
    c = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    m = re.search(r"^m=audio (\d+)", text, re.M)
    assert c and m, text[:2000]
    return c.group(1), int(m.group(1))


def test_call_with_a_phone_behind_nat_has_audio_both_ways(make_node, sipp, rtpengine,
                                                          nat_network, tmp_path) -> None:
    missing = tcpdump_missing()
    if missing:
        pytest.skip(missing)
    rtpe = rtpengine(interfaces=(NODE_IP,))
    node = make_node(sip={"listen": ["udp:127.0.0.1:{port}", f"udp:{NODE_IP}:{{port}}"]},
                     media={"rtpengine": [rtpe.url]})           # relay = "nat"
    phone_ns = nat_network["phone_ns"]
    write_stream(tmp_path / "rtp.pcap", PACKETS)
    # 1010 registers from behind its NAT, then answers on the same port
    reg = sipp("register.xml", 5060, remote=f"{NODE_IP}:{node.sip_port}", calls=1,
               service="1010", local_ip=PHONE_IP, netns=phone_ns,
               extra=("-au", "1010", "-ap", "demo1010", "-key", "contact_port", "5060",
                      "-key", "expires", "300"))
    assert reg.wait(20) == 0, reg.errors()
    phone_mp, caller_mp = 16000, free_port(CALLER)
    phone = sipp("uas_media.xml", 5060, local_ip=PHONE_IP, netns=phone_ns, calls=1,
                 extra=("-mp", str(phone_mp), "-trace_msg"))
    time.sleep(0.5)
    with Capture(tmp_path / "phone.pcap", nat_network["phone_dev"],
                 f"udp and dst port {phone_mp}", netns=phone_ns) as at_phone, \
            Capture(tmp_path / "caller.pcap", "lo", f"udp and dst port {caller_mp}") as at_caller:
        caller = sipp("uac_media.xml", remote=f"127.0.0.1:{node.sip_port}", calls=1,
                      service="1010", local_ip=CALLER, call_length_ms=3500,
                      extra=("-mp", str(caller_mp), "-trace_msg"))
        assert caller.wait(30) == 0, caller.errors()
        assert phone.wait(10) == 0, phone.errors()
    # The NATed phone was offered rtpengine's address, the caller too.
    offered = sdp_of_first(trace(tmp_path, "uas_media"), "INVITE sip:")
    answered = sdp_of_first(trace(tmp_path, "uac_media"), "SIP/2.0 200 OK")
    in_range = range(rtpe.port_min, rtpe.port_min + 200)
    assert offered[0] == NODE_IP and offered[1] in in_range, offered
    assert answered[0] == NODE_IP and answered[1] in in_range, answered
    # Audio arrived on both sides, from rtpengine only.
    to_phone = at_phone.received(PHONE_IP, phone_mp)
    to_caller = at_caller.received(CALLER, caller_mp)
    print(f"phone offered {offered}, caller answered {answered}; "
          f"phone got {to_phone}, caller got {to_caller}")
    for got in (to_phone, to_caller):
        assert got and all(ip == NODE_IP and port in in_range for ip, port in got), got
        assert sum(got.values()) >= PACKETS * 0.9
    # BYE ended the session (deleted once the node saw the BYE through)
    deadline = time.monotonic() + 3
    while rtpe.calls() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rtpe.calls() == []
    log = node.log()
    deleted = re.search(r"event=media_deleted .*packets=(\d+) ", log)
    assert deleted and int(deleted.group(1)) >= 2 * PACKETS * 0.9, log[-2000:]
    text = node.metrics()
    assert metric(text, "hasip_media_calls_total", 'decision="relayed"') == 1
    assert metric(text, "hasip_nat_detected_total", 'method="REGISTER"') >= 1
    # rtpengine learnt the phone's public side (its NAT's outside address)
    # from the phone's first packets, and counted its 100 there
    latched = re.search(rf"Port +{re.escape(NODE_IP)}:{offered[1]} <> +"
                        rf"{re.escape(NAT_OUT)}:\d+, SSRC \w+, (\d+) p", rtpe.log())
    assert latched and int(latched.group(1)) >= PACKETS * 0.9, rtpe.log()[-3000:]
