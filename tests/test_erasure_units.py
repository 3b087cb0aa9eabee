"""An erasure request's checks, without servers: the phone as residents say it, and the reason."""

from __future__ import annotations

import pytest

from services.records.erasure import REASON_MAX, Subject, checked_reason
from shared.errors import DomainError
from shared.privacy import caller_id


@pytest.mark.parametrize(
    "spoken", ["13912345678", "+86 139 1234 5678", "0086-139-1234-5678", "１３９１２３４５６７８"]
)
def test_the_phone_as_said_is_the_same_resident(spoken):
    subject = Subject(spoken)
    assert subject.caller_id == caller_id("13912345678")
    assert subject.masked_phone == "139****5678"
    assert "13912345678" not in vars(subject).values()  # the phone itself is not kept


@pytest.mark.parametrize(
    ("phone", "code"), [("", "phone_required"), (" ", "phone_required"), ("12345", "invalid_phone")]
)
def test_a_missing_or_invalid_phone_is_refused_beside_its_field(phone, code):
    with pytest.raises(DomainError) as refused:
        Subject(phone)
    assert refused.value.code == code
    assert refused.value.field == "phone"
    assert refused.value.kind == "invalid"


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
