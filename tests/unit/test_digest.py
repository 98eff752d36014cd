"""Digest authentication: RFC 2617 / RFC 7616 test vectors, nonces, replay."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasip.auth.digest import (
    INVALID,
    MAX_NONCE_COUNT,
    REPLAYED,
    STALE,
    VALID,
    Credentials,
    CredentialsError,
    NonceManager,
    _general_params,
    _plain_params,
    challenge,
    expected_response,
    hash_hex,
    make_ha1,
    parse_credentials,
    response_matches,
)


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_section_3_9_1_vectors(algorithm: str, expected: str) -> None:
    creds = Credentials("Mufasa", "http-auth@example.org",
                        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "/dir/index.html", "",
                        algorithm, "auth", "00000001",
                        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    ha1 = make_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    assert expected_response(creds, ha1, "GET") == expected


def test_rfc2617_section_3_5_vector_through_the_parser() -> None:
    creds = parse_credentials(
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
        'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    ha1 = make_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    assert response_matches(creds, ha1, "GET")
    assert not response_matches(creds, ha1, "POST")


def test_parser_unescapes_quoted_values_and_defaults_to_md5() -> None:
    creds = parse_credentials('Digest username="a\\"b",realm="r",nonce="n",uri="sip:x",'
                              'response="AB"')
    assert creds.username == 'a"b'
    assert creds.algorithm == "MD5"
    assert creds.response == "ab"
    assert creds.qop is None


@pytest.mark.parametrize("value", [
    'Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==',
    'Digest username="a", realm="r"',
    'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
    'Digest username="a" realm',
])
def test_malformed_credentials_are_rejected(value: str) -> None:
    with pytest.raises(CredentialsError):
        parse_credentials(value)


def test_nonce_valid_then_stale_then_forged() -> None:
    nonces = NonceManager(b"k" * 32, lifetime=30, slots=1024)
    nonce = nonces.issue(now=1000)
    assert nonces.check(nonce, None, now=1010) == VALID
    assert nonces.check(nonce, None, now=1031) == STALE
    forged = nonce[:-1] + ("0" if nonce[-1] != "0" else "1")
    assert nonces.check(forged, None, now=1010) == INVALID
    assert nonces.check("abc", None, now=1010) == INVALID
    # Any 56 characters a phone can put there: invalid, never an exception.
    for junk in (nonce[:24] + "\u00e9" * 32, "\u00e9" * 56, "+0x1_" * 11 + "a",
                 "g" * 56, nonce[:8] + "zzzzzzzz" + nonce[16:]):
        assert nonces.check(junk, "00000001", now=1010) == INVALID


def test_another_node_s_nonce_is_stale_not_forged() -> None:
    """Nodes share the secret: a nonce of another node (or of this node
    before a restart) is the cluster's, so the client is told stale=true
    and takes a fresh one silently; a count it used there cannot be
    replayed here. Another secret's nonce is forged."""
    issued = NonceManager(b"cluster-secret", slots=1024).issue()
    assert NonceManager(b"cluster-secret", slots=1024).check(issued, "00000001") == STALE
    assert NonceManager(b"other-secret", slots=1024).check(issued, "00000001") == INVALID


def test_nonce_count_is_accepted_once() -> None:
    nonces = NonceManager(b"s", slots=1024)
    nonce = nonces.issue()
    assert nonces.check(nonce, "00000001") == VALID   # looking records nothing...
    assert nonces.check(nonce, "00000001") == VALID
    assert nonces.use(nonce, "00000001") == VALID     # ...using does
    assert nonces.use(nonce, "00000001") == REPLAYED
    assert nonces.check(nonce, "00000001") == REPLAYED
    assert nonces.use(nonce, "00000003") == VALID   # out of order is fine...
    assert nonces.use(nonce, "00000002") == VALID
    assert nonces.use(nonce, "00000002") == REPLAYED  # ...a repeat is not
    assert nonces.use(nonce, "zz") == INVALID
    assert nonces.use(nonce, "00000000") == REPLAYED


def test_nonce_counts_out_of_order_within_a_window_of_64() -> None:
    nonces = NonceManager(b"s", slots=1024)
    nonce = nonces.issue()
    assert nonces.use(nonce, f"{200:08x}") == VALID
    for count in range(199, 136, -1):          # the 63 counts below, once each
        assert nonces.use(nonce, f"{count:08x}") == VALID
        assert nonces.use(nonce, f"{count:08x}") == REPLAYED
    assert nonces.use(nonce, f"{136:08x}") == REPLAYED   # older than the window
    assert nonces.use(nonce, f"{300:08x}") == VALID       # a jump forward...
    assert nonces.use(nonce, f"{250:08x}") == VALID       # ...keeps the window below it
    assert nonces.use(nonce, f"{200:08x}") == REPLAYED


def test_a_nonce_used_past_its_count_limit_is_stale() -> None:
    nonces = NonceManager(b"s", slots=1024)
    nonce = nonces.issue()
    assert nonces.use(nonce, f"{MAX_NONCE_COUNT:08x}") == VALID
    assert nonces.use(nonce, f"{MAX_NONCE_COUNT + 1:08x}") == STALE


def test_a_used_count_never_becomes_valid_again() -> None:
    """The old table forgot its oldest nonces when full (200,000 entries,
    filled before the password was checked), so an attacker could flush it
    and replay a captured (nonce, nc). Now counts sit in fixed slots; asking
    for any number of new nonces makes an old one stale, never fresh."""
    nonces = NonceManager(b"s", slots=64)
    captured = nonces.issue()
    assert nonces.use(captured, "00000001") == VALID
    for _ in range(10 * 64):                 # the attacker asks for nonces and uses them
        nonces.use(nonces.issue(), "00000001")
        assert nonces.use(captured, "00000001") in (REPLAYED, STALE)
    assert nonces.use(captured, "00000001") == STALE
    assert nonces.use(captured, "00000002") == STALE


def test_looking_at_a_count_does_not_use_it() -> None:
    """Authenticator checks the nonce before the password and uses the count
    only after the password was proven: a guess records nothing."""
    nonces = NonceManager(b"s", slots=64)
    issued = [nonces.issue() for _ in range(10)]
    for nonce in issued:
        assert nonces.check(nonce, "00000001") == VALID     # the guesses
    for nonce in issued:
        assert nonces.use(nonce, "00000001") == VALID       # still unused
    # commit: the count of a nonce just checked, once.
    fresh = nonces.issue()
    assert nonces.check(fresh, "00000002") == VALID
    assert nonces.commit(fresh, "00000002") == VALID
    assert nonces.commit(fresh, "00000002") == REPLAYED


def test_challenge_text() -> None:
    text = challenge("hasip", "abc", "SHA-256", stale=True)
    assert text == 'Digest realm="hasip", nonce="abc", qop="auth", algorithm=SHA-256, stale=true'


# -- the plain-case parser agrees with the general one -----------------------

_NAMES = st.sampled_from(["username", "realm", "nonce", "uri", "response", "algorithm", "qop",
                          "nc", "cnonce", "opaque", "Username", "REALM", "stale", "auth-param"])
_VALUES = st.text(alphabet=st.sampled_from('ab09:@;.=/ ,"\\\t-\x0b\xa0'), max_size=12)
_SPACE = st.sampled_from(["", " ", "  ", "\t", "\x0b"])


@st.composite
def auth_params(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 10))):
        name, value = draw(_NAMES), draw(_VALUES)
        if draw(st.booleans()):
            value = '"' + value + '"'
        parts.append(f"{draw(_SPACE)}{name}{draw(_SPACE)}={draw(_SPACE)}{value}{draw(_SPACE)}")
    return ",".join(parts)


@given(auth_params())
@settings(max_examples=2000, deadline=None)
def test_the_plain_parser_agrees_with_the_general_one(rest: str) -> None:
    rest = rest.strip()
    plain = _plain_params(rest)
    if plain is None:
        return   # not the plain case: the general parser alone decides
    try:
        general = _general_params(rest)
    except CredentialsError:
        pytest.fail(f"plain parser accepted what the general one refuses: {rest!r}")
    assert plain == general


def test_hashes_text_as_the_octets_it_came_from() -> None:
    # A user name in UTF-8, and one in Latin-1 kept as surrogates when decoded.
    for raw in ("jos\u00e9".encode(), b"jos\xe9"):
        text = raw.decode("utf-8", "surrogateescape")
        assert hash_hex("MD5", f"{text}:hasip") == hashlib.md5(raw + b":hasip").hexdigest()
