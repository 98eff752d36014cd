"""hasip: a high-availability SIP balancer.

Each node is a stateful SIP proxy (``hasip.proxy``) built on a sans-IO SIP
protocol layer (``hasip.sip``) and a thin asyncio transport shell
(``hasip.transport``). See docs/architecture.md for how a request flows.
"""

__version__ = "0.1.0"
