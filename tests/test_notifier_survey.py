"""Reading survey replies as residents really write them, and the message templates. Pure."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from services.notifier.survey import is_opt_out, parse_reply
from services.notifier.surveys import answered_rating, answered_via
from services.notifier.texts import NotificationsError, load_texts
from shared.events import SurveyAnswered
from shared.survey_reply import answer_comment, comment_in_note, reply_comment


@pytest.mark.parametrize(
    ("text", "rating", "solved"),
    [
        ("1", 1, True),
        ("１", 1, True),  # full-width digit
        ("1。", 1, True),
        (" 2 ", 2, True),
        ("3", 3, False),
        ("满意", 1, True),
        ("非常满意！", 1, True),
        ("基本满意", 2, True),
        ("不满意", 3, False),
        ("不太满意", 3, False),
        ("没解决", 3, False),
        ("1 谢谢你们，路灯已经亮了", 1, True),
        ("2还行吧", 2, True),
        ("3根本没人来", 3, False),
        ("3 根本没解决，今晚还在", 3, False),
        ("1 但是问题没解决", 1, False),  # satisfied with the service, not solved: counted as said
        ("3 解决了但是拖了太久", 3, True),
        ("态度很满意", 1, True),
        ("一般般吧", 2, True),
        # A leading number that counts something is no rating: the words say what the reply is.
        ("3个月了还没修", 3, False),
        ("2楼漏水还没修好", 3, False),
        ("1楼路灯修好了，很满意", 1, True),
    ],
)
def test_reply_forms(text, rating, solved):
    r = parse_reply(text)
    assert (r.rating, r.solved) == (rating, solved)
    assert r.text == text


@pytest.mark.parametrize(
    ("text", "comment"),
    [
        # What residents really send: the digit, the word, both, and words of their own.
        ("1", ""),
        ("满意", ""),
        ("满意，1", ""),
        ("1 很满意谢谢", "很满意谢谢"),
        ("不满意，路灯还是不亮", "路灯还是不亮"),
        ("１", ""),
        ("非常满意！", ""),
        ("1。谢谢", "谢谢"),
        ("1 未解决", ""),  # the survey asks to add 未解决: the answer, said in words by the rating
        ("没解决", ""),
        ("3根本没人来", "根本没人来"),  # the leading digit is the answer, glued or not
        ("3 根本没解决，今晚还在", "根本没解决，今晚还在"),  # the resident's punctuation as typed
        ("1 但是问题没解决", "但是问题没解决"),
        ("路灯修好了，满意", "路灯修好了"),
        ("0001 3 还是不亮", "还是不亮"),  # the ticket's reference goes too
        ("尾号0101：3 还是不亮", "还是不亮"),
        ("不满意，路灯还是不亮（第三次了）", "路灯还是不亮（第三次了）"),
        # Answer words inside the resident's own sentence stay: it is theirs, whole.
        ("态度很满意", "态度很满意"),
        ("一般般吧", "一般般吧"),
        ("我对结果不满意因为路灯还是不亮", "我对结果不满意因为路灯还是不亮"),
        ("3个月了还没修", "3个月了还没修"),  # a number that counts, not the rating's digit
        ("2楼漏水还没修", "2楼漏水还没修"),
    ],
)
def test_a_reply_s_comment_is_what_the_resident_said_beyond_their_answer(text, comment):
    assert reply_comment(text) == comment
    assert answer_comment(text) == comment  # an SMS or WeChat reply (no operator, not the lookup page)
    assert comment_in_note(comment) == comment  # a comment stays as it is


def test_an_answer_written_down_keeps_its_words_and_the_text_of_none_is_no_comment():
    assert answer_comment("电话回访", by="op09") == ""  # the operator wrote nothing down
    assert answer_comment("市民说3天才修好", by="op09") == "市民说3天才修好"
    assert answer_comment("查询页评价", via="lookup") == ""  # no comment typed on the lookup page
    assert answer_comment("3天才修好，太慢了", via="lookup") == "3天才修好，太慢了"  # not a reply's digit
    assert answer_comment("满意", via="lookup") == ""  # only the rating again
    # Notes written before kept the reply as sent: the parts that only repeat the answer go.
    assert comment_in_note("满意，1") == ""
    assert comment_in_note("不满意，路灯还是不亮") == "路灯还是不亮"


@given(st.text(max_size=40))
@example("查询页评价")  # the words a note has for an answer without a comment: none, then
@example("2，电话回访")
def test_a_comment_is_part_of_the_reply_and_read_again_is_the_same(text):
    comment = reply_comment(text)
    assert comment in text
    assert comment_in_note(comment) == comment


@pytest.mark.parametrize(
    "text", ["谢谢", "你们辛苦了", "4", "12", "好的收到", "？", "123456", "3个月了", "2楼的"]
)
def test_free_text_has_no_rating(text):
    r = parse_reply(text)
    assert r.rating is None
    assert r.solved is None
    assert not r.has_rating


@pytest.mark.parametrize("text", ["TD", "td", "ＴＤ", "退订", "退订。"])
def test_opt_out_words(text):
    assert is_opt_out(text)


@pytest.mark.parametrize("text", ["1", "TD一下", "不退订", "满意"])
def test_not_opt_out(text):
    assert not is_opt_out(text)


@given(st.text(max_size=40))
def test_any_text_parses_to_a_consistent_reply(text):
    r = parse_reply(text)
    assert r.rating in (None, 1, 2, 3)
    assert (r.rating is None) == (r.solved is None)


def test_the_answers_counter_says_the_channel_each_answer_came_by():
    """`surveys_answered_total{via}`: the resident's reply on the survey's channel, the operator's
    phone callback, the lookup page; a survey closed without an answer came by none."""
    answer = SurveyAnswered(ticket_no="T", survey_id="s", rating=1, solved=True, text="1")
    assert answered_via(answer, "sms") == "sms"
    assert answered_via(answer, "wechat") == "wechat"
    assert answered_via(answer.model_copy(update={"by": "op09"}), "sms") == "phone"
    assert answered_via(answer.model_copy(update={"via": "lookup"}), "sms") == "lookup"
    assert answered_via(answer.model_copy(update={"via": "lookup"}), "wechat") == "lookup"
    for outcome in ("no_answer", "opted_out"):
        closed = answer.model_copy(update={"outcome": outcome, "rating": None, "solved": None})
        assert answered_via(closed, "sms") == "none"
        assert answered_rating(closed) == outcome
    # `rating`: an answer to a survey a check voided is in no rate, so it is not counted as a 1.
    assert answered_rating(answer) == "1"
    assert answered_rating(answer.model_copy(update={"void": True})) == "void"


def test_default_templates_render_with_the_ticket_number():
    t = load_texts()
    assert "您的诉求已受理，工单号20261123-000001" in t.render("ack", ticket_no="20261123-000001")
    survey = t.render("survey", ticket_no="X1", note=t.short_note("已更换路灯灯泡。"), question=t.question)
    assert "X1" in survey
    assert "回复1满意，2基本满意，3不满意" in survey
    assert "已更换路灯灯泡" in survey
    assert t.short_note("很" * 100).endswith("…")
    assert len(t.short_note("很" * 100)) == t.note_max_chars
    # Cut where a clause ends, when one does in the second half, not inside a word.
    note = "经现场勘查，系线路老化导致路灯断电，维修人员已于当日更换电缆并更新配电箱，现已恢复正常照明"
    assert t.short_note(note) == "经现场勘查，系线路老化导致路灯断电，维修人员已于当日更换电缆并更新配电箱…"
    assert t.short_note("经现场勘查，" + "很" * 50) == "经现场勘查，" + "很" * 33 + "…"  # none late enough
    # A mediation's resolution says first how it ended: the resident was a party to it.
    assert t.resolution("双方当面协商。", "agreed") == "调解成功，达成协议：双方当面协商"
    assert t.resolution("建议通过诉讼解决", "not_agreed") == "调解不成：建议通过诉讼解决"
    assert t.resolution("已更换路灯灯泡。") == "已更换路灯灯泡"


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "notifications.yaml"
    p.write_text(body, encoding="utf-8")
    return p


def test_a_bad_template_is_named(tmp_path):
    base = Path("services/notifier/notifications.yaml").read_text(encoding="utf-8")
    bad = base.replace(
        'ack: "{signature}您的诉求已受理，工单号{ticket_no}', 'ack: "{signature}您的诉求已受理，{phone}'
    )
    with pytest.raises(NotificationsError) as e:
        load_texts(_write(tmp_path, bad))
    assert "template 'ack': unknown field {phone}" in str(e.value)
    assert "template 'ack' must show the ticket number" in str(e.value)


def test_a_question_that_lost_its_digits_is_refused(tmp_path):
    base = Path("services/notifier/notifications.yaml").read_text(encoding="utf-8")
    bad = base.replace("question: 回复1满意，2基本满意，3不满意", "question: 回复A满意，B基本满意，C不满意")
    with pytest.raises(NotificationsError, match="question must offer “1满意”"):
        load_texts(_write(tmp_path, bad))


def test_missing_template_and_file(tmp_path):
    with pytest.raises(NotificationsError, match="template 'reminder' is missing"):
        load_texts(
            _write(tmp_path, "question: 回复1满意，2基本满意，3不满意\ntemplates:\n  ack: '{ticket_no}'\n")
        )
    with pytest.raises(NotificationsError, match="file missing"):
        load_texts(tmp_path / "nope.yaml")
