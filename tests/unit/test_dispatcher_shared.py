"""The shared dispatcher document: lines written by one node read back the
same by another; a document that cannot be used is refused with the reason."""

from __future__ import annotations

import json

import pytest

from hasip.dispatcher.destinations import format_line, parse_list
from hasip.dispatcher.dispatcher import DispatcherError
from hasip.dispatcher.shared import FORMAT, decode, encode


def test_a_destination_survives_the_trip_through_the_document() -> None:
    [dest] = parse_list("2 sip:192.0.2.21:5080;transport=tcp 0 7 "
                        "weight=50;maxload=10;socket=udp:192.0.2.1:5060;description=ast 1")
    data = encode({"format": FORMAT, "destinations": [format_line(dest)],
                   "states": {"2 sip:192.0.2.21:5080;transport=tcp": ["disabled", 3]}})
    [back], states = decode(data, "zk")
    assert (back.set_id, back.key, back.priority, back.weight, back.max_calls, back.socket,
            back.description) == (2, dest.key, 7, 50, 10, "udp:192.0.2.1:5060", "ast 1")
    assert states == {"2 sip:192.0.2.21:5080;transport=tcp": ("disabled", 3)}


@pytest.mark.parametrize(("doc", "fault"), [
    (b"{not json", "not JSON"),
    (json.dumps({"format": 99}).encode(), "not a format 1"),
    (json.dumps({"format": 1, "destinations": "1 sip:a"}).encode(), "list of lines"),
    (json.dumps({"format": 1, "destinations": ["x sip:a"]}).encode(), "zk:1: expected SETID"),
    (json.dumps({"format": 1, "destinations": [],
                 "states": {"1 sip:a": ["asleep", 1]}}).encode(), "[STATE, SERIAL]"),
])
def test_an_unusable_document_is_refused_with_the_reason(doc: bytes, fault: str) -> None:
    with pytest.raises(DispatcherError, match=fault.replace("[", r"\[").replace("]", r"\]")):
        decode(doc, "zk")
