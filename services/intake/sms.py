"""The SMS channel's intake: a resident's text message that answers no survey is a progress query
(`services.intake.progress`: 查询, a ticket number…) or else a new appeal.

The SMS provider posts every inbound message to one endpoint (`POST /api/v1/sms/inbound`, in the
notifier's views); the notifier keeps what answers its surveys and hands the rest here, and sends
the answer to a query. The sender's number is the caller's phone, validated like every channel's.
Two identical texts are two messages, and the caller's hourly limit still applies (to queries
apart from appeals); the provider's repeat of one message (the same `message_id`) is one
(`services.notifier.inbound`, and the appeal's idempotency key below).
"""

from __future__ import annotations

from services.intake.domain import validate
from services.intake.progress import Query
from services.intake.queries import Answer, ProgressQueries
from services.intake.service import IntakeService
from shared.privacy import caller_id


class SmsIntake:
    def __init__(self, intake: IntakeService, progress: ProgressQueries) -> None:
        self.intake = intake
        self.progress = progress

    async def query(self, phone: str, query: Query) -> Answer:
        """The answer to a progress query from `phone` (normalised): what the message was is read
        first, for SMS and WeChat alike (`services.notifier.survey.read_inbound`). Raises
        RateLimited (the phone asked too often)."""
        return await self.progress.answer(caller_id(phone), query)

    async def submit(self, phone: str, text: str, message_id: str | None = None) -> str:
        """The new appeal's ticket number (the same one for the provider's repeat of `message_id`).
        Raises InvalidAppeal (the text), RateLimited (the caller) or BrokerUnavailable (not durably
        written: the provider should retry)."""
        key = f"sms:{caller_id(phone)}:{message_id}" if message_id else None
        ticket_no, _ = await self.intake.submit(validate(channel="sms", text=text, phone=phone), key)
        return ticket_no
