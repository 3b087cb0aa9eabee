"""The notifier worker: acknowledgements, progress and supervision messages, the callback survey after
resolution, the scheduled jobs (held messages, survey reminders and timeouts), the scorecard's
counters (the three rates), and forgetting a ticket's messages and surveys when its resident's
personal data is erased."""

from __future__ import annotations

import time
from functools import partial

from faststream import FastStream

from services.notifier.scorecard import Scorecard
from services.notifier.service import Notifier
from services.notifier.texts import until_date
from shared.bus import publish
from shared.events import (
    AppealReceived,
    Caller,
    Channel,
    PersonalDataRemoved,
    SurveyAnswered,
    TicketAssigned,
    TicketUpdated,
    View,
)
from shared.runtime import Runtime, run_periodically
from shared.settings import Settings

NAME = "notifier"
# WeChat answers in its own passive reply; the others hear from us by SMS (a grid worker's report
# only when a resident who told the worker left a phone). Later messages (progress, the result, the
# survey) reach every resident on their channel, WeChat included (services.notifier.routing).
ACKNOWLEDGED_BY_SMS = {"hotline", "sms", "box", "open311", "web", "patrol"}
GAUGE_SECONDS = 60
# The assignments a resident is told of, by how the ticket came to its department (`via`), and the
# template. The first assignment is not: the acknowledgement said it is being handled.
PROGRESS_OF_ASSIGNMENT = {"meeting": "progress_meeting_decided", "mediation": "progress_mediation"}


class Acknowledged(View):
    """What the acknowledgement reads of an appeal (`View`): not its words."""

    of = AppealReceived
    channel: Channel
    caller: Caller = Caller()
    urgent_flag: bool = False
    direct_answer: str = ""


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_notifier)
    notifier = Notifier.from_settings(rt.settings, rt.store, partial(publish, rt.publisher), city=rt.city)
    scorecard = Scorecard.from_settings(rt.redis, rt.city, rt.settings)
    handlers = Handlers(notifier, scorecard)

    rt.subscribe_each(
        {
            Acknowledged: handlers.appeals,
            TicketAssigned: handlers.assignments,
            TicketUpdated: handlers.updates,
            SurveyAnswered: handlers.answers,
            PersonalDataRemoved: handlers.erased,
        }
    )

    next_gauges = [0.0]

    async def scan() -> None:
        await notifier.scan()
        if time.monotonic() >= next_gauges[0]:
            await scorecard.refresh_gauges(notifier.clock())
            next_gauges[0] = time.monotonic() + GAUGE_SECONDS

    run_periodically(app, rt.settings.timer_scan_seconds, scan, "notifier scan")
    return app


class Handlers:
    """What the subscribers do with a parsed batch (kept apart so tests can drive them in-process).

    They work from the events alone: each carries what these need about its ticket (the caller's
    hashed id, department, category, grid, the resolution note; a survey's answer carries the groups
    its survey kept), so no handler reads a ticket it was just told about. The Redis work is per
    batch: one phone lookup, one send, one scorecard command."""

    def __init__(self, notifier: Notifier, scorecard: Scorecard) -> None:
        self.notifier = notifier
        self.scorecard = scorecard

    async def appeals(self, appeals: list[Acknowledged]) -> None:
        # A call the operator answered on the spot gets no "已受理" text: the resident has the answer,
        # and the survey about it follows at once.
        wanted = [
            a
            for a in appeals
            if a.channel in ACKNOWLEDGED_BY_SMS and a.caller.caller_id is not None and not a.direct_answer
        ]
        phones = await self.notifier.phones([a.caller.caller_id for a in wanted])
        await self.notifier.sms.send_many(
            [
                (a.event_id, self.notifier.ack_message(a.ticket_no, phone, urgent=a.urgent_flag))
                for a, phone in zip(wanted, phones, strict=True)
                if phone
            ]
        )

    async def assignments(self, assigned: list[TicketAssigned]) -> None:
        await self.scorecard.record(assigned)  # and moves earlier counts into a new grid
        await self.notifier.placed(assigned)  # an answer still to come counts where the ticket now is
        # What changed for the resident: the joint meeting named who handles it (they were told it
        # went to the meeting when it was held: `updates`), or a mediation committee took it.
        await self.notifier.progress(
            [
                (a, PROGRESS_OF_ASSIGNMENT[a.via], {"department": a.department.name})
                for a in assigned
                if a.via in PROGRESS_OF_ASSIGNMENT
            ]
        )

    async def updates(self, updates: list[TicketUpdated]) -> None:
        await self.notifier.supervise(
            [u for u in updates if u.action in ("overdue", "escalated")], self.scorecard.city
        )
        await self.scorecard.record(updates)  # what counts where: scoring.fields_for
        await self.notifier.placed(updates)  # an answer still to come counts where the ticket now is
        back = [u for u in updates if u.action == "verified" and u.verification and not u.verification.solved]
        await self.notifier.sent_back(back)
        await self.notifier.progress(
            # Held for a joint meeting (联席会议): several departments are to settle who handles it.
            # Not an escalation by a deadline (督办), which is the supervisors' and changes nothing
            # the resident waits for.
            [
                (u, "progress_meeting_hotspot" if u.meeting.reason == "hotspot" else "progress_meeting", {})
                for u in updates
                if u.action == "escalated" and u.meeting
            ]
            # 现场核查未解决: the grid worker found the problem still there; back to the department.
            + [(u, "progress_sent_back", {}) for u in back]
            + [
                (
                    u,
                    "progress_extension",
                    {"resolve_by": self._local_date(u.extension and u.extension.resolve_by)},
                )
                for u in updates
                if u.action == "extension_approved"
            ]
            # 并案: the duplicate's resident is told which ticket to follow (the main ticket's own
            # resident hears nothing: nothing changed for them).
            + [
                (u, "merged_notice", {"into": u.merge.into})
                for u in updates
                if u.action == "merged" and u.merge
            ]
            # A duplicate carried along when the ticket it followed was merged into another: its
            # resident is told the ticket to follow now (they were told the other one before).
            + [
                (u, "remerged_notice", {"via": u.merge.via or "", "into": u.merge.into})
                for u in updates
                if u.action == "remerged" and u.merge
            ]
        )
        resolved = [u for u in updates if u.action == "resolved"]
        await self.notifier.results_to_duplicates(resolved)
        out = await self.notifier.start_surveys(resolved)
        await self.notifier.publish(out)

    async def answers(self, answers: list[SurveyAnswered]) -> None:
        await self.scorecard.record([a for a in answers if a.outcome != "comment"])

    async def erased(self, removed: list[PersonalDataRemoved]) -> None:
        """Tickets whose resident had their personal data erased: their messages' records and
        surveys go (an open survey ends as opted out)."""
        await self.notifier.forget([r.ticket_no for r in removed])

    def _local_date(self, value: object) -> str:
        return until_date(value, self.notifier.policy.tz)
