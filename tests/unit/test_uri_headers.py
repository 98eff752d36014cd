"""URIs (RFC 3261 19.1, RFC 3966), name-addr, Via and CSeq."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasip.sip.errors import SipParseError
from hasip.sip.headers import (
    _parse_name_addr,
    _with_new_tag,
    general_params,
    parse_cseq,
    parse_name_addr,
    parse_params,
    parse_via,
    split_list,
)
from hasip.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri


def test_sip_uri_parts() -> None:
    uri = parse_uri("sips:alice:secret@Atlanta.example.com:5061;transport=TCP;lr;maddr=10.0.0.1"
                    "?subject=project%20x&priority=urgent")
    assert isinstance(uri, SipUri)
    assert uri.scheme == "sips" and uri.secure
    assert (uri.user, uri.password) == ("alice", "secret")
    assert (uri.host, uri.port) == ("Atlanta.example.com", 5061)
    assert uri.transport == "tcp"
    assert uri.lr and uri.params["maddr"] == "10.0.0.1"
    assert uri.headers == "subject=project%20x&priority=urgent"
    assert str(uri) == uri.text


def test_escapes_and_user_with_semicolons() -> None:
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert isinstance(uri, SipUri)
    assert uri.user == "user;par=u%40example.net"
    assert parse_uri("sip:%75se%72@example.com").user_unescaped() == "user"  # type: ignore[union-attr]


def test_ipv6_and_defaults() -> None:
    uri = parse_uri("sip:[2001:db8::10]:5070")
    assert isinstance(uri, SipUri)
    assert uri.host_ip == "2001:db8::10" and uri.port == 5070
    plain = parse_uri("sip:example.com")
    assert isinstance(plain, SipUri) and plain.default_port() == 5060 and plain.user is None
    with pytest.raises(SipParseError):
        parse_uri("sip:[zz::1]")


def test_tel_and_other_schemes() -> None:
    tel = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(tel, TelUri) and tel.number == "+1-201-555-0123"
    assert tel.params == {"phone-context": "example.com"}
    other = parse_uri("urn:service:sos")
    assert isinstance(other, AbsoluteUri) and other.scheme == "urn"


@pytest.mark.parametrize("bad", ["sip:", "sip:a b@example.com", "sip:example.com:99999",
                                 "<sip:x@y>", "sip:x@y;;", "tel:"])
def test_bad_uris(bad: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(bad)


def test_name_addr_forms() -> None:
    quoted = parse_name_addr('"J Rosenberg \\\\\\"" <sip:jdrosen@example.com> ; tag = 98asjd8')
    assert quoted.display == '"J Rosenberg \\\\\\""' and quoted.tag == "98asjd8"
    tokens = parse_name_addr("caller<sip:caller@example.com>;tag=323")
    assert tokens.display == "caller" and tokens.tag == "323"
    spec = parse_name_addr("sip:a@example.com;tag=1;x")
    assert isinstance(spec.uri, SipUri) and spec.uri.params == {} and spec.params == {
        "tag": "1", "x": None}


def test_split_list_respects_quotes_and_angles() -> None:
    assert split_list('"a,b" <sip:x@y;q=1,2>, <sip:z@w>') == ['"a,b" <sip:x@y;q=1,2>', "<sip:z@w>"]
    with pytest.raises(SipParseError):
        split_list('"open, <sip:x@y>')


def test_via() -> None:
    via = parse_via("SIP / 2.0 / UDP  192.0.2.2:5062 ; branch=z9hG4bKx;rport;received=10.1.1.1")
    assert via.transport == "UDP" and via.host == "192.0.2.2" and via.port == 5062
    assert via.params == {"branch": "z9hG4bKx", "rport": None, "received": "10.1.1.1"}
    assert via.is_rfc3261_branch()
    assert not parse_via("SIP/2.0/UDP h;branch=z9hG4bK").is_rfc3261_branch()
    with pytest.raises(SipParseError):
        parse_via("SIP/2.0/UDP 192.0.2.15;;,;,,")
    with pytest.raises(SipParseError) as info:
        parse_via("SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw")
    assert info.value.status == 505


def test_cseq() -> None:
    assert parse_cseq("0009  INVITE") == (9, "INVITE")
    # "\u00b2" (superscript two) is a digit to str.isdigit, not to int().
    for bad in ("INVITE", "1 2 3", "-1 INVITE", "2147483648 INVITE", "\u00b2 INVITE"):
        with pytest.raises(SipParseError):
            parse_cseq(bad)


# -- a new tag on a known From: the short way agrees with the full parser ----

_PIECES = st.sampled_from(['"Al ice" ', "Bob ", "", "<", ">", "sip:", "1001@", "198.18.0.5",
                           ":5060", ";user=phone", ";tag=", ";TAG=", ";x", "=y", " ", '"',
                           ",", "a", "1r2", "~"])


_DISPLAY = st.sampled_from(["", '"Al ice" ', "Bob ", '"a\\"b" ', "Bob Smith "])
_URI = st.sampled_from(["sip:1001@198.18.0.5", "sip:1001@198.18.0.5:5060;user=phone",
                        "sips:a@[2001:2::1]", "tel:+15551234", "sip:x"])
_PARAMS = st.lists(st.sampled_from([";x", ";x=y", " ;y=1", ";tag=old", ";Tag=z", ';q="a;tag=b"']),
                   max_size=3)


@st.composite
def name_addrs(draw: st.DrawFn) -> list[str]:
    """Mostly well formed: display, <URI> or a bare URI, parameters."""
    uri = draw(_URI)
    head = draw(_DISPLAY) + "<" + uri + ">" if draw(st.booleans()) else uri
    return [head, *draw(_PARAMS)]


@given(st.one_of(st.lists(_PIECES, max_size=10), name_addrs()),
       st.text(alphabet="ab1-.~!%*_+`'\" ;", max_size=6))
@settings(max_examples=3000, deadline=None)
def test_a_new_tag_on_a_known_name_addr_parses_as_the_full_parser_does(pieces: list[str],
                                                                       tag: str) -> None:
    text = "".join(pieces) + ";tag=" + tag
    try:
        full = _parse_name_addr(text, "From")
    except SipParseError:
        full = None
    try:
        short = _with_new_tag(text, "From")
    except SipParseError:
        assert full is None, f"the short way refused what the full parser takes: {text!r}"
        return
    if short is None:
        return   # not of that shape: the full parser alone decides
    assert full is not None, f"the short way took what the full parser refuses: {text!r}"
    assert (short.display, short.uri_text, short.params, short.text) == \
        (full.display, full.uri_text, full.params, full.text)


# -- a plain parameter list: the one-match way agrees with the general parser --

@given(st.lists(st.sampled_from([";", "=", "a", "B", "1", ".", "-", "~", "!", "%", "*", "_",
                                 "+", "`", "'", " ", "\t", '"', "[", "]", ":", ",", "\u00e9"]),
                max_size=16))
@settings(max_examples=3000, deadline=None)
def test_plain_parameters_parse_as_the_general_parser_does(pieces: list[str]) -> None:
    text = "x" + "".join(pieces)
    try:
        general: dict[str, str | None] | None = general_params(text, 1, "Via")
    except SipParseError:
        general = None
    try:
        plain: dict[str, str | None] | None = parse_params(text, 1, "Via")
    except SipParseError:
        plain = None
    assert plain == general, text
