"""Record ids unique across the cluster without a system call each: a
random per-process prefix and a counter (bindings' ruid, dialog ids)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable


def hex8(n: int) -> str:
    """``n`` (below 2**32) as eight hex digits: a third of the cost of
    ``f"{n:08x}"`` in compiled code, where format specs take the generic path."""
    return hex(n | 0x100000000)[3:]


def id_maker(kind: str) -> Callable[[], str]:
    """``kind-<64 random bits>-<counter in hex>``."""
    prefix = f"{kind}-{os.urandom(8).hex()}-"
    counter = itertools.count(1)
    # hex() rather than a format spec: mypyc formats "{:x}" through the
    # generic, slower path.
    return lambda: prefix + hex(next(counter))[2:]
