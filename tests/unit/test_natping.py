"""NAT keepalive pings in a cluster: every node holds every binding, only
the holder of a binding's socket pings it, and a node that takes a VIP
over pings that VIP's NATed bindings at once."""

from __future__ import annotations

from hasip.location.binding import FLAG_NAT, Binding
from hasip.location.natping import NatPinger
from hasip.location.store import LocationStore
from hasip.proxy.uac import OwnRequests
from hasip.transport.base import Destination, Listener


def test_only_the_holder_of_a_bindings_socket_pings_it() -> None:
    vip = Listener("udp", "198.18.0.100", 5060)
    vip.vip, vip.active = True, False          # another node owns the VIP now
    own = Listener("udp", "198.18.0.11", 5060)
    store = LocationStore("n1", clock=lambda: 1000.0)
    for user, sock in (("1001", vip.socket), ("1002", own.socket),
                       ("1003", "udp:198.18.0.12:5060")):      # another node's own address
        store.put(Binding(f"{user}@hasip", f"sip:{user}@10.0.0.5:5060", 5000.0, "c", 1,
                          flags=FLAG_NAT, received="udp:198.18.0.50:40000", socket=sock),
                  now=1000.0)
    sent: list[tuple[bytes, Destination]] = []
    pinger = NatPinger(store, {vip.socket: vip, own.socket: own},
                       OwnRequests(lambda data, dest: sent.append((data, dest))), 10.0)
    assert pinger.ping_all(1000.0) == 1
    assert sent[0][1].listener is own and sent[0][0].startswith(b"OPTIONS sip:1002@")
    # this node takes the VIP over: its binding is pinged at once, from the VIP
    vip.active = True
    assert pinger.ping_address("198.18.0.100", 1000.0) == 1
    assert sent[1][1].listener is vip and sent[1][1].addr == ("198.18.0.50", 40000)
    assert sent[1][0].startswith(b"OPTIONS sip:1001@")
