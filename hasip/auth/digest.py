"""HTTP digest authentication for SIP (RFC 2617, RFC 7616, RFC 8760), sans-IO.

Three jobs live here and nothing else:

* nonces the node can verify itself: ``hex(time) . hex(random) . HMAC`` over
  both with a secret shared by the cluster, so any node checks any node's
  nonce without shared state; an old nonce is *stale* (RFC 2617 3.2.1), a
  forged one is simply invalid;
* nonce-count replay protection: every (nonce, nc) pair is accepted once;
* parsing credentials and computing the expected ``response``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
HA1_LENGTHS = {32: "MD5", 64: "SHA-256"}

# auth-param = token "=" ( token / quoted-string )   (RFC 7235 2.1)
# (the quoted-string alternative unrolled: "[^"\\]*(\\.[^"\\]*)*", which Python's
# regex engine runs several times faster than a per-character alternation)
_PARAM_RE = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*'
                       r'("[^"\\]*(?:\\.[^"\\]*)*"|[^\s,]*)\s*(?:,|$)')
_HEX_RE = re.compile(r"[0-9a-f]{8}")
_ESCAPE_RE = re.compile(r"\\(.)")


def hash_hex(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8", "surrogateescape")).hexdigest()


def make_ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    """H(username ":" realm ":" password): what the local users file stores."""
    return hash_hex(algorithm, f"{user}:{realm}:{password}")


@dataclass
class Credentials:
    """One parsed Authorization / Proxy-Authorization value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None


class CredentialsError(ValueError):
    """Credentials that cannot be checked at all (answered with 400)."""


def parse_credentials(value: str) -> Credentials:
    """Parse ``Digest username="..", realm="..", ...``; raises CredentialsError."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise CredentialsError(f"scheme {scheme!r} is not Digest")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    end = len(rest)
    match = _PARAM_RE.match
    while pos < end:
        m = match(rest, pos)
        if m is None or m.end() == pos:
            raise CredentialsError(f"malformed parameter at {rest[pos:pos + 20]!r}")
        name, raw = m.groups()
        if raw[:1] == '"':
            raw = raw[1:-1]
            if "\\" in raw:
                raw = _ESCAPE_RE.sub(r"\1", raw)
        params[name.lower()] = raw
        pos = m.end()
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in params]
    if missing:
        raise CredentialsError(f"missing {', '.join(missing)}")
    algorithm = params.get("algorithm", "MD5").upper()
    qop = params.get("qop")
    if qop is not None:
        qop = qop.lower()
        if "nc" not in params or "cnonce" not in params:
            raise CredentialsError("qop without nc and cnonce")
    return Credentials(params["username"], params["realm"], params["nonce"], params["uri"],
                       params["response"].lower(), algorithm, qop, params.get("nc"),
                       params.get("cnonce"), params.get("opaque"))


def expected_response(creds: Credentials, ha1: str, method: str) -> str:
    """RFC 2617 3.2.2.1 / RFC 7616 3.4.1 with qop=auth or none."""
    alg = creds.algorithm
    ha2 = hash_hex(alg, f"{method}:{creds.uri}")
    if creds.qop is None:
        return hash_hex(alg, f"{ha1}:{creds.nonce}:{ha2}")
    return hash_hex(alg, f"{ha1}:{creds.nonce}:{creds.nc}:{creds.cnonce}:{creds.qop}:{ha2}")


def response_matches(creds: Credentials, ha1: str, method: str) -> bool:
    return hmac.compare_digest(expected_response(creds, ha1.lower(), method), creds.response)


# Nonce states
VALID = "valid"
STALE = "stale"
INVALID = "invalid"
REPLAYED = "replayed"


class NonceManager:
    """Issues and checks nonces; remembers the nonce-counts used.

    A nonce is ``tttttttt rrrrrrrr hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh``: issue
    time, 32 random bits, and a 128-bit keyed BLAKE2b MAC of both (key:
    SHA-256 of the secret). Nodes sharing ``secret`` verify each other's nonces.
    """

    def __init__(self, secret: bytes, lifetime: float = 300.0,
                 max_tracked: int = 200_000) -> None:
        self.secret = secret
        self._key = hashlib.sha256(secret).digest()
        self.lifetime = lifetime
        self.max_tracked = max_tracked
        # nonce -> nonce-counts seen; oldest nonces are forgotten first, and a
        # forgotten nonce is past its lifetime (or the table was full: then
        # its counts restart, bounded memory wins over a perfect replay check).
        self._seen: OrderedDict[str, set[int]] = OrderedDict()

    def _mac(self, stamp: str) -> str:
        # Keyed BLAKE2b is a MAC (RFC 7693 section 2.9) and cheaper than HMAC.
        return hashlib.blake2b(stamp.encode(), key=self._key, digest_size=16).hexdigest()

    def issue(self, now: float | None = None) -> str:
        t = int(time.time() if now is None else now)
        stamp = f"{t & 0xFFFFFFFF:08x}{os.urandom(4).hex()}"
        return stamp + self._mac(stamp)

    def check(self, nonce: str, nc: str | None, now: float | None = None) -> str:
        """VALID, STALE (ours but too old), INVALID (not ours) or REPLAYED."""
        if len(nonce) != 48 or not _HEX_RE.fullmatch(nonce[:8]):
            return INVALID
        stamp = nonce[:16]
        if not hmac.compare_digest(self._mac(stamp), nonce[16:]):
            return INVALID
        t = time.time() if now is None else now
        age = (int(t) - int(stamp[:8], 16)) & 0xFFFFFFFF
        if age > self.lifetime and age < 0x80000000:
            return STALE
        if age >= 0x80000000 and (0x100000000 - age) > 5:
            return INVALID  # from the future: a clock far off, or forged
        if nc is None:
            return VALID
        try:
            count = int(nc, 16)
        except ValueError:
            return INVALID
        seen = self._seen.get(nonce)
        if seen is None:
            seen = set()
            self._seen[nonce] = seen
            while len(self._seen) > self.max_tracked:
                self._seen.popitem(last=False)
        if count in seen or count == 0:
            return REPLAYED
        if len(seen) >= 1024:
            return STALE  # a nonce used a thousand times: make the client take a new one
        seen.add(count)
        return VALID

    def tracked(self) -> int:
        return len(self._seen)

    def expire(self, now: float | None = None) -> None:
        """Forget nonces past their lifetime (they are stale anyway)."""
        t = int(time.time() if now is None else now)
        while self._seen:
            nonce = next(iter(self._seen))
            age = (t - int(nonce[:8], 16)) & 0xFFFFFFFF
            if age <= self.lifetime or age >= 0x80000000:
                break
            self._seen.popitem(last=False)


def challenge(realm: str, nonce: str, algorithm: str, stale: bool = False,
              qop: bool = True) -> str:
    """One WWW-Authenticate / Proxy-Authenticate value."""
    parts = [f'Digest realm="{realm}"', f'nonce="{nonce}"']
    if qop:
        parts.append('qop="auth"')
    parts.append(f"algorithm={algorithm}")
    if stale:
        parts.append("stale=true")
    return ", ".join(parts)
