"""Under attack: what hasip answers an attacker, and what it still serves,
with Kamailio as its default kamailio.cfg protects itself (pike + an htable
of banned addresses, WITH_ANTIFLOOD) measured in the same run.

Five attacks on loopback, one system at a time, each with a fresh node:

1. a fast guesser: one address guesses passwords as fast as it is answered
   (cycling over the accounts 1001-1010, as an attacker enumerating
   extensions would) for ``--guess-seconds``;
2. a slow guesser: one address, 2 guesses a second, under any per-source
   request rate;
3. a distributed guesser: 20 addresses, one guess a second each, all on
   account 1001;
4. an INVITE flood from one address at ``--flood-rate`` (default 6,000/s,
   about 3x the calls per CPU-second a node handles: docs/performance.md)
   for ``--flood-seconds``, while a trusted PSTN gateway (SIPp) places 20
   calls a second to the Asterisk side (SIPp): the share of its calls that
   complete during the flood, seconds to full service after it, and the
   node's memory before, at its peak and after;
5. 2,000 TCP connections from 10 addresses, each holding half a message,
   while the gateway places calls over UDP and over TCP.

Figures: guesses whose password was checked (answered with a new challenge)
per attack, and how many were refused unchecked or dropped. Run:

    .venv/bin/python bench/abuse.py [--flood-rate 6000] [--flood-seconds 10]
                                    [--guess-seconds 10] [--no-kamailio]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ladder import KamailioBalancer, cpu_seconds, free_port, process_tree  # noqa: E402

from hasip.demo.node import NodeProcess  # noqa: E402
from hasip.demo.sipp import Sipp, wait_for_stats  # noqa: E402
from tests.e2e.sipphone import digest_header  # noqa: E402

GATEWAY = "127.0.0.5"          # the trusted PSTN gateway (SIPp)
FLOODER = "127.0.0.66"
FAST_GUESSER, SLOW_GUESSER = "127.0.0.77", "127.0.0.78"
USERS = [str(u) for u in range(1001, 1011)]


# -- the systems under attack --------------------------------------------------------


class Target:
    name = ""
    port = 0

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pids(self) -> list[int]: return []


class Hasip(Target):
    """A node on its defaults: the gateway trusted, the demo accounts."""

    name = "hasip"

    def __init__(self, work: Path, asterisk: int) -> None:
        self.port = free_port()
        cfg = work / f"hasip-{self.port}.toml"
        cfg.write_text(f'''[sip]
listen = ["udp:127.0.0.1:{self.port}", "tcp:127.0.0.1:{self.port}"]
[metrics]
listen = "127.0.0.1:{free_port()}"
[log]
level = "warning"
[location]
backend = "memory"
[auth]
demo_users = true
trusted = ["{GATEWAY}/32"]
[dispatcher]
destinations = ["1 sip:127.0.0.1:{asterisk}"]
probe_interval = 0.0
''')
        self.node = NodeProcess(cfg, work, "127.0.0.1", self.port)

    def start(self) -> None:
        self.node.start()

    def stop(self) -> None:
        self.node.kill()

    def pids(self) -> list[int]:
        return process_tree(self.node.pid)


class Kamailio(Target):
    name = "kamailio"

    def __init__(self, work: Path, asterisk: int) -> None:
        db = work / "kamailio-db"
        db.mkdir(exist_ok=True)
        (db / "version").write_text("table_name(string) table_version(int)\nsubscriber:7\n")
        (db / "subscriber").write_text(
            "id(int,auto) username(string) domain(string) password(string) ha1(string) "
            "ha1b(string)\n" + "".join(f"{i}:{u}:hasip:demo{u}:x:x\n"
                                       for i, u in enumerate(USERS, 1)))
        dslist = work / "dispatcher.list"
        dslist.write_text(f"1 sip:127.0.0.1:{asterisk}\n")
        self.k = KamailioBalancer(work, ROOT / "bench" / "kamailio-abuse.cfg",
                                  [f'DBURL="text://{db}"', f'DSLIST="{dslist}"',
                                   f"GATEWAY={GATEWAY}"], 256)
        self.port = self.k.port
        self.k.cmd += ["-A", f"LISTEN_TCP=tcp:127.0.0.1:{self.port}"]

    def start(self) -> None:
        self.k.start()

    def stop(self) -> None:
        self.k.stop()

    def pids(self) -> list[int]:
        return self.k.pids()


def rss_mb(pids: list[int]) -> float:
    """Resident memory of ``pids``, private pages only (Kamailio's processes
    share its shm pool: counted once)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    shm = line.startswith("Shared_Dirty:") and pid == pids[0]
                    if shm or line.startswith(("Private_Clean:", "Private_Dirty:")):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# -- guessing ----------------------------------------------------------------------------


def request(src: tuple[str, int], port: int, user: str, call_id: str, cseq: int,
            extra: str = "") -> bytes:
    ruri = f"sip:5551234@127.0.0.1:{port}"
    return (f"INVITE {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1>;tag={call_id[:8]}\r\n"
            f"To: <{ruri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n"
            f"Contact: <sip:{user}@{src[0]}:{src[1]}>\r\n{extra}Content-Length: 0\r\n\r\n"
            ).encode()


def final(sock: socket.socket, timeout: float) -> bytes | None:
    """The first final answer on ``sock`` within ``timeout`` (None: dropped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65535)
        except OSError:
            return None
        if data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1"):
            return data
    return None


def guess(sock: socket.socket, port: int, user: str, password: str,
          timeout: float = 0.5) -> str:
    """One guess: "checked" (the password was tried: a new challenge came
    back), "refused" (answered without a check: 403), "dropped" (no answer)."""
    src = sock.getsockname()
    call_id = uuid.uuid4().hex
    sock.sendto(request(src, port, user, call_id, 1), ("127.0.0.1", port))
    challenge = final(sock, timeout)
    if challenge is None or not challenge.startswith(b"SIP/2.0 407"):
        return "dropped" if challenge is None else "refused"
    text = challenge.decode("latin-1")
    line = next(v for v in text.split("\r\n") if v.lower().startswith("proxy-authenticate:"))
    creds = digest_header(line.split(":", 1)[1].strip(), user, password, "INVITE",
                          f"sip:5551234@127.0.0.1:{port}", True)
    sock.sendto(request(src, port, user, call_id, 2, creds + "\r\n"), ("127.0.0.1", port))
    answer = final(sock, timeout)
    if answer is None:
        return "dropped"
    return "checked" if answer.startswith(b"SIP/2.0 407") else "refused"


@dataclass
class Guessing:
    checked: int = 0
    refused: int = 0
    dropped: int = 0
    first_drop_s: float = 0.0
    seconds: float = 0.0
    results: list[str] = field(default_factory=list)

    def add(self, result: str, at: float) -> None:
        self.results.append(result)
        setattr(self, result, getattr(self, result) + 1)
        if result == "dropped" and not self.first_drop_s:
            self.first_drop_s = at


def udp_socket(ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    return sock


def fast_guesser(target: Target, seconds: float, limit: int = 20_000) -> Guessing:
    out = Guessing()
    with udp_socket(FAST_GUESSER) as sock:
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds and n < limit:
            # Once dropped, it keeps trying at a slower pace (each try waits out its timeout).
            out.add(guess(sock, target.port, USERS[n % len(USERS)], f"{n:04d}", 0.2),
                    time.monotonic() - t0)
            n += 1
        out.seconds = time.monotonic() - t0
    return out


def slow_guesser(target: Target, seconds: float) -> Guessing:
    out = Guessing()
    with udp_socket(SLOW_GUESSER) as sock:
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds:
            out.add(guess(sock, target.port, USERS[n % len(USERS)], f"{n:04d}", 0.3),
                    time.monotonic() - t0)
            n += 1
            time.sleep(max(0.0, t0 + n * 0.5 - time.monotonic()))
        out.seconds = time.monotonic() - t0
    return out


def distributed_guesser(target: Target, seconds: float, sources: int = 20) -> Guessing:
    """``sources`` addresses, one guess a second each, all on account 1001."""
    out = Guessing()
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(i: int) -> None:
        with udp_socket(f"127.0.1.{i + 1}") as sock:
            n = 0
            while time.monotonic() - t0 < seconds:
                result = guess(sock, target.port, "1001", f"{i:02d}{n:02d}", 0.3)
                with lock:
                    out.add(result, time.monotonic() - t0)
                n += 1
                time.sleep(max(0.0, t0 + n + i / sources - time.monotonic()))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(sources)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.seconds = time.monotonic() - t0
    return out


# -- flood -------------------------------------------------------------------------------


def flood_worker(port: int, rate: float, seconds: float, src: str, sources: int) -> None:
    """Send INVITEs (no credentials, a new Call-ID each) at ``rate`` for
    ``seconds``, from ``sources`` addresses in turn (``src`` alone when 1,
    else 127.0.2.1 onwards: a flood spread so that no address exceeds a
    per-source limit); runs in its own process."""
    socks = []
    for i in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ip = src if sources == 1 else f"127.0.{2 + i // 250}.{1 + i % 250}"
        sock.bind((ip, 0))
        sport = sock.getsockname()[1]
        head = (f"INVITE sip:0900123@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {ip}:{sport};branch=z9hG4bKfl").encode()
        tail = (f"\r\nMax-Forwards: 70\r\nFrom: <sip:1001@127.0.0.1>;tag=fl\r\n"
                f"To: <sip:0900123@127.0.0.1>\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:1001@{ip}:{sport}>\r\nContent-Length: 0\r\n").encode()
        socks.append((sock, head, tail))
    dest = ("127.0.0.1", port)
    t0 = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            sock, head, tail = socks[sent % sources]
            n = b"%d" % sent
            try:
                sock.sendto(head + n + b"\r\nCall-ID: fl" + n + tail + b"\r\n", dest)
            except OSError:
                pass
            sent += 1
        time.sleep(0.002)
    print(f"sent {sent}", flush=True)


@dataclass
class Sample:
    t: float
    outgoing: int
    ok: int
    failed: int
    rss: float
    cpu: float


def gateway_calls(work: Path, target: Target, rate: int, calls: int, transport: str = "u1",
                  port: int | None = None) -> Sipp:
    caller = Sipp("uac.xml", port or free_port(), work, remote=f"127.0.0.1:{target.port}",
                  calls=calls, rate=rate, local_ip=GATEWAY, transport=transport,
                  extra=("-l", "1000", "-recv_timeout", "4000"))
    return caller.start()


def sample(caller: Sipp, target: Target, t0: float) -> Sample:
    s = caller.stats()
    pids = target.pids()
    return Sample(time.monotonic() - t0, int(float(s.get("OutgoingCall(C)", 0) or 0)),
                  int(float(s.get("SuccessfulCall(C)", 0) or 0)),
                  int(float(s.get("FailedCall(C)", 0) or 0)), rss_mb(pids), cpu_seconds(pids))


@dataclass
class Flood:
    during_share: float
    failed: int
    recovery_s: float
    rss_before: float
    rss_peak: float
    rss_after: float
    cpu_pct: float
    sent: int


def flood(work: Path, target: Target, rate: float, seconds: float, sources: int = 1,
          warm: float = 4.0, after: float = 8.0, call_rate: int = 20) -> Flood:
    total = warm + seconds + after
    caller = gateway_calls(work, target, call_rate, int(call_rate * total))
    wait_for_stats(caller)
    t0 = time.monotonic()
    samples: list[Sample] = []

    def until(t: float) -> None:
        while time.monotonic() - t0 < t:
            samples.append(sample(caller, target, t0))
            time.sleep(0.25)

    until(warm)
    flooder = subprocess.Popen([sys.executable, __file__, "--flood-worker", str(target.port),
                                str(rate), str(seconds), FLOODER, str(sources)],
                               stdout=subprocess.PIPE, text=True)
    start = len(samples)
    until(warm + seconds)
    stop = len(samples)
    out, _ = flooder.communicate(timeout=30)
    sent = int(out.split()[-1]) if out.strip() else 0
    until(total)
    try:
        caller.wait(30)
    except subprocess.TimeoutExpired:
        pass
    samples.append(sample(caller, target, t0))
    a, b = samples[start], samples[stop - 1]
    attempted = b.outgoing - a.outgoing
    failed = samples[-1].failed - a.failed      # of the calls placed from the flood on
    share = (attempted - (b.failed - a.failed)) / attempted if attempted else 0.0
    # Full service again: from the flood's end to the last failed gateway
    # call seen (0 when none failed after the flood began).
    failures_at = [s.t for prev, s in itertools.pairwise(samples)
                   if s.failed > prev.failed and s.t > samples[start].t]
    recovery = max(0.0, failures_at[-1] - (warm + seconds)) if failures_at else 0.0
    cpu = (samples[stop - 1].cpu - samples[start].cpu) / (samples[stop - 1].t - samples[start].t)
    peak = max(s.rss for s in samples[start:stop])
    return Flood(share, failed, recovery, samples[start].rss, peak, samples[-1].rss, 100 * cpu,
                 sent)


# -- slow TCP ------------------------------------------------------------------------------


@dataclass
class SlowTcp:
    opened: int
    closed_by_node: int
    closed_within_s: float
    udp_share: float
    tcp_share: float


def slow_tcp(work: Path, target: Target, connections: int = 2000, sources: int = 10,
             hold: float = 15.0) -> SlowTcp:
    socks: list[socket.socket] = []
    half = (f"INVITE sip:x@127.0.0.1:{target.port} SIP/2.0\r\n"
            "Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKslow\r\nFrom: <sip:a@b>;tag=1\r\n"
            ).encode()
    for i in range(connections):
        s = socket.socket()
        s.bind((f"127.0.0.{100 + i % sources}", 0))
        s.settimeout(5.0)
        try:
            s.connect(("127.0.0.1", target.port))
            s.send(half)
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
    opened = len(socks)
    t0 = time.monotonic()
    udp = gateway_calls(work, target, 10, int(10 * hold))
    tcp = gateway_calls(work, target, 10, int(10 * hold), transport="t1")
    closed_at: dict[int, float] = {}
    while time.monotonic() - t0 < hold + 10:
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                if s.recv(1) == b"":
                    closed_at[i] = time.monotonic() - t0
            except BlockingIOError:
                pass
            except OSError:
                closed_at[i] = time.monotonic() - t0
        time.sleep(0.25)
    for caller in (udp, tcp):
        try:
            caller.wait(30)
        except subprocess.TimeoutExpired:
            pass
    for s in socks:
        s.close()
    shares = []
    for caller in (udp, tcp):
        out = caller.counter("OutgoingCall(C)")
        shares.append(caller.counter("SuccessfulCall(C)") / out if out else 0.0)
    return SlowTcp(opened, len(closed_at), max(closed_at.values(), default=0.0), *shares)


# -- the run -------------------------------------------------------------------------------


@dataclass
class Results:
    fast: Guessing
    slow: Guessing
    distributed: Guessing
    flood: Flood
    spread: Flood
    tcp: SlowTcp


def run(make: Callable[[], Target], args: argparse.Namespace) -> Results:
    """Every attack on a fresh node of one system."""
    attacks: list[tuple[str, Callable[[Target], Guessing | Flood | SlowTcp]]] = [
        ("fast", lambda t: fast_guesser(t, args.guess_seconds)),
        ("slow", lambda t: slow_guesser(t, 2 * args.guess_seconds)),
        ("distributed", lambda t: distributed_guesser(t, args.guess_seconds)),
        ("flood", lambda t: flood(args.work, t, args.flood_rate, args.flood_seconds)),
        ("spread", lambda t: flood(args.work, t, args.flood_rate, args.flood_seconds,
                                   args.spread_sources)),
        ("tcp", lambda t: slow_tcp(args.work, t)),
    ]
    results: dict[str, Guessing | Flood | SlowTcp] = {}
    for name, attack in attacks:
        target = make()
        target.start()
        try:
            print(f"  {target.name}: {name} ...", flush=True)
            results[name] = attack(target)
            print(f"    {results[name]}".split(", results=")[0], flush=True)
        finally:
            target.stop()
        time.sleep(1.0)
    return Results(**results)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood-rate", type=float, default=6000.0)
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument("--guess-seconds", type=float, default=10.0)
    parser.add_argument("--no-kamailio", action="store_true")
    parser.add_argument("--spread-sources", type=int, default=1000,
                        help="addresses of the spread flood (default 1000)")
    parser.add_argument("--flood-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_worker:
        port, rate, seconds, src, sources = args.flood_worker
        flood_worker(int(port), float(rate), float(seconds), src, int(sources))
        return 0
    if shutil.which("sipp") is None:
        print("sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    work = Path(tempfile.mkdtemp(prefix="hasip-bench-abuse-"))
    print(f"abuse benchmark, work dir {work}")
    from ladder import _build_line

    print(_build_line())
    asterisk_port = free_port()
    asterisk = Sipp("uas.xml", asterisk_port, work).start()
    wait_for_stats(asterisk)
    systems: list[type[Target]] = [Hasip]
    if not args.no_kamailio and shutil.which("kamailio"):
        systems.append(Kamailio)
    args.work = work
    table: dict[str, Results] = {}
    try:
        for cls in systems:
            table[cls.name] = run(lambda c=cls: c(work, asterisk_port), args)  # type: ignore[misc]
    finally:
        asterisk.stop()
    report(table, args)
    return 0


def report(table: dict[str, Results], args: argparse.Namespace) -> None:
    print()
    results = list(table.values())
    print(f"{'attack':<52}" + "".join(f"{n:>14}" for n in table))

    def row(label: str, values: list[str]) -> None:
        print(f"{label:<52}" + "".join(f"{v:>14}" for v in values))

    for label, pick in (
            (f"fast guesser, {args.guess_seconds:.0f} s", lambda r: r.fast),
            (f"slow guesser (2/s), {2 * args.guess_seconds:.0f} s", lambda r: r.slow),
            (f"20 addresses on one user, {args.guess_seconds:.0f} s", lambda r: r.distributed)):
        gs: list[Guessing] = [pick(r) for r in results]
        row(f"{label}: passwords checked", [str(g.checked) for g in gs])
        row("  checked per second, over the attack", [f"{g.checked / g.seconds:.1f}" for g in gs])
        row("  checked per second, before the ban",
            [f"{g.checked / g.first_drop_s:.0f}" if g.first_drop_s else "no ban" for g in gs])
        row("  refused unchecked / dropped", [f"{g.refused}/{g.dropped}" for g in gs])
    for label, pick_flood in (("one address", lambda r: r.flood),
                              (f"{args.spread_sources} addresses", lambda r: r.spread)):
        fl: list[Flood] = [pick_flood(r) for r in results]
        row(f"flood {args.flood_rate:.0f} INVITE/s x {args.flood_seconds:.0f} s from {label}",
            [str(f.sent) for f in fl])
        row("  gateway calls completed during the flood",
            [f"{100 * f.during_share:.1f} %" for f in fl])
        row("  gateway calls failed, flood and after", [str(f.failed) for f in fl])
        row("  seconds to full service after it", [f"{f.recovery_s:.1f}" for f in fl])
        row("  CPU during the flood", [f"{f.cpu_pct:.0f} %" for f in fl])
        row("  memory before / peak / after (MB)",
            [f"{f.rss_before:.0f}/{f.rss_peak:.0f}/{f.rss_after:.0f}" for f in fl])
    tc = [r.tcp for r in results]
    row("2,000 half-sent TCP messages: closed by the node",
        [f"{t.closed_by_node}/{t.opened}" for t in tc])
    row("  all closed within (s)", [f"{t.closed_within_s:.1f}" for t in tc])
    row("  gateway calls completed, UDP / TCP",
        [f"{100 * t.udp_share:.0f}/{100 * t.tcp_share:.0f} %" for t in tc])


if __name__ == "__main__":
    raise SystemExit(main())
