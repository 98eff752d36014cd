"""keepalive: VIP ownership through ZooKeeper election, gratuitous ARP and
fencing, embeddable in ``hasip run`` and runnable on its own.

Empty until its issue lands (see docs/architecture.md, "What comes next");
nothing here pretends to work yet.
"""
