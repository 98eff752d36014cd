"""The durable side of the location store on a real SQLite file: migrations,
write-behind coalescing, reload after a restart, purge of expired rows."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from hasip.auth.users import OK, UNKNOWN, WRONG, LocalUsers, UsersFileError
from hasip.location.backend import SqliteBackend
from hasip.location.binding import Binding
from hasip.location.persist import WriteBehind, load_into
from hasip.location.store import LocationStore


def binding(aor: str, contact: str, expires_in: float = 3600) -> Binding:
    return Binding(aor=aor, contact=contact, expires=time.time() + expires_in, call_id="c",
                   cseq=1, path=("<sip:p1;lr>", "<sip:p2;lr>"), socket="udp:127.0.0.1:5060",
                   received="udp:203.0.113.1:4000", flags=1, instance="<urn:uuid:1>", reg_id=1)


def test_write_behind_round_trip(tmp_path: Path) -> None:
    db = str(tmp_path / "loc.db")

    async def first_life() -> None:
        backend = SqliteBackend(db)
        await backend.open()
        store = LocationStore("n1")
        writer = WriteBehind(backend, batch=2)
        store.subscribe(writer.on_change)
        a = binding("alice", "sip:a@192.0.2.1")
        store.put(a)
        store.put(binding("bob", "sip:b@192.0.2.2"))
        store.put(binding("carol", "sip:c@192.0.2.3"))
        a.cseq = 7
        store.put(a)                 # coalesces with the first put of alice
        assert len(writer.pending) == 3
        store.delete(store.bindings("bob")[0])
        assert len(writer.pending) == 3  # bob's put replaced by its delete
        assert await writer.flush(5.0)
        await backend.close()

    asyncio.run(first_life())
    rows = sqlite3.connect(db).execute("SELECT username, cseq FROM location ORDER BY username")
    assert rows.fetchall() == [("alice", 7), ("carol", 1)]

    async def second_life() -> LocationStore:
        backend = SqliteBackend(db)
        store = LocationStore("n2")
        await load_into(store, backend)
        await backend.close()
        return store

    store = asyncio.run(second_life())
    [alice] = store.bindings("alice")
    assert alice.path == ("<sip:p1;lr>", "<sip:p2;lr>") and alice.nat and alice.reg_id == 1
    assert alice.received == "udp:203.0.113.1:4000" and alice.instance == "<urn:uuid:1>"
    assert alice.node == "n1"


def test_expired_rows_are_purged_at_load(tmp_path: Path) -> None:
    db = str(tmp_path / "loc.db")

    async def run() -> LocationStore:
        backend = SqliteBackend(db)
        await backend.open()
        await backend.write([binding("old", "sip:o@192.0.2.9", expires_in=-5),
                             binding("new", "sip:n@192.0.2.8")], [])
        store = LocationStore()
        await load_into(store, backend)
        await backend.close()
        return store

    store = asyncio.run(run())
    assert store.aor_count() == 1
    names = sqlite3.connect(db).execute("SELECT username FROM location").fetchall()
    assert names == [("new",)]


def test_users_file(tmp_path: Path) -> None:
    from hasip.auth.digest import Credentials, expected_response, make_ha1

    path = tmp_path / "users"
    path.write_text("# comment\n\nalice:hasip:" + make_ha1("MD5", "alice", "hasip", "pw") + "\n")
    users = LocalUsers(str(path))
    creds = Credentials("alice", "hasip", "n", "sip:x", "", "MD5", "auth", "00000001", "c")
    creds.response = expected_response(creds, make_ha1("MD5", "alice", "hasip", "pw"), "INVITE")
    assert users.verify(creds, "INVITE") == OK
    assert users.verify(creds, "BYE") == WRONG
    creds.username = "bob"
    assert users.verify(creds, "INVITE") == UNKNOWN
    path.write_text("alice:hasip:nothex\n")
    try:
        LocalUsers(str(path))
    except UsersFileError as exc:
        assert ":1:" in str(exc) and "HA1" in str(exc)
    else:
        raise AssertionError("a bad HA1 was accepted")


def test_a_batch_being_written_when_the_writer_stops_is_written_by_the_final_flush(
        tmp_path: Path) -> None:
    """Shutdown cancels the writer's task: a batch it was writing then is
    not lost (it was, and a TCP phone's binding with it after a restart)."""
    db = str(tmp_path / "loc.db")

    class SlowFirstWrite(SqliteBackend):
        writes = 0

        async def write(self, puts: list[Binding], deletes: list[str]) -> None:
            self.writes += 1
            if self.writes == 1:
                await asyncio.sleep(10)          # still writing when stop() comes
            await super().write(puts, deletes)

    async def life() -> None:
        backend = SlowFirstWrite(db)
        await backend.open()
        store = LocationStore("n1")
        writer = WriteBehind(backend, interval=0.0)
        store.subscribe(writer.on_change)
        writer.start()
        store.put(binding("alice", "sip:a@192.0.2.1"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if backend.writes:
                break
        assert backend.writes == 1 and not writer.pending     # taken, being written
        await writer.stop()
        assert len(writer.pending) == 1                       # back in the queue
        assert await writer.flush(5.0)
        await backend.close()

    asyncio.run(life())
    rows = sqlite3.connect(db).execute("SELECT username FROM location").fetchall()
    assert rows == [("alice",)]
