"""Deciding whether a request is authenticated: find our credentials in
(Proxy-)Authorization, check the nonce ourselves, then ask the credential
source (local users file: at once; RADIUS: asynchronously), then check that
the authenticated user may use the identity the request claims.

:meth:`Authenticator.check` returns a :class:`Verdict` or, for RADIUS, an
awaitable of one; the routing script resumes the request when it is ready.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from hasip import metrics
from hasip.auth.digest import (
    INVALID,
    REPLAYED,
    STALE,
    Credentials,
    CredentialsError,
    NonceManager,
    challenge,
    parse_credentials,
)
from hasip.auth.radius import RadiusClient, RadiusUnavailable
from hasip.auth.users import OK, LocalUsers
from hasip.sip.message import Request

# Verdict kinds
AUTHENTICATED = "ok"
CHALLENGE = "challenge"
FORBIDDEN = "forbidden"
BAD = "bad"
UNAVAILABLE = "unavailable"


@dataclass
class Verdict:
    kind: str
    status: int = 0
    reason: bytes | None = None
    headers: list[bytes] | None = None
    user: str | None = None
    result: str = ""      # metric label


class Authenticator:
    def __init__(self, nonces: NonceManager, source: LocalUsers | RadiusClient,
                 algorithms: list[str], allow_no_qop: bool = False,
                 retry_after: int = 30) -> None:
        self.nonces = nonces
        self.source = source
        self.algorithms = algorithms
        self.allow_no_qop = allow_no_qop
        self.retry_after = retry_after

    def _challenge(self, proxy: bool, realm: str, stale: bool, result: str,
                   method: str) -> Verdict:
        name = b"Proxy-Authenticate: " if proxy else b"WWW-Authenticate: "
        nonce = self.nonces.issue()
        headers = [name + challenge(realm, nonce, alg, stale).encode() for alg in self.algorithms]
        metrics.AUTH_RESULTS.inc(method, result)
        return Verdict(CHALLENGE, 407 if proxy else 401, None, headers, result=result)

    def _find(self, req: Request, proxy: bool, realm: str) -> Credentials | Verdict | None:
        key = b"proxy-authorization" if proxy else b"authorization"
        if not req.has(key):
            return None
        # Credentials hold commas: one per header line, never split.
        for raw in req.get_all(key):
            value = raw.decode("latin-1")
            try:
                creds = parse_credentials(value)
            except CredentialsError as exc:
                metrics.AUTH_RESULTS.inc(req.method, "malformed")
                return Verdict(BAD, 400, f"Bad Request ({exc})".encode(), result="malformed")
            if creds.realm == realm:
                return creds
        return None

    def check(self, req: Request, proxy: bool, realm: str,
              identity: str | None) -> Verdict | Awaitable[Verdict]:
        """Authenticate ``req`` for ``realm``; ``identity`` is the user part
        the authenticated user must own (To for REGISTER, From otherwise)."""
        method = req.method
        found = self._find(req, proxy, realm)
        if isinstance(found, Verdict):
            return found
        if found is None:
            return self._challenge(proxy, realm, False, "challenged", method)
        creds = found
        if creds.algorithm not in self.algorithms:
            return self._challenge(proxy, realm, False, "bad_algorithm", method)
        if creds.qop is None and not self.allow_no_qop:
            return self._challenge(proxy, realm, False, "no_qop", method)
        if creds.qop is not None and creds.qop != "auth":
            return self._challenge(proxy, realm, False, "bad_qop", method)
        state = self.nonces.check(creds.nonce, creds.nc)
        if state == STALE:
            return self._challenge(proxy, realm, True, "stale", method)
        if state == INVALID:
            return self._challenge(proxy, realm, False, "bad_nonce", method)
        if state == REPLAYED:
            return self._challenge(proxy, realm, False, "replayed", method)
        if isinstance(self.source, LocalUsers):
            outcome = self.source.verify(creds, method)
            if outcome != OK:
                return self._challenge(proxy, realm, False, outcome, method)
            return self._identity(creds, identity, method)
        return self._check_remote(self.source, creds, proxy, realm, identity, method)

    async def _check_remote(self, client: RadiusClient, creds: Credentials, proxy: bool,
                            realm: str, identity: str | None, method: str) -> Verdict:
        try:
            accepted = await client.verify(creds, method)
        except RadiusUnavailable:
            metrics.AUTH_RESULTS.inc(method, "unavailable")
            return Verdict(UNAVAILABLE, 503, b"Service Unavailable (authentication server down)",
                           [b"Retry-After: %d" % self.retry_after], result="unavailable")
        if not accepted:
            return self._challenge(proxy, realm, False, "rejected", method)
        return self._identity(creds, identity, method)

    @staticmethod
    def _identity(creds: Credentials, identity: str | None, method: str) -> Verdict:
        if identity is not None and identity != creds.username:
            metrics.AUTH_RESULTS.inc(method, "wrong_identity")
            return Verdict(FORBIDDEN, 403, b"Forbidden (identity does not match credentials)",
                           result="wrong_identity")
        metrics.AUTH_RESULTS.inc(method, "ok")
        return Verdict(AUTHENTICATED, user=creds.username, result="ok")
