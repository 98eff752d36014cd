"""The node's control API: HTTP/1.1 with JSON bodies on ``control.listen``
(loopback by default), for operators and ``hasip dispatcher ...``.

    GET  /dispatcher                      -> {"destinations": [...]}
    POST /dispatcher/add        {"set": 1, "uri": "sip:...", "attrs": "weight=50;..."}
    POST /dispatcher/remove     {"set": 1, "uri": "sip:..."}
    POST /dispatcher/set-state  {"set": 1, "uri": "sip:...", "state": "active|inactive|disabled"}
    POST /dispatcher/reload     {}
    GET  /location                        -> {"bindings": N, "aors": N, "digest": "..."}
    GET  /location/bindings               -> {"bindings": [{...}, ...]}
    GET  /dialogs                         -> {"dialogs": N, "digest": "..."}
    GET  /replication                     -> peers, positions, sync state

The digests are SHA-256 of every record's fields in a canonical order: two
nodes with the same digest hold byte-equal state.

Errors are ``{"error": "..."}`` with 400 (bad request), 404 (unknown path or
destination) or 413 (body over 64 KiB). One request per connection.

In a cluster (``SharedSets`` attached) a change is written to the sets the
cluster shares in ZooKeeper and so reaches every node, not only this one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from kazoo.exceptions import KazooException

from hasip.dialog.store import DialogStore
from hasip.dispatcher.dispatcher import Dispatcher, DispatcherError
from hasip.dispatcher.shared import SharedSets
from hasip.location.store import LocationStore
from hasip.log import get_logger
from hasip.replication.records import fields_of
from hasip.replication.replicator import Replicator

log = get_logger("hasip.control")

MAX_BODY = 65536
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class ControlServer:
    def __init__(self, dispatcher: Dispatcher, location: LocationStore | None = None,
                 dialogs: DialogStore | None = None) -> None:
        self.dispatcher = dispatcher
        self.location = location
        self.dialogs = dialogs
        self.shared: SharedSets | None = None
        self.replicator: Replicator | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        log.info("control_listening", address=f"{host}:{port}")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(self._request(reader), 5.0)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError):
            status, body = 400, {"error": "malformed or incomplete request"}
        except Exception:
            log.error("control_request_failed", exc_info=True)
            status, body = 500, {"error": "internal error (see the node's log)"}
        data = json.dumps(body).encode()
        writer.write(f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     "Connection: close\r\n\r\n".encode() + data)
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _request(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length > MAX_BODY:
            return 413, {"error": f"body over {MAX_BODY} bytes"}
        raw = await reader.readexactly(length) if length else b""
        try:
            args = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            return 400, {"error": f"body is not JSON: {exc.msg}"}
        if not isinstance(args, dict):
            return 400, {"error": "body must be a JSON object"}
        return await self.route(method, path, args)

    async def route(self, method: str, path: str,
                    args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ds = self.dispatcher
        if method == "GET" and path in ("/location", "/location/bindings", "/dialogs",
                                        "/replication"):
            return 200, self.state(path)
        if path == "/dispatcher":
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, {"destinations": ds.listing()}
        actions = {"/dispatcher/add", "/dispatcher/remove", "/dispatcher/set-state",
                   "/dispatcher/reload"}
        if path not in actions:
            return 404, {"error": f"no such path {path}"}
        if method != "POST":
            return 405, {"error": "use POST"}
        shared = self.shared
        try:
            if path == "/dispatcher/reload":
                count = await shared.reload() if shared is not None else ds.reload()
                return 200, {"destinations": count}
            set_id, uri = args.get("set"), args.get("uri")
            if not isinstance(set_id, int) or not isinstance(uri, str):
                return 400, {"error": "give set (a number) and uri (a string)"}
            if path == "/dispatcher/add":
                attrs = args.get("attrs", "")
                if not isinstance(attrs, str):
                    return 400, {"error": "attrs must be a string (weight=50;...)"}
                if shared is not None:
                    await shared.add(set_id, uri, attrs)
                else:
                    ds.add(set_id, uri, attrs)
            elif path == "/dispatcher/remove":
                if shared is not None:
                    await shared.remove(set_id, uri)
                else:
                    ds.remove(set_id, uri)
            else:
                state = args.get("state")
                if not isinstance(state, str):
                    return 400, {"error": "give state: active, inactive or disabled"}
                if shared is not None:
                    await shared.set_state(set_id, uri, state)
                else:
                    ds.set_state(set_id, uri, state)
        except DispatcherError as exc:
            status = 404 if str(exc).startswith("no destination") else 400
            return status, {"error": str(exc)}
        except KazooException as exc:
            # The cluster's sets cannot be changed without ZooKeeper.
            return 503, {"error": f"ZooKeeper unavailable ({type(exc).__name__}); "
                                  "nothing changed"}
        log.info("control_change", path=path, request=json.dumps(args))
        return 200, {"destinations": ds.listing()}

    def state(self, path: str) -> dict[str, Any]:
        """What the node holds: counts and digests, or the bindings."""
        if path == "/replication":
            r = self.replicator
            if r is None:
                return {"replication": False}
            return {"replication": True, "node": r.node, "epoch": r.epoch, "seq": r.seq,
                    "peers": sorted(r.links), "sync": r.sync_state,
                    "positions": {k: list(v) for k, v in r.positions.items()}}
        if path == "/dialogs":
            dialogs = sorted(self.dialogs or (), key=lambda d: d.id)
            return {"dialogs": len(dialogs),
                    "digest": _digest(fields_of(d) for d in dialogs)}
        bindings = sorted(self.location.all() if self.location else (),
                          key=lambda b: (b.aor, b.ruid))
        if path == "/location/bindings":
            return {"bindings": [fields_of(b) for b in bindings]}
        return {"bindings": len(bindings), "aors": len({b.aor for b in bindings}),
                "digest": _digest(fields_of(b) for b in bindings)}


def _digest(items: Iterable[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()
