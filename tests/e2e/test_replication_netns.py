"""Replication between nodes in network namespaces (the VIP cluster harness
with replication on): registrations made through one node are on every
node, byte-equal; a node that joins syncs before it serves; a link cut
with resets is repaired; calls set up on a node that is killed end through
the node that took its VIP over."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hasip.demo.sipp import Sipp
from tests.e2e.vipcluster import (
    ASTERISK_IP,
    CLIENT_IP,
    VIP_A,
    VIP_B,
    Cluster,
    cluster_missing,
    vip_cluster,
)

REALM = "hasip"
PHONES = 10000     # the figure, half through each VIP
NODES = ("n1", "n2", "n3")


def cdrs(workdir: Path, node: str) -> list[tuple[str, str, float]]:
    """(dialog id, end reason, duration) of the CDRs in ``node``'s SQLite store."""
    path = workdir / f"{node}.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT dialog_id, end_reason, duration FROM cdr").fetchall()
    except sqlite3.OperationalError:
        return []                   # not created yet
    finally:
        db.close()


def write_users(workdir: Path, first: int, count: int) -> Path:
    """A users file (user:realm:HA1) for users ``first`` .. ``first + count
    - 1``, password ``pw<user>``."""
    users = workdir / "users.htdigest"
    with open(users, "a") as u:
        for n in range(first, first + count):
            ha1 = hashlib.md5(f"{n}:{REALM}:pw{n}".encode()).hexdigest()
            u.write(f"{n}:{REALM}:{ha1}\n")
    return users


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[Cluster]:
    missing = cluster_missing()
    if missing:
        pytest.skip(missing)
    users = write_users(tmp_path, 20000, PHONES)
    yield from vip_cluster(tmp_path, 1, replication=True, users_file=users,
                           nodes=("n1", "n2"))


@pytest.fixture
def replicated_untrusted_phones(tmp_path: Path) -> Iterator[Cluster]:
    """As ``replicated``, but only the Asterisk side is trusted: the phones
    (the client namespace) authenticate, and their in-dialog requests are
    relayed only with the token of a Record-Route the cluster wrote."""
    missing = cluster_missing()
    if missing:
        pytest.skip(missing)
    users = write_users(tmp_path, 20000, 20)
    yield from vip_cluster(tmp_path, 1, replication=True, users_file=users,
                           nodes=("n1", "n2"), trusted=[f"{ASTERISK_IP}/32"])


def register(cluster: Cluster, tmp_path: Path, first: int, count: int, rate: int = 400,
             vip: str = VIP_A, port: int = 5072) -> Sipp:
    inf = tmp_path / f"phones-{first}-{count}.csv"
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n")
        for n in range(first, first + count):
            f.write(f"{n};[authentication username={n} password=pw{n}]\n")
    phone = Sipp("register_many.xml", port, tmp_path, remote=f"{vip}:5060", calls=count,
                 rate=rate, local_ip=CLIENT_IP, netns=cluster.lab.ns("client"),
                 extra=("-inf", str(inf), "-key", "contact_port", "5071", "-key", "expires",
                        "3600", "-l", "1000"))
    return phone.start()


def location(cluster: Cluster, node: str) -> dict:
    return cluster.control(node, "/location")


def wait_same_location(cluster: Cluster, nodes: tuple[str, ...], bindings: int,
                       timeout: float = 20.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    views: dict[str, dict] = {}
    while time.monotonic() < deadline:
        views = {n: location(cluster, n) for n in nodes}
        if all(v.get("bindings") == bindings for v in views.values()) and len(
                {v.get("digest") for v in views.values()}) == 1:
            return views
        time.sleep(0.3)
    got = {n: (v.get("bindings"), v.get("digest", "")[:12]) for n, v in views.items()}
    raise AssertionError(f"wanted {bindings} equal bindings on {nodes}, got {got}")


def test_registrations_reach_every_node_and_a_joining_node_syncs_first(replicated,
                                                                      tmp_path) -> None:
    cluster = replicated
    half = PHONES // 2
    phones = [register(cluster, tmp_path, 20000, half, rate=500, vip=VIP_A),
              register(cluster, tmp_path, 20000 + half, half, rate=500, vip=VIP_B, port=5073)]
    for phone in phones:
        assert phone.wait(120) == 0, phone.errors()
        assert phone.counter("SuccessfulCall(C)") == half
    wait_same_location(cluster, ("n1", "n2"), PHONES)
    # n3 joins: it pulls the snapshot from a peer before it serves
    cluster.start_node("n3")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "replication_synced" not in cluster.log("n3", tail=0):
        time.sleep(0.2)
    log = cluster.log("n3", tail=0)
    m = re.search(r"event=replication_synced source=(\S+) records=(\d+) seconds=([\d.]+) "
                  r"snapshot_seconds=[\d.]+ per_second=(\d+)", log)
    assert m, log[-3000:]
    print(f"n3 synced {m.group(2)} records from {m.group(1)} in {float(m.group(3)) * 1000:.0f} ms"
          f" ({m.group(4)} per second)")
    assert int(m.group(2)) >= PHONES
    # it reported synced before it started serving SIP
    assert log.index("event=replication_synced") < log.index("event=node_started")
    views = wait_same_location(cluster, ("n1", "n2", "n3"), PHONES)
    assert views["n3"]["aors"] == PHONES
    status = cluster.status()
    assert status["nodes"]["n3"]["sync"]["state"] == "synced"
    assert cluster.control("n3", "/readyz") == {
        "ready": True, "checks": {"serving": True, "zookeeper": True, "not_drained": True,
                                  "synced": True}}


def _reject(cluster: Cluster, node: str, on: bool) -> None:
    """Reset every replication connection of ``node`` (both ways) while on."""
    for chain, port in (("INPUT", "--dport"), ("INPUT", "--sport")):
        cluster.lab.run(node, ["iptables", "-A" if on else "-D", chain, "-p", "tcp", port,
                               "5090", "-j", "REJECT", "--reject-with", "tcp-reset"],
                        check=True)


def test_a_link_reset_is_repaired_and_nothing_diverges(replicated, tmp_path) -> None:
    cluster = replicated
    cluster.start_node("n3")
    cluster.wait_owners({VIP_A: "n1", VIP_B: "n2"})
    phone = register(cluster, tmp_path, 20000, 500)
    assert phone.wait(60) == 0, phone.errors()
    wait_same_location(cluster, ("n1", "n2", "n3"), 500)
    if subprocess.run(["iptables", "-L", "-n"], capture_output=True).returncode != 0:
        pytest.skip("iptables is not usable here")
    # garbage at a replication port is refused without harm to the node
    for junk in ("b'\\xff\\xff\\xff\\xff'", "b'\\x00\\x00\\x00\\x05\\x03junk'",
                 "b'GET / HTTP/1.0\\r\\n\\r\\n'"):
        cluster.lab.run("client", [sys.executable, "-c",
                                   "import socket;s=socket.create_connection(('198.18.0.11',"
                                   f"5090),3);s.sendall({junk});s.settimeout(3);s.recv(100)"])
    assert cluster.log("n1", tail=0).count("replication_handshake_failed") >= 3
    _reject(cluster, "n3", True)
    try:
        phone = register(cluster, tmp_path, 20500, 500)
        assert phone.wait(60) == 0, phone.errors()
        wait_same_location(cluster, ("n1", "n2"), 1000)
        assert location(cluster, "n3")["bindings"] < 1000     # it missed them
    finally:
        _reject(cluster, "n3", False)
    t0 = time.monotonic()
    wait_same_location(cluster, ("n1", "n2", "n3"), 1000)
    print(f"n3 repaired its gap {(time.monotonic() - t0) * 1000:.0f} ms after the link "
          "came back")
    assert "replication_sync_served" in cluster.log("n1", tail=0)


def test_calls_of_a_killed_owner_end_through_the_new_one_and_its_phones_stay_reachable(
        replicated_untrusted_phones, tmp_path) -> None:
    """Calls in progress through VIP_A (owned by n1) in both directions: 20
    from a phone to the Asterisk side, which the caller hangs up, and 10
    from the gateway to phones registered through VIP_A, which the phone
    hangs up. kill -9 n1: VIP_A moves to n2, which has n1's dialogs and
    bindings. Every BYE, from either side, reaches the other side through
    n2 and ends its dialog there; every CDR is written once; no
    registration is lost; a new call to a phone registered through VIP_A
    reaches it. The phones are not trusted: their calls authenticate, their
    BYEs pass on the Record-Route token alone, on the new owner too, which
    refuses a made-up To tag as the old one did."""
    cluster = replicated_untrusted_phones
    cluster.start_node("n3")
    cluster.wait_owners({VIP_A: "n1", VIP_B: "n2"})
    phones_uas = Sipp("uas_hangup.xml", 5071, tmp_path, local_ip=CLIENT_IP,
                      call_length_ms=6000, netns=cluster.lab.ns("client")).start()
    try:
        phone = register(cluster, tmp_path, 20000, 5)
        assert phone.wait(30) == 0, phone.errors()
        wait_same_location(cluster, NODES, 5)
        out_calls, in_calls = 20, 10
        caller = Sipp("uac_auth.xml", 5070, tmp_path, remote=f"{VIP_A}:5060",
                      calls=out_calls, rate=10, call_length_ms=6000, local_ip=CLIENT_IP,
                      netns=cluster.lab.ns("client"),
                      extra=("-au", "20010", "-ap", "pw20010", "-key", "caller", "20010")
                      ).start()
        gateway = Sipp("uac_callee_hangs_up.xml", 5081, tmp_path, remote=f"{VIP_A}:5060",
                       calls=in_calls, rate=5, service="20003", local_ip="198.18.0.60",
                       netns=cluster.lab.ns("ast")).start()
        time.sleep(2.6)                        # every call is up, none has ended
        before = cluster.control("n2", "/dialogs")["dialogs"]
        assert made_up_tag(cluster) == 403    # n1 refuses it
        cluster.nodes["n1"].kill()
        cluster.wait_owners({VIP_A: "n2"}, timeout=10)
        assert made_up_tag(cluster) == 403    # and so does n2, VIP_A's owner now
        assert "event=in_dialog_refused" in cluster.log("n2", tail=0)
        assert caller.wait(60) == 0, caller.errors()
        assert gateway.wait(60) == 0, gateway.errors()
        results = [(s.counter("SuccessfulCall(C)"), s.counter("FailedCall(C)"))
                   for s in (caller, gateway)]
        print(f"n2 had {before} of n1's dialogs when n1 was killed; caller-hung-up calls "
              f"{results[0]}, callee-hung-up calls {results[1]} (completed, failed)")
        assert before == out_calls + in_calls
        assert results == [(out_calls, 0), (in_calls, 0)]
        # every dialog ended, on both survivors, by its BYE
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                cluster.control(n, "/dialogs")["dialogs"] for n in ("n2", "n3")):
            time.sleep(0.2)
        assert [cluster.control(n, "/dialogs")["dialogs"] for n in ("n2", "n3")] == [0, 0]
        # one CDR per call, each written by exactly one node (n2 saw the BYEs)
        calls = out_calls + in_calls
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sum(len(cdrs(tmp_path, n)) for n in NODES) < calls:
            time.sleep(0.2)
        written = {n: cdrs(tmp_path, n) for n in NODES}
        ids = [row[0] for rows in written.values() for row in rows]
        print("CDRs per node: " + ", ".join(f"{n} {len(r)}" for n, r in written.items()))
        assert len(ids) == len(set(ids)) == calls
        assert all(row[1] == "bye" and row[2] >= 5.0 for row in written["n2"])
        # no registration lost; a new call to a phone registered through VIP_A
        assert [location(cluster, n)["bindings"] for n in ("n2", "n3")] == [5, 5]
        answered = phones_uas.counter("SuccessfulCall(C)")
        late = Sipp("uac_callee_hangs_up.xml", 5083, tmp_path, remote=f"{VIP_A}:5060",
                    calls=1, service="20004", local_ip="198.18.0.60",
                    netns=cluster.lab.ns("ast")).start()
        assert late.wait(30) == 0, late.errors()
        deadline = time.monotonic() + 5      # SIPp writes its statistics every second
        while time.monotonic() < deadline and phones_uas.counter("SuccessfulCall(C)") <= answered:
            time.sleep(0.2)
        assert phones_uas.counter("SuccessfulCall(C)") == answered + 1
    finally:
        phones_uas.stop()


def made_up_tag(cluster: Cluster) -> int | None:
    """An INVITE with a To tag of nobody's dialog, from a phone's address
    through VIP_A to the Asterisk side: the answer's status."""
    code = f"""
import socket, uuid
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{CLIENT_IP}", 0))
port = s.getsockname()[1]
call = uuid.uuid4().hex
s.sendto((f"INVITE sip:0900123@{ASTERISK_IP}:5080 SIP/2.0\\r\\n"
          f"Via: SIP/2.0/UDP {CLIENT_IP}:{{port}};branch=z9hG4bK{{call[:10]}};rport\\r\\n"
          "Max-Forwards: 70\\r\\nFrom: <sip:20011@{VIP_A}>;tag=f\\r\\n"
          "To: <sip:0900123@{VIP_A}>;tag=made-up\\r\\n"
          f"Call-ID: {{call}}\\r\\nCSeq: 1 INVITE\\r\\n"
          "Route: <sip:{VIP_A}:5060;lr>\\r\\nContent-Length: 0\\r\\n\\r\\n").encode(),
         ("{VIP_A}", 5060))
s.settimeout(2)
print(s.recv(65535).split(b" ")[1].decode())
"""
    res = cluster.lab.run("client", [sys.executable, "-c", code], timeout=30)
    return int(res.stdout.strip()) if res.returncode == 0 and res.stdout.strip() else None


def test_a_ban_decided_by_one_node_is_applied_by_every_node(replicated) -> None:
    """An operator's ban on n1 reaches n2 (the replication stream), and n2's
    lift reaches n1."""
    cluster = replicated

    def bans(node: str, *args: str) -> subprocess.CompletedProcess[str]:
        return cluster.lab.run(node, [sys.executable, "-m", "hasip", "bans", "-c",
                                      str(cluster.workdir / f"{node}.toml"), *args])

    assert bans("n1", "add", "198.18.1.77", "--seconds", "600").returncode == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "198.18.1.77" not in bans("n2", "list").stdout:
        time.sleep(0.1)
    listing = bans("n2", "list").stdout
    assert re.search(r"^198\.18\.1\.77\s+manual\s+1\s+\d+\.\d\s+n1$", listing, re.M), listing
    assert bans("n2", "lift", "198.18.1.77").returncode == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "198.18.1.77" in bans("n1", "list").stdout:
        time.sleep(0.1)
    assert "198.18.1.77" not in bans("n1", "list").stdout


def _inactive_at(cluster: Cluster, node: str, uri: str) -> tuple[float, str] | None:
    """When ``node`` logged ``uri`` inactive (seconds of the day), and why."""
    for line in cluster.log(node, tail=0).splitlines():
        if "event=destination_state" in line and f"uri={uri} " in line and "state=I" in line:
            clock = re.search(r"ts=\S*T(\S+)Z", line)
            why = re.search(r"why=(\"[^\"]*\"|\S+)", line)
            if clock:
                h, m, s = clock.group(1).split(":")
                return int(h) * 3600 + int(m) * 60 + float(s), why.group(1) if why else ""
    return None


def test_one_node_probes_a_destination_and_every_node_takes_it_out_at_once(
        replicated, tmp_path) -> None:
    cluster = replicated
    cluster.start_node("n3")
    cluster.wait_owners({VIP_A: "n1", VIP_B: "n2"})
    second = Sipp("uas.xml", 5082, tmp_path, local_ip="198.18.0.60",
                  netns=cluster.lab.ns("ast")).start()
    uri = "sip:198.18.0.60:5082"
    try:
        res = cluster.dispatcher("n1", "add", "1", uri)
        assert res.returncode == 0, res.stderr
        time.sleep(2.0)                       # probed and active everywhere
        assert all(cluster.destinations(n).get(uri, "")[:1] == "A" for n in NODES)
    finally:
        second.stop()                         # that Asterisk node dies
    deadline = time.monotonic() + 10
    seen: dict[str, tuple[float, str] | None] = {}
    while time.monotonic() < deadline:
        seen = {n: _inactive_at(cluster, n, uri) for n in NODES}
        if all(seen.values()):
            break
        time.sleep(0.2)
    assert all(seen.values()), seen
    probers = [n for n, v in seen.items() if v and not v[1].strip('"').startswith("peer")]
    times = [v[0] for v in seen.values() if v]
    spread = max(times) - min(times)
    print(f"taken out by {probers} (its probes), on all three nodes within "
          f"{spread * 1000:.1f} ms")
    assert len(probers) == 1                 # one prober for this destination
    assert spread < 0.5
    assert all(cluster.destinations(n)[uri][:1] == "I" for n in NODES)


def _certificates(workdir: Path) -> dict[str, str]:
    """A CA and one node certificate it signed (openssl), for mutual TLS."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=workdir)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=hasip CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=hasip node", "-keyout",
        "node.key", "-out", "node.csr")
    run("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "node.pem")
    return {"tls_cert": str(workdir / "node.pem"), "tls_key": str(workdir / "node.key"),
            "tls_ca": str(workdir / "ca.pem")}


@pytest.fixture
def replicated_tls(tmp_path: Path) -> Iterator[Cluster]:
    missing = cluster_missing() or ("" if subprocess.run(
        ["which", "openssl"], capture_output=True).returncode == 0 else "openssl is missing")
    if missing:
        pytest.skip(missing)
    users = write_users(tmp_path, 20000, 100)
    yield from vip_cluster(tmp_path, 1, replication=True, users_file=users,
                           nodes=("n1", "n2"), replication_extra=_certificates(tmp_path))


@pytest.mark.allow_errors("event=replication_peers_unreachable",
                         reason="n3 lacks the cluster's secret: that it reaches no peer is "
                                "an error for the operator, and what this test checks")
def test_replication_over_tls_and_a_node_without_the_secret_gets_nothing(replicated_tls,
                                                                         tmp_path) -> None:
    cluster = replicated_tls
    phone = register(cluster, tmp_path, 20000, 50)
    assert phone.wait(30) == 0, phone.errors()
    wait_same_location(cluster, ("n1", "n2"), 50)
    assert "replication_link_up" in cluster.log("n2", tail=0)
    # n3 has the CA's certificate but not the cluster's secret: refused
    cluster.start_node("n3", replication={"secret": "not-the-cluster-secret!",
                                          "sync_timeout": 3.0})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "replication_peers_unreachable" not in cluster.log(
            "n3", tail=0):
        time.sleep(0.3)
    assert "replication_peers_unreachable" in cluster.log("n3", tail=0)
    assert "replication_handshake_failed" in cluster.log("n1", tail=0) + cluster.log("n2", tail=0)
    assert location(cluster, "n3").get("bindings") == 0
    assert cluster.status()["nodes"]["n3"]["sync"]["state"] == "partial"
