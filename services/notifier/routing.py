"""Which channel reaches a resident: the one decision of where their messages go. Pure: no I/O.

The contact record (`contact:{caller_id}`, written by intake) holds a phone for every channel that
has one, or, for a WeChat user, the openid alone. A phone is reached by SMS; a WeChat user without
a phone by WeChat customer-service messages (客服消息); a caller with neither (an anonymous slip,
an erased contact) is not reached. Everything the notifier sends a resident about a ticket (the
progress notices, the result, the survey and its reminder) is routed here, so that a WeChat
resident hears what an SMS resident hears.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from shared.privacy import mask_openid, mask_phone

Channel = Literal["sms", "wechat"]
CHANNELS: tuple[Channel, ...] = ("sms", "wechat")
# The fields of the contact record `route` reads, in this order.
CONTACT_FIELDS = ("phone", "wechat_openid")


class Notice(Protocol):
    """What of a message to a resident (`gateway.Message`) the pure decisions about it read: the
    template it goes as, whether it waits for the resident's return. `to` is its address on
    `channel` (the phone for SMS, the openid on WeChat)."""

    @property
    def message_id(self) -> str: ...
    @property
    def to(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def ticket_no(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def channel(self) -> str: ...


@dataclass(frozen=True)
class Recipient:
    """Where one resident is reached: the channel and its address there (a phone, or an openid).
    Both are personal data: never in an event or a log line (`masked`)."""

    channel: Channel
    address: str

    @property
    def masked(self) -> str:
        return masked(self.channel, self.address)


def route(contact: Mapping[str, str | None]) -> Recipient | None:
    """The channel of a contact record: its phone by SMS, else its openid by WeChat, else None."""
    if phone := contact.get("phone"):
        return Recipient("sms", phone)
    if openid := contact.get("wechat_openid"):
        return Recipient("wechat", openid)
    return None


def masked(channel: Channel, address: str) -> str:
    """An address as logs and records show it: 138****5678, or oUse****r123."""
    return mask_openid(address) if channel == "wechat" else mask_phone(address)
