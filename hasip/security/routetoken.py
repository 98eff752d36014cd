"""Record-Route tokens: proof that an in-dialog request belongs to a dialog
this cluster set up (sans-IO).

Every Record-Route we add carries ``;hsd=TOKEN``: a 64-bit keyed BLAKE2b
MAC of the initial request's Call-ID and From tag under the cluster's
secret (``auth.secret``). The dialog's route set brings it back in every
in-dialog request, from either end: the caller's requests carry that tag as
their From tag, the callee's (BYE, re-INVITE, NOTIFY) as their To tag. So any
node holding the secret, the one that took a VIP over included, can tell
with no lookup and no state that a request with a To tag follows a route
set we recorded, for every kind of dialog (INVITE, SUBSCRIBE/NOTIFY, REFER).
A made-up To tag, or a Route naming us that we did not write, carries no
valid token and is refused.

What a token does not stop: a party of a real dialog may send its in-dialog
requests anywhere its Request-URI says (a remote target is the other end's
business, RFC 3261 12.2). It had to authenticate to set the dialog up, and
it may relay to the same places with an initial request.
"""

from __future__ import annotations

import hashlib
import hmac

# The Record-Route URI parameter that carries the token.
PARAM = "hsd"
PARAM_BYTES = b";hsd="


class RouteSigner:
    """Tokens for the dialogs a node record-routes, under one secret."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        # A key of its own, derived from the secret (the nonces use another).
        key = hashlib.blake2b(secret, digest_size=32, person=b"hasip-route").digest()
        self._keyed = hashlib.blake2b(key=key, digest_size=8)

    def token(self, call_id: str, tag: str) -> str:
        """The token of the dialog(s) that Call-ID and caller tag start.

        Both were decoded from latin-1, so latin-1 gives the octets back."""
        mac = self._keyed.copy()
        mac.update(call_id.encode("latin-1"))
        mac.update(b"\x00")
        mac.update(tag.encode("latin-1"))
        return mac.hexdigest()

    def verify(self, call_id: str, from_tag: str | None, to_tag: str | None,
               token: str) -> bool:
        """Whether ``token`` is the one we wrote for this dialog, whichever
        end sends the request (the caller's tag is From's or To's)."""
        if len(token) != 16 or not token.isascii():
            return False
        if from_tag and hmac.compare_digest(self.token(call_id, from_tag), token):
            return True
        return bool(to_tag) and hmac.compare_digest(self.token(call_id, to_tag or ""), token)
