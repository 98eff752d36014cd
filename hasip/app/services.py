"""The parts a node's routing script uses besides the SIP engine: the
location store and its durable backend, digest authentication with its
credential source, and the trusted networks. Built from the config, started
and stopped with the node."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

from hasip.app.config import Config, ConfigError, check_auth
from hasip.auth.authenticator import Authenticator
from hasip.auth.digest import NonceManager
from hasip.auth.radius import RadiusClient
from hasip.auth.users import LocalUsers, UsersFileError
from hasip.dialog.cdr import CdrWriter
from hasip.dialog.store import END, Change, DialogStore
from hasip.dispatcher.dispatcher import Dispatcher
from hasip.location.backend import Backend, MysqlBackend, SqliteBackend
from hasip.location.persist import WriteBehind, load_into
from hasip.location.registrar import Policy
from hasip.location.store import LocationStore
from hasip.media.client import MediaClient
from hasip.security.authfail import AuthFailures
from hasip.security.guard import AUTH, BANNED, Ban, SourceGuard
from hasip.security.routetoken import RouteSigner
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger

log = get_logger("hasip.services")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def demo_users_file() -> str:
    return str(resources.files("hasip.demo").joinpath("users.htdigest"))


@dataclass
class Services:
    location: LocationStore
    authenticator: Authenticator
    policy: Policy
    dispatcher: Dispatcher
    trusted: list[Network]
    guard: SourceGuard
    signer: RouteSigner
    exempt: list[Network] = field(default_factory=list)
    dialogs: DialogStore = field(default_factory=DialogStore)
    backend: Backend | None = None
    writer: WriteBehind | None = None
    radius: RadiusClient | None = None
    cdrs: CdrWriter | None = None
    media: MediaClient | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _trusted_ips: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def in_memory(cls, config: Config) -> Services:
        """Everything but the durable store (tests of the proxy engine)."""
        return build(config, durable=False)

    def is_trusted(self, ip: str, port: int) -> bool:
        """From a trusted network, or from one of the dispatcher's nodes as
        they are now (its own address and port: an Asterisk node sends from
        the port it listens on; one added live is trusted at once, one
        removed is not)."""
        if (ip, port) in self.dispatcher.by_address:
            return True
        cache = self._trusted_ips
        known = cache.get(ip)
        if known is None:
            known = _in_networks(ip, self.trusted)
            if len(cache) >= 65536:
                cache.clear()
            cache[ip] = known
        return known

    def is_exempt(self, ip: str) -> bool:
        """Never rate-limited nor banned: trusted networks, the dispatcher's
        nodes (any port), ``security.exempt``."""
        return (_in_networks(ip, self.trusted) or _in_networks(ip, self.exempt)
                or ip in self.dispatcher.addresses())

    def ban_source(self, ip: str, now: float) -> None:
        """Too many failed authentications from ``ip``."""
        self.guard.ban(ip, now, AUTH)

    async def start(self) -> None:
        """Load bindings from the durable store (retried in the background
        when it is down: the node serves meanwhile) and start writing."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._expire()))
        if self.media is not None:
            await self.media.start()
        if self.backend is None or self.writer is None:
            return
        self.writer.start()
        if self.cdrs is not None:
            self.cdrs.start()
        loading = loop.create_task(load_into(self.location, self.backend))
        self._tasks.append(loading)
        try:
            await asyncio.wait_for(asyncio.shield(loading), 5.0)
        except TimeoutError:
            log.warning("location_load_pending", backend=self.backend.name)

    async def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        rounds = 0
        while True:
            await asyncio.sleep(1.0)
            self.location.expire()
            rounds += 1
            if rounds % 10 == 0:
                now = loop.time()
                self.guard.sweep(now)
                self.authenticator.failures.sweep(now)
            for d in self.dialogs.expire():
                log.info("dialog_timeout", call_id=d.call_id, dialog=d.id, state_was="confirmed"
                         if d.answered else "early")

    async def stop(self, grace: float) -> None:
        for task in self._tasks:
            task.cancel()
        if self.writer is not None:
            await self.writer.stop()
            if not await self.writer.flush(max(grace, 1.0)):
                log.error("location_unwritten_at_exit", pending=len(self.writer.pending))
        if self.cdrs is not None:
            await self.cdrs.stop()
            if not await self.cdrs.flush(max(grace, 1.0)):
                log.error("cdrs_unwritten_at_exit", pending=len(self.cdrs.pending))
        if self.backend is not None:
            await self.backend.close()
        if self.media is not None:
            await self.media.stop()
        if self.radius is not None:
            self.radius.close()


def _in_networks(ip: str, networks: list[Network]) -> bool:
    if not networks:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def build(config: Config, durable: bool = True) -> Services:
    """Services from ``config``; ConfigError names the field and file on trouble."""
    check_auth(config)
    store = LocationStore(config.node.name)
    metrics.REGISTERED_CONTACTS.set_function(lambda: len(store))
    metrics.REGISTERED_AORS.set_function(store.aor_count)
    a = config.auth
    secret = a.secret.encode() if a.secret else os.urandom(32)
    nonces = NonceManager(secret, a.nonce_lifetime)
    radius: RadiusClient | None = None
    source: LocalUsers | RadiusClient
    if a.source == "radius":
        r = config.radius
        radius = RadiusClient(r.servers, r.secret.encode(), r.timeout, r.retries, r.dead_time,
                              r.attributes, r.nas_identifier, r.service_type)
        source = radius
    else:
        path = demo_users_file() if a.demo_users else a.users_file
        if a.demo_users:
            log.warning("demo_users_accepted", note="accounts 1001-1010 with passwords "
                        "demo<user>: for the demo only")
        try:
            source = LocalUsers(path)
        except UsersFileError as exc:
            raise ConfigError(f"{config.path}: auth.users_file: {exc}") from None
        missing = [alg for alg in a.algorithms if alg not in source.algorithms()]
        if missing and source.ha1:
            log.warning("users_file_lacks_algorithm", file=path, algorithms=",".join(missing))
    sc = config.security
    failures = AuthFailures(sc.auth_failures, sc.failure_window, sc.user_failures,
                            sc.user_backoff, sc.max_user_backoff, sc.max_sources)
    authenticator = Authenticator(nonces, source, a.algorithms, a.allow_no_qop, a.retry_after,
                                  failures)
    reg = config.registrar
    policy = Policy(reg.default_expires, reg.min_expires, reg.max_expires, reg.max_contacts)
    trusted: list[Network] = [ipaddress.ip_network(n, strict=False) for n in a.trusted]
    exempt: list[Network] = [ipaddress.ip_network(n, strict=False) for n in sc.exempt]
    dispatcher = Dispatcher(config)
    backend: Backend | None = None
    writer: WriteBehind | None = None
    if durable and config.location.backend != "memory":
        loc = config.location
        if loc.backend == "mysql":
            try:
                backend = MysqlBackend(loc.mysql_url)
            except ValueError as exc:
                raise ConfigError(f"{config.path}: location.mysql_url: {exc}") from None
        else:
            backend = SqliteBackend(loc.sqlite_path)
        writer = WriteBehind(backend, loc.max_pending, loc.batch, interval=loc.flush_interval,
                             remote=loc.backend != "mysql")
        store.subscribe(writer.on_change)
    dialogs = DialogStore(config.node.name, config.dialog.timeout)
    dialogs.subscribe(dispatcher.on_dialog)
    dialogs.subscribe(_count_ended)
    cdrs: CdrWriter | None = None
    if backend is not None and config.dialog.cdr:
        cdrs = CdrWriter(backend, config.location.max_pending, config.location.batch,
                         interval=config.location.flush_interval)
        dialogs.subscribe(cdrs.on_dialog)
    media: MediaClient | None = None
    mc = config.media
    if mc.rtpengine and mc.relay != "never":
        media = MediaClient(mc.rtpengine, mc.timeout, mc.retransmit, mc.ping_interval,
                            mc.failures, mc.successes)
        for inst in media.instances.items:
            metrics.MEDIA_SESSIONS.labels(inst.name).set_function(
                _sessions_on(dialogs, inst.name))
    for state in dialogs.counts:
        metrics.DIALOGS.labels(state).set_function(_counter_of(dialogs.counts, state))
    guard = SourceGuard(config.node.name, sc.rate, sc.burst, sc.ban_time, sc.max_ban_time,
                        lambda ip: False, sc.max_sources)
    # Record-Route tokens under the cluster's secret (hasip.security.routetoken).
    services = Services(store, authenticator, policy, dispatcher, trusted, guard,
                        RouteSigner(secret), exempt, dialogs, backend, writer, radius, cdrs,
                        media)
    guard.exempt = services.is_exempt
    guard.subscribers.append(_log_ban)
    dispatcher.changed.append(guard.exempt_changed)
    authenticator.on_source_limit = services.ban_source
    # The guard's clock is the event loop's, monotonic: time.monotonic()
    # reads the same clock from the metrics thread.
    metrics.BANS.set_function(lambda: len(guard.active(time.monotonic())))
    metrics.DROPPED.read = lambda: guard.dropped
    metrics.SOURCES_TRACKED.set_function(guard.tracked)
    return services


def _log_ban(op: str, ban: Ban, local: bool) -> None:
    """One line per ban that fail2ban can read (docs/security.md), and metrics."""
    if op == BANNED:
        metrics.BANNED.inc(ban.reason, "local" if local else "peer")
        log.warning("source_banned", ip=ban.ip, reason=ban.reason,
                    seconds=round(ban.until - time.monotonic()), strikes=ban.strikes,
                    by=ban.node)
    else:
        log.info("source_ban_lifted", ip=ban.ip, by=ban.node)


def _counter_of(counts: dict[str, int], key: str) -> Callable[[], float]:
    return lambda: counts[key]


def _sessions_on(dialogs: DialogStore, name: str) -> Callable[[], float]:
    """Dialogs whose media is on rtpengine ``name`` (read when scraped)."""
    return lambda: sum(1 for d in dialogs if d.media == name)


def _count_ended(change: Change) -> None:
    if change.op == END:
        metrics.DIALOGS_ENDED.inc(change.dialog.end_reason)
