"""Commands run when this node starts or stops holding a VIP (keepalived's
``notify_master`` / ``notify_backup``): promote a local Redis to primary
when its VIP arrives, make it a replica again when the VIP goes.

One worker thread runs them in the order the events happened (a release
may be reported from kazoo's thread, an acquisition from the loop's), each
with the event in its environment: ``KEEPALIVE_EVENT`` (acquired or
released), ``KEEPALIVE_VIP`` (the address) and ``KEEPALIVE_VIP_NAME``."""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading

_log = logging.getLogger("keepalive.notify")

ACQUIRED = "acquired"
RELEASED = "released"


class Notifier:
    def __init__(self, on_acquired: str = "", on_released: str = "",
                 timeout: float = 30.0) -> None:
        self.commands = {ACQUIRED: on_acquired, RELEASED: on_released}
        self.timeout = timeout
        self._events: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="keepalive-notify",
                                        daemon=True)
        self._thread.start()

    def acquired(self, name: str, address: str) -> None:
        self._events.put((ACQUIRED, name, address))

    def released(self, name: str, address: str) -> None:
        self._events.put((RELEASED, name, address))

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued (up to ``timeout``), then stop."""
        self._events.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (event := self._events.get()) is not None:
            kind, name, address = event
            cmd = self.commands[kind]
            if not cmd:
                continue
            env = {**os.environ, "KEEPALIVE_EVENT": kind, "KEEPALIVE_VIP": address,
                   "KEEPALIVE_VIP_NAME": name}
            try:
                res = subprocess.run(cmd, shell=True, env=env, capture_output=True,
                                     timeout=self.timeout, check=False)
            except subprocess.TimeoutExpired:
                _log.warning("notify_timeout", extra={"event_kind": kind, "vip": address})
                continue
            if res.returncode == 0:
                _log.info("notify_ran", extra={"event_kind": kind, "vip": address})
            else:
                output = (res.stderr or res.stdout).decode(errors="replace")[-300:]
                _log.warning("notify_failed", extra={"event_kind": kind, "vip": address,
                                                     "status": res.returncode,
                                                     "output": output})
