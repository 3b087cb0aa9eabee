"""The SMS channel's intake: a resident's text message that answers no survey is a new appeal.

The SMS provider posts every inbound message to one endpoint (`POST /api/v1/sms/inbound`, in the
notifier's views); the notifier keeps what answers its surveys and hands the rest here. The sender's
number is the caller's phone, validated like every channel's. A message carries no idempotency
key: two identical texts are two messages, and the caller's hourly limit still applies.
"""

from __future__ import annotations

from services.intake.domain import validate
from services.intake.service import IntakeService


class SmsIntake:
    def __init__(self, intake: IntakeService) -> None:
        self.intake = intake

    async def submit(self, phone: str, text: str) -> str:
        """The new appeal's ticket number. Raises InvalidAppeal (the text), RateLimited (the caller)
        or BrokerUnavailable (not durably written: the provider should retry)."""
        ticket_no, _ = await self.intake.submit(validate(channel="sms", text=text, phone=phone))
        return ticket_no
