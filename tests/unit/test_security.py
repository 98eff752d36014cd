"""The defences, sans-IO on virtual time: Record-Route tokens, per-source
rates and bans, failed-authentication limits, and the authenticator's
digest hardening."""

from __future__ import annotations

import hashlib

from hasip.auth.authenticator import AUTHENTICATED, BAD, CHALLENGE, FORBIDDEN, Authenticator
from hasip.auth.digest import NonceManager, make_ha1
from hasip.auth.users import LocalUsers
from hasip.security.authfail import AuthFailures
from hasip.security.guard import AUTH, BANNED, LIFTED, RATE, Ban, SourceGuard
from hasip.security.routetoken import RouteSigner
from hasip.sip.message import Request, parse_message

# -- Record-Route tokens -------------------------------------------------------------


def test_a_token_proves_the_dialog_from_either_end() -> None:
    signer = RouteSigner(b"cluster secret")
    token = signer.token("call-1@host", "caller-tag")
    # The caller's in-dialog requests: its tag is the From tag...
    assert signer.verify("call-1@host", "caller-tag", "callee-tag", token)
    # ...the callee's (BYE, NOTIFY): the caller's tag is the To tag.
    assert signer.verify("call-1@host", "callee-tag", "caller-tag", token)
    # Another node with the same secret checks it (the one taking a VIP over).
    assert RouteSigner(b"cluster secret").verify("call-1@host", "x", "caller-tag", token)


def test_a_made_up_tag_or_token_proves_nothing() -> None:
    signer = RouteSigner(b"cluster secret")
    token = signer.token("call-1@host", "caller-tag")
    assert not signer.verify("call-2@host", "caller-tag", "t", token)      # other Call-ID
    assert not signer.verify("call-1@host", "made-up", "anything", token)  # other tags
    assert not RouteSigner(b"another secret").verify("call-1@host", "caller-tag", "t", token)
    for junk in ("", "0" * 16, token[:-1], token + "0", "\u00e9" * 16, "zz" * 8):
        assert not signer.verify("call-1@host", "caller-tag", "t", junk)


# -- per-source rates and bans ----------------------------------------------------------


def make_guard(**kw: float) -> tuple[SourceGuard, list[tuple[str, Ban, bool]]]:
    events: list[tuple[str, Ban, bool]] = []
    guard = SourceGuard("n1", rate=kw.get("rate", 10.0), burst=int(kw.get("burst", 20)),
                        ban_time=kw.get("ban_time", 60.0),
                        max_ban_time=kw.get("max_ban_time", 600.0),
                        exempt=lambda ip: ip.startswith("10."),
                        max_sources=int(kw.get("max_sources", 1000)))
    guard.subscribers.append(lambda op, ban, local: events.append((op, ban, local)))
    return guard, events


def test_a_burst_then_the_rate_then_a_ban() -> None:
    guard, events = make_guard(rate=10, burst=20)
    now = 100.0
    assert all(guard.allow("192.0.2.1", now) for _ in range(20))   # the burst
    for _ in range(50):                                             # 10/s is fine
        now += 0.1
        assert guard.allow("192.0.2.1", now)
    assert not guard.allow("192.0.2.1", now)                        # over it
    assert [(op, b.ip, b.reason) for op, b, _ in events] == [(BANNED, "192.0.2.1", RATE)]
    # Banned: dropped for ban_time, whatever it sends; others are not.
    assert not guard.allow("192.0.2.1", now + 59)
    assert guard.allow("192.0.2.2", now + 59)
    assert guard.allow("192.0.2.1", now + 61)


def test_bans_grow_for_a_source_that_comes_back() -> None:
    guard, _ = make_guard(ban_time=60, max_ban_time=200)
    lengths = []
    now = 0.0
    for _ in range(4):
        ban = guard.ban("192.0.2.9", now, AUTH)
        assert ban is not None
        lengths.append(ban.until - now)
        now = ban.until + 1
    assert lengths == [60, 120, 200, 200]
    # Quiet for max_ban_time: back to one strike.
    ban = guard.ban("192.0.2.9", now + 200, AUTH)
    assert ban is not None and ban.strikes == 1


def test_exempt_sources_are_never_banned() -> None:
    guard, events = make_guard(rate=1, burst=1)
    assert all(guard.allow("10.0.0.1", float(i) / 1000) for i in range(1000))
    assert guard.ban("10.0.0.1", 1.0, AUTH) is None
    assert events == []


def test_a_lift_and_a_peer_s_ban() -> None:
    guard, events = make_guard()
    guard.ban("192.0.2.1", 0.0, AUTH)
    assert guard.banned("192.0.2.1", 1.0)
    assert guard.lift("192.0.2.1", 1.0)
    assert not guard.banned("192.0.2.1", 1.0) and guard.allow("192.0.2.1", 1.0)
    assert [op for op, _, _ in events] == [BANNED, LIFTED]
    # A peer's ban applies (dropped here too) and is not sent on as ours.
    peer_version = guard.version + 5
    peer = Ban("192.0.2.7", 100.0, 1, RATE, peer_version, "n2")
    assert guard.apply(BANNED, peer, 1.0)
    assert not guard.allow("192.0.2.7", 2.0)
    assert events[-1][2] is False
    # An older change of the same address loses (the Lamport rule).
    stale = Ban("192.0.2.7", 0.0, 1, RATE, 1, "n3")
    assert not guard.apply(LIFTED, stale, 3.0)
    assert guard.banned("192.0.2.7", 3.0)
    # Our own next change is numbered past the peer's.
    assert guard.lift("192.0.2.7", 4.0) and guard.version > peer_version


def test_memory_is_bounded_under_a_flood_from_many_addresses() -> None:
    guard, _ = make_guard(max_sources=500)
    for i in range(20_000):
        guard.allow(f"198.18.{i // 256 % 256}.{i % 256}", 1.0 + i * 1e-6)
        assert guard.tracked() <= 500
    for i in range(2000):
        guard.ban(f"203.0.113.{i % 256}-{i}", 2.0, RATE)
    assert len(guard.active(2.0)) <= 500


def test_a_change_of_the_exempt_sources_is_seen_at_once() -> None:
    exempt: set[str] = set()
    guard = SourceGuard("n1", 1.0, 1, 60.0, 600.0, lambda ip: ip in exempt)
    assert guard.allow("192.0.2.5", 0.0)
    assert not guard.allow("192.0.2.5", 0.0)         # over its rate: banned
    exempt.add("192.0.2.5")                          # an Asterisk node added live
    guard.exempt_changed()
    assert all(guard.allow("192.0.2.5", 0.0) for _ in range(10))


# -- failed authentications ---------------------------------------------------------------


def test_a_source_that_guesses_is_to_be_banned() -> None:
    failures = AuthFailures(source_limit=3, window=60, user_limit=100)
    assert not failures.failed("192.0.2.1", "1001", 0.0)
    assert not failures.failed("192.0.2.1", "1002", 1.0)
    assert failures.failed("192.0.2.1", "1003", 2.0)
    # Outside the window the count starts again.
    assert not failures.failed("192.0.2.2", "1001", 0.0)
    assert not failures.failed("192.0.2.2", "1001", 100.0)


def test_a_user_guessed_from_many_addresses_backs_off() -> None:
    failures = AuthFailures(source_limit=0, user_limit=3, backoff=2.0, max_backoff=16.0)
    for i in range(3):
        failures.failed(f"192.0.2.{i}", "1001", 0.0)
    assert failures.user_wait("1001", 0.0) == 2.0
    assert failures.user_wait("1001", 2.0) == 0.0          # one try after the back-off...
    failures.failed("192.0.2.9", "1001", 2.0)
    assert failures.user_wait("1001", 2.0) == 4.0          # ...doubling
    now = 6.0
    for _ in range(10):
        failures.failed("192.0.2.9", "1001", now)
        now += failures.user_wait("1001", now)
    assert failures.user_wait("1001", now - 1) <= 16.0     # capped
    assert failures.user_wait("1002", now) == 0.0           # other users are not held
    failures.succeeded("1001")
    assert failures.user_wait("1001", now) == 0.0


# -- the authenticator --------------------------------------------------------------------

REALM = "hasip"


def users_file(tmp_path: object) -> LocalUsers:
    from pathlib import Path

    path = Path(str(tmp_path)) / "users"
    path.write_text(f"1001:{REALM}:{make_ha1('MD5', '1001', REALM, 'secret')}\n"
                    f"1001:{REALM}:{make_ha1('SHA-256', '1001', REALM, 'secret')}\n")
    return LocalUsers(str(path))


def credentials(nonce: str, uri: str, password: str = "secret", algorithm: str = "MD5",
                nc: str = "00000001", method: str = "INVITE") -> str:
    h = hashlib.md5 if algorithm == "MD5" else hashlib.sha256

    def hx(text: str) -> str:
        return h(text.encode()).hexdigest()

    ha1 = hx(f"1001:{REALM}:{password}")
    response = hx(f"{ha1}:{nonce}:{nc}:c0ffee:auth:{hx(f'{method}:{uri}')}")
    return (f'Proxy-Authorization: Digest username="1001", realm="{REALM}", nonce="{nonce}", '
            f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, '
            f'nc={nc}, cnonce="c0ffee"\r\n')


def invite(uri: str, *auth: str) -> Request:
    msg = parse_message((f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
                         "From: <sip:1001@hasip>;tag=a\r\nTo: <sip:1002@hasip>\r\nCall-ID: c\r\n"
                         "CSeq: 1 INVITE\r\n" + "".join(auth) + "Content-Length: 0\r\n\r\n"
                         ).encode())
    assert isinstance(msg, Request)
    return msg


def make_auth(tmp_path: object, algorithms: list[str] | None = None,
              **kw: int) -> tuple[Authenticator, list[str]]:
    banned: list[str] = []
    auth = Authenticator(NonceManager(b"s", slots=1024), users_file(tmp_path),
                         algorithms or ["MD5"],
                         failures=AuthFailures(source_limit=kw.get("source_limit", 3),
                                               user_limit=kw.get("user_limit", 100)),
                         on_source_limit=lambda ip, now: banned.append(ip))
    return auth, banned


def test_a_credential_for_another_number_places_no_call(tmp_path: object) -> None:
    auth, _ = make_auth(tmp_path)
    nonce = auth.nonces.issue()
    req = invite("sip:0900123456@hasip", credentials(nonce, "sip:1002@hasip"))
    verdict = auth.check(req, True, REALM, "1001", "192.0.2.1", 0.0)
    assert verdict.kind == BAD and verdict.status == 400     # type: ignore[union-attr]
    # The same number, written differently (a parameter dropped): fine.
    req = invite("sip:1002@hasip;user=phone", credentials(nonce, "sip:1002@hasip"))
    assert auth.check(req, True, REALM, "1001").kind == AUTHENTICATED  # type: ignore[union-attr]


def test_a_replayed_credential_is_refused_after_it_was_used(tmp_path: object) -> None:
    auth, _ = make_auth(tmp_path)
    nonce = auth.nonces.issue()
    line = credentials(nonce, "sip:1002@hasip")
    assert auth.check(invite("sip:1002@hasip", line), True, REALM, "1001").kind == AUTHENTICATED  # type: ignore[union-attr]
    again = auth.check(invite("sip:1002@hasip", line), True, REALM, "1001")
    assert again.kind == CHALLENGE and again.result == "replayed"  # type: ignore[union-attr]


def test_wrong_guesses_ban_the_source_and_use_up_no_count(tmp_path: object) -> None:
    auth, banned = make_auth(tmp_path, source_limit=3)
    nonce = auth.nonces.issue()
    for i in range(3):
        bad = credentials(nonce, "sip:1002@hasip", password=f"guess{i}", nc=f"{i + 1:08x}")
        verdict = auth.check(invite("sip:1002@hasip", bad), True, REALM, "1001", "192.0.2.66",
                             float(i))
        assert verdict.kind == CHALLENGE and verdict.result == "wrong_password"  # type: ignore[union-attr]
    assert banned == ["192.0.2.66"]
    # The guesses used no count: the owner's first count still works.
    good = credentials(nonce, "sip:1002@hasip")
    assert auth.check(invite("sip:1002@hasip", good), True, REALM, "1001").kind == AUTHENTICATED  # type: ignore[union-attr]


def test_a_user_in_back_off_is_refused_unchecked(tmp_path: object) -> None:
    auth, _ = make_auth(tmp_path, source_limit=0, user_limit=2)
    for i in range(2):
        nonce = auth.nonces.issue()
        auth.check(invite("sip:1002@hasip", credentials(nonce, "sip:1002@hasip", "nope")),
                   True, REALM, "1001", f"198.51.100.{i}", 10.0)
    nonce = auth.nonces.issue()
    right = invite("sip:1002@hasip", credentials(nonce, "sip:1002@hasip"))
    verdict = auth.check(right, True, REALM, "1001", "198.51.100.9", 10.5)
    assert verdict.kind == FORBIDDEN and verdict.result == "backoff"  # type: ignore[union-attr]
    assert any(h.startswith(b"Retry-After: ") for h in verdict.headers or [])  # type: ignore[union-attr]
    # After the back-off the right password gets in.
    assert auth.check(right, True, REALM, "1001", "198.51.100.9", 13.0).kind == AUTHENTICATED  # type: ignore[union-attr]


def test_the_strongest_algorithm_offered_wins(tmp_path: object) -> None:
    auth, _ = make_auth(tmp_path, algorithms=["MD5", "SHA-256"])
    nonce = auth.nonces.issue()
    # MD5 credentials with a wrong password and right SHA-256 ones: SHA-256 is checked.
    req = invite("sip:1002@hasip", credentials(nonce, "sip:1002@hasip", "wrong", "MD5"),
                 credentials(nonce, "sip:1002@hasip", "secret", "SHA-256"))
    assert auth.check(req, True, REALM, "1001").kind == AUTHENTICATED  # type: ignore[union-attr]
    nonce = auth.nonces.issue()
    req = invite("sip:1002@hasip", credentials(nonce, "sip:1002@hasip", "secret", "MD5"),
                 credentials(nonce, "sip:1002@hasip", "wrong", "SHA-256"))
    verdict = auth.check(req, True, REALM, "1001")
    assert verdict.kind == CHALLENGE and verdict.result == "wrong_password"  # type: ignore[union-attr]
