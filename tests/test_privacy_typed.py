"""Phone and ID numbers typed into free text (`shared.privacy.mask_typed_numbers`): masked in the
shape a reader recognises, wherever they stand in Chinese words; dates, ticket numbers, house
numbers, amounts and longer numbers untouched. Then where it is applied: every channel's appeal
(`services.intake.domain.validate`), the intake API's answer, and a repeat call's words."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.domain import masked_free_text, validate
from services.intake.views import masked_notice
from services.router import workflow
from shared.privacy import mask_phone, mask_typed_numbers
from tests.cities import demo_city
from tests.router_factory import T0, assigned_ticket


@pytest.mark.parametrize(
    ("typed", "shown"),
    [
        ("电话13812345678联系", "电话138****5678联系"),
        ("请回电138 1234 5678，谢谢", "请回电138****5678，谢谢"),
        ("手机：138-1234-5678。", "手机：138****5678。"),
        ("+86 138 1234 5678", "+86 138****5678"),
        ("+8613812345678", "+86138****5678"),
        ("8613812345678", "86138****5678"),
        ("0086-13812345678", "0086-138****5678"),
        ("拨013812345678找我", "拨0138****5678找我"),  # a mobile dialled long-distance
        ("１３８１２３４５６７８", "138****5678"),  # full-width, as a phone keyboard may type it
        ("手机13812345678、15987654321都行", "手机138****5678、159****4321都行"),
        ("13812345678-13912345678", "138****5678-139****5678"),
        ("物业电话010-12345678没人接", "物业电话010-****5678没人接"),
        ("01012345678", "010****5678"),
        ("0571 8888 6666", "0571 ****6666"),
        ("(0571)88886666", "(0571)****6666"),
        ("（０５７１）８８８８６６６６", "（０５７１）****6666"),
        ("020-8765-4321转8", "020-****4321转8"),
        ("身份证号11010519491231002X已登记", "身份证号110105********002X已登记"),
        ("身份证110105194912310021", "身份证110105********0021"),
        ("110105 19491231 002x", "110105********002x"),
        ("身份证４４０３０６２００００１０１１２３４", "身份证440306********1234"),
    ],
)
def test_typed_numbers_are_masked_as_a_reader_recognises_them(typed: str, shown: str):
    assert mask_typed_numbers(typed) == shown


@pytest.mark.parametrize(
    "words",
    [
        "阳光花园3号楼2单元1301室门口的路灯坏了",
        "2026-12-03晚上开始停水",
        "20261203起一直漏水",
        "工单号20261203-000001还没人处理",
        "工单20261203-013812345处理了吗",  # a ticket number's sequence runs to nine digits
        "已经打了12345三次",
        "押金13800元一直没退",
        "退款13812345678.50元",  # an amount, however phone-shaped its integer part
        "利率3.13812345678",
        "订单号12345678901234567890的快递丢了",  # twenty digits: an order number, not a phone
        "运单号813812345678",  # a phone-shaped run inside a longer one
        "流水号123456789012345678",  # eighteen digits without a birth date: no ID
        "2026年12月3日13:45至18:00",
        "车牌浙A12345，邮编310000",
        "已脱敏的138****5678和010-****5678",
    ],
)
def test_numbers_that_are_not_personal_stay(words: str):
    assert mask_typed_numbers(words) == words


# Chinese words around the numbers, never a digit: what stands right next to them.
WORDS = st.text(alphabet="电话联系我手机号码是请回拨身份证，。：、（ ）楼室", max_size=8)
DIGIT = st.sampled_from("0123456789")
SEPARATOR = st.sampled_from(["", " ", "-"])


@st.composite
def mobiles(draw: st.DrawFn) -> tuple[str, str, str]:
    """A mobile (its digits), the country code typed before it, and how a resident might type it."""
    digits = "1" + draw(st.sampled_from("3456789")) + "".join(draw(st.lists(DIGIT, min_size=9, max_size=9)))
    a, b = draw(SEPARATOR), draw(SEPARATOR)
    prefix = draw(st.sampled_from(["", "+86", "+86 ", "86", "0086-", "0"]))
    return digits, prefix, f"{prefix}{digits[:3]}{a}{digits[3:7]}{b}{digits[7:]}"


@given(mobiles(), WORDS, WORDS)
def test_a_mobile_is_masked_whatever_stands_next_to_it(mobile: tuple[str, str, str], before: str, after: str):
    digits, prefix, typed = mobile
    # The middle four go, in whatever grouping they were typed; the country code stays as typed.
    assert mask_typed_numbers(f"{before}{typed}{after}") == f"{before}{prefix}{mask_phone(digits)}{after}"


@st.composite
def resident_ids(draw: st.DrawFn) -> str:
    region = draw(st.integers(110000, 659999))
    born = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)))
    sequence = draw(st.integers(0, 999))
    check = draw(st.sampled_from("0123456789Xx"))
    return f"{region}{born:%Y%m%d}{sequence:03d}{check}"


@given(resident_ids(), WORDS, WORDS)
def test_a_resident_id_keeps_its_region_and_last_four(number: str, before: str, after: str):
    shown = mask_typed_numbers(f"{before}{number}{after}")
    assert shown == f"{before}{number[:6]}********{number[-4:]}{after}"


@given(
    st.sampled_from(["010", "021", "029", "0571", "0755", "0991"]),
    st.integers(2_000_000, 99_999_999),
    SEPARATOR,
    WORDS,
    WORDS,
)
def test_a_landline_keeps_its_area_code_and_last_four(area, local, sep, before, after):
    shown = mask_typed_numbers(f"{before}{area}{sep}{local}{after}")
    assert shown == f"{before}{area}{sep}****{str(local)[-4:]}{after}"


@given(st.text(alphabet=st.sampled_from("0123456789"), min_size=19, max_size=40), WORDS, WORDS)
def test_a_longer_run_of_digits_is_never_a_phone(run: str, before: str, after: str):
    # Longer than any number masked with its prefix (an ID: 18), so no part of it is one.
    assert mask_typed_numbers(f"{before}{run}{after}") == f"{before}{run}{after}"


# Anything: digits, the separators, brackets, a check digit's X, full-width forms and words.
ANY = st.text(alphabet="0123456789０１３８ +-()（）Xx*.电话号码，", max_size=60)


@given(ANY)
def test_masking_twice_is_masking_once(text: str):
    once = mask_typed_numbers(text)
    assert mask_typed_numbers(once) == once


@given(st.text(alphabet="0123456789X电话号码楼室，。", max_size=60))
def test_without_separators_only_digits_turn_into_stars(text: str):
    # Typed without spaces or dashes, a number keeps its length: the words around it keep their place.
    shown = mask_typed_numbers(text)
    assert len(shown) == len(text)
    assert all(s == t or (s == "*" and t.isdigit()) for s, t in zip(shown, text, strict=True))


@given(st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=80))
def test_text_without_digits_is_left_alone(text: str):
    assert mask_typed_numbers(text) == text


# --- where typed numbers are masked -----------------------------------------------------------


@pytest.mark.parametrize("channel", ["hotline", "web", "wechat", "sms", "open311", "box"])
def test_every_channels_appeal_has_its_typed_numbers_masked(channel):
    sub = validate(
        channel=channel,
        text="路灯坏了，请打我电话139 1234 5678，身份证11010519491231002X",
        title="来电13912345678反映路灯",
        address="阳光花园3号楼（物业0571-88886666）",
        phone="13812345678",
    )
    assert sub.text == "路灯坏了，请打我电话139****5678，身份证110105********002X"
    assert sub.title == "来电139****5678反映路灯"
    assert sub.address == "阳光花园3号楼（物业0571-****6666）"
    assert sub.masked == ("text", "title", "address")
    event = sub.appeal("20261203-000001").model_dump_json()
    for typed in ("13912345678", "1234 5678", "19491231", "88886666"):
        assert typed not in event
    assert sub.phone == "13812345678"  # the caller's field is for the contact record, not masked here


def test_a_patrol_report_is_masked_too():
    sub = validate(channel="patrol", text="居民13912345678反映井盖松动", patrol_grid="g1")
    assert sub.text == "居民139****5678反映井盖松动"
    assert sub.masked == ("text",)


def test_an_appeal_without_typed_numbers_is_as_typed_and_says_nothing():
    sub = validate(channel="hotline", text="阳光花园3号楼门口路灯坏了，工单20261203-000001", address="3号楼")
    assert sub.text == "阳光花园3号楼门口路灯坏了，工单20261203-000001"
    assert sub.masked == ()
    assert masked_notice(sub.masked) == ""


def test_a_long_title_is_cut_after_its_number_is_masked():
    sub = validate(channel="hotline", text="路灯坏了一个星期", title="很" * 95 + "13912345678")
    assert sub.title == "很" * 95 + "139**"
    assert sub.masked == ("title",)


def test_masked_free_text_names_the_fields_that_changed():
    fields, masked = masked_free_text({"text": "电话13912345678", "address": "3号楼"})
    assert fields == {"text": "电话139****5678", "address": "3号楼"}
    assert masked == ("text",)


def test_the_answer_says_which_words_were_masked():
    assert masked_notice(("text", "address")) == "已对诉求内容、地址中的电话号码/身份证号脱敏显示"


def test_a_repeat_calls_words_are_masked_in_the_history():
    t = assigned_ticket(demo_city())
    urged = workflow.urge(t, "0231", "还是没人修，回电139 1234 5678", T0)
    assert urged is not None
    assert urged.publish[0].note == "还是没人修，回电139****5678"  # type: ignore[union-attr]
