"""One INVITE dialog as the proxy sees it (RFC 3261 12), sans-IO: what the
dialog store keeps, what replication will stream and a CDR will record.

A dialog is created when an authenticated initial INVITE is relayed (state
``early``), confirmed by the first 2xx (``confirmed``) and ended by a BYE, a
failed or cancelled INVITE, or its timeout (``terminated``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hasip.util.ids import id_maker

EARLY = "early"
CONFIRMED = "confirmed"
TERMINATED = "terminated"

# Why a dialog ended (the CDR's and the metric's label).
ENDED_BYE = "bye"
ENDED_FAILED = "failed"          # a final answer >= 300 to the INVITE
ENDED_CANCELLED = "cancelled"    # the caller cancelled (487)
ENDED_TIMEOUT = "timeout"        # dialog.timeout passed without a BYE
ENDED_KEEPALIVE = "keepalive"    # an end stopped answering in-dialog OPTIONS (or said 481)

# Dialog ids, unique across the cluster.
new_dialog_id = id_maker("dl")


@dataclass(slots=True, eq=False)
class Dialog:
    call_id: str
    from_tag: str
    from_uri: str
    to_uri: str
    request_uri: str
    caller_contact: str = ""
    caller_cseq: int = 0
    to_tag: str = ""                 # the callee's, from the 2xx
    callee_contact: str = ""
    callee_cseq: int = 0
    route_set: tuple[str, ...] = ()  # the 2xx's Record-Route lines (unsplit), callee side first
    state: str = EARLY
    ds_set: int = 0                  # the dispatcher destination it went to (0: none)
    ds_uri: str = ""
    socket: str = ""                 # our socket (VIP, port, transport) it arrived on
    nat: bool = False                # caller or callee behind NAT (media relay)
    user: str = ""                   # the authenticated caller, if any
    started: float = 0.0             # seconds since the epoch
    answered: float = 0.0
    ended: float = 0.0
    end_reason: str = ""
    end_status: int = 0              # the final status of a failed INVITE
    expires: float = 0.0             # ended by timeout at this time
    # The media relay: the rtpengine instance holding the call's sessions
    # ("" when its media is not relayed), whether the offer came in the 2xx
    # (a late offer: the ACK carries the answer), and the figures rtpengine
    # gave when the session was deleted (for the CDR).
    media: str = ""
    media_late: bool = False
    media_packets: int = 0
    media_bytes: int = 0
    media_errors: int = 0
    media_lost: int = 0
    media_jitter: int = 0
    media_mos: float = 0.0
    id: str = field(default_factory=new_dialog_id)
    version: int = 0                 # change-feed sequence number of the last change
    node: str = ""                   # the node that made the last change

    @property
    def active(self) -> bool:
        return self.state != TERMINATED

    def matches(self, from_tag: str | None, to_tag: str | None) -> bool:
        """An in-dialog request in either direction: the caller's keeps the
        tags, the callee's swaps them. Before the 2xx the To tag is unknown
        and any matches (an early dialog's in-dialog requests: PRACK, UPDATE)."""
        if from_tag == self.from_tag:
            return not self.to_tag or to_tag == self.to_tag or to_tag is None
        return to_tag == self.from_tag and (not self.to_tag or from_tag == self.to_tag)

    def duration(self) -> float:
        """Seconds from answer to end (0 for an unanswered call)."""
        if not self.answered:
            return 0.0
        return max(0.0, (self.ended or self.answered) - self.answered)
