"""The notifier's work with I/O: sending once per event, the pending-survey book, answers.

  sms:done:{event}:{kind}   the message for this event was handed to the gateway (never twice)
  survey:pending:{phone}    the newest survey waiting for this phone's answer (JSON)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from redis.asyncio import Redis

from services.notifier.gateway import SmsGateway, SmsMessage
from services.notifier.survey import Reply, acknowledgement_text, parse_reply, survey_text
from shared.events import Event, SurveyAnswered, SurveySent, TicketUpdated, new_id
from shared.metrics import SMS_SENT, SURVEYS_ANSWERED
from shared.privacy import mask_phone
from shared.store import TicketStore
from shared.tickets import Ticket

SENT_TTL = 30 * 86400
SURVEY_TTL = 30 * 86400


class Notifier:
    def __init__(self, store: TicketStore, gateway: SmsGateway) -> None:
        self.store = store
        self.redis: Redis = store.redis
        self.gateway = gateway

    async def send_once(self, cause: Event, message: SmsMessage) -> bool:
        """Send `message` unless it was already sent for `cause`. Returns whether it was sent now."""
        key = f"sms:done:{cause.event_id}:{message.kind}"
        if not await self.redis.set(key, message.message_id, nx=True, ex=SENT_TTL):
            return False
        try:
            await self.gateway.send(message)
        except Exception:
            await self.redis.delete(key)  # not sent: let the redelivery try again
            raise
        SMS_SENT.labels(kind=message.kind).inc()
        return True

    async def phone_of(self, ticket: Ticket) -> str | None:
        if ticket.caller.caller_id is None:
            return None
        return (await self.store.contact(ticket.caller.caller_id)).get("phone")

    async def acknowledge(self, cause: Event, ticket_no: str, phone: str) -> None:
        await self.send_once(cause, SmsMessage(phone, acknowledgement_text(ticket_no), "ack", ticket_no))

    async def start_survey(self, resolved: TicketUpdated, ticket: Ticket) -> SurveySent | None:
        """Send the callback + survey for a resolved ticket; None when there is nobody to ask."""
        phone = await self.phone_of(ticket)
        if phone is None:
            return None
        survey = SurveySent.caused(
            resolved, survey_id=resolved.event_id, masked_phone=mask_phone(phone),
            message_id=new_id(), text=survey_text(ticket.ticket_no, resolved.note),
        )
        await self.redis.set(
            f"survey:pending:{phone}",
            json.dumps({"survey_id": survey.survey_id, "ticket_no": ticket.ticket_no}),
            ex=SURVEY_TTL,
        )
        await self.send_once(
            resolved, SmsMessage(phone, survey.text, "survey", ticket.ticket_no, survey.message_id)
        )
        return survey

    async def pending_survey(self, phone: str) -> dict | None:
        raw = await self.redis.get(f"survey:pending:{phone}")
        return json.loads(raw) if raw else None

    async def answer(self, phone: str, text: str, pending: dict) -> tuple[SurveyAnswered, Reply]:
        reply = parse_reply(text)
        answered = SurveyAnswered(
            ticket_no=pending["ticket_no"], survey_id=pending["survey_id"], rating=reply.rating,
            solved=reply.solved, text=text, occurred_at=datetime.now(UTC),
        )
        SURVEYS_ANSWERED.labels(rating=str(reply.rating or "none")).inc()
        return answered, reply

    async def close_survey(self, phone: str) -> None:
        """After the rating is durably published: later replies are comments, not ratings."""
        await self.redis.delete(f"survey:pending:{phone}")
