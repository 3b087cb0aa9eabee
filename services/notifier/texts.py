"""The message templates (notifications.yaml), validated on load, and rendering, with the way dates
are written in them. No I/O but reading the file.

Every template is checked at start-up: a missing template, a `{field}` the template may not use, or a
survey question that lost its 1/2/3 meaning is an error naming the file and the template.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from string import Formatter
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.tickets import MEDIATION_OUTCOME_NAMES
from shared.yamlfile import read_yaml

DEFAULT_FILE = Path(__file__).with_name("notifications.yaml")

# Template -> the fields it may use (signature is always allowed).
FIELDS: dict[str, frozenset[str]] = {
    "ack": frozenset({"ticket_no"}),
    "progress_meeting": frozenset({"ticket_no"}),
    # Held as one of a hotspot's appeals (the same problem, many residents, one grid): one meeting.
    "progress_meeting_hotspot": frozenset({"ticket_no"}),
    # The joint meeting decided which department handles it (`department`).
    "progress_meeting_decided": frozenset({"ticket_no", "department"}),
    # 转人民调解: the street's mediation committee (`department`) takes it.
    "progress_mediation": frozenset({"ticket_no", "department"}),
    # 现场核查未解决: the grid worker found it not solved; back to the department.
    "progress_sent_back": frozenset({"ticket_no"}),
    "progress_extension": frozenset({"ticket_no", "resolve_by"}),
    "survey": frozenset({"ticket_no", "note", "question"}),
    # The survey to a phone with another survey open: `ref`, the ticket's short reference (its last
    # digits), is what a reply begins with to say which ticket it rates.
    "survey_several": frozenset({"ticket_no", "note", "question", "ref"}),
    # A reply that named no ticket while several surveys are open: which one? `choices` lists them
    # (尾号0001（路灯故障，11月23日办结）；…), `example` is the first one's reference.
    "which_ticket": frozenset({"choices", "example"}),
    # The confirmation of a recorded answer (`rating`: 满意 / 基本满意 / 不满意…); reopened: the
    # answer sends the ticket back to be handled again.
    "answer_thanks": frozenset({"ticket_no", "rating"}),
    "answer_reopened": frozenset({"ticket_no", "rating"}),
    "result": frozenset({"ticket_no", "note"}),
    "reminder": frozenset({"ticket_no", "question"}),
    # The reminder while the phone has another survey open: with the reference, as survey_several.
    "reminder_several": frozenset({"ticket_no", "question", "ref"}),
    "clarification": frozenset({"ticket_no", "question"}),
    "opt_out": frozenset(),
    # The answer to a resident's progress query (查询): `progress` is intake's answer, in the words
    # the WeChat reply uses too (services.intake.progress).
    "progress_reply": frozenset({"progress"}),
    # 并案: the resident's ticket was merged into the ticket already being handled (`into`), whose
    # number they are to follow.
    "merged_notice": frozenset({"ticket_no", "into"}),
    # 并案, carried along: the ticket theirs had been merged into (`via`) was merged into another
    # (`into`), the one to follow now.
    "remerged_notice": frozenset({"ticket_no", "via", "into"}),
    # To a department's supervisor (not a resident): a deadline passed, or the ticket was escalated.
    "overdue_notice": frozenset({"ticket_no", "stage", "deadline", "department"}),
    "escalated_notice": frozenset({"ticket_no", "stage", "deadline", "department"}),
}
# Added after cities had their own files: when a file lacks them, the shipped texts are used.
OPTIONAL = frozenset(
    {
        "overdue_notice",
        "escalated_notice",
        "progress_reply",
        "merged_notice",
        "remerged_notice",
        "survey_several",
        "reminder_several",
        "which_ticket",
        "answer_thanks",
        "answer_reopened",
        "progress_meeting_decided",
        "progress_meeting_hotspot",
        "progress_mediation",
        "progress_sent_back",
    }
)


class NotificationsError(ValueError):
    """The templates file is invalid; the message says which template and why."""


class Texts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    signature: str = "【12345】"
    question: str
    note_max_chars: int = Field(40, ge=5)
    templates: dict[str, str]

    @model_validator(mode="after")
    def _check(self) -> Texts:
        problems = []
        for name in FIELDS.keys() - self.templates.keys() - OPTIONAL:
            problems.append(f"template {name!r} is missing")
        for name in self.templates.keys() - FIELDS.keys():
            problems.append(f"template {name!r} is unknown (known: {', '.join(FIELDS)})")
        for name, text in self.templates.items():
            try:
                used = {f for _, f, _, _ in Formatter().parse(text) if f is not None}
            except ValueError as e:
                problems.append(f"template {name!r}: {e}")
                continue
            allowed = FIELDS.get(name, frozenset()) | {"signature"}
            for field in sorted(used - allowed):
                problems.append(
                    f"template {name!r}: unknown field {{{field}}} (allowed: {', '.join(sorted(allowed))})"
                )
            if "ticket_no" in FIELDS.get(name, ()) and "ticket_no" not in used:
                problems.append(f"template {name!r} must show the ticket number {{ticket_no}}")
            if "progress" in FIELDS.get(name, ()) and "progress" not in used:
                problems.append(f"template {name!r} must show the answer {{progress}}")
            if "into" in FIELDS.get(name, ()) and "into" not in used:
                problems.append(f"template {name!r} must show the ticket to follow {{into}}")
            if "ref" in FIELDS.get(name, ()) and "ref" not in used:
                problems.append(f"template {name!r} must show the ticket's reference {{ref}}")
            if "choices" in FIELDS.get(name, ()) and "choices" not in used:
                problems.append(f"template {name!r} must list the tickets {{choices}}")
        for digit, word in (("1", "满意"), ("2", "基本满意"), ("3", "不满意")):
            if f"{digit}{word}" not in self.question:
                problems.append(f"question must offer “{digit}{word}” (replies are read with that meaning)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def render(self, name: str, *, channel: str = "sms", **fields: str) -> str:
        """The message `name` with its fields. On WeChat without the signature: the SMS convention
        (【12345】, which carriers require) names a sender the chat already shows."""
        template = self.templates.get(name) or _shipped().templates[name]
        return template.format(signature=self.signature if channel == "sms" else "", **fields)

    def resolution(self, note: str, mediation: str | None = None) -> str:
        """What a message tells of a resolution: the note, shortened (`short_note`), after the
        mediation's outcome when a mediation committee resolved it (调解成功，达成协议：…): the
        resident, a party to it, is asked to rate it knowing how it ended."""
        short = self.short_note(note)
        outcome = MEDIATION_OUTCOME_NAMES.get(mediation or "")
        return f"{outcome}：{short}" if outcome and short else outcome or short

    def short_note(self, note: str) -> str:
        """The department's note as a message quotes it: at most `note_max_chars`, cut where a
        clause ends when one does in its second half (经现场勘查，线路老化导致断电，… rather than
        …已更换电缆并更…), else where the limit falls."""
        note = " ".join(note.split()).rstrip("。.")
        n = self.note_max_chars
        if len(note) <= n:
            return note
        head = note[: n - 1]
        end = max(head.rfind(mark) for mark in CLAUSE_ENDS)
        return (head[:end] if end >= n // 2 else head) + "…"


CLAUSE_ENDS = ("。", "；", "！", "？", "，", "、", ";", ",", " ")


def load_texts(path: str | Path | None = None) -> Texts:
    path = Path(path) if path else DEFAULT_FILE
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise NotificationsError(f"{path}: file missing (NOTIFICATIONS_FILE)") from e
    except yaml.YAMLError as e:
        raise NotificationsError(f"{path}: not valid YAML: {e}") from e
    try:
        return Texts.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc'])) or 'file'}: {err['msg']}" for err in e.errors()]
        raise NotificationsError(f"{path}: invalid notifications:\n  " + "\n  ".join(lines)) from e


@lru_cache(maxsize=1)
def _shipped() -> Texts:
    return load_texts(DEFAULT_FILE)


def local_datetime(value: object, tz: ZoneInfo) -> datetime | None:
    """An event's ISO time field in local time; None when the event does not carry a valid one."""
    try:
        return datetime.fromisoformat(str(value)).astimezone(tz)
    except ValueError:
        return None


def month_day_time(value: object, tz: ZoneInfo) -> str:
    """ "2026-11-23T10:00:00Z" -> "11月23日18:00" (a deadline in a notice); "" when there is none."""
    d = local_datetime(value, tz)
    return f"{d.month}月{d.day}日{d:%H:%M}" if d else ""


def until_date(value: object, tz: ZoneInfo) -> str:
    """ "2026-11-30T18:00:00+08:00" -> "至11月30日" (an extension's new date); "" when there is none."""
    d = local_datetime(value, tz)
    return f"至{d.month}月{d.day}日" if d else ""
