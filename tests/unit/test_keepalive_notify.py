"""keepalive's notify commands (keepalive/notify.py): run in the order the
events happened, with the event and the VIP in their environment; a
failing command is logged, not fatal."""

from __future__ import annotations

from pathlib import Path

from keepalive.notify import Notifier


def test_commands_run_in_order_with_the_event(tmp_path: Path) -> None:
    out = tmp_path / "events"
    line = f'echo "$KEEPALIVE_EVENT $KEEPALIVE_VIP_NAME $KEEPALIVE_VIP" >> {out}'
    notifier = Notifier(on_acquired=line, on_released=line + "; exit 3")
    notifier.acquired("redis", "198.19.0.100")
    notifier.released("redis", "198.19.0.100")
    notifier.acquired("redis", "198.19.0.100")
    notifier.close()
    assert out.read_text().splitlines() == ["acquired redis 198.19.0.100",
                                            "released redis 198.19.0.100",
                                            "acquired redis 198.19.0.100"]


def test_no_command_no_work(tmp_path: Path) -> None:
    notifier = Notifier()
    notifier.acquired("a", "198.18.0.1")
    notifier.close()
    assert not notifier._thread.is_alive()
