"""Personal data: phone normalisation, masking and the stable caller id that replaces the number,
and the rule that removes a resident's personal data from events and tickets.

Phones and names are stored once, in the ticket store's contact records. Events, logs and the views
departments use carry `138****5678` and a salted hash instead.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from shared.settings import DEMO_CALLER_ID_SALT, Settings, get_settings
from shared.tickets import Ticket

_MOBILE = re.compile(r"^1[3-9]\d{9}$")
# Landline: area code 0 + 2-3 digits, then a 7-8 digit number; optional extension.
_LANDLINE = re.compile(r"^0\d{2,3}\d{7,8}$")


class InvalidPhone(ValueError):
    pass


def normalize_phone(raw: str) -> str:
    """Canonical form of a Chinese mobile (13812345678) or landline (010-62345678) number.

    Accepts spaces, dashes, parentheses, full-width digits and a +86/0086 prefix."""
    s = raw.strip().translate(_FULLWIDTH)
    s = re.sub(r"[\s\-()（）]", "", s)
    s = re.sub(r"^(\+86|0086)", "", s)
    if _MOBILE.match(s):
        return s
    if _LANDLINE.match(s):
        # Beijing, Shanghai, Tianjin, Chongqing and the 02x codes have 3-digit area codes.
        code_len = 3 if s[1] in "12" else 4
        return f"{s[:code_len]}-{s[code_len:]}"
    raise InvalidPhone(f"“{raw}”不是有效的手机号或固话号码")


_FULLWIDTH = str.maketrans("０１２３４５６７８９＋－", "0123456789+-")


def mask_phone(phone: str) -> str:
    """13812345678 -> 138****5678; 010-62345678 -> 010-****5678."""
    if "-" in phone:
        code, number = phone.split("-", 1)
        return f"{code}-****{number[-4:]}"
    return f"{phone[:3]}****{phone[-4:]}" if len(phone) >= 8 else "****"


# Numbers a resident or operator types into free text (an appeal's text, title or address, a survey
# reply): the caller's phone field is masked, but "请回电13812345678" in the text would otherwise go
# verbatim into events, Redis, the record and every department's screen. Found on a copy with
# full-width digits, separators and brackets made ASCII (one character for one, so the spans are the
# original's). Digit boundaries on both sides: a phone-shaped run inside a longer number (an order
# number, a bank reference) is that number, not a phone; a decimal point counts as a digit's
# neighbour too, so an amount's digits are never taken for a phone.
_TYPED_WIDTH = str.maketrans("０１２３４５６７８９＋－（）\u3000Ｘｘ", "0123456789+-() Xx")
_NOT_AFTER = r"(?<![0-9])(?<![0-9]\.)"
_NOT_BEFORE = r"(?![0-9])(?!\.[0-9])"
_SEP = r"[ -]?"
_PREFIX = r"(?:(?:\+|00)?86[ -]?)?"  # the country code; kept as typed
_TYPED_NUMBER = re.compile(
    _NOT_AFTER
    + "(?:"
    # Resident ID (居民身份证号): region, birth date, sequence, check digit (X for 10). The check
    # digit is not verified: a mistyped ID is still someone's. The date's shape is: an 18-digit
    # order number is not an ID.
    + r"(?P<id>[1-9][0-9]{5})"
    + _SEP
    + r"(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    + _SEP
    + r"(?P<id_end>[0-9]{3}[0-9Xx])"
    # Mobile: 1[3-9] and nine more, as 138 1234 5678 or 138-1234-5678 too, maybe after +86.
    + "|"
    + rf"(?P<to_mobile>{_PREFIX}|0)"  # 0: dialled as a long-distance call from a landline
    + r"(?P<mobile>1[3-9][0-9]"
    + _SEP
    + r"[0-9]{4}"
    + _SEP
    + r"[0-9]{4})"
    # Landline with its area code (010, 02x, then four-digit codes 03xx-09xx); a local number
    # has 7 or 8 digits, the first not 0: 010-12345678, 0571 8888 6666, (0571)88886666.
    + "|"
    + _PREFIX
    + r"\(?(?P<area>0(?:10|2[0-9]|[3-9][0-9]{2}))\)?"
    + _SEP
    + r"(?P<local>[1-9][0-9]{2,3}"
    + _SEP
    + r"[0-9]{4})"
    + ")"
    + _NOT_BEFORE
)


def _digits(s: str) -> str:
    return re.sub(r"[^0-9Xx]", "", s)


def _masked_number(m: re.Match[str], typed: str) -> str:
    """The number `m` found (on the ASCII copy of `typed`) as shown: what comes before the part
    masked stays as `typed` had it ("+86 ", "（0571）")."""
    if m["id"]:
        return f"{m['id']}{'*' * 8}{m['id_end']}"
    if m["mobile"]:
        return typed[m.start() : m.start("mobile")] + mask_phone(_digits(m["mobile"]))
    return f"{typed[m.start() : m.start('local')]}****{_digits(m['local'])[-4:]}"


def mask_typed_numbers(text: str) -> str:
    """`text` with the phone and ID numbers typed into it masked, the rest as it was: mobiles as
    `mask_phone` shows them (电话138 1234 5678 -> 电话138****5678), landlines keeping the area code
    and the last four digits (0571-8888 6666 -> 0571-****6666), resident IDs keeping the region and
    the last four (110105********002X). Dates, ticket numbers, house numbers, amounts, 12345 and
    longer runs of digits stay. Masking twice is masking once."""
    plain = text.translate(_TYPED_WIDTH)
    out: list[str] = []
    end = 0
    for m in _TYPED_NUMBER.finditer(plain):
        out += [text[end : m.start()], _masked_number(m, text)]
        end = m.end()
    return "".join(out) + text[end:] if out else text


def mask_openid(openid: str) -> str:
    """A WeChat openid (personal data: it reaches the user, and links their messages) as logs and
    records show it: oUse****r123, enough to tell two users apart in a log, not to write to one.
    Short values (never a real openid, 28 characters) show nothing."""
    return f"{openid[:4]}****{openid[-4:]}" if len(openid) >= 12 else "****"


def mask_name(name: str) -> str:
    """张三 -> 张*, 欧阳娜娜 -> 欧***."""
    name = name.strip()
    return name[:1] + "*" * (len(name) - 1) if name else ""


@lru_cache(maxsize=1)
def _salt() -> bytes:
    # CALLER_ID_SALT: there are only ~10^10 phone numbers, so an unsalted hash could be reversed.
    return get_settings().caller_id_salt.encode()


# Salts anyone can read (the code's default, the deploy examples' placeholder): with one of them, a
# ticket view's 138****5678 and caller_id give the number back after 10,000 guesses.
PUBLIC_SALTS = frozenset({DEMO_CALLER_ID_SALT, "replace-with-a-long-random-secret"})
# Words that mark a value copied from an example rather than generated.
PLACEHOLDER_WORDS = ("replace", "change", "example", "placeholder", "secret", "demo", "xxx")
MIN_SALT_LENGTH = 32
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class UnsafeSettings(RuntimeError):
    """A production process refuses to start with these settings; the message says what to set."""


def is_production(settings: Settings) -> bool:
    """APPEALS_ENV=production, or a Redis on another machine: whoever points the services at a
    shared store is running them for real, whatever they forgot to declare."""
    host = urlsplit(settings.redis_url).hostname or "localhost"
    return settings.appeals_env == "production" or host not in _LOOPBACK


def check_salt(settings: Settings) -> None:
    """Raises UnsafeSettings when a production process would hash phones with a public or short
    salt. Development on this machine (the embedded servers, the tests) keeps the demo salt."""
    if not is_production(settings):
        return
    salt = settings.caller_id_salt
    placeholder = any(w in salt.lower() for w in PLACEHOLDER_WORDS)
    if salt in PUBLIC_SALTS or placeholder or len(salt) < MIN_SALT_LENGTH:
        raise UnsafeSettings(
            "CALLER_ID_SALT is the public default, a placeholder or shorter than "
            f"{MIN_SALT_LENGTH} characters: with it, a masked phone and its caller_id give the number "
            "back. Set a long random secret, e.g. CALLER_ID_SALT=$(openssl rand -hex 32)."
        )


def caller_id(phone: str) -> str:
    return hmac.new(_salt(), phone.encode(), hashlib.sha256).hexdigest()[:20]


def is_caller_id(value: str) -> bool:
    """Whether `value` has the shape of a `caller_id` (a hash in a link, not a phone number)."""
    return len(value) == 20 and all(c in "0123456789abcdef" for c in value)


def is_mobile(phone: str) -> bool:
    return bool(_MOBILE.match(phone))


# Personal data an event may carry: the resident's words (names, addresses, phone numbers typed into
# the text), where they live, and how to reach them or link their appeals (the salted hash). Staff
# wording counts as the resident's words: a resolution note, a return's disputed rule, an extension's
# reason, a routing explanation or a meeting's note may repeat the name or the address. What takes
# its place keeps the shape, so that a scrubbed event still folds into the record, and still parses
# as its class where the class allows the blank (not `appeal.located`, whose place is all it
# carries). Categories, grids, departments, deadlines, ratings, actions and times stay: the
# statistics must survive. Wording the system writes from the city's configuration (a rule's name,
# a return reason's name, a stage's name) is no one's words and stays too.
REMOVED = "[已删除]"
# Top-level free text: the appeal's (text, title, address), the resident's (a survey answer's text),
# staff's (a transition's note, a ticket's resolution note, a grid worker's note of what was seen on
# the spot, an assignment's or a meeting's explanation, an operator's answer on the call, the terms
# of a mediation agreement, which name the parties and what each owes).
_FREE_TEXT = (
    "text", "title", "address", "note", "resolution_note", "verification_note", "explanation",
    "direct_answer", "mediation_agreement",
)  # fmt: skip
# Free text inside a payload: the payload's field, then its free-text fields. `grid.evidence` is
# what located the appeal (the coordinates, or the road and house number); `data` is the free
# payload `ticket.updated` carried before version 2 (a return's disputed rule was in it).
_NESTED_TEXT = {
    "returned": ("disputed_rule",),
    "extension": ("reason",),
    "extension_request": ("reason",),  # a ticket's pending request, until the desk decides
    "place_request": ("reason",),  # a grid worker's request to correct the grid: what was seen there
    "grid": ("evidence",),
    "mediation": ("agreement",),  # a committee's resolution: the agreement's terms
    "data": ("disputed_rule",),
}
_CONTACT: dict[str, Any] = {"caller": {}, "masked_phone": "****", "location": None, "caller_id": None}
# Photos show the place, often the home, sometimes the resident: the erasure deletes the files
# (shared.photo_store) and the ids go from the events and the ticket.
_PHOTOS = ("photos", "resolution_photos", "verification_photos")


def scrub_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event (or a ticket, as its JSON) without personal data, in the same shape."""
    out = dict(event)
    for key in _FREE_TEXT:
        if out.get(key):
            out[key] = REMOVED
    for key, blank in _CONTACT.items():
        if key in out:
            out[key] = dict(blank) if isinstance(blank, dict) else blank
    for key in _PHOTOS:
        if out.get(key):
            out[key] = []
    for key, fields in _NESTED_TEXT.items():
        payload = out.get(key)
        if isinstance(payload, Mapping) and any(payload.get(f) for f in fields):
            out[key] = {**payload, **{f: REMOVED for f in fields if payload.get(f)}}
    if isinstance(out.get("appeal"), Mapping):
        out["appeal"] = scrub_event(out["appeal"])
    return out


def scrub_ticket(ticket: Ticket, removed_at: datetime) -> Ticket:
    """The ticket without personal data, marked with when it was removed. The ticket store applies
    it again after every decision about a marked ticket, so that no decision brings the data back."""
    scrubbed = scrub_event(ticket.model_dump(mode="json"))
    scrubbed["personal_data_removed_at"] = removed_at
    return Ticket.model_validate(scrubbed)
