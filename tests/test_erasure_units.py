"""An erasure request's checks, without servers: the phone as residents say it, or a ticket number
(exactly one), and the reason."""

from __future__ import annotations

import pytest

from services.records.erasure import (
    REASON_MAX,
    Lookup,
    Subject,
    checked_lookup,
    checked_reason,
    masked_contact,
)
from shared.errors import DomainError
from shared.privacy import caller_id
from shared.tickets import clean_ticket_no


@pytest.mark.parametrize(
    "spoken", ["13912345678", "+86 139 1234 5678", "0086-139-1234-5678", "１３９１２３４５６７８"]
)
def test_the_phone_as_said_is_the_same_resident(spoken):
    lookup = checked_lookup(spoken, "")
    assert lookup == Lookup("phone", "13912345678")
    subject = Subject.of_phone(lookup.value)
    assert subject.caller_id == caller_id("13912345678")
    assert (subject.contact_kind, subject.masked_contact) == ("phone", "139****5678")
    assert "13912345678" not in vars(subject).values()  # the phone itself is not kept
    assert subject.found_by == {"by": "phone"}


@pytest.mark.parametrize(
    ("phone", "code"), [("", "phone_required"), (" ", "phone_required"), ("12345", "invalid_phone")]
)
def test_a_missing_or_invalid_phone_is_refused_beside_its_field(phone, code):
    with pytest.raises(DomainError) as refused:
        checked_lookup(phone, "  ")
    assert refused.value.code == code
    assert refused.value.field == "phone"
    assert refused.value.kind == "invalid"
    if code == "phone_required":  # the desk is told it may give the ticket number instead
        assert "工单号" in refused.value.message


@pytest.mark.parametrize(
    "said",
    [
        "20260501-000123",
        " 20260501-000123 ",
        "２０２６０５０１－０００１２３",
        "20260501 - 000123",
        "20260501000123",  # without the dash, as the lookup page takes it
        "20260501—000123",
    ],
)
def test_a_ticket_number_as_read_out_or_copied(said):
    assert checked_lookup("", said) == Lookup("ticket_no", "20260501-000123")
    # The one reading of a typed number: whatever the resident's lookup accepts, the erasure does.
    assert checked_lookup("", said).value == clean_ticket_no(said)


@pytest.mark.parametrize("bad", ["20260501", "2026-05-01-000123", "20260501-12", "工单20260501-000123x"])
def test_a_malformed_ticket_number_is_refused_beside_its_field(bad):
    with pytest.raises(DomainError) as refused:
        checked_lookup("", bad)
    assert refused.value.code == "invalid_ticket_no"
    assert refused.value.field == "ticket_no"
    assert refused.value.kind == "invalid"
    assert "20240501-000123" in refused.value.message  # what one looks like


def test_a_phone_and_a_ticket_number_together_are_refused():
    """Two ways to name a resident may name two residents: the desk says which it means."""
    with pytest.raises(DomainError) as refused:
        checked_lookup("13912345678", "20260501-000123")
    assert refused.value.code == "phone_or_ticket_no"
    assert refused.value.field == "ticket_no"
    assert refused.value.kind == "invalid"
    assert "只填一项" in refused.value.message


def test_by_ticket_the_audit_keeps_the_number():
    subject = Subject("c" * 20, "ticket_no", "wechat", "oWx1****7890", ticket_no="20260501-000123")
    assert subject.found_by == {"by": "ticket_no", "ticket_no": "20260501-000123"}


def test_the_contact_as_the_desk_sees_it_is_masked():
    assert masked_contact({"phone": "13912345678", "name": "王小明"}) == ("phone", "139****5678")
    assert masked_contact({"wechat_openid": "oWx1234567890123"}) == ("wechat", "oWx1****0123")
    assert masked_contact({}) == (None, None)


def test_the_reason_is_required_and_one_line():
    assert checked_reason("  居民来电\n申请删除  ") == "居民来电 申请删除"
    for blank in ("", " \t\n"):
        with pytest.raises(DomainError) as refused:
            checked_reason(blank)
        assert refused.value.field == "reason"
        assert refused.value.message.startswith("请填写删除原因")
    assert checked_reason("原" * REASON_MAX) == "原" * REASON_MAX
    with pytest.raises(DomainError) as refused:
        checked_reason("原" * (REASON_MAX + 1))
    assert refused.value.code == "reason_too_long"


def test_the_reason_keeps_no_phone_or_id_number_for_the_audit():
    """The audit entry is kept for good: a number typed into the reason is masked before it is
    stored (the name cannot be found among the words: the form asks for none)."""
    assert checked_reason("居民来电13812345678要求删除") == "居民来电138****5678要求删除"
    assert checked_reason("按 139 1234 5678 来电删除") == "按 139****5678 来电删除"
    assert checked_reason("固话0571-88886666来电") == "固话0571-****6666来电"
    assert checked_reason("身份证110105199001011234") == "身份证110105********1234"
    # Ticket numbers and dates stay: they are no one's personal data and say which request it was.
    kept = "按工单20261203-000012于2026年12月3日申请删除"
    assert checked_reason(kept) == kept
