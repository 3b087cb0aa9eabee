"""The topic registry: one topic per fact, and the event model that each carries. Only facts some
service consumes travel on a topic: a joint meeting's facts (`MeetingConvened`, `MeetingUpdated`)
are kept in the tickets' histories, not published.

Every topic has a dead-letter twin `<topic>.dlq` for messages that could not be handled; its records
carry the original bytes and the error (see `shared.bus`).
"""

from __future__ import annotations

from shared import events as ev

APPEAL_RECEIVED = "appeal.received"
APPEAL_CLASSIFIED = "appeal.classified"
APPEAL_LOCATED = "appeal.located"
APPEAL_PHOTOS_ADDED = "appeal.photos_added"
TICKET_ASSIGNED = "ticket.assigned"
TICKET_UPDATED = "ticket.updated"
SURVEY_SENT = "survey.sent"
SURVEY_ANSWERED = "survey.answered"
PERSONAL_DATA_REMOVED = "ticket.personal_data_removed"

EVENT_TYPES: dict[str, type[ev.Event]] = {
    APPEAL_RECEIVED: ev.AppealReceived,
    APPEAL_CLASSIFIED: ev.AppealClassified,
    APPEAL_LOCATED: ev.AppealLocated,
    APPEAL_PHOTOS_ADDED: ev.AppealPhotosAdded,
    TICKET_ASSIGNED: ev.TicketAssigned,
    TICKET_UPDATED: ev.TicketUpdated,
    SURVEY_SENT: ev.SurveySent,
    SURVEY_ANSWERED: ev.SurveyAnswered,
    PERSONAL_DATA_REMOVED: ev.PersonalDataRemoved,
}


def dlq(topic: str) -> str:
    return f"{topic}.dlq"


ALL_TOPICS: tuple[str, ...] = tuple(EVENT_TYPES) + tuple(dlq(t) for t in EVENT_TYPES)
