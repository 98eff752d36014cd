"""Telling the LAN where a VIP lives: gratuitous ARP (request and reply
forms, as Pacemaker's IPaddr2 and keepalived send them) and unsolicited
neighbour advertisements for IPv6; and, before taking a VIP, an RFC 5227
ARP probe that finds anyone still answering for it.

Frames are built with scapy once per VIP and sent on a raw ``AF_PACKET``
socket bound to the interface (no scapy machinery per send).
"""

from __future__ import annotations

import ipaddress
import select
import socket
import time
from typing import Any

ETH_P_ARP = 0x0806
ETH_P_ALL = 0x0003
BROADCAST = "ff:ff:ff:ff:ff:ff"


def _scapy() -> Any:
    # scapy takes a second to import: loaded when a node first needs it.
    from scapy import all as scapy_all

    return scapy_all


def interface_mac(interface: str) -> str:
    with open(f"/sys/class/net/{interface}/address", encoding="ascii") as fh:
        return fh.read().strip()


class Announcer:
    """Frames for one VIP on one interface."""

    def __init__(self, address: str, interface: str) -> None:
        self.address = address
        self.interface = interface
        self.v6 = ipaddress.ip_address(address).version == 6
        self.mac = interface_mac(interface)
        s = _scapy()
        if self.v6:
            na = (s.Ether(src=self.mac, dst="33:33:00:00:00:01")
                  / s.IPv6(src=address, dst="ff02::1", hlim=255)
                  / s.ICMPv6ND_NA(tgt=address, R=0, S=0, O=1)
                  / s.ICMPv6NDOptDstLLAddr(lladdr=self.mac))
            self.frames = [bytes(na)]
            self.probe_frame = b""
        else:
            request = (s.Ether(src=self.mac, dst=BROADCAST)
                       / s.ARP(op=1, hwsrc=self.mac, psrc=address, hwdst="00:00:00:00:00:00",
                               pdst=address))
            reply = (s.Ether(src=self.mac, dst=BROADCAST)
                     / s.ARP(op=2, hwsrc=self.mac, psrc=address, hwdst=BROADCAST, pdst=address))
            self.frames = [bytes(request), bytes(reply)]
            probe = (s.Ether(src=self.mac, dst=BROADCAST)
                     / s.ARP(op=1, hwsrc=self.mac, psrc="0.0.0.0",
                             hwdst="00:00:00:00:00:00", pdst=address))
            self.probe_frame = bytes(probe)

    def _socket(self, proto: int) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
        sock.bind((self.interface, 0))
        return sock

    def announce(self) -> int:
        """One round: every frame once. Returns the frames sent."""
        with self._socket(ETH_P_ALL) as sock:
            for frame in self.frames:
                sock.send(frame)
        return len(self.frames)

    def probe(self, window: float) -> list[str]:
        """RFC 5227 probe: who answers ARP for the VIP within ``window``
        seconds? Returns their MAC addresses (empty: the address is free).
        Blocking; IPv6 VIPs are not probed (DAD is the kernel's)."""
        if self.v6 or window <= 0:
            return []
        want = socket.inet_aton(self.address)
        mine = bytes.fromhex(self.mac.replace(":", ""))
        found: list[str] = []
        with self._socket(ETH_P_ARP) as sock:
            sock.send(self.probe_frame)
            deadline = time.monotonic() + window
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                frame = sock.recv(128)
                # Ethernet (14) + ARP: htype 2, ptype 2, hlen 1, plen 1, op 2,
                # sha 6, spa 4, tha 6, tpa 4
                if len(frame) < 42 or frame[12:14] != b"\x08\x06":
                    continue
                op = frame[20:22]
                sha, spa = frame[22:28], frame[28:32]
                if spa == want and sha != mine and op in (b"\x00\x01", b"\x00\x02"):
                    mac = sha.hex(":")
                    if mac not in found:
                        found.append(mac)
        return found
