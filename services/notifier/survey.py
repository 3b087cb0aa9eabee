"""Reading residents' survey replies, and the message texts. Pure functions.

The survey asks one combined question: 回复1满意，2基本满意，3不满意. "Not solved" words
(没解决/未解决/还没修) count as unsatisfied-and-not-solved whatever digit comes with them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from shared.events import Rating

SURVEY_QUESTION = "回复1满意，2基本满意，3不满意"

_UNSOLVED = ("没解决", "未解决", "没有解决", "没处理", "没有处理", "还没修", "没修好", "没人管")
# Longest first: "不满意" must not be read as "满意", nor "基本满意" as "满意".
_WORDS: tuple[tuple[str, Rating], ...] = (
    ("非常不满意", 3), ("很不满意", 3), ("不太满意", 3), ("不满意", 3), ("不满", 3), ("差评", 3),
    ("基本满意", 2), ("还行", 2), ("一般", 2), ("凑合", 2),
    ("非常满意", 1), ("很满意", 1), ("满意", 1), ("好评", 1),
)
_LEADING_DIGIT = re.compile(r"^\s*([123])(?!\d)")


@dataclass(frozen=True)
class Reply:
    rating: Rating | None
    solved: bool | None
    text: str


def parse_reply(raw: str) -> Reply:
    text = unicodedata.normalize("NFKC", raw).strip()  # NFKC: full-width １ becomes 1
    unsolved = any(w in text for w in _UNSOLVED)
    rating: Rating | None = None
    if m := _LEADING_DIGIT.match(text):
        rating = int(m.group(1))  # type: ignore[assignment]
    else:
        for word, value in _WORDS:
            if word in text:
                rating = value
                break
    if unsolved:
        return Reply(rating=3, solved=False, text=raw)
    solved = None if rating is None else rating != 3
    return Reply(rating=rating, solved=solved, text=raw)


def survey_text(ticket_no: str, note: str) -> str:
    short = note if len(note) <= 40 else note[:39] + "…"
    return f"【12345】您反映的问题（工单号{ticket_no}）已办理：{short}。请评价：{SURVEY_QUESTION}。"


def acknowledgement_text(ticket_no: str) -> str:
    return f"【12345】您的诉求已受理，工单号{ticket_no}，我们将尽快办理并回复您。"
