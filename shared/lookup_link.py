"""The signed link to one ticket's public progress: `/console/lookup?t=<ticket_no>&s=<sig>`.

A resident who appealed by WeChat left no phone, so the lookup page's last four digits cannot stand
for them; the WeChat template message carries this link instead, and whoever holds it sees what the
page shows after a lookup (status and steps, nothing personal). `sig` is the first 16 hex
characters (64 bits) of an HMAC-SHA256 of the ticket number: too many to guess at the lookup's rate
limit. Its key is derived from `CALLER_ID_SALT` under a label of its own, so the caller-id hash
(`shared.privacy.caller_id`) and the link never share a key; changing the salt ends every link
(the page then asks for the number and digits). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from shared.settings import get_settings

SIG_CHARS = 16
# Names the key's use: another use of the salt derives another key under another label.
_LABEL = b"appeals/console-lookup-link/v1"


def link_key(salt: str) -> bytes:
    """The links' key for a salt (HMAC of the label, keyed by the salt)."""
    return hmac.new(salt.encode(), _LABEL, hashlib.sha256).digest()


@lru_cache(maxsize=1)
def _key() -> bytes:
    return link_key(get_settings().caller_id_salt)


def sign(ticket_no: str, key: bytes | None = None) -> str:
    """The signature of the link to `ticket_no` (as the ticket store spells it, 20261201-000123)."""
    return hmac.new(key or _key(), ticket_no.encode(), hashlib.sha256).hexdigest()[:SIG_CHARS]


def verified(ticket_no: str, sig: str, key: bytes | None = None) -> bool:
    """Whether `sig` signs `ticket_no`, compared in constant time."""
    return hmac.compare_digest(sign(ticket_no, key).encode(), sig.encode())
