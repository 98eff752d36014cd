"""hasip's ng client (hasip/media/) against a real rtpengine, with real RTP:
offer and answer rewrite the SDP to rtpengine's ports, packets sent to
those ports come out at the other party, delete hands back the counters and
leaves nothing in rtpengine's own list; a dead instance is taken out and
its new calls go to the other one, and it comes back when it answers."""

from __future__ import annotations

import asyncio
import socket
import time

import uvloop

from hasip.media import commands
from hasip.media.client import MediaClient
from hasip.media.ng import NgError, NgTimeout
from tests.e2e.conftest import free_port
from tests.e2e.mediaua import sdp_media
from tests.e2e.services import Rtpengine

CALLER, CALLEE = "127.0.0.5", "127.0.0.6"


def _sdp(ip: str, port: int) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n").encode()


def _rtp(seq: int) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") \
        + b"\x12\x34\x56\x78" + b"\xff" * 160


def _udp(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.settimeout(1.0)
    return s


def test_offer_answer_rtp_and_delete_through_rtpengine(rtpengine) -> None:
    rtpe = rtpengine()
    caller, callee = _udp(CALLER), _udp(CALLEE)
    caller_port = caller.getsockname()[1]

    async def main() -> dict[str, object]:
        client = MediaClient([rtpe.url])
        await client.start()
        try:
            opts = commands.Options()
            inst, offered = await client.offer("call-1", commands.offer(
                "call-1", "ft1", _sdp(CALLER, caller.getsockname()[1]),
                commands.Side(False, CALLER), opts))
            answered = await client.on(inst.name, commands.answer(
                "call-1", "ft1", "tt1", _sdp(CALLEE, callee.getsockname()[1]),
                commands.Side(False, CALLEE), opts))
            assert offered.sdp is not None and answered.sdp is not None
            to_callee = sdp_media(offered.sdp)      # where the callee sends (rtpengine)
            to_caller = sdp_media(answered.sdp)     # where the caller sends (rtpengine)
            # RTP both ways: 50 packets from each party to the port it was given.
            got = {"caller": 0, "callee": 0}
            for seq in range(50):
                caller.sendto(_rtp(seq), to_caller)
                callee.sendto(_rtp(seq), to_callee)
                await asyncio.sleep(0.002)
            for name, sock in (("callee", callee), ("caller", caller)):
                sock.settimeout(0.5)
                try:
                    while True:
                        data = sock.recv(2048)
                        if len(data) == 172:
                            got[name] += 1
                except TimeoutError:
                    pass
            listed_during = rtpe.calls()
            deleted = await client.on(inst.name, commands.delete("call-1", "ft1"))
            stats = commands.media_stats(deleted.data)
            return {"offer": to_callee, "answer": to_caller, "got": got, "stats": stats,
                    "listed_during": listed_during, "listed_after": rtpe.calls()}
        finally:
            await client.stop()

    try:
        r = uvloop.run(main())
    finally:
        caller.close()
        callee.close()
    print(f"media through rtpengine: {r}")
    assert r["offer"][0] == "127.0.0.1" and r["answer"][0] == "127.0.0.1"
    assert r["offer"][1] != caller_port
    assert r["got"] == {"caller": 50, "callee": 50}
    assert r["listed_during"] == ["call-1"]
    assert r["stats"].packets >= 100 and r["stats"].bytes >= 100 * 172
    assert r["listed_after"] == []


def test_a_dead_instance_is_taken_out_and_comes_back(rtpengine, tmp_path) -> None:
    live = rtpengine()
    dead_port = free_port()
    revived = Rtpengine(tmp_path, dead_port, live.port_min + 200)

    async def main() -> dict[str, object]:
        client = MediaClient([f"udp:127.0.0.1:{dead_port}=1000", live.url], timeout=0.3,
                             retransmit=0.05, ping_interval=0.2, failures=2)
        await client.start()
        dead = client.instances.items[0]
        try:
            # Every call prefers the heavy dead instance until it is out.
            t0 = time.monotonic()
            inst, answer = await client.offer("c-a", commands.offer(
                "c-a", "f", _sdp(CALLER, 4000), commands.Side(False, CALLER),
                commands.Options()))
            moved_after = time.monotonic() - t0
            deadline = time.monotonic() + 3
            while dead.up and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            down = not dead.up
            errors = []
            try:
                await client.on(inst.name, commands.answer("nope", "f", "t", b"v=0\r\n",
                                                           commands.Side(False, CALLER),
                                                           commands.Options()))
            except NgError as exc:
                errors.append(str(exc))
            try:
                await client.on(dead.name, commands.query("c-a"))
            except NgTimeout as exc:
                errors.append(str(exc))
            # The dead one starts: its pings are answered, it is back and
            # takes its calls again.
            await asyncio.to_thread(revived.start)
            deadline = time.monotonic() + 3
            while not dead.up and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            back, _ = await client.offer("c-b", commands.offer(
                "c-b", "f", _sdp(CALLER, 4002), commands.Side(False, CALLER),
                commands.Options()))
            return {"first": inst.name, "moved_after": moved_after, "down": down,
                    "ok": answer.ok, "errors": errors, "back": dead.up, "then": back.name,
                    "revived_calls": revived.calls()}
        finally:
            await client.stop()
            revived.stop()

    r = uvloop.run(main())
    print(f"dead instance: {r}")
    assert r["first"] == live.url and r["ok"]
    assert r["moved_after"] < 1.0               # one timeout (0.3 s), then the live one
    assert r["down"]
    assert "refused answer" in r["errors"][0]
    assert "no answer to query" in r["errors"][1]
    assert r["back"] and r["then"] == f"udp:127.0.0.1:{dead_port}"
    assert r["revived_calls"] == ["c-b"]
    live.stop()
