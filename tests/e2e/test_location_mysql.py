"""Bindings in a real MariaDB: written behind the SIP path, kept through a
database outage, loaded by a restarted node (even one that starts while the
database is down)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomysql

from hasip.auth.digest import make_ha1
from hasip.dialog.dialog import Dialog
from hasip.location.backend import MysqlBackend
from tests.e2e.conftest import invite, metric
from tests.e2e.sipphone import Phone

GATEWAY = "127.0.0.2"


def users_file(path: Path, count: int) -> Path:
    lines = [f"u{i}:hasip:{make_ha1('MD5', f'u{i}', 'hasip', f'pw{i}')}" for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def mysql_node(make_node: Any, mariadb: Any, tmp_path: Path, count: int) -> Any:
    return make_node(auth={"trusted": [f"{GATEWAY}/32"],
                           "users_file": str(users_file(tmp_path / "users", count))},
                     location={"backend": "mysql", "mysql_url": mariadb.url})


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def register(make_phone: Callable[..., Phone], node: Any, i: int) -> int:
    phone = make_phone(f"u{i}", f"pw{i}")
    resp = phone.register(("127.0.0.1", node.sip_port))
    phone.close()
    return resp.status if resp else 0


def test_mysql_outage_during_registrations_loses_nothing(make_node, mariadb, phones,
                                                         tmp_path) -> None:
    node = mysql_node(make_node, mariadb, tmp_path, 120)
    for i in range(60):
        assert register(phones, node, i) == 200
    assert wait_for(lambda: mariadb.query("SELECT COUNT(*) FROM hasip.location") == [["60"]],
                    10)
    mariadb.stop()
    started = time.monotonic()
    statuses = [register(phones, node, i) for i in range(60, 120)]
    elapsed = time.monotonic() - started
    assert statuses == [200] * 60   # registrations go on without the database
    assert elapsed < 10             # and do not wait for it
    assert metric(node.metrics(), "hasip_location_write_queue") > 0
    assert wait_for(lambda: metric(node.metrics(), "hasip_location_write_errors_total",
                                   'backend="mysql"') > 0, 15)
    assert metric(node.metrics(), "hasip_location_write_queue") == 60  # all kept
    mariadb.start()
    assert wait_for(lambda: metric(node.metrics(), "hasip_location_write_queue") == 0, 30)
    assert mariadb.query("SELECT COUNT(*) FROM hasip.location") == [["120"]]
    assert "location_store_up" in node.log()


def test_restarted_node_loads_bindings_even_when_mysql_comes_late(make_node, mariadb, phones,
                                                                   udp_peer, tmp_path) -> None:
    node = mysql_node(make_node, mariadb, tmp_path, 5)
    agent = phones("u3", "pw3")
    assert agent.register(("127.0.0.1", node.sip_port)).status == 200  # type: ignore
    assert wait_for(lambda: mariadb.query("SELECT COUNT(*) FROM hasip.location") == [["1"]], 10)
    node.terminate()
    mariadb.stop()
    node = mysql_node(make_node, mariadb, tmp_path, 5)   # starts without its database
    text = node.metrics()
    assert metric(text, "hasip_registrar_contacts") == 0
    mariadb.start()
    assert wait_for(lambda: metric(node.metrics(), "hasip_registrar_contacts") == 1, 15)
    gw = udp_peer(GATEWAY)
    gw.send(invite(gw, f"sip:u3@127.0.0.1:{node.sip_port}"), node.sip_port, "127.0.0.1")
    got = agent.recv(3.0)
    while got is not None and getattr(got, "method", "") != "INVITE":
        got = agent.recv(3.0)
    assert got is not None, "the restarted node did not deliver the call to the stored binding"


def test_cdr_with_media_figures_in_mysql(mariadb) -> None:
    """A relayed call's CDR keeps rtpengine's figures (migration 0003) in MariaDB."""
    d = Dialog("call-m", "ft", "sip:a@x", "sip:b@x", "sip:b@x", to_tag="tt", started=1000.0,
               answered=1001.0, ended=1031.0, end_reason="bye", media="udp:127.0.0.1:2223",
               media_packets=3000, media_bytes=516000, media_lost=2, media_jitter=4,
               media_mos=4.3)

    async def run() -> tuple[Any, ...]:
        backend = MysqlBackend(mariadb.url)
        await backend.open()
        try:
            await backend.write_cdrs([d])
        finally:
            await backend.close()
        conn = await aiomysql.connect(host="127.0.0.1", port=mariadb.port, user="hasip",
                                      password="hasip-test", db="hasip")
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT media, media_packets, media_bytes, media_lost, "
                                  "media_jitter, media_mos, duration FROM cdr WHERE call_id=%s",
                                  ("call-m",))
                return tuple(await cur.fetchone())
        finally:
            conn.close()

    assert asyncio.run(run()) == ("udp:127.0.0.1:2223", 3000, 516000, 2, 4, 4.3, 30.0)
