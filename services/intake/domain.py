"""What intake accepts: validation and normalisation shared by every channel. Pure functions.

Errors name the field and say what to do, in Chinese (operators and residents read them)."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass

import regex

from services.intake.errors import InvalidAppeal
from shared.events import AppealLocated, AppealPhotosAdded, AppealReceived, Caller, Channel, GeoPoint, new_id
from shared.photos import MAX_PER_ITEM
from shared.privacy import InvalidPhone, caller_id, mask_personal_data, mask_phone, normalize_phone
from shared.text import without_controls
from shared.tickets import Ticket

TEXT_MIN, TEXT_MAX = 5, 5000
ADDRESS_MAX = 200
# What a reader cannot see, by Unicode's own properties rather than a list: white space and
# separators, controls, format characters (Cf: zero-width, bidi, tags), surrogates, private use and
# unassigned code points, marks that only modify a neighbour, and the default-ignorable code points,
# which include the fillers that are letters by category (HANGUL FILLER U+3164 is Lo).
_INVISIBLE = regex.compile(
    r"[\p{White_Space}\p{Z}\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{M}\p{Default_Ignorable_Code_Point}]"
)


__all__ = [
    "InvalidAppeal",
    "Submission",
    "checked_phone",
    "clean_text",
    "located",
    "masked_free_text",
    "validate",
    "wechat_caller_id",
]


def visible_length(text: str) -> int:
    """How many characters of `text` a reader sees."""
    return len(_INVISIBLE.sub("", text))


# A spreadsheet reads a cell that starts with one of these as a formula; a tab in front is how
# exports neutralise it, so a leading tab before one is content, not padding.
FORMULA_START = ("=", "+", "-", "@")


def clean_text(raw: str) -> str:
    text = unicodedata.normalize("NFC", raw)
    text = without_controls(text).replace("\r\n", "\n").replace("\r", "\n")
    stripped = text.strip()
    if stripped.startswith(FORMULA_START) and "\t" in text[: len(text) - len(text.lstrip())]:
        return "\t" + stripped
    return stripped


@dataclass(frozen=True)
class Submission:
    """A validated appeal, before it has a number. `phone` and `name` are personal data."""

    channel: Channel
    text: str
    title: str = ""
    address: str = ""
    location: GeoPoint | None = None
    phone: str | None = None
    name: str | None = None
    operator_id: str | None = None
    urgent: bool = False
    wechat_openid: str | None = None  # personal data too: WeChat users have no phone number
    direct_answer: str = ""  # closed at first contact (直接答复, 现场处置): what was said or done
    patrol_grid: str | None = None  # a grid worker's report: the grid it patrols (its credential's)
    # Ids of photos already kept (shared.photos), checked or kept by the view that takes them: the
    # hotline API's uploads, Open311's media_url. WeChat's go with the event (`appeal(photos=)`);
    # SMS and suggestion boxes carry none.
    photos: tuple[str, ...] = ()
    # The free-text fields (text, title, address) in which a typed phone or ID number was masked
    # (`masked_free_text`): the operator's answer says so, so what they typed does not change
    # without a trace. Not part of the digest: it follows from the fields.
    masked: tuple[str, ...] = ()

    def digest(self) -> str:
        """A hash of everything the appeal says, after normalisation: what an idempotency key is
        bound to (the same key with another body is another appeal, not a retry)."""
        fields: list[object] = [self.channel, self.text, self.title, self.address, self.phone, self.name]
        fields += [self.operator_id, self.urgent, self.wechat_openid]
        fields += [self.location.lat, self.location.lng] if self.location else [None, None]
        # Only when given: the digests of appeals without them stay what they were.
        if self.photos:
            fields.append(list(self.photos))
        if self.direct_answer:
            fields.append({"direct_answer": self.direct_answer})
        if self.patrol_grid:
            fields.append({"patrol_grid": self.patrol_grid})
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()

    @property
    def caller(self) -> Caller:
        if self.phone:
            return Caller(caller_id=caller_id(self.phone), masked_phone=mask_phone(self.phone))
        if self.wechat_openid:
            return Caller(caller_id=wechat_caller_id(self.wechat_openid))
        return Caller()

    def appeal(
        self,
        ticket_no: str,
        *,
        event_id: str | None = None,
        address: str | None = None,
        location: GeoPoint | None = None,
        photos: tuple[str, ...] = (),
    ) -> AppealReceived:
        """The appeal as the pipeline sees it (the caller masked and hashed, no name): the event
        intake publishes once it has a number, and what a preview classifies. `event_id` else a new
        one; `address` and `location`, when given, stand for the submission's (a place a WeChat
        user sent in a message of its own); `photos` go with the submission's (photos a WeChat user
        sent before the text)."""
        return AppealReceived(
            event_id=event_id or new_id(),
            ticket_no=ticket_no,
            channel=self.channel,
            text=self.text,
            title=self.title,
            address=self.address if address is None else address,
            location=location or self.location,
            caller=self.caller,
            urgent_flag=self.urgent,
            operator_id=self.operator_id,
            direct_answer=self.direct_answer,
            patrol_grid=self.patrol_grid,
            photos=tuple(dict.fromkeys([*self.photos, *photos]))[:MAX_PER_ITEM],
        )


def wechat_caller_id(openid: str) -> str:
    return caller_id(f"wechat:{openid}")


def checked_phone(phone: str | None, *, required: bool = False) -> str | None:
    """The caller's phone normalised, None when none was given; refused (InvalidAppeal) when it
    cannot be read, or is missing and `required`."""
    if phone and phone.strip():
        try:
            return normalize_phone(phone)
        except InvalidPhone as e:
            raise InvalidAppeal("caller_phone", f"{e}，请填写11位手机号或带区号的固话") from None
    if required:
        raise InvalidAppeal("caller_phone", "请填写来电号码")
    return None


def masked_free_text(fields: dict[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The appeal's free-text fields with the personal data typed into them masked (phone, ID and
    bank card numbers, a name after 我叫 or before 先生: `shared.privacy.mask_personal_data`), and
    the names of those that changed. Here, where every channel's appeal is validated (hotline and
    web, patrol, WeChat, SMS, Open311, suggestion-box slips), so that none of it reaches an event,
    Redis, the record or a department's screen: the caller's number and name have their own
    fields, stored once in the contact record."""
    masked = {name: mask_personal_data(value) for name, value in fields.items()}
    return masked, tuple(name for name, value in fields.items() if masked[name] != value)


def validate(
    *,
    channel: Channel,
    text: str,
    title: str = "",
    address: str = "",
    phone: str | None = None,
    name: str | None = None,
    operator_id: str | None = None,
    urgent: bool = False,
    location: GeoPoint | None = None,
    phone_required: bool = False,
    wechat_openid: str | None = None,
    direct_answer: str = "",
    patrol_grid: str | None = None,
) -> Submission:
    text = clean_text(text or "")
    seen = visible_length(text)
    if seen == 0:
        raise InvalidAppeal("text", "诉求内容是空的（只有空白或不可见字符），请用文字写明问题")
    if seen < TEXT_MIN:
        raise InvalidAppeal("text", f"诉求内容太短（{seen}字），请至少写{TEXT_MIN}个字说明问题")
    if len(text) > TEXT_MAX:
        raise InvalidAppeal("text", f"诉求内容太长（{len(text)}字），请控制在{TEXT_MAX}字以内")
    address = clean_text(address or "")
    if len(address) > ADDRESS_MAX:
        raise InvalidAppeal("address", f"地址太长，请控制在{ADDRESS_MAX}字以内")
    normalized_phone = checked_phone(phone, required=phone_required)
    name = clean_text(name or "") or None
    if name and len(name) > 50:
        raise InvalidAppeal("caller_name", "姓名太长，请控制在50字以内")
    direct_answer = clean_text(direct_answer or "")
    what = "现场处置情况" if channel == "patrol" else "当场答复的内容"
    if direct_answer and visible_length(direct_answer) < TEXT_MIN:
        advice = "怎么处置的、结果如何" if channel == "patrol" else "告诉了来电人什么"
        raise InvalidAppeal("direct_answer", f"{what}太短，请至少写{TEXT_MIN}个字，说明{advice}")
    if len(direct_answer) > TEXT_MAX:
        raise InvalidAppeal("direct_answer", f"{what}太长，请控制在{TEXT_MAX}字以内")
    if channel == "patrol" and not patrol_grid:
        # The credential names the grid; a grid worker's token without one was minted wrongly.
        raise InvalidAppeal(
            "channel", "此网格员凭证没有所属网格，请向管理员重新申领（appeals token --grid-worker）"
        )
    # The title is cut after masking: a number cut in two would no longer read as one.
    free, masked = masked_free_text({"text": text, "title": clean_text(title or ""), "address": address})
    return Submission(
        channel=channel,
        text=free["text"],
        title=free["title"][:100],
        address=free["address"],
        masked=masked,
        location=location,
        phone=normalized_phone,
        name=name,
        operator_id=operator_id,
        urgent=urgent,
        wechat_openid=wechat_openid,
        direct_answer=direct_answer,
        patrol_grid=patrol_grid,
    )


def photographed(ticket: Ticket | None, added: AppealPhotosAdded) -> Ticket | None:
    """The rule for photos sent after the appeal: onto its ticket while the ticket is open, once per
    message, up to MAX_PER_ITEM photos in all (later ones are not added). Never onto an erased
    ticket (see `located`). None: nothing to change."""
    if ticket is None or ticket.has_applied(added.event_id) or not ticket.is_open:
        return None
    if ticket.personal_data_removed_at is not None:
        return None
    photos = tuple(dict.fromkeys([*ticket.photos, *added.photos]))[:MAX_PER_ITEM]
    if photos == ticket.photos:
        return None
    return ticket.model_copy(
        update={
            "photos": photos,
            "applied": [*ticket.applied, added.event_id],
            "updated_at": added.occurred_at,
        }
    )


def located(ticket: Ticket | None, place: AppealLocated) -> Ticket | None:
    """The location rule: a place the resident sends after the appeal goes on its ticket while the
    ticket is open, once per message, and fills the address only where the appeal gave none (what
    the resident typed is more precise than a map label). None: nothing to change. Never onto a
    ticket whose resident's personal data was erased: `wx:last` may still name it when the
    erasure's notice did not reach intake, and a place sent now is no longer that ticket's."""
    if ticket is None or ticket.has_applied(place.event_id) or not ticket.is_open:
        return None
    if ticket.personal_data_removed_at is not None:
        return None
    return ticket.model_copy(
        update={
            "location": place.location,
            "address": ticket.address or place.address,
            "applied": [*ticket.applied, place.event_id],
            "updated_at": place.occurred_at,
        }
    )
