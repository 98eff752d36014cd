"""SIP-level NAT traversal (the seed's nathelper part): tell whether a
client sits behind NAT, and rewrite its Contact to the address its packets
really come from (Kamailio's ``nat_uac_test`` and ``fix_nated_contact``)."""

from __future__ import annotations

import ipaddress

from hasip.sip.errors import SipParseError
from hasip.sip.headers import parse_name_addr
from hasip.sip.message import SipMessage
from hasip.sip.uri import SipUri
from hasip.util.memo import remember

# RFC 1918, RFC 6598 shared space, RFC 4193 unique local, link local.
_PRIVATE = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "fc00::/7", "fe80::/10")]


# host -> is_private(host): phones repeat their addresses in every request.
_PRIVATE_SEEN: dict[str, bool] = {}


def is_private(host: str) -> bool:
    seen = _PRIVATE_SEEN.get(host)
    if seen is not None:
        return seen
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        private = False
    else:
        private = any(addr in net for net in _PRIVATE)
    return remember(_PRIVATE_SEEN, host, private)


def _contact_uri(msg: SipMessage) -> SipUri | None:
    if not msg.has(b"contact"):
        return None
    try:
        value = msg.values(b"contact")[0]
        if value.strip() == "*":
            return None
        uri = parse_name_addr(value, "Contact").uri
    except (SipParseError, IndexError):
        return None
    return uri if isinstance(uri, SipUri) else None


def behind_nat(msg: SipMessage, src: tuple[str, int], tests: list[str]) -> bool:
    """True when one of ``tests`` says the sender is behind NAT:

    * ``private_contact``: the Contact host is a private address other than
      the packet's source (``nat_uac_test`` 1);
    * ``via_address``: the top Via host is not the packet's source address (2);
    * ``via_port``: the top Via port is not the packet's source port (16).
    """
    ip, port = src
    if "via_address" in tests or "via_port" in tests:
        via = msg.top_via
        host = via.host[1:-1] if via.host.startswith("[") else via.host
        if "via_address" in tests and host.lower() != ip:
            return True
        if "via_port" in tests and (via.port or 5060) != port:
            return True
    if "private_contact" in tests:
        uri = _contact_uri(msg)
        if uri is not None and uri.host_ip != ip and is_private(uri.host_ip):
            return True
    return False


def fix_contact(msg: SipMessage, addr: tuple[str, int], stream: str = "") -> bool:
    """Rewrite the host and port of the first Contact to ``addr``
    (``fix_nated_contact``); False when there is no SIP Contact.

    ``stream`` names the transport of the connection ``addr`` is the far
    end of ("tcp"): the Contact then says ``transport=tcp`` too, so that a
    request to it reuses that connection (nothing listens at a connection's
    ephemeral port, and a datagram there goes nowhere)."""
    uri = _contact_uri(msg)
    if uri is None:
        return False
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    params = dict(uri.params)
    if stream:
        for name in [n for n in params if n.lower() == "transport"]:
            del params[name]
        params["transport"] = stream
    if uri.host == host and uri.port == addr[1] and params == uri.params:
        return False
    fixed = SipUri(uri.scheme, uri.user, host, addr[1], params, uri.headers, uri.password)
    i = msg.keys.index(b"contact")
    raw = msg.raws[i]
    old = uri.text.encode("latin-1")
    at = raw.find(old)
    if at < 0:
        return False
    msg.set_line(i, raw[:at] + fixed.raw + raw[at + len(old):])
    return True
