"""The node's listeners as a table the proxy engine looks sockets up in:
which one to send from, which one a Record-Route of ours names, which one
a location record's socket text names. No sockets here: the transports
fill in :attr:`Listener.udp` when they bind."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from hasip.transport.base import Listener


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


class Listeners:
    def __init__(self, listen: Iterable[tuple[str, str, int]],
                 vips: Iterable[str] = ()) -> None:
        self.all = [Listener(transport, host, port) for transport, host, port in listen]
        vip_set = set(vips)
        for listener in self.all:
            if listener.host in vip_set:
                listener.vip = True
                listener.active = False
        # As the location table and the dispatcher's socket= name them.
        self.by_socket = {lst.socket: lst for lst in self.all}
        self.sent_by = {lst.sent_by for lst in self.all}
        # (transport, family, loopback destination) -> the listeners to send
        # from, best first: a loopback socket cannot reach other hosts, nor
        # the other way round when both kinds are configured; the node's own
        # addresses before VIPs (a request of our own, such as a probe, is
        # answered to us even if a VIP moves); a VIP we do not own is skipped.
        self._by_kind: dict[tuple[str, int, bool], list[Listener]] = {}
        for loop_dest in (True, False):
            for listener in sorted(self.all,
                                   key=lambda lst: (is_loopback(lst.host) != loop_dest,
                                                    lst.vip)):
                self._by_kind.setdefault((listener.transport, listener.family, loop_dest),
                                         []).append(listener)

    def __iter__(self) -> Iterator[Listener]:
        return iter(self.all)

    def listener_for(self, transport: str, family: int, dest_ip: str = "",
                     vip: bool = False) -> Listener | None:
        """The socket to send from to ``dest_ip``: the first configured of its
        kind, own addresses first (with ``vip``: an owned VIP first),
        skipping VIPs this node does not own now."""
        listeners = self._by_kind.get((transport, family, is_loopback(dest_ip)), ())
        if vip:
            for listener in listeners:
                if listener.vip and listener.active:
                    return listener
        for listener in listeners:
            if listener.active:
                return listener
        return None

    @staticmethod
    def can_reach(listener: Listener, transport: str, family: int, dest_ip: str) -> bool:
        """Whether ``listener`` may send this: same transport and family, the
        same side of loopback, and (a VIP) still ours."""
        return (listener.active and listener.transport == transport
                and listener.family == family
                and is_loopback(listener.host) == is_loopback(dest_ip))

    def listener_at(self, transport: str, host: str, port: int) -> Listener | None:
        """Our listener with exactly this address (from a Record-Route of ours)."""
        for listener in self.all:
            if (listener.transport == transport and listener.host == host
                    and listener.port == port):
                return listener
        return None
