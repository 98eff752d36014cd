"""Who may use the control API: the checks every request passes before it
reaches a handler, sans-IO (a method and the request's headers in, a
decision out).

In this order:

1. ``Host`` must name this listener: its address (with or without the
   port), ``localhost``, or a name in ``control.hosts``; on a wildcard
   address (0.0.0.0, ::) any IP literal. Anything else is 421: a web page
   whose name was re-pointed at the node (DNS rebinding) sends its own name.
2. An ``Origin`` header (which browsers add to cross-site requests and
   every POST) must be one of ``control.origins`` (none by default): else
   403. No CORS header is ever sent, so a browser never lets another site
   read an answer either.
3. ``Authorization: Bearer TOKEN`` with the token of ``control.token_file``
   (compared in constant time) may do anything; the token of
   ``control.read_token_file`` may only GET (403 otherwise). No token, a
   malformed header or a wrong token: 401 with ``WWW-Authenticate: Bearer
   realm="hasip"``, the same answer for each (a client learns nothing about
   which tokens exist); the log says which, never the token.
4. A POST carries ``Content-Type: application/json`` (a ``charset`` of
   utf-8 allowed): else 415. An HTML form or a "simple" cross-site request
   cannot send that type without the browser asking first (CORS preflight,
   which the API never grants).
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from hasip.app.config import ControlConfig

Headers = dict[str, list[str]]

FULL, READ = "full", "read"
WWW_AUTHENTICATE = 'Bearer realm="hasip"'


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str           # for the log: why (never a token)
    message: str          # for the client


def _unauthorized(reason: str) -> Refusal:
    return Refusal(401, reason, "unauthorized: send Authorization: Bearer TOKEN "
                                "(control.token_file)")


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` as (host, port): ``127.0.0.1:9061``, ``[::1]:9061``, ``name``;
    None when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:
        return None                       # an IPv6 literal without brackets
    else:
        host, sep, port_text = value.partition(":")
        if not sep:
            port_text = None
    if not host:
        return None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class AccessPolicy:
    def __init__(self, config: ControlConfig, listen: tuple[str, int]) -> None:
        self.token = config.token.encode()
        self.read_token = config.read_token.encode()
        self.origins = frozenset(config.origins)
        self.names = frozenset(["localhost", *config.hosts])
        self.address = ipaddress.ip_address(listen[0])
        self.port = listen[1]

    def host_allowed(self, value: str) -> bool:
        parsed = split_host(value)
        if parsed is None:
            return False
        host, port = parsed
        if port is not None and port != self.port:
            return False
        if host in self.names:
            return True
        ip = _ip(host)
        if ip is None:
            return False
        # A wildcard listener answers on every address of the machine; an IP
        # literal cannot be re-pointed by DNS, so any of them is fine.
        return ip == self.address or self.address.is_unspecified

    def role(self, authorization: str) -> str | None:
        """FULL or READ for a right token, None otherwise. Both tokens are
        compared every time, in constant time."""
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = credential.strip().encode("latin-1")
        full = bool(self.token) & hmac.compare_digest(given, self.token)
        read = bool(self.read_token) & hmac.compare_digest(given, self.read_token)
        return FULL if full else READ if read else None

    def check(self, method: str, headers: Headers, public: bool = False) -> Refusal | str:
        """The role a request acts with, or why it is refused. ``public``
        (the health probes): Host and Origin are checked, no token is
        asked for, and it may only read."""
        hosts = headers.get("host", [])
        if len(hosts) != 1:
            return Refusal(400, "no Host or more than one", "give one Host header")
        if not self.host_allowed(hosts[0]):
            return Refusal(421, f"Host {hosts[0][:100]!r} is not this node",
                           "misdirected request: the Host is not this node's control API")
        for origin in headers.get("origin", []):
            if origin.strip().lower().rstrip("/") not in self.origins:
                return Refusal(403, f"Origin {origin[:100]!r} is not in control.origins",
                               "cross-origin requests are refused")
        if public:
            if method != "GET":
                return Refusal(405, f"{method[:10]} on a probe", "probes take GET")
            return READ
        auth = headers.get("authorization", [])
        if not auth:
            return _unauthorized("no token")
        if len(auth) > 1:
            return _unauthorized("more than one Authorization header")
        role = self.role(auth[0])
        if role is None:
            bearer = auth[0].strip().lower().startswith("bearer ")
            return _unauthorized("wrong token" if bearer else "not a bearer token")
        if role == READ and method != "GET":
            return Refusal(403, f"read-only token on {method[:10]}",
                           "the read-only token may only GET")
        if method == "POST":
            types = headers.get("content-type", [])
            if len(types) != 1 or not json_type(types[0]):
                shown = types[0][:60] if types else "none"
                return Refusal(415, f"Content-Type {shown!r} on POST",
                               "POST bodies must be Content-Type: application/json")
        return role


def json_type(value: str) -> bool:
    """``application/json``, optionally with ``charset=utf-8``."""
    media, *params = (part.strip().lower() for part in value.split(";"))
    if media != "application/json":
        return False
    for param in params:
        name, _, val = param.partition("=")
        if name.strip() != "charset" or val.strip().strip('"') not in ("utf-8", "utf8"):
            return False
    return True
