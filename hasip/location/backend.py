"""Durable stores for bindings: SQLite (the embedded default) and MySQL or
MariaDB through aiomysql. Both keep the ``location`` table of
``migrations/<kind>/`` and apply those files in order at start."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from hasip.dialog.dialog import Dialog
from hasip.location.binding import Binding
from hasip.sip.headers import split_list

_COLUMNS = ("ruid", "username", "domain", "contact", "received", "path", "expires", "q", "callid",
            "cseq", "last_modified", "flags", "user_agent", "socket", "instance", "reg_id",
            "version", "node")


class Backend(Protocol):
    name: str

    async def open(self) -> None: ...
    async def load(self) -> list[Binding]: ...
    async def write(self, puts: list[Binding], deletes: list[str]) -> None: ...
    async def write_cdrs(self, dialogs: list[Dialog]) -> None: ...
    async def close(self) -> None: ...


_CDR_COLUMNS = ("dialog_id", "call_id", "from_tag", "to_tag", "from_uri", "to_uri",
                "request_uri", "caller", "destination", "socket", "nat", "started",
                "answered", "ended", "duration", "end_reason", "end_status", "node",
                "media", "media_packets", "media_bytes", "media_errors", "media_lost",
                "media_jitter", "media_mos")


def _cdr_row(d: Dialog, when: Any) -> tuple[Any, ...]:
    return (d.id, d.call_id, d.from_tag, d.to_tag, d.from_uri, d.to_uri, d.request_uri,
            d.user, d.ds_uri, d.socket, int(d.nat), when(d.started),
            when(d.answered) if d.answered else None, when(d.ended), d.duration(),
            d.end_reason, d.end_status, d.node, d.media, d.media_packets, d.media_bytes,
            d.media_errors, d.media_lost, d.media_jitter, d.media_mos)


def migrations(kind: str) -> list[tuple[int, str]]:
    """(number, SQL) of the shipped migration files for ``kind``, in order."""
    folder = resources.files("hasip.location.migrations").joinpath(kind)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def statements(sql: str) -> list[str]:
    """Split a migration file into statements (no ';' inside our literals)."""
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _row(b: Binding, when: Any) -> tuple[Any, ...]:
    user, _, domain = b.aor.partition("@")
    return (b.ruid, user, domain or None, b.contact, b.received, ",".join(b.path) or None,
            when(b.expires), b.q, b.call_id, b.cseq, when(b.updated), b.flags, b.user_agent,
            b.socket or None, b.instance, b.reg_id, b.version, b.node)


def _binding(row: tuple[Any, ...], seconds: Any) -> Binding:
    (ruid, user, domain, contact, received, path, expires, q, callid, cseq, modified, flags,
     ua, sock, instance, reg_id, version, node) = row
    return Binding(aor=f"{user}@{domain}" if domain else user, contact=contact,
                   expires=seconds(expires), call_id=callid, cseq=int(cseq), q=float(q),
                   ruid=ruid, instance=instance, reg_id=int(reg_id),
                   path=tuple(split_list(path)) if path else (), received=received,
                   socket=sock or "", user_agent=ua or "", flags=int(flags),
                   updated=seconds(modified), version=int(version), node=node or "")


class SqliteBackend:
    """One file; calls run on one worker thread so the event loop never waits."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hasip-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS hasip_schema (version INTEGER NOT NULL)")
        current = db.execute("SELECT COALESCE(MAX(version), 0) FROM hasip_schema").fetchone()[0]
        for number, sql in migrations("sqlite"):
            if number > current:
                db.execute("BEGIN")
                for stmt in statements(sql):
                    db.execute(stmt)
                db.execute("INSERT INTO hasip_schema (version) VALUES (?)", (number,))
                db.execute("COMMIT")
        self._db = db

    async def open(self) -> None:
        await self._run(self._open)

    def _load(self) -> list[Binding]:
        assert self._db is not None
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM location").fetchall()
        return [_binding(r, float) for r in rows]

    async def load(self) -> list[Binding]:
        result: list[Binding] = await self._run(self._load)
        return result

    def _write(self, puts: list[Binding], deletes: list[str]) -> None:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN")
        try:
            if puts:
                marks = ", ".join("?" * len(_COLUMNS))
                db.executemany(f"INSERT OR REPLACE INTO location ({', '.join(_COLUMNS)}) "
                               f"VALUES ({marks})", [_row(b, float) for b in puts])
            if deletes:
                db.executemany("DELETE FROM location WHERE ruid = ?", [(r,) for r in deletes])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def write(self, puts: list[Binding], deletes: list[str]) -> None:
        await self._run(self._write, puts, deletes)

    def _write_cdrs(self, dialogs: list[Dialog]) -> None:
        assert self._db is not None
        marks = ", ".join("?" * len(_CDR_COLUMNS))
        self._db.execute("BEGIN")
        try:
            self._db.executemany(f"INSERT OR IGNORE INTO cdr ({', '.join(_CDR_COLUMNS)}) "
                                 f"VALUES ({marks})", [_cdr_row(d, float) for d in dialogs])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    async def write_cdrs(self, dialogs: list[Dialog]) -> None:
        await self._run(self._write_cdrs, dialogs)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
        self._pool.shutdown(wait=False)


def _to_datetime(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


def _from_datetime(value: dt.datetime) -> float:
    return value.replace(tzinfo=dt.UTC).timestamp()


class MysqlBackend:
    """MySQL/MariaDB through one aiomysql connection, reopened after any error."""

    name = "mysql"

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb"):
            raise ValueError(f"{url!r} is not a mysql:// URL")
        self.params: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "hasip"),
            "password": unquote(parts.password or ""),
            "db": parts.path.lstrip("/") or "hasip",
            "connect_timeout": timeout,
            "autocommit": False,
        }
        self.timeout = timeout
        self._conn: Any = None

    async def _connection(self) -> Any:
        import aiomysql

        if self._conn is None:
            self._conn = await aiomysql.connect(**self.params)
            async with self._conn.cursor() as cur:
                await cur.execute("SET time_zone = '+00:00'")
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _guarded(self, fn: Any) -> Any:
        try:
            return await asyncio.wait_for(fn(await self._connection()), self.timeout)
        except BaseException:
            self._drop()
            raise

    async def open(self) -> None:
        async def migrate(conn: Any) -> None:
            async with conn.cursor() as cur:
                await cur.execute("CREATE TABLE IF NOT EXISTS hasip_schema "
                                  "(version INT NOT NULL)")
                await cur.execute("SELECT COALESCE(MAX(version), 0) FROM hasip_schema")
                current = (await cur.fetchone())[0]
                for number, sql in migrations("mysql"):
                    if number > current:
                        for stmt in statements(sql):
                            await cur.execute(stmt)
                        await cur.execute("INSERT INTO hasip_schema (version) VALUES (%s)",
                                          (number,))
            await conn.commit()

        await self._guarded(migrate)

    async def load(self) -> list[Binding]:
        async def load(conn: Any) -> list[Binding]:
            async with conn.cursor() as cur:
                await cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM location")
                rows = await cur.fetchall()
            await conn.commit()
            return [_binding(tuple(r), _from_datetime) for r in rows]

        result: list[Binding] = await self._guarded(load)
        return result

    async def write(self, puts: list[Binding], deletes: list[str]) -> None:
        async def write(conn: Any) -> None:
            async with conn.cursor() as cur:
                if puts:
                    cols = ", ".join(f"`{c}`" for c in _COLUMNS)
                    marks = ", ".join(["%s"] * len(_COLUMNS))
                    update = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in _COLUMNS[1:])
                    await cur.executemany(
                        f"INSERT INTO location ({cols}) VALUES ({marks}) "
                        f"ON DUPLICATE KEY UPDATE {update}",
                        [_row(b, _to_datetime) for b in puts])
                if deletes:
                    await cur.executemany("DELETE FROM location WHERE ruid = %s",
                                          [(r,) for r in deletes])
            await conn.commit()

        await self._guarded(write)

    async def write_cdrs(self, dialogs: list[Dialog]) -> None:
        async def write(conn: Any) -> None:
            async with conn.cursor() as cur:
                cols = ", ".join(f"`{c}`" for c in _CDR_COLUMNS)
                marks = ", ".join(["%s"] * len(_CDR_COLUMNS))
                await cur.executemany(f"INSERT IGNORE INTO cdr ({cols}) VALUES ({marks})",
                                      [_cdr_row(d, _to_datetime) for d in dialogs])
            await conn.commit()

        await self._guarded(write)

    async def close(self) -> None:
        self._drop()
