"""Holding a VIP address on this host, so that it dies with the process.

IPv4 (``hold = "tun"``, the default): the address goes on a TUN device this
process creates and keeps open. Linux answers ARP for a local address on
any interface (``arp_ignore`` 0, the default), so clients reach the VIP on
the LAN interface; and when the process dies, even by ``kill -9``, the
kernel closes the descriptor, deletes the device and the address with it:
a dead owner never keeps answering for a VIP another node has taken.
Releasing is closing the descriptor: instant, from any thread (the fencing
path needs that).

``hold = "interface"`` (and every IPv6 VIP: Linux answers neighbour
solicitations only for addresses on the receiving interface) puts the
address on the LAN interface with iproute2; a killed process leaves it
there until the node starts again and removes stale VIPs.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
import threading

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C


class HoldError(OSError):
    """The address could not be put on this host."""


def tun_name(address: str) -> str:
    """``ka`` + the IPv4 address in hex: unique per VIP, within IFNAMSIZ."""
    return "ka" + ipaddress.IPv4Address(address).packed.hex()


def _ifreq_addr(name: str, address: str) -> bytes:
    packed = socket.inet_aton(address)
    return struct.pack("16sH2s4s8s", name.encode(), socket.AF_INET, b"\0\0", packed, b"\0" * 8)


class AddressHolder:
    """One VIP: ``acquire`` puts it on the host, ``release`` takes it off."""

    def __init__(self, address: str, prefix: int, interface: str, mode: str = "tun") -> None:
        self.address = address
        self.prefix = prefix
        self.interface = interface
        ip = ipaddress.ip_address(address)
        self.v6 = ip.version == 6
        self.mode = "interface" if self.v6 else mode
        self._fd: int | None = None
        self._held = False
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self) -> None:
        with self._lock:
            if self._held:
                return
            if self.mode == "tun":
                self._acquire_tun()
            else:
                self._ip("add")
            self._held = True

    def release(self) -> None:
        """Take the address off; safe from any thread, idempotent."""
        with self._lock:
            if not self._held:
                return
            self._held = False
            if self.mode == "tun":
                fd, self._fd = self._fd, None
                if fd is not None:
                    os.close(fd)
            else:
                try:
                    self._ip("del")
                except HoldError:
                    pass

    def remove_stale(self) -> None:
        """At start: a VIP left on the interface by a killed process goes."""
        if self.mode == "interface" and self._present_on_interface():
            self._ip("del")

    def _acquire_tun(self) -> None:
        name = tun_name(self.address)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise HoldError(exc.errno, f"/dev/net/tun: {exc.strerror} (hold = \"interface\" "
                                       "works without it)") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                fcntl.ioctl(s, SIOCSIFADDR, _ifreq_addr(name, self.address))
                fcntl.ioctl(s, SIOCSIFNETMASK, _ifreq_addr(name, "255.255.255.255"))
                flags = struct.unpack("16sH", fcntl.ioctl(
                    s, SIOCGIFFLAGS, struct.pack("16sH", name.encode(), 0)))[1]
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", name.encode(), flags | IFF_UP))
        except OSError as exc:
            os.close(fd)
            raise HoldError(exc.errno, f"{name}: {exc.strerror}") from None
        self._fd = fd

    def _ip(self, action: str) -> None:
        family = "-6" if self.v6 else "-4"
        cmd = ["ip", family, "addr", action, f"{self.address}/{self.prefix}", "dev",
               self.interface]
        if action == "add" and self.v6:
            cmd.append("nodad")   # the old owner is gone; DAD would delay us by a second
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        if res.returncode != 0 and not (action == "add" and "File exists" in res.stderr):
            raise HoldError(0, f"{' '.join(cmd)}: {res.stderr.strip()}")

    def _present_on_interface(self) -> bool:
        res = subprocess.run(["ip", "-o", "addr", "show", "dev", self.interface],
                             capture_output=True, text=True, timeout=5)
        return f" {self.address}/" in res.stdout
