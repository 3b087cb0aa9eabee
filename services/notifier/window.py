"""WeChat's 48 hours: which notices wait for a resident to write to the account again, and which of
them still go out when they do. Pure: no I/O.

WeChat takes a customer-service message only within 48 hours of the user's last message to the
account (`services.notifier.wechat_gateway`: errcode 45015, and no template message to fall back
on, or one WeChat refused too). Most resolutions come days after the appeal, so without this a
WeChat resident would never hear the result. Any message from them (a new appeal, 查询, a photo, a
survey answer) opens another 48 hours, so what could not reach them is kept
(`services.notifier.pending`) and handed back to the notifier's normal send path when they write.

What is kept: the notices about their tickets that tell them something they are waiting for
(`KEPT_KINDS`). An answer to something they wrote (查询, a clarification) is not: by the time they
write again it answers nothing, and their new message gets its own answer.

What goes out when they write, oldest first (`on_return`):
- a result: always, it is what they appealed for;
- a progress notice: unless a later kept notice about the same ticket (progress, result or survey)
  tells them where it stands now, which goes instead; two "still being handled" notices and then
  the result would only be noise;
- a survey or its reminder: only while that survey is open, its ticket not sent back, and it is
  still the survey of the ticket's latest resolution (a reminder not at all when the survey itself
  goes in the same return). A survey that closed unanswered (`no_answer`: it ran out while the
  resident could not be reached) still carries the result, so its result goes, as the `result`
  notice, without the question nobody can answer any more. One the resident answered, or whose
  ticket went back to the department or was resolved again since, is dropped;
- nothing kept longer than `KEEP_DAYS`: past that, 查询 tells them better where their ticket is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Literal, TypeVar

from services.notifier.routing import Notice

# How long a notice waits for its resident to write again. Long enough for the residents who come
# back within a week or two (a new appeal, 查询 about this one); not so long that a notice arrives
# about a ticket closed weeks ago, or that an openid and a resolution note are kept for nobody.
# Below the 30 days the message's state lives (`states.STATE_TTL`): its state is still there to
# move from `undelivered` to what the resend yields.
KEEP_DAYS = 14
# At most this many per resident (the newest): a handful of tickets' notices; more would be a
# flood when they write, and a bound on what one openid can pile up.
KEEP_AT_MOST = 10
KEPT_KINDS = frozenset({"progress", "result", "survey", "reminder"})
# The notices that tell a resident where a ticket stands: a later one makes an earlier progress
# notice about the same ticket stale.
_STANDING = frozenset({"progress", "result", "survey"})


N = TypeVar("N", bound=Notice)


def worth_keeping(message: Notice) -> bool:
    """Whether a message WeChat would not take now (`gateway.Undeliverable`) waits for its
    resident to write again: a notice about one of their tickets, in WeChat."""
    return message.channel == "wechat" and message.kind in KEPT_KINDS and bool(message.ticket_no)


@dataclass(frozen=True)
class SurveyFacts:
    """What stands, when the resident writes again, about the survey of their ticket's latest
    resolution (the one a kept survey or reminder may still be about)."""

    message_ids: frozenset[str]  # the ids of that survey's message and of its reminder
    open: bool  # still waiting for the resident's answer
    void: bool  # a grid worker found that resolution not solved: the ticket went back (重办)
    outcome: str | None  # how it closed (`SurveyAnswered.outcome`); None while open or not known


Action = Literal["send", "result", "drop"]


@dataclass(frozen=True)
class Return(Generic[N]):
    """What becomes of one kept notice: sent as it is, sent as its ticket's `result` notice (a
    survey whose question is moot), or dropped, with why (for the log)."""

    message: N
    action: Action
    reason: str = ""


def on_return(kept: Sequence[N], surveys: Mapping[str, SurveyFacts], now: datetime) -> list[Return[N]]:
    """What becomes of each kept notice when the resident writes, oldest first. `surveys`: per
    ticket number, its latest survey as it stands now (no entry: the ticket has none, or it is
    gone)."""
    ordered = sorted({m.message_id: m for m in kept}.values(), key=lambda m: (m.created_at, m.message_id))
    out: list[Return[N]] = []
    for i, m in enumerate(ordered):
        later = ordered[i + 1 :]
        if m.created_at < now - timedelta(days=KEEP_DAYS):
            out.append(Return(m, "drop", f"kept longer than {KEEP_DAYS} days"))
        elif m.kind == "result":
            out.append(Return(m, "send"))
        elif m.kind == "progress":
            if any(n.ticket_no == m.ticket_no and n.kind in _STANDING for n in later):
                out.append(Return(m, "drop", "a later notice about the ticket supersedes it"))
            else:
                out.append(Return(m, "send"))
        elif m.kind in ("survey", "reminder"):
            out.append(_survey(m, surveys.get(m.ticket_no or ""), ordered))
        else:  # not kept in the first place (`worth_keeping`); nothing to answer any more
            out.append(Return(m, "drop", f"a {m.kind} message is not sent later"))
    return out


def _survey(m: N, facts: SurveyFacts | None, kept: Sequence[N]) -> Return[N]:
    if facts is None or m.message_id not in facts.message_ids:
        return Return(m, "drop", "the ticket was resolved again since, or its survey is gone")
    if facts.open and not facts.void:
        asked = any(n.kind == "survey" and n.message_id in facts.message_ids for n in kept)
        if m.kind == "reminder" and asked:
            return Return(m, "drop", "the survey itself goes")
        return Return(m, "send")
    if m.kind == "survey" and not facts.void and facts.outcome == "no_answer":
        return Return(m, "result", "the survey closed unanswered: its result goes without the question")
    return Return(m, "drop", "its survey is no longer open")
