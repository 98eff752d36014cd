"""What replication streams, sans-IO: bindings, dialogs and destination
states as JSON-able records, and the one merge rule every node applies.

A record is ``{"t": TYPE, "op": "put" | "del", "v": VERSION, "n": NODE,
"d": {fields}}``. VERSION is a Lamport clock, merged by the one rule of
``hasip.cluster.lamport`` (version, then node) wherever a record is applied.

Field names are the dataclasses' own; a reader drops fields it does not
know and leaves missing ones at their defaults (nodes of two releases).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from hasip.dialog.dialog import Dialog
from hasip.location.binding import Binding
from hasip.security.guard import Ban

BINDING = "reg"
DIALOG = "dlg"
DESTINATION = "dst"
BAN = "ban"

PUT = "put"
DELETE = "del"

T = TypeVar("T")

_FIELDS: dict[type, dict[str, bool]] = {}     # class -> {field: is a tuple}


def _is_tuple(annotation: object) -> bool:
    """A field's type is a tuple: the annotation as text (``tuple[str, ...]``)
    in a class run from source, the class itself (``tuple``) in a compiled one."""
    if isinstance(annotation, str):
        return annotation.startswith("tuple")
    return annotation is tuple or getattr(annotation, "__origin__", None) is tuple


def _fields(cls: type) -> dict[str, bool]:
    found = _FIELDS.get(cls)
    if found is None:
        found = {f.name: _is_tuple(f.type) for f in dataclasses.fields(cls)}
        _FIELDS[cls] = found
    return found


def fields_of(obj: Any) -> dict[str, Any]:
    """A dataclass instance as a JSON-able dict (tuples become lists)."""
    out = {}
    for name, is_tuple in _fields(type(obj)).items():
        value = getattr(obj, name)
        out[name] = list(value) if is_tuple else value
    return out


def build(cls: type[T], data: dict[str, Any]) -> T:
    """An instance of ``cls`` from a record's fields (unknown ones dropped)."""
    known = _fields(cls)
    kwargs = {k: (tuple(v) if known[k] else v) for k, v in data.items() if k in known}
    return cls(**kwargs)


def record(kind: str, op: str, version: int, node: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"t": kind, "op": op, "v": version, "n": node, "d": data}


def binding_record(op: str, b: Binding) -> dict[str, Any]:
    return record(BINDING, op, b.version, b.node, fields_of(b))


def dialog_record(op: str, d: Dialog) -> dict[str, Any]:
    return record(DIALOG, op, d.version, d.node, fields_of(d))


def ban_record(op: str, ban: Ban, wall_offset: float) -> dict[str, Any]:
    """A ban or lift (``op``: hasip.security.guard's BANNED or LIFTED). Its
    end travels as wall-clock time: each node's guard keeps its own
    monotonic clock (``wall_offset`` = wall time - that clock)."""
    return record(BAN, op, ban.version, ban.node,
                  {"ip": ban.ip, "until": ban.until + wall_offset, "strikes": ban.strikes,
                   "reason": ban.reason})


def ban_from(record_: dict[str, Any], wall_offset: float) -> Ban:
    data = record_["d"]
    return Ban(str(data["ip"]), float(data["until"]) - wall_offset, int(data["strikes"]),
               str(data["reason"]), int(record_["v"]), str(record_["n"]))
