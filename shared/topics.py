"""The topic registry: one topic per fact, and the event model that each carries.

Every topic has a dead-letter twin `<topic>.dlq` for messages that could not be handled; its records
carry the original bytes and the error (see `shared.bus`).
"""

from __future__ import annotations

from shared import events as ev

APPEAL_RECEIVED = "appeal.received"
APPEAL_CLASSIFIED = "appeal.classified"
APPEAL_LOCATED = "appeal.located"
APPEAL_REVIEW = "appeal.review"
TICKET_ASSIGNED = "ticket.assigned"
TICKET_UPDATED = "ticket.updated"
SURVEY_SENT = "survey.sent"
SURVEY_ANSWERED = "survey.answered"
MEETING_CONVENED = "meeting.convened"
MEETING_UPDATED = "meeting.updated"

EVENT_TYPES: dict[str, type[ev.Event]] = {
    APPEAL_RECEIVED: ev.AppealReceived,
    APPEAL_CLASSIFIED: ev.AppealClassified,
    APPEAL_LOCATED: ev.AppealLocated,
    APPEAL_REVIEW: ev.AppealClassified,  # the same fact, routed to people instead of rules
    TICKET_ASSIGNED: ev.TicketAssigned,
    TICKET_UPDATED: ev.TicketUpdated,
    SURVEY_SENT: ev.SurveySent,
    SURVEY_ANSWERED: ev.SurveyAnswered,
    MEETING_CONVENED: ev.MeetingConvened,
    MEETING_UPDATED: ev.MeetingUpdated,
}


def dlq(topic: str) -> str:
    return f"{topic}.dlq"


ALL_TOPICS: tuple[str, ...] = tuple(EVENT_TYPES) + tuple(dlq(t) for t in EVENT_TYPES)
