"""Phone, ID and bank card numbers typed into free text (`shared.privacy.mask_personal_data`):
masked in the shape a reader recognises, wherever they stand in Chinese words; dates, ticket
numbers, house numbers, amounts, order numbers and longer numbers untouched. Then where it is
applied: every channel's appeal (`services.intake.domain.validate`), the intake API's answer, and a
repeat call's words. Names: tests/test_privacy_names.py."""

from __future__ import annotations

import importlib
import re
from datetime import date

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from services.intake.domain import masked_free_text, validate
from services.intake.views import masked_notice
from services.router import workflow
from shared.privacy import mask_personal_data, mask_phone
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
        ("0101000000", "010***0000"),  # a 7-digit local number: three stars, the length kept
        ("（０５７１）８８８８６６６６", "（０５７１）****6666"),
        ("020-8765-4321转8", "020-****4321转8"),
        ("身份证号11010519491231002X已登记", "身份证号110105********002X已登记"),
        ("身份证110105194912310021", "身份证110105********0021"),
        ("110105 19491231 002x", "110105********002x"),
        ("身份证４４０３０６２００００１０１１２３４", "身份证440306********1234"),
    ],
)
def test_typed_numbers_are_masked_as_a_reader_recognises_them(typed: str, shown: str):
    assert mask_personal_data(typed) == shown


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
    assert mask_personal_data(words) == words


# Chinese words around the numbers, never a digit: what stands right next to them.
WORDS = st.text(alphabet="电话联系我手机号码是请回拨身份证，。：、（ ）楼室", max_size=8)
DIGIT = st.sampled_from("0123456789")
SEPARATOR = st.sampled_from(["", " ", "-"])


# A UnionPay debit card's number as a bank prints it (passes the Luhn check), and one digit off.
CARD, NOT_CARD = "6222021234567894", "6222021234567890"


@pytest.mark.parametrize(
    ("typed", "shown"),
    [
        # The old 15-digit ID: region, YYMMDD, sequence; the birth date goes as in an 18-digit one.
        ("身份证110105491231002", "身份证110105******002"),
        ("老身份证号是 440306 800229 123，", "老身份证号是 440306******123，"),  # 1980-02-29
        ("４４０３０６８００１０１１２３", "440306******123"),
        # Bank cards: run together or grouped as typed, the first and last four kept.
        (f"工资卡{CARD}被冻结", "工资卡6222********7894被冻结"),
        ("卡号6222 0212 3456 7894。", "卡号6222 **** **** 7894。"),
        ("卡号6222-0212-3456-7894", "卡号6222-****-****-7894"),
        ("4111111111111111", "4111********1111"),  # Visa's test number
        ("退款到6217 0012 3456 7890 122", "退款到6217 **** **** ***0 122"),  # 19 digits: 4-4-4-4-3
        ("6217001234567890122", "6217***********0122"),
        # A landline without its area code, right after a phone cue only: the last four stay.
        ("电话88886666", "电话****6666"),
        ("座机：2345678", "座机：***5678"),
        ("联系电话是 8888-6666，", "联系电话是 ****-6666，"),
        ("联系方式:62345678", "联系方式:****5678"),
        ("手机号码 88886666", "手机号码 ****6666"),
        ("物业号码是66668888", "物业号码是****8888"),
        ("电话号码６２３４５６７８", "电话号码****5678"),
    ],
)
def test_old_ids_cards_and_cued_local_numbers_are_masked(typed: str, shown: str):
    assert mask_personal_data(typed) == shown


@pytest.mark.parametrize(
    "words",
    [
        "工单号20261203-000012还没人处理",
        "工单号码20261203-000012",  # after 号码, but a ticket's number
        "号码20261203-000012",
        "押金12000元",
        "3号楼2单元1201",
        "88886666",  # a bare 8-digit number: an amount, a house code
        "门禁密码88886666",
        "车牌号码23456789",  # 号码 after 牌 is a car's
        "房间号码2345678",
        "电话12345",  # the hotline itself
        "电话费88886666.5元",  # no digits after 电话, and an amount
        "手机13800元",  # an amount after 手机: five digits
        "电话01234567",  # a local number begins 2-9
        "订单110105491331002",  # fifteen digits, but month 13: an order number
        "流水号110105490230002",  # 30 February is no date
        "订单号123456789012345",  # fifteen digits starting with a region but no date in them
        f"订单号{NOT_CARD}",  # sixteen digits that fail the Luhn check
        "6222 0212 3456 7890",
        "6222 0212-3456 7894",  # the groups are not typed alike: not one number
        "MsgId 7001234567890123",  # passes the Luhn check, but no card begins with 7
        "1234567890123452",  # nor with 1
        "订单号12345678901234567890",  # twenty digits
    ],
)
def test_numbers_that_fail_the_checks_stay(words: str):
    assert mask_personal_data(words) == words


def _luhn_digit(body: str) -> str:
    """The check digit that makes `body` + it pass the Luhn check."""
    for d in "0123456789":
        total = 0
        for i, c in enumerate(reversed(body + d)):
            n = int(c) * (2 if i % 2 else 1)
            total += n - 9 if n > 9 else n
        if total % 10 == 0:
            return d
    raise AssertionError("unreachable")


RESIDENT_ID_SHAPE = re.compile(
    r"[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{4}"
)


@st.composite
def cards(draw: st.DrawFn) -> tuple[str, str]:
    """A card number that passes the Luhn check (its digits) and how a resident might type it."""
    length = draw(st.integers(16, 19))
    body = draw(st.sampled_from("234569")) + "".join(
        draw(st.lists(DIGIT, min_size=length - 2, max_size=length - 2))
    )
    digits = body + _luhn_digit(body)
    # 18 digits shaped as a resident ID (region, birth date, sequence) are masked as one, whatever
    # their last digit (`test_a_resident_id_keeps_its_region_and_last_four`): not a card here.
    assume(not RESIDENT_ID_SHAPE.fullmatch(digits))
    sep = draw(st.sampled_from(["", " ", "-"]))
    return digits, sep.join(digits[i : i + 4] for i in range(0, length, 4))


@given(cards(), WORDS, WORDS)
@example(("2000000000000006", "2000 0000 0000 0006"), "电话", "")  # a phone cue before the first groups
@example(("6222000000000009", "6222-0000-0000-0009"), "座机：", "")
def test_a_card_keeps_its_first_and_last_four_as_grouped(card: tuple[str, str], before: str, after: str):
    digits, typed = card
    shown = mask_personal_data(f"{before}{typed}{after}")
    kept = iter(digits[:4] + "*" * (len(digits) - 8) + digits[-4:])
    assert shown == f"{before}{''.join(next(kept) if c.isdigit() else c for c in typed)}{after}"


@given(cards(), st.integers(1, 9), WORDS, WORDS)
def test_a_card_number_one_digit_off_stays(card: tuple[str, str], off: int, before: str, after: str):
    digits, _ = card
    wrong = digits[:-1] + str((int(digits[-1]) + off) % 10)  # fails the Luhn check
    assert mask_personal_data(f"{before}{wrong}{after}") == f"{before}{wrong}{after}"


@given(
    st.integers(110000, 659999),
    st.dates(min_value=date(1900, 1, 1), max_value=date(1999, 12, 31)),
    st.integers(0, 999),
    WORDS,
    WORDS,
)
def test_an_old_id_keeps_its_region_and_last_three(region, born, sequence, before, after):
    number = f"{region}{born:%y%m%d}{sequence:03d}"
    assert mask_personal_data(f"{before}{number}{after}") == f"{before}{region}******{sequence:03d}{after}"


# A local number: 7 or 8 digits, the first 2-9.
LOCAL = st.one_of(st.integers(2_000_000, 9_999_999), st.integers(20_000_000, 99_999_999))


@given(
    st.sampled_from(["电话", "座机", "联系电话", "联系方式", "手机", "号码", "电话号码", "座机号"]),
    st.sampled_from(["", "：", ":", "是", " ", "： "]),
    LOCAL,
    WORDS,
)
def test_a_local_number_after_a_cue_keeps_its_last_four(cue, colon, local, after):
    assume(not after.startswith(("-", ".")))
    digits = str(local)
    shown = mask_personal_data(f"{cue}{colon}{digits}{after}")
    assert shown == f"{cue}{colon}{'*' * (len(digits) - 4)}{digits[-4:]}{after}"


@given(LOCAL, WORDS, WORDS)
def test_a_local_number_without_a_cue_stays(local: int, before: str, after: str):
    assume(not any(cue in before for cue in ("电话", "座机", "手机", "号码")))
    text = f"{before}{local}{after}"
    assert mask_personal_data(text) == text


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
    assert mask_personal_data(f"{before}{typed}{after}") == f"{before}{prefix}{mask_phone(digits)}{after}"


@st.composite
def resident_ids(draw: st.DrawFn) -> str:
    region = draw(st.integers(110000, 659999))
    born = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)))
    sequence = draw(st.integers(0, 999))
    check = draw(st.sampled_from("0123456789Xx"))
    return f"{region}{born:%Y%m%d}{sequence:03d}{check}"


@given(resident_ids(), WORDS, WORDS)
def test_a_resident_id_keeps_its_region_and_last_four(number: str, before: str, after: str):
    shown = mask_personal_data(f"{before}{number}{after}")
    assert shown == f"{before}{number[:6]}********{number[-4:]}{after}"


@given(
    st.sampled_from(["010", "021", "029", "0571", "0755", "0991"]),
    st.integers(2_000_000, 99_999_999),
    SEPARATOR,
    WORDS,
    WORDS,
)
def test_a_landline_keeps_its_area_code_and_last_four(area, local, sep, before, after):
    # A star for each digit hidden: three for a 7-digit local number, four for an 8-digit one.
    shown = mask_personal_data(f"{before}{area}{sep}{local}{after}")
    assert shown == f"{before}{area}{sep}{'*' * (len(str(local)) - 4)}{str(local)[-4:]}{after}"


@given(st.text(alphabet=st.sampled_from("0123456789"), min_size=20, max_size=40), WORDS, WORDS)
def test_a_longer_run_of_digits_is_never_a_phone(run: str, before: str, after: str):
    # Longer than any number masked with its prefix (a bank card: 19), so no part of it is one.
    assert mask_personal_data(f"{before}{run}{after}") == f"{before}{run}{after}"


# Anything: digits, the separators, brackets, a check digit's X, full-width forms and words.
ANY = st.text(alphabet="0123456789０１３８ +-()（）Xx*.电话号码，", max_size=60)


@given(ANY)
def test_masking_twice_is_masking_once(text: str):
    once = mask_personal_data(text)
    assert mask_personal_data(once) == once


@given(st.text(alphabet="0123456789X电话号码楼室，。", max_size=60))
def test_without_separators_only_digits_turn_into_stars(text: str):
    # Typed without spaces or dashes, a number keeps its length: the words around it keep their place.
    shown = mask_personal_data(text)
    assert len(shown) == len(text)
    assert all(s == t or (s == "*" and t.isdigit()) for s, t in zip(shown, text, strict=True))


# What makes characters a name: a cue before them, an honorific after them (names.yaml).
NAME_MARKS = ("我叫", "我是", "联系人", "姓名", "户主", "本人", "先生", "女士", "师傅", "阿姨", "大爷")


@given(st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=80))
def test_text_without_digits_or_name_cues_is_left_alone(text: str):
    assume(not any(mark in text for mark in NAME_MARKS))
    assert mask_personal_data(text) == text


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
    assert (
        masked_notice(("text", "address"))
        == "已对诉求内容、地址中的个人信息（电话、证件号、银行卡号、姓名）脱敏显示"
    )


def test_a_repeat_calls_words_are_masked_in_the_history():
    t = assigned_ticket(demo_city())
    urged = workflow.urge(t, "0231", "还是没人修，回电139 1234 5678", T0)
    assert urged is not None
    assert urged.publish[0].note == "还是没人修，回电139****5678"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("services.router.views:ResolveIn", "note"),
        ("services.router.views:ExtendIn", "reason"),
        ("services.router.views:VerifyIn", "note"),
        ("services.router.views:RedispatchIn", "reason"),
        ("services.router.views:PlaceRequestIn", "reason"),
        ("services.notifier.views:CallbackIn", "note"),
    ],
)
def test_staff_text_is_masked_as_the_request_is_read(body, field):
    """What staff type goes into the history the resident reads (办理结果 on the lookup page, the
    survey SMS) and other departments read: a number or a name in it is masked as it is received."""
    module, name = body.split(":")
    model = getattr(importlib.import_module(module), name)
    typed = "已现场处理，联系人：张三 13900001111，身份证110105199001011234"
    read = model.model_validate(
        {"note": "", "reason": "", "days": 5, "solved": False, "reached": True}
        | {"grid": "s01c01g01", "department": "water", field: typed}
    )
    assert getattr(read, field) == "已现场处理，联系人：张* 139****1111，身份证110105********1234"


def test_a_mediations_agreement_is_masked_as_the_resolution_is_read():
    from services.router.views import ResolveIn

    read = ResolveIn.model_validate(
        {
            "note": "调解成功",
            "mediation": {"outcome": "agreed", "agreement": "赔偿1000元，转账至6222 0000 0000 0009"},
        }
    )
    assert read.mediation is not None
    assert read.mediation.agreement == "赔偿1000元，转账至6222 **** **** 0009"
