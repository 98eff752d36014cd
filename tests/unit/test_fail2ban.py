"""The fail2ban filter shipped in ops/ matches the line a node logs for a
ban, in both log formats, and takes the banned address from it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from hasip.app.services import _log_ban
from hasip.security.guard import AUTH, BANNED, Ban
from hasip.telemetry.log import JsonFormatter, LogfmtFormatter

FILTER = Path(__file__).resolve().parents[2] / "ops" / "fail2ban" / "filter.d" / "hasip.conf"


def failregexes() -> list[re.Pattern[str]]:
    """The filter's failregex lines, with <HOST> as fail2ban expands it."""
    text = FILTER.read_text()
    block = text.split("failregex =", 1)[1].split("ignoreregex", 1)[0]
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    return [re.compile(line.replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)")) for line in lines]


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()])
@pytest.mark.parametrize("ip", ["198.51.100.7", "2001:db8::7"])
def test_the_filter_reads_the_ban_line(formatter: logging.Formatter, ip: str) -> None:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    logger = logging.getLogger("hasip.services")
    handler = Keep()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        _log_ban(BANNED, Ban(ip, 1e12, 1, AUTH, 1, "n1"), True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    [line] = [line for line in lines if "source_banned" in line]
    hosts = {m.group("host") for rx in failregexes() if (m := rx.search(line))}
    assert hosts == {ip}, line
