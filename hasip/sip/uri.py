"""SIP, SIPS and tel URIs (RFC 3261 section 19.1, RFC 3966), and any other
absolute URI kept opaque.

A parsed URI keeps its original text so that a proxy forwards it byte for
byte; ``str(uri)`` gives the text back.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

from hasip.sip.errors import SipParseError
from hasip.sip.grammar import ABSOLUTE_URI_RE, SIP_URI_RE
from hasip.util.memo import remember

_TEL_RE = re.compile(r"[Tt][Ee][Ll]:(\+?[0-9A-Fa-f*#().\-]+|[0-9A-Fa-f*#().\-pPwW]+)((?:;[^;]+)*)")


def _split_params(text: str) -> dict[str, str | None]:
    """``;a=b;c`` -> {"a": "b", "c": None}; names lowercased (RFC 3261 19.1.4)."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    for part in text[1:].split(";"):
        name, eq, value = part.partition("=")
        params[unquote(name).lower()] = value if eq else None
    return params


class SipUri:
    """A ``sip:`` or ``sips:`` URI."""

    __slots__ = ("_raw", "headers", "host", "host_ip", "params", "password", "port", "scheme",
                 "text", "user")

    def __init__(
        self,
        scheme: str,
        user: str | None,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: str | None = None,
        password: str | None = None,
        text: str | None = None,
    ) -> None:
        self.scheme = scheme.lower()
        self.user = user
        self.password = password
        self.host = host
        # The host without IPv6 brackets, lowercased: what addresses compare on.
        self.host_ip = host[1:-1].lower() if host.startswith("[") else host.lower()
        self.port = port
        self.params = params if params is not None else {}
        self.headers = headers
        self.text = text if text is not None else self._compose()
        self._raw: bytes | None = None

    @property
    def raw(self) -> bytes:
        """The URI as bytes (latin-1), computed once."""
        if self._raw is None:
            self._raw = self.text.encode("latin-1")
        return self._raw

    def _compose(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        for name, value in self.params.items():
            out += [";", name] if value is None else [";", name, "=", value]
        if self.headers:
            out += ["?", self.headers]
        return "".join(out)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"SipUri({self.text!r})"

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def transport(self) -> str:
        """Transport named by the ``transport`` parameter, lowercase ("udp" default)."""
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.secure else "udp"

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    def default_port(self) -> int:
        return self.port if self.port is not None else (5061 if self.secure else 5060)

    def user_unescaped(self) -> str | None:
        user = self.user
        if user is None or "%" not in user:
            return user
        return unquote(user, encoding="latin-1")


class TelUri:
    """A ``tel:`` URI (RFC 3966): a number and its parameters."""

    __slots__ = ("number", "params", "text")
    scheme = "tel"

    def __init__(self, number: str, params: dict[str, str | None], text: str) -> None:
        self.number = number
        self.params = params
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"TelUri({self.text!r})"


class AbsoluteUri:
    """Any other absolute URI (RFC 3261 absoluteURI), kept opaque."""

    __slots__ = ("scheme", "text")

    def __init__(self, scheme: str, text: str) -> None:
        self.scheme = scheme
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"AbsoluteUri({self.text!r})"


Uri = SipUri | TelUri | AbsoluteUri


# Parsed URIs by text. The same URIs come back all the time (our own
# Record-Route, the Request-URIs of a service, a phone's Contact), so a
# bounded cache saves most of the parsing. Parsed URIs are never mutated.
_CACHE: dict[str, Uri] = {}


def parse_uri(text: str) -> Uri:
    """Parse a URI; raises :class:`SipParseError` (400) when malformed."""
    uri = _CACHE.get(text)
    if uri is None:
        uri = remember(_CACHE, text, _parse_uri(text))
    return uri


def _parse_uri(text: str) -> Uri:
    head = text[:5].lower()
    if head.startswith("sip:") or head == "sips:":
        return parse_sip_uri(text)
    if head.startswith("tel:"):
        m = _TEL_RE.fullmatch(text)
        if m is None:
            raise SipParseError(f"malformed tel URI {text!r}")
        return TelUri(m.group(1), _split_params(m.group(2)), text)
    if ABSOLUTE_URI_RE.fullmatch(text) is None:
        raise SipParseError(f"malformed URI {text!r}")
    return AbsoluteUri(text.partition(":")[0].lower(), text)


def parse_sip_uri(text: str) -> SipUri:
    m = SIP_URI_RE.fullmatch(text)
    if m is None:
        raise SipParseError(f"malformed SIP URI {text!r}")
    host = m.group("host")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SipParseError(f"bad IPv6 reference in {text!r}")
    port_text = m.group("port")
    port = int(port_text) if port_text else None
    if port is not None and port > 65535:
        raise SipParseError(f"port out of range in {text!r}")
    return SipUri(
        m.group("scheme"),
        m.group("user"),
        host,
        port,
        _split_params(m.group("params")),
        m.group("headers"),
        m.group("password"),
        text,
    )
