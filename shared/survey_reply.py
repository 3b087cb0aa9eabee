"""Reading a resident's answer to a survey, as the ticket's history says it. Pure: no I/O.

The notifier reads replies as they come (`services.notifier.survey`: which survey, which rating);
the router writes the answer into the ticket's history and the console shows it. All of them need
the same few readings of an answer, which live here so that no service reaches into another's
modules for them:

- `rating_words`: an answer as its confirmation repeats it (满意, 满意，问题未解决, ...);
- `answer_comment` / `comment_in_note` / `reply_comment`: what the resident said beyond the answer;
- the rating words, the digits a rating may not count, and the ticket reference a reply may begin
  with (`RATING_WORDS`, `COUNTED`, `REFERENCE`), which reading a reply uses as well.
"""

from __future__ import annotations

import re

from shared.events import Rating

# The words of a rating, longest first: "不满意" must not be read as "满意", nor "基本满意" as "满意".
RATING_WORDS: tuple[tuple[str, Rating], ...] = (
    ("非常不满意", 3),
    ("很不满意", 3),
    ("不太满意", 3),
    ("不大满意", 3),
    ("不满意", 3),
    ("不满", 3),
    ("差评", 3),
    ("基本满意", 2),
    ("比较满意", 2),
    ("还算满意", 2),
    ("还行", 2),
    ("一般", 2),
    ("凑合", 2),
    ("非常满意", 1),
    ("很满意", 1),
    ("十分满意", 1),
    ("满意", 1),
    ("好评", 1),
)
# A digit that begins the resident's sentence may count what follows ("3个月了还没修", "2楼漏水"):
# then it is no rating, and the words say what the reply is.
COUNTED = "个天月年日周次号楼层栋单元户间块元米点时小分秒位条盏遍趟多几十百千万"

REF_DIGITS = 4  # a ticket's reference is at least its last four digits: easy to type on a phone
# A reference at the start of a reply: the digits, then a separator or the rating's words. 尾号 /
# 工单 may come first, 号 after ("尾号0001：3", "0001号 满意", "0001+3", "0001-3").
REFERENCE = re.compile(
    rf"^\s*(?:尾号|工单尾号|工单号?|单号)?\s*(?P<ref>\d{{{REF_DIGITS},}})(?!\d)\s*号?\s*[-+—–:：,，.。、/\s]*"
)


# --- what a resident said beyond their answer (the ticket's history) ---------------------------------

# The text an answer given without a reply carries when nobody wrote anything down: an operator's
# call (电话回访) with no note, the lookup page (查询页) with no comment. Not the resident's words.
PHONE_ANSWER_TEXT = "电话回访"
LOOKUP_ANSWER_TEXT = "查询页评价"
# What a reply answers with: a rating's digit or words, and the words the survey asks to add
# (未解决) or that say the opposite. Longest first, as `RATING_WORDS`: "不满意" is not "满意" with more.
_ANSWER_WORDS = sorted(
    {w for w, _ in RATING_WORDS} | {"未解决", "没解决", "没有解决", "已解决", "已经解决", "解决了"},
    key=len,
    reverse=True,
)
_WORDS_TOKEN = "|".join(map(re.escape, _ANSWER_WORDS))
_TOKEN = rf"(?:{_WORDS_TOKEN}|(?<!\d)[123１２３](?!\d))"  # the digit as typed: full-width too
# What separates the parts of a reply: spaces and punctuation, full-width or not (not brackets or
# quotes, which come in pairs: "路灯还是不亮（第三次了）" keeps both).
_SEPARATORS = " \t\r\n\u3000,，.。、;；:：!！?？~～…·-—_+/|"
_SEP = "[" + "".join(re.escape(c) for c in _SEPARATORS) + "]"
# The digit a reply begins with is its answer, glued to the words or not ("3根本没修"), as
# `services.notifier.survey.parse_reply` reads it. Words are the answer only as a part of their own
# ("不满意，…"): glued to more, they may be the resident's sentence ("一般般吧", "不满意的地方是…"),
# which stays whole.
_GLUED_ANSWER = re.compile(rf"^[123１２３](?![\d{COUNTED}])")
_LEADING_ANSWER = re.compile(rf"^{_TOKEN}+(?={_SEP}|$)")  # a part that is nothing but answer
_TRAILING_ANSWER = re.compile(rf"(?:^|(?<={_SEP})){_TOKEN}+$")


def _stripped(text: str) -> str:
    return text.strip(_SEPARATORS)


def _answer_parts_dropped(text: str) -> str:
    """`text` without the parts at its start and end that are nothing but an answer ("满意，1",
    "路灯修好了，满意"); answer words inside the resident's sentence stay ("我对结果不满意因为…")."""
    while True:
        was = text = _stripped(text)
        text = _LEADING_ANSWER.sub("", text, count=1)
        text = _TRAILING_ANSWER.sub("", _stripped(text), count=1)
        if text == was:
            return _stripped(text)


def reply_comment(raw: str) -> str:
    """What a resident's reply says beyond the answer it gives, "" when nothing: the ticket reference
    it may begin with, the rating's digit it answers with, and the parts at its start and end that
    are nothing but the answer (its digit, its words) go; the rest, their comment, is kept as
    written (as typed: read, not normalized).
    "1", "满意", "满意，1" -> ""; "1 很满意谢谢" -> "很满意谢谢"; "不满意，路灯还是不亮" -> "路灯还是不亮"."""
    text = raw.strip()
    if reference := REFERENCE.match(text):
        text = text[reference.end() :]
    text = _GLUED_ANSWER.sub("", _stripped(text), count=1)
    comment = _answer_parts_dropped(text)
    # A reply that says nothing but the words an answer without a comment is noted with says no
    # more than they do: as a comment it would be read back from the note as none (`comment_in_note`).
    return "" if comment in (PHONE_ANSWER_TEXT, LOOKUP_ANSWER_TEXT) else comment


def answer_comment(text: str, *, by: str | None = None, via: str | None = None) -> str:
    """The resident's comment in a survey answer's text (`SurveyAnswered.text`), "" when none: a
    reply's (SMS, WeChat: `reply_comment`), or what the operator wrote down (`by`) or the resident
    typed on the lookup page (`via` "lookup") as written, but not the text such an answer carries
    when there was none (PHONE_ANSWER_TEXT, LOOKUP_ANSWER_TEXT), nor one that only says the rating
    again."""
    if by is None and via is None:
        return reply_comment(text)
    return comment_in_note(text)


def comment_in_note(note: str) -> str:
    """The resident's comment in the note of a ticket's step the survey's answer took (closed,
    reopened): the comment itself (`answer_comment`), or in notes written before, the answer's
    text whole, without the parts that only say the rating again ("满意，1") or the text of an
    answer with no comment. A comment stays as it is: nothing in it is only the answer."""
    if note.strip() in (PHONE_ANSWER_TEXT, LOOKUP_ANSWER_TEXT):
        return ""
    return _answer_parts_dropped(note)


def rating_words(rating: Rating, solved: bool | None) -> str:
    """An answer as its confirmation repeats it: 满意 / 基本满意 / 不满意, and 问题未解决 when a
    satisfied answer says it is not solved (or 问题已解决 when an unsatisfied one says it is)."""
    words = {1: "满意", 2: "基本满意", 3: "不满意"}[rating]
    if solved is False and rating != 3:
        return f"{words}，问题未解决"
    if solved is True and rating == 3:
        return f"{words}，问题已解决"
    return words
