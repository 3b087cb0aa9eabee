"""SMS coming in from residents: survey answers (and, with no survey pending, new appeals)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.intake.domain import InvalidAppeal, validate
from services.intake.service import BrokerUnavailable
from services.intake.views import rejection, unavailable
from services.notifier.service import Notifier
from shared.bus import publish
from shared.privacy import InvalidPhone, normalize_phone

router = APIRouter(prefix="/api/v1/sms", tags=["sms"])


class InboundSms(BaseModel):
    phone: str
    text: str


@router.post("/inbound")
async def inbound_sms(body: InboundSms, request: Request):
    try:
        phone = normalize_phone(body.phone)
    except InvalidPhone as e:
        return JSONResponse(status_code=422, content={"error": "invalid_phone", "field": "phone", "message": str(e)})
    notifier: Notifier = request.app.state.notifier
    pending = await notifier.pending_survey(phone)
    if pending is not None:
        answered, reply = await notifier.answer(phone, body.text, pending)
        try:
            await publish(request.app.state.publisher, [answered])
        except Exception:
            return unavailable()
        if reply.rating is not None:
            await notifier.close_survey(phone)
        return {"kind": "survey_answer", "ticket_no": answered.ticket_no, "rating": reply.rating, "solved": reply.solved}
    # No survey waiting: the message is a new appeal by SMS.
    try:
        sub = validate(channel="sms", text=body.text, phone=phone)
        ticket_no, _ = await request.app.state.intake.submit(sub)
    except InvalidAppeal as e:
        return rejection("sms", e)
    except BrokerUnavailable:
        return unavailable()
    return JSONResponse(status_code=201, content={"kind": "appeal", "ticket_no": ticket_no})
