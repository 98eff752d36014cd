"""The RFC 4475 torture messages against the parser and sanity checks."""

import pytest

from hasip.sip.errors import SipParseError
from hasip.sip.message import Request, Response, parse_message, validate_request, validate_response
from hasip.sip.transaction import server_key
from hasip.sip.uri import SipUri
from tests import rfc4475


def check(data: bytes) -> Request | Response:
    msg = parse_message(data)
    if isinstance(msg, Request):
        validate_request(msg)
    else:
        validate_response(msg)
    return msg


@pytest.mark.parametrize("name", rfc4475.cases("valid"))
def test_valid_messages_parse(name: str) -> None:
    data = rfc4475.read(name)
    msg = check(data)
    # Whatever the proxy reads later must be readable too.
    msg.top_via  # noqa: B018
    if isinstance(msg, Request) and isinstance(msg.uri, SipUri):
        msg.uri.host  # noqa: B018


@pytest.mark.parametrize("name", rfc4475.cases("invalid"))
def test_invalid_messages_are_rejected_with_a_4xx_or_5xx(name: str) -> None:
    data = rfc4475.read(name)
    with pytest.raises(SipParseError) as info:
        check(data)
    assert 400 <= info.value.status < 600


@pytest.mark.parametrize("name", rfc4475.cases())
def test_every_message_parses_or_raises_the_protocol_error(name: str) -> None:
    data = rfc4475.read(name)
    try:
        check(data)
    except SipParseError:
        pass


def test_specific_expectations() -> None:
    rfc4475.require()
    # 3.1.1.8: only the first message of the datagram counts
    dbl = parse_message(rfc4475.read("dblreq.dat"))
    assert isinstance(dbl, Request) and dbl.method == "REGISTER" and dbl.body == b""
    # 3.1.1.1: a tortuous but valid INVITE
    ws = check(rfc4475.read("wsinv.dat"))
    assert ws.cseq == (9, "INVITE") and ws.to.tag == "1918181833n" and ws.from_.tag == "98asjd8"
    assert [v.transport for v in ws.vias] == ["UDP", "TCP", "UDP"]
    # 3.2.1: a bare magic cookie is no RFC 3261 branch
    bad_branch = check(rfc4475.read("badbranch.dat"))
    assert isinstance(bad_branch, Request) and server_key(bad_branch)[0] == "2543"
    # 3.4.1: RFC 2543 syntax is accepted and matched the old way
    old = check(rfc4475.read("inv2543.dat"))
    assert isinstance(old, Request) and server_key(old)[0] == "2543"
    # 3.3.1, 3.3.8, 3.3.9: missing or repeated required headers
    for name in ("insuf.dat", "multi01.dat", "mcl01.dat"):
        with pytest.raises(SipParseError):
            check(rfc4475.read(name))
    # 3.1.2.16: unknown version gets 505
    with pytest.raises(SipParseError) as info:
        check(rfc4475.read("badvers.dat"))
    assert info.value.status == 505
    # 3.3.2/3.3.3: unknown schemes parse, they are just not SIP URIs
    for name in ("unkscm.dat", "novelsc.dat"):
        msg = check(rfc4475.read(name))
        assert isinstance(msg, Request) and not isinstance(msg.uri, SipUri)
