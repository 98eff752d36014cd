"""The control API's access rules (hasip/app/controlauth.py), without sockets."""

from __future__ import annotations

import pytest

from hasip.app.config import ControlConfig
from hasip.app.controlauth import AccessPolicy, Refusal, json_type, split_host

FULL_TOKEN = "f" * 32
READ_TOKEN = "r" * 32


def policy(listen: tuple[str, int] = ("127.0.0.1", 9061), **kwargs: object) -> AccessPolicy:
    config = ControlConfig(listen=listen, token=FULL_TOKEN, read_token=READ_TOKEN,
                           **kwargs)  # type: ignore[arg-type]
    return AccessPolicy(config, listen)


def headers(token: str | None = FULL_TOKEN, host: str | None = "127.0.0.1:9061",
            **extra: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if host is not None:
        out["host"] = [host]
    if token is not None:
        out["authorization"] = [f"Bearer {token}"]
    for name, value in extra.items():
        out[name.replace("_", "-")] = [value]
    return out


def status(decision: Refusal | str) -> int | str:
    return decision.status if isinstance(decision, Refusal) else decision


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9061", ("127.0.0.1", 9061)), ("127.0.0.1", ("127.0.0.1", None)),
     ("[::1]:9061", ("::1", 9061)), ("[::1]", ("::1", None)), ("Name.Example", ("name.example",
                                                                               None)),
     ("::1", None), ("[::1", None), ("[::1]x", None), ("host:", None), ("host:99999", None),
     (":9061", None), ("", None), ("host:9o61", None)],
)
def test_split_host(value: str, expected: tuple[str, int | None] | None) -> None:
    assert split_host(value) == expected


def test_hosts_that_name_this_node_and_those_that_do_not() -> None:
    p = policy(hosts=["hasip-1.example.net"])
    for ok in ("127.0.0.1:9061", "127.0.0.1", "localhost", "LOCALHOST:9061",
               "hasip-1.example.net:9061", "hasip-1.example.net"):
        assert p.host_allowed(ok), ok
    for bad in ("evil.example", "evil.example:9061", "127.0.0.1:9062", "127.0.0.2:9061",
                "hasip-1.example.net:80", "localhost.evil.example", "[::1]:9061"):
        assert not p.host_allowed(bad), bad
    wildcard = policy(("0.0.0.0", 9061))
    # any IP literal (which DNS cannot re-point), never a foreign name
    assert wildcard.host_allowed("198.18.0.11:9061") and wildcard.host_allowed("[::1]:9061")
    assert not wildcard.host_allowed("evil.example:9061")
    v6 = policy(("::1", 9061))
    assert v6.host_allowed("[::1]:9061") and v6.host_allowed("[0:0::1]")


def test_the_order_of_the_checks_and_their_answers() -> None:
    p = policy(origins=["https://ops.example.net"])
    assert status(p.check("GET", headers())) == "full"
    assert status(p.check("GET", headers(READ_TOKEN))) == "read"
    assert status(p.check("GET", headers(host=None))) == 400
    assert status(p.check("GET", {**headers(), "host": ["a", "b"]})) == 400
    # Host first: a rebinding page learns nothing else, not even whether a token works
    assert status(p.check("GET", headers(None, host="evil.example"))) == 421
    assert status(p.check("GET", headers(origin="https://evil.example"))) == 403
    assert status(p.check("GET", headers(origin="null"))) == 403
    assert status(p.check("GET", headers(origin="https://OPS.example.net/"))) == "full"
    for refused in (headers(None), headers("x" * 32), headers(FULL_TOKEN[:-1]),
                    headers(FULL_TOKEN + "x"), {**headers(None), "authorization": [FULL_TOKEN]},
                    {**headers(None), "authorization": [f"Basic {FULL_TOKEN}"]},
                    {**headers(), "authorization": [f"Bearer {FULL_TOKEN}"] * 2}):
        decision = p.check("GET", refused)
        assert isinstance(decision, Refusal) and decision.status == 401
        assert decision.message == p.check("GET", headers(None)).message   # type: ignore
        assert FULL_TOKEN not in decision.reason
    assert status(p.check("GET", {**headers(None), "authorization": [f"bearer {FULL_TOKEN}"]})
                  ) == "full"
    json_post = headers(content_type="application/json")
    assert status(p.check("POST", json_post)) == "full"
    assert status(p.check("POST", headers(READ_TOKEN, content_type="application/json"))) == 403
    assert status(p.check("POST", headers())) == 415
    assert status(p.check("POST", headers(content_type="text/plain"))) == 415
    assert status(p.check("POST", {**json_post, "content-type": ["application/json"] * 2})) == 415


def test_no_token_configured_lets_nobody_in() -> None:
    empty = AccessPolicy(ControlConfig(listen=("127.0.0.1", 9061)), ("127.0.0.1", 9061))
    assert status(empty.check("GET", {"host": ["127.0.0.1"], "authorization": ["Bearer "]})
                  ) == 401


@pytest.mark.parametrize(
    ("value", "ok"),
    [("application/json", True), ("Application/JSON", True),
     ("application/json; charset=utf-8", True), ('application/json;charset="UTF-8"', True),
     ("application/json; charset=latin-1", False), ("application/json; boundary=x", False),
     ("text/plain", False), ("application/x-www-form-urlencoded", False),
     ("multipart/form-data; boundary=x", False), ("application/jsonx", False), ("", False)],
)
def test_json_content_types(value: str, ok: bool) -> None:
    assert json_type(value) is ok
