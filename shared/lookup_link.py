"""The signed link to one ticket's public progress: `/console/lookup?t=<ticket_no>&e=<day>&s=<sig>`.

A resident who appealed by WeChat left no phone, so the lookup page's last four digits cannot stand
for them; the WeChat template message and the answer to 查询 in the chat carry this link instead,
and whoever holds it sees what the page shows after a lookup (status and steps, nothing personal).

A link lives `LOOKUP_LINK_DAYS`: `e` is the last day it opens, as a unix day number (days since
1970-01-01 UTC), and it is signed with the number, so editing it breaks the signature. A link
forwarded or left in a chat history stops showing the ticket; the resident gets a fresh one by
sending 查询 in the chat. A link without `e` was made before links expired, and is told as expired.

`sig` is the first 16 hex characters (64 bits) of an HMAC-SHA256 of the number and the day: too many
to guess at the lookup's rate limit. Its key is derived from `CALLER_ID_SALT` under a label of its
own, so the caller-id hash (`shared.privacy.caller_id`) and the link never share a key; changing the
salt ends every link (the page then asks for the number and digits). Pure: no I/O, and the day is
always the caller's to give.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from urllib.parse import urlencode, urlsplit, urlunsplit

from shared.settings import Settings, get_settings

SIG_CHARS = 16
DAY_SECONDS = 86_400
# Names the key's use: another use of the salt derives another key under another label. v2 signs
# the number with its expiry day; the new label keeps a v1 signature (the number alone) from ever
# being checked under the key that signs v2 messages.
_LABEL = b"appeals/console-lookup-link/v2"
# A day as `expiry_day` writes it: no sign, no leading zero, and six digits last until the year 4707,
# so a link cannot make us parse a huge number.
_DAY = re.compile(r"[1-9][0-9]{0,5}")


class LinkState(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"  # signed by us, past its day, or from before links had one
    INVALID = "invalid"  # not signed by us for this number and day: edited, cut, made up


def link_key(salt: str) -> bytes:
    """The links' key for a salt (HMAC of the label, keyed by the salt)."""
    return hmac.new(salt.encode(), _LABEL, hashlib.sha256).digest()


@lru_cache(maxsize=1)
def _key() -> bytes:
    return link_key(get_settings().caller_id_salt)


def day_number(now: float) -> int:
    """The unix day (UTC) of a unix time: what `e` counts in."""
    return int(now // DAY_SECONDS)


def sign(ticket_no: str, expires: int, key: bytes | None = None) -> str:
    """The signature of the link to `ticket_no` (as the ticket store spells it, 20261201-000123)
    that opens through day `expires`. A newline cannot be in a ticket number, so no other number
    and day spell the same message."""
    message = f"{ticket_no}\n{expires}".encode()
    return hmac.new(key or _key(), message, hashlib.sha256).hexdigest()[:SIG_CHARS]


def check(ticket_no: str, expires: str, sig: str, today: int, key: bytes | None = None) -> LinkState:
    """What a link's `t`, `e` and `s` are worth on day `today`. The signature is compared in constant
    time, and only a link whose signature holds is told as expired: an edited day is invalid."""
    if not expires:
        return LinkState.EXPIRED  # made before links carried a day: it never expired, so now it has
    if not _DAY.fullmatch(expires):
        return LinkState.INVALID
    day = int(expires)
    if not hmac.compare_digest(sign(ticket_no, day, key).encode(), sig.encode()):
        return LinkState.INVALID
    return LinkState.VALID if today <= day else LinkState.EXPIRED


def params(ticket_no: str, today: int, days: int, key: bytes | None = None) -> dict[str, str]:
    """The query of a link to `ticket_no` made on `today` that opens for `days` days, today included."""
    expires = today + days - 1
    return {"t": ticket_no, "e": str(expires), "s": sign(ticket_no, expires, key)}


def ticket_url(page: str, query: dict[str, str]) -> str:
    """`page` with the link's query added (after what it has), before any fragment."""
    parts = urlsplit(page)
    added = urlencode(query)
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


@dataclass(frozen=True)
class LookupLinks:
    """How links to tickets are made: the page they open (`WECHAT_TEMPLATE_URL`, the console's public
    `/console/lookup`), the key, and how many days a link opens."""

    page: str
    days: int
    key: bytes = field(repr=False)

    def url(self, ticket_no: str, today: int) -> str:
        return ticket_url(self.page, params(ticket_no, today, self.days, self.key))


def check_page(url: str) -> str:
    """`url` when it may be a link's page (an http(s) URL, or empty: none). It goes into a chat's
    text as it is, so anything that would end the link there is refused too. Raises ValueError
    naming the setting."""
    if url and (not url.startswith(("http://", "https://")) or re.search(r"[\s\"'<>]", url)):
        raise ValueError(f"WECHAT_TEMPLATE_URL {url!r}: expected an http(s) URL, or empty")
    return url


def lookup_links(settings: Settings) -> LookupLinks | None:
    """The links of these settings, or None when the public page is not known. Raises ValueError
    naming a page that is no URL."""
    page = check_page(settings.wechat_template_url)
    if not page:
        return None
    return LookupLinks(page, settings.lookup_link_days, link_key(settings.caller_id_salt))
