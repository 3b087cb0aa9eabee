"""Several surveys open on one phone: which ticket a reply rates, the survey's short reference, the
question "which one?", the answer's confirmation words, and the new progress templates. Pure."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.notifier.survey import (
    Ask,
    Rate,
    Survey,
    answers_survey_in_chat,
    askable,
    choose_survey,
    read_inbound,
    reopens,
    short_ref,
    split_reference,
    which_choices,
)
from services.notifier.texts import FIELDS, OPTIONAL, NotificationsError, load_texts
from shared.survey_reply import rating_words

SH = ZoneInfo("Asia/Shanghai")


def survey(no: str, day: int, about: str = "", sid: str | None = None) -> Survey:
    return Survey(
        survey_id=sid or f"s-{no}-{day}",
        ticket_no=no,
        to="13800000000",
        started_at=datetime(2026, 11, day, 10, 0, tzinfo=SH),
        about=about,
    )


LIGHT = survey("20261123-000101", 23, "路灯故障")
RUBBISH = survey("20261124-000205", 24, "垃圾清运")
BOTH = [RUBBISH, LIGHT]  # newest first, as the survey book reads them


def test_the_reference_is_the_last_four_digits_or_as_many_as_tell_the_tickets_apart():
    assert short_ref("20261123-000101", ["20261124-000205"]) == "0101"
    assert short_ref("20261123-000101", ["20261123-000101"]) == "0101"  # itself is no other
    assert short_ref("20261123-000101", ["20261124-000101"]) == "3000101"
    assert short_ref("20261123-010101", ["20261123-000101"]) == "10101"


@pytest.mark.parametrize(
    ("text", "ref", "rest"),
    [
        ("0101 3 路灯还是不亮", "0101", "3 路灯还是不亮"),
        ("0101-3", "0101", "3"),
        ("0101+1", "0101", "1"),
        ("尾号0101：不满意", "0101", "不满意"),
        ("０１０１，１", "0101", "1"),  # full-width, as some phones type
        ("0101号 满意", "0101", "满意"),
        ("0101", "0101", ""),
        ("3 路灯还是不亮", None, "3 路灯还是不亮"),
        ("1 谢谢", None, "1 谢谢"),
        ("123 号楼", None, "123 号楼"),  # three digits are no reference
    ],
)
def test_a_reference_is_read_off_the_start_of_a_reply(text, ref, rest):
    assert split_reference(text) == (ref, rest)


def test_with_one_survey_open_nothing_changes():
    assert choose_survey([LIGHT], "3 还是不亮", None) == Rate(LIGHT, read_inbound("3 还是不亮").reply)  # type: ignore[arg-type]
    decided = choose_survey([LIGHT], "0101 1", None)
    assert isinstance(decided, Rate)
    assert decided.reply.rating == 1
    # A number that is not its reference stays part of the words, as before.
    other = choose_survey([LIGHT], "9999 谢谢", None)
    assert isinstance(other, Rate)
    assert other.reply.text == "9999 谢谢"
    assert other.reply.rating is None


def test_no_survey_open_is_none():
    assert choose_survey([], "1", None) is None


def test_a_reply_that_names_its_ticket_rates_that_ticket_not_the_newest():
    decided = choose_survey(BOTH, "0101 3 路灯还是不亮", None)
    assert isinstance(decided, Rate)
    assert decided.survey is LIGHT
    assert (decided.reply.rating, decided.reply.solved, decided.reply.text) == (3, False, "3 路灯还是不亮")


def test_a_reply_that_names_no_ticket_while_several_are_open_is_not_guessed():
    decided = choose_survey(BOTH, "3 路灯还是不亮", None)
    assert decided == Ask((RUBBISH, LIGHT), ("0205", "0101"), keep="3 路灯还是不亮")
    # Words without a rating are not guessed either: kept, to be filed under the ticket named.
    assert isinstance(choose_survey(BOTH, "谢谢", None), Ask)
    # A reference that fits none of them: asked again, what was kept stays.
    assert choose_survey(BOTH, "7777", "3 路灯还是不亮") == Ask((RUBBISH, LIGHT), ("0205", "0101"), keep=None)


def test_the_reference_alone_applies_the_kept_reply():
    decided = choose_survey(BOTH, "0101", "3 路灯还是不亮")
    assert isinstance(decided, Rate)
    assert decided.from_pending
    assert decided.survey is LIGHT
    assert (decided.reply.rating, decided.reply.text) == (3, "3 路灯还是不亮")
    # Once the other closed, its reference alone still applies what was kept.
    alone = choose_survey([LIGHT], "0101", "3 路灯还是不亮")
    assert isinstance(alone, Rate)
    assert alone.from_pending
    assert alone.reply.rating == 3
    # The reference with a new rating: the new one counts.
    again = choose_survey(BOTH, "0205 1", "3 路灯还是不亮")
    assert isinstance(again, Rate)
    assert not again.from_pending
    assert (again.survey, again.reply.rating) == (RUBBISH, 1)


def test_a_ticket_resolved_again_is_one_choice_its_newest_survey():
    redone = survey("20261123-000101", 25, "路灯故障", sid="newer")
    decided = choose_survey([redone, LIGHT], "1", None)
    assert isinstance(decided, Rate)
    assert decided.survey is redone


def test_a_survey_a_grid_workers_check_voided_is_never_asked_about():
    """现场核查未解决 voided the streetlight's survey: the rubbish is the one ticket left to rate, so
    an unnamed reply rates it and nothing is asked; a reply naming the streetlight is still that
    survey's (void) answer; with only void surveys open the newest takes a reply, never a question."""
    voided = LIGHT.model_copy(update={"void": True})
    assert askable([RUBBISH, voided]) == [RUBBISH]
    decided = choose_survey([RUBBISH, voided], "3 还是没人收", None)
    assert decided == Rate(RUBBISH, read_inbound("3 还是没人收").reply)  # type: ignore[arg-type]
    named = choose_survey([RUBBISH, voided], "0101 1", None)
    assert isinstance(named, Rate)
    assert (named.survey, named.reply.rating) == (voided, 1)
    # Kept while both were open, then the streetlight's check came: its reference still applies it.
    kept = choose_survey([RUBBISH, voided], "0101", "3 路灯还是不亮")
    assert isinstance(kept, Rate)
    assert (kept.survey, kept.from_pending, kept.reply.rating) == (voided, True, 3)
    alone = choose_survey([voided], "1", None)
    assert isinstance(alone, Rate)
    assert alone.survey is voided
    older_void = RUBBISH.model_copy(update={"void": True})
    assert choose_survey([older_void, voided], "1", None) == Rate(older_void, read_inbound("1").reply)  # type: ignore[arg-type]
    # With two tickets still to rate, the question lists those two only, by their own references.
    water = survey("20261125-000309", 25, "供水故障")
    ask = choose_survey([water, RUBBISH, voided], "1", None)
    assert ask == Ask((water, RUBBISH), ("0309", "0205"), keep="1")
    # A ticket sent back and resolved again: its new survey is the one asked, the void one is not.
    redone = survey("20261123-000101", 25, "路灯故障", sid="newer")
    again = choose_survey([redone, RUBBISH, voided], "0101 1", None)
    assert isinstance(again, Rate)
    assert again.survey is redone


def test_the_question_lists_references_and_categories_never_the_appeal():
    ask = choose_survey(BOTH, "3 路灯还是不亮", None)
    assert isinstance(ask, Ask)
    assert which_choices(ask, SH) == "尾号0205（垃圾清运，11月24日办结）；尾号0101（路灯故障，11月23日办结）"
    text = load_texts().render("which_ticket", choices=which_choices(ask, SH), example=ask.refs[0])
    assert "尾号0205" in text
    assert "“0205”" in text
    assert "13800000000" not in text
    assert "路灯还是不亮" not in text
    unknown = Ask((survey("20261123-000101", 23),), ("0101",), keep=None)
    assert which_choices(unknown, SH) == "尾号0101（11月23日办结）"


def test_a_reference_does_not_stop_a_rating_being_read_as_one():
    inbound = read_inbound("0101 3 路灯还是不亮")
    assert inbound.kind == "rating"
    assert inbound.reply is not None
    assert inbound.reply.rating == 3
    assert read_inbound("0101").kind == "words"
    # In the chat, where words are appeals, a bare reference may still answer "which ticket?" (the
    # survey book takes it only when it kept a reply); a reference with words is no reply.
    assert answers_survey_in_chat(read_inbound("0101"))
    assert answers_survey_in_chat(read_inbound("尾号0101"))
    assert not answers_survey_in_chat(read_inbound("0101号楼下的路灯坏了"))


@pytest.mark.parametrize(
    ("rating", "solved", "words", "reopened"),
    [
        (1, True, "满意", False),
        (2, True, "基本满意", False),
        (3, False, "不满意", True),
        (1, False, "满意，问题未解决", True),
        (3, True, "不满意，问题已解决", True),
    ],
)
def test_the_confirmation_repeats_the_answer_and_says_when_it_reopens(rating, solved, words, reopened):
    assert rating_words(rating, solved) == words
    assert reopens(rating, solved) is reopened


def test_the_new_templates_are_shipped_and_optional_in_a_citys_file(tmp_path: Path):
    texts = load_texts()
    new = {
        "survey_several",
        "which_ticket",
        "answer_thanks",
        "answer_reopened",
        "progress_meeting_decided",
        "progress_mediation",
        "progress_sent_back",
    }
    assert new <= texts.templates.keys()
    assert new <= OPTIONAL
    several = texts.render("survey_several", ticket_no="X", note="n", question=texts.question, ref="0101")
    assert "尾号0101" in several
    assert "“0101 1”" in several
    assert "1满意" in several
    assert "重新办理" in texts.render("answer_reopened", ticket_no="X", rating="不满意")
    # Staff words stay out of what residents read.
    for name in ("progress_meeting_decided", "progress_mediation", "progress_sent_back"):
        fields = {f: "某单位" for f in FIELDS[name] if f != "ticket_no"}
        text = texts.render(name, ticket_no="X", **fields)
        assert not any(w in text for w in ("督办", "核查未解决", "退单", "主办", "派单"))
    # A city's own file without them loads, and renders the shipped texts.
    own = tmp_path / "n.yaml"
    shipped = Path("services/notifier/notifications.yaml").read_text(encoding="utf-8")
    kept = [line for line in shipped.splitlines() if not any(line.strip().startswith(f"{n}:") for n in new)]
    own.write_text("\n".join(kept), encoding="utf-8")
    city = load_texts(own)
    assert "尾号0101" in city.render("survey_several", ticket_no="X", note="n", question="q", ref="0101")
    # A city's survey_several that drops the reference is refused.
    broken = tmp_path / "b.yaml"
    broken.write_text(
        shipped.replace("（工单号{ticket_no}，尾号{ref}）", "（工单号{ticket_no}）").replace(
            "“{ref} 1”", "“1”"
        ),
        encoding="utf-8",
    )
    with pytest.raises(NotificationsError, match="survey_several"):
        load_texts(broken)
