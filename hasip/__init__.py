"""hasip: a high-availability SIP balancer.

Each node is a stateful SIP proxy (``hasip.proxy``) built on a sans-IO SIP
protocol layer (``hasip.sip``) and a thin asyncio transport shell
(``hasip.transport``). See docs/architecture.md for how a request flows.
"""

from hasip.app import compiled as _compiled

__version__ = "0.1.0"

# Before any hot-path module loads: compiled extension modules when they
# were built from these very sources, else the sources (hasip/app/compiled.py).
_compiled.guard()
