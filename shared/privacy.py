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
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from shared.settings import DEMO_CALLER_ID_SALT, Settings, get_settings
from shared.tickets import Ticket
from shared.yamlfile import load_model

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


# Personal data a resident or operator types into free text (an appeal's text, title or address, a
# survey reply): the caller's phone and name fields are masked, but "我叫张伟，请回电13812345678" in
# the text would otherwise go verbatim into events, Redis, the record and every department's screen.
#
# Numbers first. Found on a copy with full-width digits, separators and brackets made ASCII (one
# character for one, so the spans are the original's). Digit boundaries on both sides: a phone-shaped
# run inside a longer number (an order number, a bank reference) is that number, not a phone; a
# decimal point counts as a digit's neighbour too, so an amount's digits are never taken for a phone.
_TYPED_WIDTH = str.maketrans("０１２３４５６７８９＋－（）\u3000Ｘｘ", "0123456789+-() Xx")
_NOT_AFTER = r"(?<![0-9])(?<![0-9]\.)"
_NOT_BEFORE = r"(?![0-9])(?!\.[0-9])"
_SEP = r"[ -]?"
_PREFIX = r"(?:(?:\+|00)?86[ -]?)?"  # the country code; kept as typed
# A local number without its area code is anyone's 8 digits (an amount, a house code, a date): it is
# a phone only right after words that say so (电话 88886666, 联系方式：2345678, 座机号码是…). 号码 alone
# after 单/牌/间/证/卡 is a ticket's, a car's, a room's, a card's number.
_PHONE_CUE = (
    r"(?:联系电话|联系方式|电话|座机|手机|(?<![单牌间证卡])号码)(?:号码|号)?[ ：:]{0,3}(?:是[ ：:]{0,2})?"
)
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
    # The old 15-digit ID (until 1999, some still typed from old papers): region, YYMMDD, sequence,
    # no check digit. The date is checked as a date (`_masked_number`): an order number is not one.
    + "|"
    + r"(?P<id15>[1-9][0-9]{5})"
    + _SEP
    + r"(?P<id15_date>[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01]))"
    + _SEP
    + r"(?P<id15_end>[0-9]{3})"
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
    # Bank card: 16 to 19 digits, run together or in groups of four (the last group shorter), that
    # pass the Luhn check (`_masked_number`): other runs of that length are order numbers. The first
    # digit is a card's (2-6: Mastercard, Amex and JCB, Visa, Mastercard, UnionPay's 62; 9: the old
    # domestic debit cards, 9558…): no bank card begins with 0, 1, 7 or 8, and about one in ten order
    # numbers or message ids (7001234567890123) that do would pass the Luhn check all the same.
    + "|"
    + r"(?P<card>[2-69][0-9]{15,18}"
    + r"|[2-69][0-9]{3}(?P<card_sep>[ -])[0-9]{4}(?P=card_sep)[0-9]{4}(?P=card_sep)[0-9]{4}"
    + r"(?:(?P=card_sep)[0-9]{1,3})?)"
    + ")"
    + _NOT_BEFORE
    # A local number after a phone cue: 7 or 8 digits, the first not 0 or 1; not a ticket number's
    # date (工单号码20261203-000012 is not a phone, nor is an amount's integer part), nor the first
    # groups of a longer number typed in groups (电话2000 0000 0000 0006: a card, masked as one).
    + "|"
    + rf"(?P<cue>{_PHONE_CUE})"
    + r"(?P<short>[2-9][0-9]{2,3}[ -]?[0-9]{4})(?![0-9])(?![ .-][0-9])"
)


def _digits(s: str) -> str:
    return re.sub(r"[^0-9Xx]", "", s)


def _luhn(digits: str) -> bool:
    """The check every bank card number passes (ISO/IEC 7812): about one order number in ten does too."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        n = int(c) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _is_yymmdd(s: str) -> bool:
    """Whether `s` is a date of the 1900s or the 2000s (the shape alone takes 0230 too)."""
    yy, mm, dd = int(s[:2]), int(s[2:4]), int(s[4:])
    for century in (1900, 2000):
        try:
            date(century + yy, mm, dd)
            return True
        except ValueError:
            pass
    return False


def _stars_but(typed: str, keep_first: int, keep_last: int) -> str:
    """`typed` with its digits turned to stars but the first and last ones kept; separators stay."""
    n = sum(c.isdigit() for c in typed)
    out, seen = [], 0
    for c in typed:
        if c.isdigit():
            seen += 1
            c = c if seen <= keep_first or seen > n - keep_last else "*"
        out.append(c)
    return "".join(out)


def _masked_number(m: re.Match[str], typed: str) -> str | None:
    """The number `m` found (on the ASCII copy of `typed`) as shown: what comes before the part
    masked stays as `typed` had it ("+86 ", "（0571）", "电话："). None when it is no personal number
    after all (a card number that fails the Luhn check, an old ID whose date is no date)."""
    if m["id"]:
        return f"{m['id']}{'*' * 8}{m['id_end']}"
    if m["id15"]:
        return f"{m['id15']}{'*' * 6}{m['id15_end']}" if _is_yymmdd(m["id15_date"]) else None
    if m["mobile"]:
        return typed[m.start() : m.start("mobile")] + mask_phone(_digits(m["mobile"]))
    if m["local"]:
        # A star for each digit hidden (a 7-digit local number has three): typed without
        # separators, the text keeps its length and the words after it their place.
        local = _digits(m["local"])
        return f"{typed[m.start() : m.start('local')]}{'*' * (len(local) - 4)}{local[-4:]}"
    if m["card"]:
        return _stars_but(m["card"], 4, 4) if _luhn(_digits(m["card"])) else None
    return typed[m.start() : m.start("short")] + _stars_but(m["short"], 0, 4)


def _mask_numbers(text: str) -> str:
    plain = text.translate(_TYPED_WIDTH)
    out: list[str] = []
    end = pos = 0
    while m := _TYPED_NUMBER.search(plain, pos):
        shown = _masked_number(m, text)
        if shown is None:  # not one after all: what starts after its first character may be
            pos = m.start() + 1
            continue
        out += [text[end : m.start()], shown]
        end = pos = m.end()
    return "".join(out) + text[end:] if out else text


# Then names. Which characters make a name is data (`shared/dictionaries/names.yaml`): common
# surnames, the cues after which a name follows, honorifics, and what looks like a name after a cue
# without being one (我是业主, 我是孙女, 我是宋庄的). The surname alone never makes a name: only a cue
# (我叫张伟) or an honorific (张伟先生) does, so 张家湾社区 stays as it is.
NAMES_FILE = Path(__file__).resolve().parent / "dictionaries" / "names.yaml"
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
Chars = tuple[Annotated[str, StringConstraints(pattern=r"^[\u3400-\u4dbf\u4e00-\u9fff]$")], ...]
Words = tuple[Annotated[str, StringConstraints(pattern=r"^[\u3400-\u4dbf\u4e00-\u9fff]+$")], ...]


class NameWords(BaseModel):
    """The lists of `names.yaml`: Chinese characters only, none empty, none listed twice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    surnames: Annotated[Chars, Field(min_length=50)]
    compound_surnames: Annotated[
        tuple[Annotated[str, StringConstraints(pattern=r"^[\u3400-\u4dbf\u4e00-\u9fff]{2}$")], ...],
        Field(min_length=1),
    ]
    cues: Annotated[Words, Field(min_length=1)]
    honorifics: Annotated[Words, Field(min_length=1)]
    titles: Words
    not_names: Words
    place_endings: Chars
    after_names: Words
    place_roles: Words
    not_in_names: Chars

    @field_validator("*")
    @classmethod
    def _once(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        twice = sorted({w for w in v if v.count(w) > 1})
        if twice:
            raise ValueError(f"listed more than once: {'、'.join(twice)}")
        return v


def load_names(path: Path = NAMES_FILE) -> NameWords:
    """The name lists, checked; a ValueError that names the file and the entries when they are wrong."""
    return load_model(path, NameWords, "name lists")


class _Names:
    """The lists of `NameWords` as the masker reads them (sets, one regex per list)."""

    def __init__(self, words: NameWords) -> None:
        self.surnames = frozenset(words.surnames)
        self.compounds = frozenset(words.compound_surnames)
        self.not_given = frozenset(words.not_in_names)
        self.place_endings = frozenset(words.place_endings)
        self.not_names = words.not_names
        self.titles = (*words.honorifics, *words.titles)
        self.after = words.after_names
        self.place_roles = words.place_roles
        cues = "|".join(map(re.escape, sorted(words.cues, key=len, reverse=True)))
        self.cue = re.compile(rf"(?:{cues})[\s：:]{{0,2}}(?:是|叫|为)?[\s：:]{{0,2}}")
        self.honorific = re.compile("|".join(map(re.escape, words.honorifics)))

    def surname_at(self, text: str, i: int) -> int:
        """The length of the surname at `text[i]` (a compound one first), 0 when none is there."""
        if text[i : i + 2] in self.compounds:
            return 2
        return 1 if text[i : i + 1] in self.surnames else 0

    def could_be_given(self, given: str) -> bool:
        return all(_HAN.match(c) and c not in self.not_given for c in given)

    def is_name(self, surname: str, given: str) -> bool:
        """Whether the surname and what follows it make a name: not a role, place or time that begins
        with a surname's character (孙女, 江苏, 周末), not a title (陈老师), not a place (宋庄)."""
        name = surname + given
        return not (
            not given
            or not self.could_be_given(given)
            or any(name.startswith(w) for w in self.not_names)
            or any(given.startswith(t) for t in self.titles)
            or given[-1] in self.place_endings
        )

    def ends_name(self, text: str, i: int) -> bool:
        """Whether a name may end before `text[i]`: the end, anything but a Chinese character
        (punctuation, a digit, a space), or a word that follows names (的, 电话, 住在…)."""
        return i >= len(text) or not _HAN.match(text[i]) or text.startswith(self.after, i)

    def after_cue(self, text: str, i: int) -> tuple[int, int] | None:
        """The span of the given name in a name that begins at `text[i]`, just after a cue."""
        s = self.surname_at(text, i)
        if not s:
            return None
        for g in (2, 1):
            start, end = i + s, i + s + g
            if (
                end <= len(text)
                and self.ends_name(text, end)
                and not self.of_a_place(text, end)
                and self.is_name(text[i:start], text[start:end])
            ):
                return start, end
        return None

    def of_a_place(self, text: str, i: int) -> bool:
        """Whether `text[i:]` says the words before it are a place or a firm: 的 and a role one has
        there (我是万科的业主), or 的 closing the clause (我是杨浦的，), said of where one is from."""
        if not text.startswith("的", i):
            return False
        return text.startswith(self.place_roles, i + 1) or not _HAN.match(text[i + 1 : i + 2] or "x")

    def before_honorific(self, text: str, p: int) -> tuple[int, int] | None:
        """The span of the given name in a name that ends at `text[p]`, where an honorific begins.
        A surname right before it is the whole name (王先生, 欧阳女士, 向王先生): nothing to mask."""
        if text[max(p - 2, 0) : p] in self.compounds or text[p - 1 : p] in self.surnames:
            return None
        for g in (2, 1):
            start = p - g
            if start < 1:
                continue
            # 向张明先生 is 张明: a given name does not begin with a surname's character here.
            if g == 2 and text[start] in self.surnames:
                continue
            for s in (2, 1):
                surname = text[max(start - s, 0) : start]
                if len(surname) == s and self.surname_at(surname, 0) == s:
                    return (start, p) if self.is_name(surname, text[start:p]) else None
        return None


_NAMES = _Names(load_names())


def _starred(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    chars = list(text)
    for start, end in spans:
        chars[start:end] = "*" * (end - start)
    return "".join(chars)


def _mask_names(text: str) -> str:
    """Names after a cue first, then before an honorific (in what the first left: a name masked
    after its cue is not found again before 先生)."""
    text = _starred(
        text, [span for m in _NAMES.cue.finditer(text) if (span := _NAMES.after_cue(text, m.end()))]
    )
    return _starred(
        text,
        [span for m in _NAMES.honorific.finditer(text) if (span := _NAMES.before_honorific(text, m.start()))],
    )


def mask_personal_data(text: str) -> str:
    """`text` with the personal data typed into it masked, the rest as it was:

    - mobiles as `mask_phone` shows them (电话138 1234 5678 -> 电话138****5678);
    - landlines keeping the area code and the last four digits (0571-8888 6666 -> 0571-****6666), and
      without an area code only after a phone cue, keeping the last four (座机：88886666 -> 座机：****6666);
    - resident IDs keeping the region and the last four (110105********002X), old 15-digit ones the
      region and the last three (110105******123);
    - bank card numbers that pass the Luhn check keeping the first and last four, as grouped
      (6222 **** **** 1234);
    - a name after a cue or before an honorific keeping the surname (我叫张*, 欧阳**女士); a surname
      alone (王先生) stays.

    Dates, ticket numbers, house numbers, amounts, 12345, runs of digits longer than a card's and
    place names stay. Masking twice is masking once. No I/O: the name lists are read on import."""
    return _mask_names(_mask_numbers(text))


# Free text staff type into a ticket (a resolution, a return's or an extension's reason, a grid
# worker's finding, an operator's note of a call): the history it joins goes to the record, to the
# other departments and, as 办理结果, to the resident's lookup page and survey SMS. A request body's
# field of this type is masked as it is read, as a resident's own words are at intake.
StaffText = Annotated[str, AfterValidator(mask_personal_data)]


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


def may_carry_personal_data(fields: Mapping[str, Any]) -> bool:
    """Whether `scrub_event` may change an event with these fields (a model's `__dict__`): one it
    blanks has a value, one it sets holds anything, or one that may nest free text is set. False
    only when scrubbing certainly changes nothing, as for most of a joint meeting's facts (the
    tickets it took, who checked in): those need no scrubbed copy of their own."""
    return (
        any(fields.get(k) for k in _FREE_TEXT)
        or any(fields.get(k) for k in _PHOTOS)
        or any(k in fields for k in _CONTACT)
        or any(fields.get(k) is not None for k in (*_NESTED_TEXT, "appeal"))
    )


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
