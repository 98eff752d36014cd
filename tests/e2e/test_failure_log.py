"""A failed call names itself in the node's log (hasip/proxy/failures.py),
on the compiled build: the callee's 486 relayed upstream gives one
delivery_failed line with the Call-ID, the AoRs and the caller's address."""

from __future__ import annotations

import time

from tests.e2e.conftest import reply_to, status_of


def test_a_failed_delivery_logs_one_line_naming_the_call(make_node, udp_peer) -> None:
    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"])
    caller = udp_peer()
    call_id = "failed-call-1@198.51.100.9"
    text = (f"INVITE sip:queue7@127.0.0.1:{node.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bKfail1;rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:1001@voip.example.com>;tag=f1\r\n"
            "To: <sip:queue7@voip.example.com>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:1001@127.0.0.1:{caller.port}>\r\nContent-Length: 0\r\n\r\n")
    caller.send(text.encode(), node.sip_port)
    forwarded = callee.recv()
    assert forwarded is not None and forwarded.startswith(b"INVITE ")
    callee.send(reply_to(forwarded, 486, "Busy Here"), node.sip_port)
    answers = [status_of(m) for m in caller.recv_all(0.5)]
    assert 486 in answers
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and "event=delivery_failed" not in node.log():
        time.sleep(0.05)
    lines = [line for line in node.log().splitlines() if "event=delivery_failed" in line]
    assert len(lines) == 1, node.log()[-2000:]
    line = lines[0]
    for field in (f"call_id={call_id}", "method=INVITE", "from_aor=1001@voip.example.com",
                  "to_aor=queue7@voip.example.com", "ruri=queue7@127.0.0.1",
                  f"source=127.0.0.1:{caller.port}", "status=486", 'reason="Busy Here"',
                  "level=info"):
        assert field in line, line
