"""keepalive: VIP ownership through ZooKeeper election, gratuitous ARP and
fencing; a library with an asyncio API (``Keepalive``) that ``hasip run``
embeds, and a command line (``python -m keepalive``) to run it in front of
any service with a health-check command.

- ``ranking``: who should own a VIP (sans-IO)
- ``holder``: holding a VIP address so that it dies with the process
- ``announce``: gratuitous ARP / unsolicited NA and the RFC 5227 probe (scapy)
- ``zk``: kazoo's callbacks and async results bridged into asyncio
- ``election``: one VIP's election and ownership
- ``manager``: the node: session, fencing, health, drain, membership
- ``cli``: the standalone command
"""
