"""Record ids unique across the cluster without a system call each: a
random per-process prefix and a counter (bindings' ruid, dialog ids)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable


def id_maker(kind: str) -> Callable[[], str]:
    """``kind-<64 random bits>-<counter in hex>``."""
    prefix = f"{kind}-{os.urandom(8).hex()}-"
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):x}"
