"""Structured logging: one event per line, logfmt (key=value) or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\\\n'):
        return json.dumps(text)
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"logger={record.name}", f"event={_logfmt_value(record.getMessage())}"]
        for key, value in record.__dict__.items():
            if key not in _RESERVED:
                parts.append(f"{key}={_logfmt_value(value)}")
        if record.exc_info:
            parts.append(f"exc={_logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED:
                out[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class Logger:
    """``log.info("event_name", key=value, ...)``: fields become structured keys."""

    __slots__ = ("_log",)

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def debug_enabled(self) -> bool:
        return self._log.isEnabledFor(logging.DEBUG)

    def debug(self, event: str, **fields: Any) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(event, extra=_safe(fields))

    def info(self, event: str, **fields: Any) -> None:
        self._log.info(event, extra=_safe(fields))

    def warning(self, event: str, **fields: Any) -> None:
        self._log.warning(event, extra=_safe(fields))

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log.error(event, extra=_safe(fields), exc_info=exc_info)


def _safe(fields: dict[str, Any]) -> dict[str, Any]:
    """Field names that LogRecord owns (args, name, msg...) get a trailing
    underscore instead of making logging raise."""
    if _RESERVED.isdisjoint(fields):
        return fields
    return {(k + "_" if k in _RESERVED else k): v for k, v in fields.items()}


def get_logger(name: str) -> Logger:
    return Logger(name)


LEVELS = ("debug", "info", "warning", "error")


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().level).lower()


def set_level(level: str) -> str:
    """Change the level every logger logs at, now (``hasip log-level``);
    the level it was. ValueError for a level that is not one of LEVELS."""
    if level not in LEVELS:
        raise ValueError(f"{level!r} is not one of {', '.join(LEVELS)}")
    was = current_level()
    logging.getLogger().setLevel(level.upper())
    return was


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
