"""The console's pages. Each handler reads the session, calls the API's endpoint for the work
(`backend.Api`, with the person's own token) and renders a template; the rules stay in the services.

  /console/signin      every role pastes its token once     /console/operator   hotline intake
  /console/patrol      a grid worker's report from the spot, and its grid's latest tickets
  /console/department  a department's queue                 /console/tickets/N  a ticket, its actions
  /console/desk        the dispatch desk                     /console/meetings   joint meetings
  /console/meetings/ID one meeting (a ticket's page links it), also once it has left Redis
  /console/dashboard   the manager's rates, live             /console/lookup     residents, no sign-in
  /console/tickets     search the record, export it (desk: every ticket; a department: its own)
  /console/privacy     the desk: a resident's erasure request (preview, confirm) and the audit trail
  /console/access      the desk: staff credentials (issue one, shown once; list, filter, revoke) and
                       their audit
  /console/knowledge   the knowledge base: operators read it, departments keep their answers current
                       (edit, 确认有效), the desk adds, edits and retires (停用) entries
  /console/photos/ID   a photo of an appeal or a resolution, for the pages' thumbnails
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode
from zoneinfo import ZoneInfo

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData

from services.console import lookup as resident_lookup
from services.console import present, session
from services.console.backend import Api, Reply
from services.console.live import LiveFeed
from services.intake.photo_views import CACHE, upload_advice, upload_limit
from services.notifier.surveys import AnswerRefused
from services.router import workflow
from services.router.meetings import LEAD_REQUIRED
from services.router.rules import located_apart, mediation_committee
from services.router.workflow import RETURN_REASONS, is_mediation_committee
from shared import access, lookup_link
from shared.bodies import Limit
from shared.city import City
from shared.events import GridMatch
from shared.photos import ID as PHOTO_ID
from shared.privacy import REMOVED, InvalidPhone, caller_id, mask_phone, normalize_phone
from shared.settings import Settings
from shared.tickets import (
    CHANNEL_NAMES,
    MEDIATION_OUTCOME_NAMES,
    STATUS_NAMES,
    Status,
    Ticket,
    clean_ticket_no,
)

HERE = Path(__file__).parent
log = logging.getLogger(__name__)
router = APIRouter(prefix="/console", include_in_schema=False)
templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"], default=True),  # residents' words are text, never markup
)
templates.globals.update(
    status_names=STATUS_NAMES,
    role_names=session.ROLE_NAMES,
    percent=present.percent,
    score_text=present.score_text,
    return_reasons=RETURN_REASONS,
    removed=REMOVED,  # what an erasure left in place of personal data
    days_range=(access.MIN_DAYS, access.MAX_DAYS),  # a credential's 有效天数, as a grant is checked
    required=workflow.REQUIRED,  # a ticket's forms ask for what a step refuses without (data-required)
    reason_min=workflow.REASON_MIN,
    lead_required=LEAD_REQUIRED,  # a meeting's decision, without its lead
    answer_required=resident_lookup.ANSWER_REQUIRED,  # a resident's survey answer, without a choice
    holder_of=present.holder_name,  # a ticket's 承办单位 in a line about it (待会议确定 at a meeting)
)
HOME = {
    "operator": "/console/operator",
    "grid_worker": "/console/patrol",
    "department": "/console/department",
    "admin": "/console/desk",
}


class SignInRequired(Exception):
    """No session, an expired one, or its token was revoked: back to the sign-in page."""


class WrongRole(Exception):
    def __init__(self, session: session.Session) -> None:
        self.session = session


# The roles whose menu links 电话回访 (base.html), with how many calls are due beside it.
CALLBACK_ROLES = ("operator", "admin")
MENU_COUNT_SECONDS = 3.0  # the longest the menu's count may hold up a page; then it goes without


async def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A console page. For a role that phones residents (电话回访) the menu says how many calls are
    due (`callbacks_due`); for a department, how many joint meetings wait for it to check in
    (`meetings_to_check_in`: a department summoned learns of it on whatever page it is on);
    each unless the handler knows it already."""
    s = context.get("s")
    if isinstance(s, session.Session):
        if s.principal.role in CALLBACK_ROLES and "callbacks_due" not in context:
            context["callbacks_due"] = await callbacks_due(request, s)
        if (
            s.principal.role == "department"
            and s.principal.department
            and "meetings_to_check_in" not in context
        ):
            context["meetings_to_check_in"] = await menu_count(
                request, s, "/api/v1/meetings/count", "to_check_in"
            )
    html = templates.get_template(name).render(request=request, **names_of(request), **context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


async def menu_count(request: Request, s: session.Session, path: str, field: str) -> int | None:
    """A count for the menu: the API's `field` at `path` (a Redis count or two). None when it cannot
    be had in time: the page is shown without the count rather than not at all."""
    try:
        reply = await asyncio.wait_for(api(request, s).get(path), MENU_COUNT_SECONDS)
    except Exception as e:  # a figure in the menu: whatever went wrong, the page itself goes on
        log.warning("the menu's count from %s: %r", path, e)
        return None
    count = reply.body.get(field) if reply.ok and isinstance(reply.body, dict) else None
    return count if isinstance(count, int) else None


async def callbacks_due(request: Request, s: session.Session) -> int | None:
    """How many phone callbacks are due now, for the menu: the API's count (one Redis ZCOUNT)."""
    return await menu_count(request, s, "/api/v1/callbacks/count", "total")


def city_of(request: Request) -> City:
    return request.app.state.city


def names_of(request: Request) -> dict[str, dict[str, str]]:
    """Departments and grids by name, for every page (the API gives their ids), made once."""
    state = request.app.state
    if not hasattr(state, "console_names"):
        city = city_of(request)
        state.console_names = {
            "department_names": {d.id: d.name for d in city.departments},
            "grid_names": {gid: info.grid.name for gid, info in city.grids.items()},
        }
    return state.console_names


def tz_of(request: Request) -> ZoneInfo:
    return ZoneInfo(request.app.state.settings.timezone)


def today_of(request: Request) -> date:
    """The city's today: the dashboard's default period, and whether the working-day calendar runs
    out (the tests set the day here)."""
    return datetime.now(tz_of(request)).date()


async def current(request: Request) -> session.Session:
    found = await session.load(request.app.state.redis, request.cookies.get(session.COOKIE))
    if found is None:
        raise SignInRequired()
    return found


def staff(*roles: str) -> Callable[[Request], Awaitable[session.Session]]:
    """A dependency: the session, if its role may see the page (else 403, or sign-in)."""

    async def dependency(request: Request) -> session.Session:
        s = await current(request)
        if s.principal.role not in roles:
            raise WrongRole(s)
        return s

    return dependency


as_operator = staff("operator", "admin")  # the desk may register an appeal too, as the API allows
as_department = staff("department")
as_desk = staff("admin")
as_staff = staff("department", "admin")
READER_ROLES = ("department", "admin", "grid_worker")  # tickets to read: the API scopes them
as_reader = staff(*READER_ROLES)
as_grid_worker = staff("grid_worker")
# An operator or a grid worker sees the photos it uploaded.
as_photo_viewer = staff("operator", "grid_worker", "department", "admin")


async def checked_form(request: Request, s: session.Session) -> FormData:
    """The posted form, after its CSRF token was compared with the session's."""
    form = await request.form()
    given = form.get("csrf") or request.headers.get("X-CSRF-Token")
    if not session.same(str(given) if given else None, s.csrf):
        raise WrongRole(s)  # a forged or stale form: refused like a foreign page
    return form


def api(request: Request, s: session.Session) -> Api:
    return Api(request, s.token)


def field_errors(
    reply: Reply,
    fields: dict[str, str],
    default: str,
    form: FormData | None = None,
    said_as: dict[str, str] | None = None,
) -> dict[str, str]:
    """The API's refusal, beside the field it names (or above the form), in words for staff, with
    the page's labels for the fields the API names otherwise (`said_as`, see present.refusal)."""
    values = {name: text(form, name) for name in fields} if form is not None else {}
    shown = present.refusal(
        reply.field, reply.code, reply.message, fields, values, default, said_as, reply.expected
    )
    # The other fields the API found at fault in the same request, each beside its own.
    for problem in reply.problems[1:]:
        at = problem.get("field")
        if at in fields and at not in shown:
            shown[at] = present.relabelled(
                str(problem.get("message") or ""), (said_as or {}).get(at), fields[at]
            )
    return shown


# What intake's preview judges of an appeal (services/intake/views.py, preview_of): the name and
# the answer it leaves out, so a refusal of those (a submission's) stays until the form is sent again.
PREVIEW_JUDGES = ("text", "address", "caller_phone")


def preview_fields(
    reply: Reply,
    fields: dict[str, str],
    form: FormData,
    said_as: dict[str, str] | None = None,
) -> dict[str, str]:
    """What a preview says of each field of the form it judged: its problem in the page's words,
    or "" for one it found fine, whose mark (left by a submission or an earlier preview) goes. A
    preview that went on without a field (a phone it cannot read) names it among its `problems`;
    one refused judged only the field it names (intake stops at the first problem), so the others
    are left out, and keep what they show; one refused for no field of the form judged none."""
    judged = [name for name in PREVIEW_JUDGES if name in fields]
    if reply.ok and isinstance(reply.body, dict):
        verdict = dict.fromkeys(judged, "")
        for problem in reply.body.get("problems") or []:
            if isinstance(problem, dict) and problem.get("field") in verdict:
                name = problem["field"]
                words = present.relabelled(
                    str(problem.get("message") or ""), (said_as or {}).get(name), fields[name]
                )
                verdict[name] = words or f"{fields[name]}不符合要求，请检查后重新填写"
        return verdict
    if reply.field in judged:
        return field_errors(reply, {name: fields[name] for name in judged}, "form", form, said_as)
    return {}


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


# --- signing in ----------------------------------------------------------------------------------


@router.get("/")
async def home(request: Request) -> Response:
    s = await session.load(request.app.state.redis, request.cookies.get(session.COOKIE))
    target = HOME[s.principal.role] if s else "/console/signin"
    return RedirectResponse(target, status_code=303)


async def anonymous_form(request: Request, template: str, status: int, **context: Any) -> Response:
    """A page whose form is posted without a session (sign-in, the resident's lookup): its CSRF
    token is double-submitted, in the form and in a cookie of its own (kept across page views)."""
    csrf = session.kept_csrf(request.cookies.get(session.LOGIN_CSRF_COOKIE))
    response = await page(request, template, status, csrf=csrf, **context)
    response.set_cookie(
        session.LOGIN_CSRF_COOKIE,
        csrf,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/console",
    )
    return response


async def signin_page(request: Request, error: str = "", status: int = 200, ended: str = "") -> Response:
    return await anonymous_form(request, "signin.html", status, error=error, ended=ended)


# Why a browser that was signed in is at the sign-in page again. Its cookie lives no longer than its
# session (a shift from sign-in; each request extends the session), and signing out deletes it:
# a cookie whose session is gone lost it to its token's revocation, which deletes the token's
# sessions, or to the token's expiry. Said to that browser alone, in words that name no one.
SESSION_ENDED = "您的登录凭证已被吊销或已过期，请联系派单中心重新签发"


@router.get("/signin")
async def signin_form(request: Request) -> Response:
    cookie = request.cookies.get(session.COOKIE)
    ended = bool(cookie) and await session.load(request.app.state.redis, cookie) is None
    response = await signin_page(request, ended=SESSION_ENDED if ended else "")
    if ended:  # said once: the page again, or the next person at this browser, is not told it
        response.delete_cookie(session.COOKIE, path="/")
    return response


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await request.form()
    if not session.same(text(form, "csrf"), request.cookies.get(session.LOGIN_CSRF_COOKIE)):
        return await signin_page(request, "页面已过期，请重新输入登录凭证", 403)
    token = text(form, "token").strip()
    if not token:
        return await signin_page(request, "请粘贴登录凭证（由 appeals token 命令生成）", 422)
    signed = await session.sign_in(request.app.state.redis, token)
    if signed is None:
        return await signin_page(request, "登录凭证无效或已吊销，请向管理员重新申领", 401)
    session_id, principal = signed
    response = RedirectResponse(HOME[principal.role], status_code=303)
    response.set_cookie(
        session.COOKIE,
        session_id,
        max_age=session.TTL_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(session.LOGIN_CSRF_COOKIE, path="/console")
    return response


@router.post("/signout")
async def signout(request: Request, s: session.Session = Depends(current)) -> Response:
    await checked_form(request, s)
    await session.sign_out(request.app.state.redis, request.cookies.get(session.COOKIE))
    response = RedirectResponse("/console/signin", status_code=303)
    response.delete_cookie(session.COOKIE, path="/")
    return response


# --- the hotline operator ------------------------------------------------------------------------

INTAKE_FIELDS = {  # the form's fields and their labels
    "caller_phone": "来电号码",
    "caller_name": "来电人姓名",
    "text": "诉求内容",
    "address": "事发地址",
    "urgent": "紧急",
    "direct_answer": "当场答复",
}


def appeal_of(form: FormData) -> dict[str, Any]:
    return {
        "channel": "hotline",
        "caller_phone": text(form, "caller_phone").strip() or None,
        "caller_name": text(form, "caller_name").strip() or None,
        "text": text(form, "text"),
        "address": text(form, "address"),
        "direct_answer": text(form, "direct_answer"),
        "urgent": form.get("urgent") == "on",
    }


async def submit_appeal(
    request: Request, s: session.Session, form: FormData, appeal: dict[str, Any]
) -> tuple[Reply, list[str], str]:
    """An intake form's appeal, under the form's idempotency key (a second click is the same appeal):
    the photos go up first, and a refused one stops the appeal, so it is not sent without it.
    Returns the API's reply, the photos uploaded and the key."""
    idem = text(form, "idem") or uuid.uuid4().hex
    client = api(request, s)
    photos, reply = await client.attach_photos(form)
    if reply is None:
        reply = await client.post(
            "/api/v1/appeals",
            {**appeal, "photos": photos},
            headers={"Idempotency-Key": f"console:{idem}"},
        )
    return reply, photos, idem


def masked_labels(reply: Reply, labels: dict[str, str]) -> str:
    """The form's fields in which intake masked typed personal data ("诉求内容、事发地址"),
    as the form labels them; "" when none: the accepted page says so, so that what the operator
    typed is not found changed on the ticket without a trace."""
    return "、".join(labels.get(f, f) for f in reply.body.get("masked") or ())


async def next_call(request: Request, s: session.Session, **accepted: Any) -> Response:
    """The number to read out, above an empty form for the next call (under a key of its own), so
    the operator types on without a click. Nothing of the call is kept for the next one: it is
    another resident, and a phone, name or address carried over would put one caller's details
    (and the survey SMS) on another's ticket; urgency and an answer are judged call by call."""
    return await page(request, "operator.html", s=s, values={}, errors={}, idem=uuid.uuid4().hex, **accepted)


@router.get("/operator")
async def operator_page(request: Request, s: session.Session = Depends(as_operator)):
    return await page(request, "operator.html", s=s, values={}, errors={}, idem=uuid.uuid4().hex)


@router.post("/operator/preview")
async def operator_preview(request: Request, s: session.Session = Depends(as_operator)):
    """The preview for the script to put beside the form; without the script (the form's own
    preview button) the whole page, the call as typed and the preview beside it, so the operator
    sees the caller's open tickets and may urge one there too."""
    form = await checked_form(request, s)
    reply = await api(request, s).post("/api/v1/appeals/preview", appeal_of(form))
    preview = reply.body if reply.ok else None
    # Each field's problem goes beside the field (the script marks it, or clears the mark of one
    # now fine), not in place of the suggestions: a mistyped phone leaves them in view.
    fields = preview_fields(reply, INTAKE_FIELDS, form)
    # The caller's earlier tickets (来电历史) link to their pages for whoever may open them (the
    # desk); an operator's token reads no ticket, so it is shown the numbers to read out instead.
    links = s.principal.role in READER_ROLES
    if request.headers.get("X-Requested-With") == "fetch":
        return await page(
            request, "_preview.html", preview=preview, reply=reply, fields=fields, ticket_links=links
        )
    values = {k: text(form, k) for k in INTAKE_FIELDS}
    idem = text(form, "idem") or uuid.uuid4().hex
    return await page(
        request,
        "operator.html",
        s=s,
        values=values,
        errors={name: said for name, said in fields.items() if said},
        idem=idem,
        preview=preview,
        reply=reply,
        fields=fields,
        ticket_links=links,
    )


@router.post("/operator/appeals")
async def operator_submit(request: Request, s: session.Session = Depends(as_operator)):
    form = await checked_form(request, s)
    reply, photos, idem = await submit_appeal(request, s, form, appeal_of(form))
    if reply.ok:
        return await next_call(
            request,
            s,
            accepted=reply.body["ticket_no"],
            accepted_photos=len(photos),
            answered=bool(text(form, "direct_answer").strip()),
            accepted_masked=masked_labels(reply, INTAKE_FIELDS),
        )
    errors = field_errors(reply, {**INTAKE_FIELDS, "photos": "现场照片"}, "form", form)
    values = {k: text(form, k) for k in INTAKE_FIELDS}
    return await page(
        request, "operator.html", 422, s=s, values=values, errors=errors, idem=idem, kept=photos
    )


@router.post("/operator/urge")
async def operator_urge(request: Request, s: session.Session = Depends(as_operator)):
    """The call is about an open ticket the preview listed (重复来电): that ticket is urged with the
    call's words (催办), and its number read to the caller again; no new ticket. The intake form's
    key makes a second click the same urge."""
    form = await checked_form(request, s)
    idem = text(form, "idem") or uuid.uuid4().hex
    no = text(form, "urge").strip()
    reply = await api(request, s).post(
        f"/api/v1/tickets/{no}/urge",
        {"note": text(form, "text")},
        headers={"Idempotency-Key": f"console:{idem}"},
    )
    if reply.ok:
        return await next_call(request, s, accepted=reply.body["ticket_no"], urged=reply.body["message"])
    # Refused (the ticket was finished meanwhile, or is unknown): the call as typed, with the reason.
    return await refused_call(request, s, form, reply)


async def refused_call(request: Request, s: session.Session, form: FormData, reply: Reply) -> Response:
    """The operator's page again with the call as typed (under its own key) and why the step was
    refused."""
    kept = [v for v in form.getlist("kept_photos") if isinstance(v, str) and PHOTO_ID.fullmatch(v)]
    values = {k: text(form, k) for k in INTAKE_FIELDS}
    status = reply.status if 400 <= reply.status < 500 else 422
    return await page(
        request,
        "operator.html",
        status,
        s=s,
        values=values,
        errors={"form": reply.message},
        idem=text(form, "idem") or uuid.uuid4().hex,
        kept=kept,
    )


@router.post("/operator/resend")
async def operator_resend(request: Request, s: session.Session = Depends(as_operator)):
    """The caller says the SMS with the number of a ticket the preview listed (来电历史) never came:
    its 受理短信 is sent to them again, and the number read out. Only to the number calling (the
    API checks the ticket was registered from it); refused, the call as typed, with the reason."""
    form = await checked_form(request, s)
    no = text(form, "resend").strip()
    reply = await api(request, s).post(
        f"/api/v1/tickets/{no}/acknowledgement/resend", {"caller_phone": text(form, "caller_phone")}
    )
    if reply.ok:
        said = "已向来电人补发受理短信" if reply.body["state"] != "failed" else "受理短信补发失败"
        return await next_call(request, s, accepted=no, urged=said)
    return await refused_call(request, s, form, reply)


# --- grid workers on patrol ----------------------------------------------------------------------

PATROL_FIELDS = {
    "text": "问题描述",
    "address": "位置说明",
    "location": "当前位置",
    "caller_phone": "反映群众电话",
    "urgent": "紧急",
    "direct_answer": "现场处置情况",
}
# How intake's refusals name the report's fields (services/intake/domain.py: the same words for
# every channel), where the patrol form labels them otherwise.
INTAKE_WORDS = {"text": "诉求内容"}
PATROL_RECENT = 10  # the grid's latest tickets under the form
PATROL_TO_VERIFY = 20  # resolutions to check on the spot (待核查), the longest waiting first


def report_of(form: FormData) -> dict[str, Any]:
    """The patrol form as an appeal: the channel and the grid come from the worker's credential."""
    report: dict[str, Any] = {
        "text": text(form, "text"),
        "address": text(form, "address"),
        "caller_phone": text(form, "caller_phone").strip() or None,
        "urgent": form.get("urgent") == "on",
        "direct_answer": text(form, "direct_answer"),
    }
    lng, lat = text(form, "lng").strip(), text(form, "lat").strip()
    if lng or lat:  # the phone's position, when the worker let the page read it
        report["location"] = {"lng": lng, "lat": lat}
    return report


async def patrol_page(
    request: Request, s: session.Session, status: int = 200, **context: Any
) -> HTMLResponse:
    """The report form, the grid's resolutions waiting for the worker's check on the spot (待核查)
    and its latest tickets (the record, a few seconds behind; without PostgreSQL the form still
    works and the lists say why they are missing)."""
    client = api(request, s)
    reply, pending = await asyncio.gather(
        client.get("/api/v1/tickets", size=PATROL_RECENT),
        client.get(
            "/api/v1/tickets",
            status="resolved,surveyed",
            verified="false",
            sort="updated_at",
            size=PATROL_TO_VERIFY,
        ),
    )
    tz, city = tz_of(request), city_of(request)
    grid = city.grids.get(s.principal.grid or "")
    return await page(
        request,
        "patrol.html",
        status,
        s=s,
        grid_name=grid.place if grid else "未知网格",
        recent=[list_row(item, tz, city) for item in reply.body["items"]] if reply.ok else None,
        recent_total=reply.body["total"] if reply.ok else 0,
        recent_error="" if reply.ok else reply.message,
        to_verify=[list_row(item, tz, city) for item in pending.body["items"]] if pending.ok else None,
        to_verify_total=pending.body["total"] if pending.ok else 0,
        to_verify_error="" if pending.ok else pending.message,
        check_hours=f"{city.sla.supervision.check_hours:g}",
        **{"values": {}, "errors": {}, "idem": uuid.uuid4().hex, **context},
    )


@router.get("/patrol")
async def patrol_form(request: Request, s: session.Session = Depends(as_grid_worker)):
    return await patrol_page(request, s)


@router.post("/patrol/preview")
async def patrol_preview(request: Request, s: session.Session = Depends(as_grid_worker)):
    form = await checked_form(request, s)
    reply = await api(request, s).post("/api/v1/appeals/preview", report_of(form))
    fields = preview_fields(reply, PATROL_FIELDS, form, INTAKE_WORDS)
    if not reply.ok and isinstance(reply.body, dict):  # the panel names the field as the form does
        field = reply.field or ""
        said = present.relabelled(reply.message, INTAKE_WORDS.get(field), PATROL_FIELDS.get(field))
        reply = Reply(reply.status, {**reply.body, "message": said})
    preview = reply.body if reply.ok else None
    # 定位与地址不一致 (the phone's position, or the worker's own grid, against the typed address):
    # the worker may correct the address before sending. Not on the operator's form, which sends no
    # position: its grid comes from the address alone.
    apart = present.grid_disputed(city_of(request), preview) if preview else ""
    return await page(
        request, "_preview.html", preview=preview, reply=reply, fields=fields, patrol=True, grid_apart=apart
    )


@router.post("/patrol/reports")
async def patrol_submit(request: Request, s: session.Session = Depends(as_grid_worker)):
    form = await checked_form(request, s)
    report, handled = report_of(form), bool(text(form, "direct_answer").strip())

    # Where a report handled on the spot does not go: what it waits for before a department has it
    # (the desk deciding its grid, or its category), so that the accepted message says what will
    # happen, as the preview did. Asked with the submission, not after it: no wait added.
    async def waits() -> str:
        if handled:
            return ""
        judged = await api(request, s).post("/api/v1/appeals/preview", report)
        return present.patrol_waits(city_of(request), judged.body if judged.ok else None)

    (reply, photos, idem), waiting = await asyncio.gather(submit_appeal(request, s, form, report), waits())
    if reply.ok:
        return await patrol_page(
            request,
            s,
            accepted=reply.body["ticket_no"],
            accepted_photos=len(photos),
            handled=handled,
            waits=waiting,
            accepted_masked=masked_labels(reply, PATROL_FIELDS),
        )
    errors = field_errors(reply, {**PATROL_FIELDS, "photos": "现场照片"}, "form", form, INTAKE_WORDS)
    values = {k: text(form, k) for k in (*PATROL_FIELDS, "lng", "lat")}
    return await patrol_page(request, s, 422, values=values, errors=errors, idem=idem, kept=photos)


# --- departments ---------------------------------------------------------------------------------


def row(ticket: dict, tz: ZoneInfo, now: datetime) -> dict:
    left, late = present.time_left(present.due_of(ticket), now)
    # Held by a joint meeting, only the meeting's clock runs (timers.RUNNING), and its time left says
    # whether it is late: an overdue mark left from the department's deadline before the hold is not
    # the meeting's, and beside the meeting's time left it would read as the meeting late.
    status = ticket.get("status")
    marked = ticket.get("overdue", False) and status != "meeting"
    return {
        **ticket,
        # Held by a joint meeting, the ticket's department is not its 承办单位: the meeting decides.
        "department_name": present.holder_name(ticket),
        "left": left,
        "due_label": present.due_label(status),
        # Not yet accepted: the resolution's deadline is set already (a committee's 20 working days,
        # a category's 7) and whoever takes the ticket wants to know it before signing for it.
        "resolve_ahead": present.local(ticket.get("resolve_by"), tz) if status == "assigned" else "",
        "late": late or marked,
        "received": present.local(ticket.get("received_at"), tz),
        "category_label": "/".join(ticket.get("category_names") or ()) or "未分类",
        # The classifier's confidence is in its own reading: a category a person chose has none.
        "chosen_by_person": bool(ticket.get("top_categories"))
        and ticket["top_categories"][0].get("category") != ticket.get("category"),
    }


# A department's queue a page at a time, the most pressing deadlines first: on a phone out in the
# street a queue of hundreds is one endless list otherwise.
DEPARTMENT_PAGE_SIZE = 50


@router.get("/department")
async def department_page(request: Request, s: session.Session = Depends(as_department)):
    q = request.query_params
    dept = s.principal.department or ""
    tz, now, city = tz_of(request), datetime.now(UTC), city_of(request)
    choices = list_choices(city)
    # The queue is narrowed and paged where it is kept (a department may hold thousands of open
    # tickets): only the page shown comes here. A category that is not the city's (a link kept from
    # when this was a text box) or a malformed day narrows nothing rather than empty the queue.
    category = q.get("category") or ""
    narrowed = {
        "status": q.get("status") or None,
        "overdue": True if q.get("overdue") == "1" else None,
        "category": category if category in city.category_by_id else None,
        "grid": q.get("grid") or None,
        "date": q.get("date") if present.is_day(q.get("date") or "") else None,
    }
    client, wanted = api(request, s), page_number(request)
    reply = await client.department_page(dept, wanted, DEPARTMENT_PAGE_SIZE, **narrowed)
    pages = present.page_count(reply.body["total"], DEPARTMENT_PAGE_SIZE) if reply.ok else 1
    if reply.ok and wanted > pages:  # a page past the end (the queue shrank): its last
        reply = await client.department_page(dept, pages, DEPARTMENT_PAGE_SIZE, **narrowed)
    shown = [row(t, tz, now) for t in reply.body["tickets"]] if reply.ok else []
    total, page_no = (reply.body["total"], min(wanted, pages)) if reply.ok else (0, 1)
    filters = {
        k: v for k, v in q.items() if k not in ("page", "batch", "to", "meeting", *LEAVING.values()) and v
    }
    left = next(((action, q[name]) for action, name in LEAVING.items() if q.get(name)), None)
    to = city.department_by_id.get(q.get("to") or "")  # who has it now (转人民调解: the committee)
    to_desk = to is not None and to.id == city.responsibilities.dispatch_desk
    told = to.name if to else ""
    done = (
        present.left_queue(*left, to=told, to_meeting=bool(q.get("meeting")), to_desk=to_desk) if left else ""
    )
    return await page(
        request,
        "department.html",
        s=s,
        rows=shown,
        total=total,
        page_no=page_no,
        pages=pages,
        page_query=lambda n: urlencode([*sorted(filters.items()), ("page", n)]),
        filters=dict(q),
        department=city.department_by_id[dept].name if dept in city.department_by_id else dept,
        done=done,
        statuses=[st for st in Status if st not in (Status.RECEIVED, Status.REVIEW)],
        categories=choices["categories"],
        category_groups=present.category_groups(city, dept, choices["categories"]),
        grids=choices["grids"],  # by name: staff do not know the grid codes
        # 批量签收: the new tickets of this page, which the form's 全选 stands for; the last batch's
        # outcome, after its redirect; the key of the next one (a second click accepts nothing twice).
        to_accept=[r["ticket_no"] for r in shown if r.get("status") == Status.ASSIGNED],
        batch=await batch_result(request, dept, q.get("batch") or ""),
        idem=uuid.uuid4().hex,
    )


def batch_key(idem: str) -> str:
    return f"console:batch:{idem}"


BATCH_KEPT_SECONDS = 600  # the outcome of a 批量签收 waits this long for its page


async def batch_result(request: Request, dept: str, idem: str) -> dict[str, Any] | None:
    """The outcome of the 批量签收 `idem` that this department made (another's reads as none)."""
    if not idem or len(idem) > 64:
        return None
    raw = await request.app.state.redis.get(batch_key(idem))
    kept = json.loads(raw) if raw else None
    return kept["outcome"] if kept and kept.get("department") == dept else None


@router.post("/department/accept")
async def department_accept(request: Request, s: session.Session = Depends(as_department)):
    """批量签收: the ticked tickets (or, with 全选, the page's new ones) accepted in one call; then
    back to the queue (the filters kept), which says how many were accepted and why any were not.
    The outcome waits in Redis under the form's key for the page after the redirect, so a reload
    shows it again and accepts nothing."""
    form = await checked_form(request, s)
    dept = s.principal.department or ""
    idem = text(form, "idem")[:64] or uuid.uuid4().hex
    nos = present.batch_picked(
        [v for v in form.getlist("ticket_nos") if isinstance(v, str)],
        [v for v in form.getlist("page_nos") if isinstance(v, str)],
        text(form, "all_on_page") == "1",
    )
    reply = await api(request, s).post(
        f"/api/v1/departments/{dept}/tickets/accept",
        {"ticket_nos": nos},
        headers={"Idempotency-Key": f"console:{idem}"},
    )
    outcome = present.batch_outcome(reply.body) if reply.ok else {"error": reply.message}
    kept = json.dumps({"department": dept, "outcome": outcome}, ensure_ascii=False)
    await request.app.state.redis.set(batch_key(idem), kept, ex=BATCH_KEPT_SECONDS)
    query = [(k, v) for k, v in parse_qsl(text(form, "query")) if k in DEPARTMENT_FILTERS]
    return RedirectResponse(f"/console/department?{urlencode([*query, ('batch', idem)])}", status_code=303)


DEPARTMENT_FILTERS = ("status", "overdue", "category", "grid", "date", "page")


@router.get("/department/live")
async def department_live(request: Request, s: session.Session = Depends(as_department)):
    """Server-sent events: a ticket of this department was assigned or changed."""
    client, feed = api(request, s), live_feed(request)
    dept = s.principal.department

    async def stream() -> AsyncIterator[str]:
        async with feed.subscribe() as news:
            await asyncio.wait_for(feed.ready.wait(), timeout=30)
            # The tickets the page may show. One that leaves (改派 by the desk, 转人民调解) is news
            # too, though the department can no longer read it; others' tickets never get through.
            # Their numbers only: a queue of thousands is not read ticket by ticket for them.
            ours = await client.department_ticket_nos(dept or "")
            yield "retry: 3000\nevent: ready\ndata: {}\n\n"
            while not await request.is_disconnected():
                try:
                    item = await asyncio.wait_for(news.get(), timeout=LIVE_CHECK_SECONDS)
                except TimeoutError:
                    if not await signed_in(request, s):
                        return
                    yield ": keep-alive\n\n"
                    continue
                no = item["ticket_no"]
                if item["topic"] not in ("ticket.assigned", "ticket.updated") or not no:
                    continue
                # The event names the department holding the ticket after it (a ticket's events
                # are read in order): only ours get through, and each page does not ask the API
                # about every ticket of the city that changes.
                if item.get("department") == dept:
                    ours.add(no)
                    data = json.dumps({"ticket_no": no, "topic": item["topic"]})
                elif no in ours:
                    ours.discard(no)
                    data = json.dumps({"ticket_no": no, "topic": item["topic"], "left": True})
                else:
                    continue
                if not await signed_in(request, s):
                    return
                yield f"event: ticket\ndata: {data}\n\n"

    return event_stream(stream())


# A live page's stream checks this often that its session still stands (signed out elsewhere,
# expired, or its token revoked) and ends when it does not: the page's script then finds the
# reconnection refused and goes to the sign-in page, as a page load would.
LIVE_CHECK_SECONDS = 5.0


async def signed_in(request: Request, s: session.Session) -> bool:
    return await session.alive(request.app.state.redis, request.cookies.get(session.COOKIE), s)


def event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def mediation_of(form: FormData) -> dict[str, Any]:
    """A mediation committee's resolve form: how the mediation ended and the agreement's terms, named
    as the API names them (`mediation.outcome`, `mediation.agreement`), so a refusal finds its field.
    Another department's form has neither, and sends none."""
    outcome = text(form, "mediation.outcome")
    if not outcome:
        return {}
    return {"mediation": {"outcome": outcome, "agreement": text(form, "mediation.agreement")}}


TICKET_ACTIONS: dict[str, tuple[str, Callable[[FormData], dict], dict[str, str]]] = {
    # action: (API path suffix, the body from the form, the form's fields and their labels; the first
    # is where an error that names no field is shown)
    "accept": ("accept", lambda f: {}, {"form": ""}),
    "resolve": (
        "resolve",
        lambda f: {"note": text(f, "note"), **mediation_of(f)},
        {
            "note": "办理结果说明",
            "photos": "处置照片",
            "mediation": "调解结果",
            "mediation.outcome": "调解结果",
            "mediation.agreement": "协议内容",
        },
    ),
    "mediate": ("mediate", lambda f: {"reason": text(f, "reason")}, {"reason": "转人民调解的原因"}),
    "return": (
        "return",
        lambda f: {
            "reason": text(f, "reason"),
            "note": text(f, "note"),
            "disputed_rule": disputed_rule_of(f),
        },
        {"reason": "退单理由", "note": "说明", "disputed_rule": "有异议的权责规则"},
    ),
    "extend": (
        "extend",
        lambda f: {
            "days": int(text(f, "days")) if text(f, "days").isdigit() else 0,
            "reason": text(f, "reason"),
        },
        {"reason": "延期理由", "days": "延长工作日数"},
    ),
}

WITH_PHOTOS = {"resolve"}  # actions whose form sends photos (处置照片)
# Actions after which the ticket is no longer the department's to open: back to its queue, told there.
LEAVING = {"return": "returned", "mediate": "mediated"}

# --- the ticket list with search (the record, PostgreSQL) ------------------------------------------

LIST_FILTERS = (
    "status", "department", "category", "street", "community", "grid", "channel",
    "urgent", "overdue", "from", "to", "q", "caller", "sort", "answer", "reopened",
    "response", "answered",
)  # fmt: skip
LIST_PAGE_SIZE = 50
STATUS_LABELS = {str(st): name for st, name in STATUS_NAMES.items()}  # the record's statuses are text
# 未关闭: every status but closed (已关闭), as one choice of the list's 状态 (the API takes several,
# comma separated): the dashboard's overdue tickets are these, a resolution whose check on the spot
# runs late (已办结) among them. Not `shared.tickets.OPEN_STATUSES`, which ends at the resolution.
NOT_CLOSED = ",".join(st.value for st in Status if st != Status.CLOSED)
SORT_NAMES = {
    # The deadline that runs now (签收, 办结 or 会议时限): among the overdue, the longest overdue first.
    "due": "当前时限（近→远）",
    # 受理时间（新→旧）, the record's order when none is given, is the list's empty choice.
    "received_at": "受理时间（旧→新）",
    "resolve_by": "办结时限（近→远）",
    "-resolve_by": "办结时限（远→近）",
    "-updated_at": "最近更新",
    "ticket_no": "工单号（小→大）",
    "-ticket_no": "工单号（大→小）",
}


def list_filters(fields: Mapping[str, Any], s: session.Session) -> dict[str, str]:
    """The filters as the person chose them (the list's address, or its form posted); a
    department's list is always its own (the API scopes it anyway, so the field is not offered)."""
    filters = {name: str(fields.get(name) or "").strip() for name in LIST_FILTERS}
    if not s.principal.is_admin:
        filters["department"] = filters["caller"] = ""  # the desk's alone (the API refuses others)
    return filters


# The desk looks a caller's tickets up by the number they called from. The number is posted, never
# put in a URL (the browser's history, a proxy's log): the list's links carry the caller's salted
# hash (`caller`, a filter the API takes) and the number masked, to show what the list is of.
_MASKED = re.compile(r"[0-9]{3,4}\*{4}[0-9]{4}|[0-9-]{3,5}\*{3,4}[0-9]{2,4}")


def caller_shown(fields: Mapping[str, Any]) -> str:
    """The masked number the list is of, as its links (or its form) carry it; nothing that is not a
    mask."""
    shown = str(fields.get("caller_shown") or "")
    return shown if _MASKED.fullmatch(shown) else ""


def by_caller(phone: str) -> dict[str, str]:
    """The list's filters for a caller's tickets by their number (raises InvalidPhone)."""
    number = normalize_phone(phone)
    return {"caller": caller_id(number), "caller_shown": mask_phone(number)}


def page_number(request: Request, name: str = "page") -> int:
    raw = request.query_params.get(name) or ""
    return int(raw) if raw.isdigit() and int(raw) >= 1 else 1


def list_errors(reply: Reply) -> tuple[dict[str, str], str]:
    """(a message beside the field the API names, a notice above the list)."""
    if reply.status == 503:
        return {}, reply.message
    field = reply.field if reply.field in LIST_FILTERS else "form"
    # The API's message starts with the parameter's name ("q: ..."); beside its field it is redundant.
    message = reply.message.removeprefix(f"{field}: ")
    return {field: message}, ""


def place_of(item: dict, city: City) -> str:
    """Street / community / grid by name (the record keeps their ids): a grid's place as every page
    writes it; without one, as far down as it is known."""
    grid = city.grids.get(item.get("grid") or "")
    if grid is not None:
        return grid.place
    streets = {st.id: st for st in city.district.streets}
    street = streets.get(item.get("street") or "")
    if street is None:
        return "未定位"
    community = next((c.name for c in street.communities if c.id == item.get("community")), "")
    return "/".join(n for n in (street.name, community) if n)


def list_row(item: dict, tz: ZoneInfo, city: City) -> dict:
    return {
        "place": place_of(item, city),
        # 协办: the record's list finds a department's co-handled tickets too (department=), so the
        # row says who co-handles it, or the count beside a department's name would not add up.
        "co_names": city.department_names(item.get("co_departments")),
        **item,
        "department_name": present.holder_name(item),  # 待会议确定 while a joint meeting holds it
        "status_name": STATUS_LABELS.get(item.get("status", ""), item.get("status", "")),
        "channel_name": CHANNEL_NAMES.get(item.get("channel", ""), item.get("channel", "")),
        "received": present.local(item.get("received_at"), tz),
        "resolve_due": present.deadline_shown(item, tz),
        "resolved": present.local(item.get("resolved_at"), tz),
        "category_label": "/".join(item.get("category_names") or ()) or "未分类",
    }


def list_choices(city: City) -> dict[str, Any]:
    streets = city.district.streets
    return {
        "statuses": [
            (NOT_CLOSED, "未关闭（含已办结、回访中）"),
            *((st.value, STATUS_LABELS.get(st.value, st.value)) for st in Status),
        ],
        "departments": present.department_filter(city),
        "categories": sorted((c, "/".join(city.category_names(c))) for c in city.category_path),
        "streets": [(st.id, st.name) for st in streets],
        "communities": [(c.id, f"{st.name}/{c.name}") for st in streets for c in st.communities],
        "grids": present.grid_choices(city),  # by community, in <optgroup>s (_grid_options.html)
        "channels": CHANNEL_NAMES,
        "sorts": SORT_NAMES,
    }


async def list_page(request: Request, s: session.Session, status: int = 200, **context: Any) -> HTMLResponse:
    filters = context.pop("filters")
    # The masked number beside the hash: from the list's address, or from the form posted.
    shown = (
        (context.pop("shown", None) or caller_shown(request.query_params)) if filters.get("caller") else ""
    )
    # The page's links (pages, exports) keep the filters, and the masked number beside the hash.
    query = {k: v for k, v in filters.items() if v} | ({"caller_shown": shown} if shown else {})
    return await page(
        request,
        "tickets.html",
        status,
        s=s,
        filters=filters,
        query=query,
        caller_shown=shown,
        urlencode=urlencode,
        **list_choices(city_of(request)),
        **{"rows": [], "total": 0, "page_no": 1, "pages": 1, "errors": {}, "notice": "", **context},
    )


@router.get("/tickets")
async def tickets_page(request: Request, s: session.Session = Depends(as_reader)):
    filters, page_no = list_filters(request.query_params, s), page_number(request)
    if (phone := (request.query_params.get("phone") or "").strip()) and s.principal.is_admin:
        # A number in a link made before it was posted (or typed into the address bar): the same
        # list, by the hash, so that the number leaves the address bar at once.
        return await list_by_caller(request, s, phone, filters, caller_shown(request.query_params))
    return await show_list(request, s, filters, page_no)


async def show_list(
    request: Request,
    s: session.Session,
    filters: dict[str, str],
    page_no: int,
    *,
    refused: dict[str, str] | None = None,
    shown: str = "",
) -> Response:
    """A page of the list the filters give; with `refused`, a field the person is to put right (the
    list shown is the one before it, as it still stands)."""
    reply = await api(request, s).get("/api/v1/tickets", **filters, page=page_no, size=LIST_PAGE_SIZE)
    if not reply.ok:
        errors, notice = list_errors(reply)
        return await list_page(request, s, reply.status, filters=filters, errors=errors, notice=notice)
    tz = tz_of(request)
    total = reply.body["total"]
    pages = present.page_count(total, LIST_PAGE_SIZE)
    if page_no > pages and not refused:  # past the end (the list got shorter since the link): its last
        query = urlencode([*((k, v) for k, v in filters.items() if v), ("page", pages)])
        return RedirectResponse(f"/console/tickets?{query}", status_code=303)
    return await list_page(
        request,
        s,
        422 if refused else 200,
        filters=filters,
        errors=refused or {},
        shown=shown,
        rows=[list_row(item, tz, city_of(request)) for item in reply.body["items"]],
        total=total,
        page_no=min(page_no, pages),
        pages=pages,
    )


@router.post("/tickets/search")
async def tickets_search(request: Request, s: session.Session = Depends(as_reader)):
    """The list's filters as posted, shown at the list's own address (which pages and exports keep).
    Posted for the desk's caller number, which no address may hold (`by_caller`)."""
    form = await checked_form(request, s)
    filters = list_filters(form, s)
    shown = caller_shown(form) if filters["caller"] else ""
    if (phone := text(form, "phone")) and s.principal.is_admin:
        return await list_by_caller(request, s, phone, filters, shown)
    query = urlencode(
        [*((k, v) for k, v in filters.items() if v), *({"caller_shown": shown} if shown else {}).items()]
    )
    return RedirectResponse(f"/console/tickets?{query}", status_code=303)


async def list_by_caller(
    request: Request, s: session.Session, phone: str, filters: dict[str, str], shown: str = ""
) -> Response:
    """To the list of the caller's tickets (with the other filters), or, when it is not a number,
    the list as it stood (the filters posted, a caller's among them) with the reason beside it."""
    try:
        wanted = by_caller(phone)
    except InvalidPhone as e:
        refused = {"phone": f"{e}，请填写11位手机号或带区号的固话"}
        return await show_list(request, s, filters, 1, refused=refused, shown=shown)
    query = urlencode([*((k, v) for k, v in filters.items() if v and k != "caller"), *wanted.items()])
    return RedirectResponse(f"/console/tickets?{query}", status_code=303)


def attachment(reply: httpx.Response) -> Response:
    """A file the API made (an export), handed to the browser as it came, never cached."""
    return Response(
        reply.content,
        media_type=reply.headers.get("content-type"),
        headers={
            "Content-Disposition": reply.headers.get("content-disposition", "attachment"),
            "Cache-Control": "no-store",
        },
    )


@router.get("/tickets/export")
async def tickets_export(request: Request, s: session.Session = Depends(as_reader)):
    """The same filters as the list, downloaded as CSV or XLSX through the session: the token never
    appears in a URL. A refusal (a bad filter, too many rows, the record down) shows the list with
    the reason."""
    filters = list_filters(request.query_params, s)
    fmt = "xlsx" if request.query_params.get("format") == "xlsx" else "csv"
    reply = await api(request, s).download("/api/v1/tickets/export", format=fmt, **filters)
    if isinstance(reply, Reply):
        errors, notice = list_errors(reply)
        return await list_page(request, s, reply.status, filters=filters, errors=errors, notice=notice)
    return attachment(reply)


async def ticket_context(request: Request, s: session.Session, no: str) -> dict[str, Any] | None:
    reply = await api(request, s).get(f"/api/v1/tickets/{no}")
    if not reply.ok:
        return None
    ticket = reply.body
    tz, city = tz_of(request), city_of(request)
    history = [
        {"at": present.local(h.get("occurred_at"), tz), "text": present.describe(h, city)}
        for h in ticket.get("history", [])
    ]
    grid = (ticket.get("grid") or {}).get("grid")
    apart = present.disputed_match(ticket, ticket.get("history", []))
    volume = {grid: 1} if grid else {}
    committee = mediation_committee(city, grid)
    # 并案: the desk may merge a duplicate no department has taken up; the tickets of its grid and
    # category still being handled are offered as the main ticket (intake's duplicate finder).
    can_merge = (
        s.principal.role == "admin"
        and workflow.allowed(Status(ticket["status"]), "merge")
        and not ticket.get("merged_into")
    )
    candidates = await api(request, s).get(f"/api/v1/tickets/{no}/merge/candidates") if can_merge else None
    # Its joint meeting named by what it is about, for those who may open it (the desk, a summoned
    # department); the others, and a meeting that cannot be read, by its number.
    mid = ticket.get("meeting_id")
    readable = mid and s.principal.role in ("admin", "department")
    meeting = await api(request, s).get(f"/api/v1/meetings/{mid}") if readable else None
    # 短信与微信通知: the desk reads what the resident was sent (a resident calls to say nothing came).
    sent = (
        await api(request, s).get(f"/api/v1/tickets/{no}/messages") if s.principal.role == "admin" else None
    )
    return {
        "notices": present.notices(sent.body["messages"], tz) if sent and sent.ok else None,
        "meeting_title": present.meeting_title(meeting.body, city) if meeting and meeting.ok else "",
        "t": row(ticket, tz, datetime.now(UTC)),
        "history": history,
        "map": present.grid_map(city, volume),
        "map_centre": grid,  # a phone shows part of the map: this grid is scrolled into view
        "grid_name": city.grids[grid].grid.name if grid in city.grids else "未定位",
        "place": city.place_name(grid),
        "grid_chosen": present.grid_chosen_by_desk(ticket, ticket.get("history", [])),
        # 定位与地址不一致: where the coordinates (or the worker's grid) and the address put it, and
        # whether the other place may have another department (only then is 属地有误 its reason).
        "grid_apart": located_apart(city, apart) if apart else "",
        "apart_elsewhere": apart is not None
        and city.place_decides_department(ticket.get("category"), apart.grid or "", apart.address_grid or ""),
        "departments": present.departments_of(city),  # the desk's 改派 form
        # 现场核查: a grid worker reads only its grid's tickets; the API refuses what is not for it.
        # A worker's own report in another grid (我上报的) it reads, but checks no more than any other.
        "can_verify": present.awaits_check(ticket, s.principal.grid),
        "verified": present.verified_line(ticket, tz),
        # 人民调解: the signed-in department is a committee (its resolve form asks how it ended), and
        # the committee the ticket's street refers disputes to (转人民调解), if there is one, for a
        # ticket of a category that may be a dispute between parties (`mediable`, categories.yaml).
        "is_committee": is_mediation_committee(city, s.principal.department or ""),
        "committee": city.department_by_id[committee].name if committee else "",
        "mediable": city.mediable(ticket.get("category")),
        "mediation_outcome": MEDIATION_OUTCOME_NAMES.get(ticket.get("mediation_outcome") or "", ""),
        "can_merge": can_merge,
        # 事发网格: the desk sets or corrects the grid of an assigned ticket (the API refuses the
        # other statuses, with the reason); the city's grids by street and community.
        "can_place": s.principal.role == "admin" and workflow.allowed(Status(ticket["status"]), "place"),
        # 申请更正事发网格: the worker of the ticket's grid asks the desk (the API refuses the rest);
        # one request at a time, so not while one waits.
        "can_request_place": s.principal.role == "grid_worker"
        and grid is not None
        and grid == s.principal.grid
        and workflow.allowed(Status(ticket["status"]), "request_place")
        and not ticket.get("place_request"),
        "place_request": present.place_request(ticket, city),
        "grid_groups": present.grid_choices(city),
        "grid_id": grid,
        "merge_candidates": candidates.body["candidates"] if candidates and candidates.ok else [],
        # Only the department that leads the ticket (主办) handles it: the workflow refuses 签收, 办结,
        # 退单 and 延期 to any other. One that co-handles it (协办) or is summoned to its joint meeting
        # reads it without the forms, and the page says who handles it.
        "handles": s.principal.role == "department" and s.principal.department == lead_of(ticket),
        "co_handles": s.principal.role == "department"
        and s.principal.department != lead_of(ticket)
        and s.principal.department in co_handlers_of(ticket),
        # 退单 disputing the responsibility list that names this department: the rule, asked for,
        # and filled in (editable): the rule that routed the ticket here (its last assignment's),
        # else the one the list names this department by (which the refusal quotes).
        "offered_rule": offered_rule(city, ticket, s.principal.department)
        if s.principal.role == "department" and s.principal.department
        else "",
        "dispute_wanted": workflow.dispute_wanted(
            city,
            ticket.get("category"),
            GridMatch.model_validate(ticket["grid"]) if ticket.get("grid") else None,
            s.principal.department,
        )
        if s.principal.role == "department" and s.principal.department
        else "",
        "disputes": "|".join(workflow.DISPUTES),
    }


def offered_rule(city: City, ticket: dict[str, Any], dept_id: str) -> str:
    """The rule a return of the ticket by `dept_id` is offered to dispute (退单's 有异议的权责规则,
    filled in): the rule its last assignment sent it here by, else the one the responsibility list
    names the department the lead by, or "" when none."""
    grid = GridMatch.model_validate(ticket["grid"]) if ticket.get("grid") else None
    return present.routed_rule(ticket.get("history", []), dept_id) or workflow.listed_rule(
        city, ticket.get("category"), grid, dept_id
    )


def disputed_rule_of(form: FormData) -> str:
    """The rule a return disputes: as the field has it, but not the rule filled in (`offered_rule`,
    sent back as `disputed_rule_offered`) left as it was with a reason that disputes nothing of the
    list (a duplicate, a wrong grid): the department said nothing of a rule then."""
    rule = text(form, "disputed_rule")
    untouched = rule == text(form, "disputed_rule_offered")
    return "" if untouched and text(form, "reason") not in workflow.DISPUTES else rule


def lead_of(ticket: dict[str, Any]) -> str | None:
    """The department that leads a ticket (主办), the only one that acts on it."""
    return (ticket.get("department") or {}).get("id")


def co_handlers_of(ticket: dict[str, Any]) -> set[str]:
    """The departments that co-handle a ticket (协办): they read it, as the API lets them, but the
    workflow refuses them its steps (`workflow._require_owner`), so they get none of its forms."""
    return {d["id"] for d in ticket.get("co_departments") or () if d}


async def action_refused(
    request: Request,
    s: session.Session,
    no: str,
    reply: Reply,
    status: int,
    *,
    action: str,
    errors: dict[str, str],
    values: dict[str, str],
    photos: list[str] | None = None,
) -> HTMLResponse:
    """The ticket's page again after the API refused an action on it: the refusal beside the
    action's form, what was typed kept, the photos uploaded shown as kept (404 if the ticket is
    gone meanwhile)."""
    context = await ticket_context(request, s, no)
    if context is None:
        return await page(request, "message.html", 404, s=s, title="工单不存在", message=reply.message)
    return await page(
        request,
        "ticket.html",
        status,
        s=s,
        errors={action: errors},
        values={action: values},
        kept={action: photos} if photos is not None else {},
        done=None,
        **context,
    )


@router.get("/tickets/{no}")
async def ticket_page(request: Request, no: str, s: session.Session = Depends(as_reader)):
    context = await ticket_context(request, s, no)
    if context is None:
        return await page(request, "message.html", 404, s=s, title="工单不存在", message=f"工单{no}不存在")
    done = present.DONE.get(request.query_params.get("done") or "", "")
    department = (context["t"].get("department") or {}).get("name", "")
    into = context["t"].get("merged_into") or ""
    done = done.format(
        no=no, department=department, verification=context["verified"], into=into, place=context["place"]
    )
    return await page(request, "ticket.html", s=s, errors={}, values={}, kept={}, done=done, **context)


@router.post("/tickets/{no}/messages/{message_id}/resend")  # before the departments' actions below
async def ticket_resend(request: Request, no: str, message_id: str, s: session.Session = Depends(as_desk)):
    """补发: the desk sends one of the ticket's messages to its resident again (the resident, on the
    line, lost the ticket number or never got it). A refusal is said above the list of messages."""
    await checked_form(request, s)
    reply = await api(request, s).post(f"/api/v1/tickets/{no}/messages/{message_id}/resend")
    if reply.ok:
        return RedirectResponse(f"/console/tickets/{no}?done=resent", status_code=303)
    status = reply.status if 400 <= reply.status < 500 else 422
    return await action_refused(
        request, s, no, reply, status, action="resend", errors={"form": reply.message}, values={}
    )


# The desk's 改派 form: its fields and their labels; an error that names no field (the ticket moved
# on meanwhile) is shown above the form.
REDISPATCH_FIELDS = {"form": "", "department": "改派至", "reason": "改派原因"}


@router.post("/tickets/{no}/redispatch")  # before the departments' actions below: a path of its own
async def ticket_redispatch(request: Request, no: str, s: session.Session = Depends(as_desk)):
    """改派: the desk moves a ticket a department holds to another, with the reason."""
    form = await checked_form(request, s)
    values = {"department": text(form, "department"), "reason": text(form, "reason")}
    reply = await api(request, s).post(f"/api/v1/tickets/{no}/redispatch", values)
    if reply.ok:
        return RedirectResponse(f"/console/tickets/{no}?done=redispatch", status_code=303)
    errors = field_errors(reply, REDISPATCH_FIELDS, "form", form)
    return await action_refused(
        request, s, no, reply, reply.status, action="redispatch", errors=errors, values=values
    )


# The desk's 事发网格 form: its field and label; an error naming no field (the ticket moved on
# meanwhile, e.g. it was closed) is shown above the form.
PLACE_FIELDS = {"form": "", "grid": "事发网格"}


@router.post("/tickets/{no}/place")  # before the departments' actions below: a path of its own
async def ticket_place(request: Request, no: str, s: session.Session = Depends(as_desk)):
    """事发网格: the desk places an assigned ticket in the grid where the problem is (or confirms the
    located grid of a disputed place). A refusal is said beside the select, which takes the focus."""
    form = await checked_form(request, s)
    values = {"grid": text(form, "grid")}
    if not values["grid"]:  # none chosen: said so beside the select, not as an unknown grid ''
        reply = Reply(422, {"message": workflow.REQUIRED["place.grid"], "field": "grid"})
    else:
        reply = await api(request, s).post(f"/api/v1/tickets/{no}/place", values)
    if reply.ok:
        return RedirectResponse(
            f"/console/tickets/{no}?done={present.placed_done(reply.body)}", status_code=303
        )
    errors = field_errors(reply, PLACE_FIELDS, "form", form)
    status = reply.status if 400 <= reply.status < 500 else 422
    return await action_refused(request, s, no, reply, status, action="place", errors=errors, values=values)


# The grid worker's 申请更正事发网格 form: its fields and labels; an error naming no field (the ticket
# moved on meanwhile, or a request already waits) is shown above the form.
PLACE_REQUEST_FIELDS = {"form": "", "grid": "问题实际所在网格", "reason": "现场核实情况"}


@router.post("/tickets/{no}/place-request")  # before the departments' actions below: a path of its own
async def ticket_place_request(request: Request, no: str, s: session.Session = Depends(as_grid_worker)):
    """申请更正事发网格: the grid worker asks the desk to place the ticket in the grid where the
    problem is, with what was seen on the spot. A refusal is said beside its field, which takes the
    focus."""
    form = await checked_form(request, s)
    values = {"grid": text(form, "grid"), "reason": text(form, "reason")}
    if not values["grid"]:  # none chosen: said so beside the select, not as an unknown grid ''
        reply = Reply(422, {"message": workflow.REQUIRED["request_place.grid"], "field": "grid"})
    else:
        reply = await api(request, s).post(f"/api/v1/tickets/{no}/place-request", values)
    if reply.ok:
        return RedirectResponse(f"/console/tickets/{no}?done=place_requested", status_code=303)
    errors = field_errors(reply, PLACE_REQUEST_FIELDS, "form", form)
    status = reply.status if 400 <= reply.status < 500 else 422
    return await action_refused(
        request, s, no, reply, status, action="request_place", errors=errors, values=values
    )


# The desk's 并案 form: a duplicate no department has taken up (the API refuses the others, saying
# why); its fields and their labels. The main ticket is one of those offered (`into`) or typed
# (`into_typed`), not both; an error naming no field is shown above the form.
MERGE_FIELDS = {"form": "", "into": "主件工单号", "reason": "并案原因"}


@router.post("/tickets/{no}/merge")  # before the departments' actions below: a path of its own
async def ticket_merge(request: Request, no: str, s: session.Session = Depends(as_desk)):
    """并案: the desk merges this ticket (a duplicate) into the ticket already being handled. One
    offered is named in the question the browser asks first; a typed number is confirmed here,
    on the page: the sentence names the ticket that number is (the API's `merge/preview`, which
    refuses a number that cannot take the merge in the merge's own words), and only its
    confirmation (`confirmed`) merges."""
    form = await checked_form(request, s)
    chosen, typed = text(form, "into").strip(), text(form, "into_typed").strip()
    values = {"into": chosen, "into_typed": typed, "reason": text(form, "reason")}
    client = api(request, s)
    body = {"into": chosen or typed, "reason": values["reason"]}
    if chosen and typed and chosen != typed:
        reply = Reply(
            422, {"message": f"请只选择一张主件：已选工单{chosen}，又填写了工单{typed}", "field": "into"}
        )
    elif not (chosen or typed):
        reply = Reply(
            422, {"message": "请选择或填写主件的工单号（本工单将并入该工单合并办理）", "field": "into"}
        )
    elif not chosen and text(form, "confirmed") != "yes":
        reply = await client.post(f"/api/v1/tickets/{no}/merge/preview", body)
        if reply.ok:
            context = await ticket_context(request, s, no)
            if context is None:
                return await page(
                    request, "message.html", 404, s=s, title="工单不存在", message=f"工单{no}不存在"
                )
            return await page(
                request,
                "ticket.html",
                s=s,
                errors={},
                values={"merge": values},
                kept={},
                done=None,
                merge_confirm=present.merge_confirmation(no, reply.body, city_of(request)),
                **context,
            )
    else:
        reply = await client.post(f"/api/v1/tickets/{no}/merge", body)
    if reply.ok:
        return RedirectResponse(f"/console/tickets/{no}?done=merge", status_code=303)
    errors = field_errors(reply, MERGE_FIELDS, "form", form)
    status = reply.status if 400 <= reply.status < 500 else 422
    return await action_refused(request, s, no, reply, status, action="merge", errors=errors, values=values)


# The grid worker's 现场核查 form: its fields and their labels (an error naming no field, e.g. the
# ticket was closed or checked meanwhile, is shown above the form).
VERIFY_FIELDS = {"form": "", "solved": "核查结果", "note": "现场情况", "photos": "现场照片"}


@router.post("/tickets/{no}/verify")  # before the departments' actions below: a path of its own
async def ticket_verify(request: Request, no: str, s: session.Session = Depends(as_grid_worker)):
    """现场核查: the grid worker says whether the resolution holds on the spot, with what was seen and
    photos; not solved, the ticket goes back to its department (the form asked to confirm)."""
    form = await checked_form(request, s)
    values = {"solved": text(form, "solved"), "note": text(form, "note")}
    client = api(request, s)
    photos: list[str] = []
    reply: Reply | None = None
    if values["solved"] not in ("true", "false"):
        reply = Reply(422, {"message": workflow.REQUIRED["verify.solved"], "field": "solved"})
    else:  # the photos go up first; a refused one stops the check
        photos, reply = await client.attach_photos(form)
    if reply is None:
        body = {"solved": values["solved"] == "true", "note": values["note"], "photos": photos}
        reply = await client.post(f"/api/v1/tickets/{no}/verify", body)
    if reply.ok:
        done = "verified" if values["solved"] == "true" else "verified_back"
        return RedirectResponse(f"/console/tickets/{no}?done={done}", status_code=303)
    status = reply.status if 400 <= reply.status < 500 else 422
    errors = field_errors(reply, VERIFY_FIELDS, "form", form)
    return await action_refused(
        request, s, no, reply, status, action="verify", errors=errors, values=values, photos=photos
    )


@router.post("/tickets/{no}/{action}")
async def ticket_action(request: Request, no: str, action: str, s: session.Session = Depends(as_department)):
    form = await checked_form(request, s)
    if action not in TICKET_ACTIONS:
        return await page(
            request, "message.html", 404, s=s, title="操作不存在", message=f"没有“{action}”这项操作"
        )
    suffix, body, fields = TICKET_ACTIONS[action]
    client, payload = api(request, s), body(form)
    photos: list[str] = []
    reply: Reply | None = None
    if action in WITH_PHOTOS:  # uploaded first; a refused photo stops the action
        photos, reply = await client.attach_photos(form)
        payload["photos"] = photos
    if reply is None:
        reply = await client.post(f"/api/v1/tickets/{no}/{suffix}", payload)
    if reply.ok and action in LEAVING:  # the ticket is no longer ours to open: back to the queue
        query = {LEAVING[action]: no}
        if isinstance(reply.body, dict) and (to := (reply.body.get("department") or {}).get("id")):
            query["to"] = to  # who has it now (an id: the queue names it from the city's list)
        if isinstance(reply.body, dict) and reply.body.get("status") == Status.MEETING:
            query["meeting"] = "1"  # a second return: a joint meeting, not another department, is next
        return RedirectResponse(f"/console/department?{urlencode(query)}", status_code=303)
    if reply.ok:
        return RedirectResponse(f"/console/tickets/{no}?done={action}", status_code=303)
    errors = field_errors(reply, fields, next(iter(fields)), form)
    values = {k: text(form, k) for k in fields}
    return await action_refused(
        request, s, no, reply, 422, action=action, errors=errors, values=values, photos=photos
    )


# --- photos ------------------------------------------------------------------------------------


@router.get("/photos/{photo_id}")
async def photo(request: Request, photo_id: str, s: session.Session = Depends(as_photo_viewer)) -> Response:
    """A photo for the page's <img> (`?size=thumb`: its thumbnail), fetched from the API with the
    session's token (which never reaches the browser)."""
    if not PHOTO_ID.fullmatch(photo_id):
        return Response("照片编号无效", status_code=404, media_type="text/plain; charset=utf-8")
    size = "thumb" if request.query_params.get("size") == "thumb" else "full"
    reply = await api(request, s).download(f"/api/v1/photos/{photo_id}", size=size)
    if isinstance(reply, Reply):
        return Response(reply.message, status_code=reply.status, media_type="text/plain; charset=utf-8")
    return Response(
        reply.content,
        media_type="image/jpeg",
        headers={"Cache-Control": CACHE, "X-Content-Type-Options": "nosniff"},
    )


def body_limits(settings: Settings) -> dict[str, Limit]:
    """The forms that post photos with them: as much as the API takes in one upload."""
    limit = Limit(upload_limit(settings), upload_advice(settings))
    return {
        "/console/operator/appeals": limit,
        "/console/patrol/reports": limit,
        "/console/tickets/*/resolve": limit,
        "/console/tickets/*/verify": limit,
    }


# --- the dispatch desk ---------------------------------------------------------------------------


DESK_PAGE_SIZE = 20  # cards to dispatch on one page: each carries every category and department
# What a refused action keeps on its card (desk_refused), as it was picked or typed: a dispatch's
# category (a suggestion, or one from 其他分类) and grid (事发网格), a verdict's reason (说明, 理由).
DESK_KEPT = ("category", "category_other", "grid", "note")
# The desk's cards an action comes back to, by the prefix of their ids: a ticket to dispatch, an
# extension request, a grid worker's request to correct the grid.
DESK_CARDS = ("desk", "ext", "placereq")


@router.get("/desk/departments")
async def desk_departments(request: Request, s: session.Session = Depends(as_desk)) -> JSONResponse:
    """The department the responsibility list names for each `category` at `grid`: the desk card's
    one-click buttons follow the grid chosen in 事发网格 (console.js) without a round trip through a
    refusal (`stale_suggestion` still refuses a button pressed before they did)."""
    city = city_of(request)
    grid = request.query_params.get("grid") or ""
    if grid not in city.grids:
        return JSONResponse({"error": "unknown_grid"}, status_code=404)
    out: dict[str, dict[str, str] | None] = {}
    for category in request.query_params.getlist("category")[:10]:
        if category not in city.category_by_id:
            continue
        lead = present.likely_department(city, category, present.grid_match(city, grid))
        dept = city.department_by_id.get(lead)
        named = dept is not None and dept.kind != "dispatch_desk"
        out[category] = {"id": dept.id, "name": dept.name} if dept is not None and named else None
    return JSONResponse(out)


@router.get("/desk")
async def desk_page(request: Request, s: session.Session = Depends(as_desk)):
    client, city = api(request, s), city_of(request)
    tz, now = tz_of(request), datetime.now(UTC)
    # The waiting tickets come a page of each list at a time, split and paged where they are kept
    # (a storm may leave thousands waiting); ?ticket=N (the ticket page's link, a refused dispatch)
    # asks for the page of its list that holds it. Of the city's open tickets only those the desk
    # follows come here, picked out where they are: every extension request to decide, and a page of
    # those returned (退单 grows with every return still open).
    wanted = request.query_params.get("ticket") or ""

    def waiting(low: bool, name: str) -> Awaitable[Reply]:
        page_no = page_number(request, name)
        return client.dispatch_section(low=low, page=page_no, size=DESK_PAGE_SIZE, ticket=wanted)

    low_reply, unrouted_reply, followed = await asyncio.gather(
        waiting(True, "low"),
        waiting(False, "unrouted"),
        client.followed(page=page_number(request, "returned"), size=DESK_PAGE_SIZE),
    )

    def section(reply: Reply) -> dict[str, Any]:
        body: dict[str, Any] = reply.body if reply.ok else {"tickets": [], "total": 0, "page": 1}
        return {
            "items": [row(t, tz, now) for t in body["tickets"]],
            "total": body["total"],
            "page_no": body["page"],
            "pages": present.page_count(body["total"], DESK_PAGE_SIZE),
        }

    sections = {"low": section(low_reply), "unrouted": section(unrouted_reply)}
    low, unrouted = sections["low"]["items"], sections["unrouted"]["items"]
    shown = low + unrouted
    # What the desk follows not read (refused): nothing listed, as for the waiting lists above.
    extensions = [
        {**row(t, tz, now), "dates": present.extension_dates(t, city, tz)}
        for t in (followed.body["extensions"] if followed.ok else [])
    ]
    # 事发网格更正申请: each grid worker's request, with the grid it is in now and the one asked for.
    place_requests = [
        {**row(t, tz, now), "asked": present.place_request(t, city)}
        for t in (followed.body.get("place_requests", []) if followed.ok else [])
    ]
    # 当场答复重办: calls answered on the spot that their residents found wanting, back at the desk
    # with no department: sent to one from the ticket's page (改派).
    reopened = [row(t, tz, now) for t in (followed.body.get("reopened", []) if followed.ok else [])]
    returned_section = section(Reply(followed.status, followed.body["returned"]) if followed.ok else followed)
    returned = returned_section["items"]
    # Why each ticket was returned, read from its history: the table's page, and the cards of a
    # ticket a department sent back, so that the desk reads the reason where it dispatches it again
    # (not only in the table at the bottom). Each ticket once (a returned card is in the table too),
    # side by side with the merge candidates below.
    asked = list(
        dict.fromkeys(
            [t["ticket_no"] for t in shown if t.get("returns") or t.get("returned_by")]
            + [t["ticket_no"] for t in returned]
        )
    )

    # 并案: the tickets of a card's grid and category already being handled (the most similar text
    # first), which it may repeat: the desk reads them before dispatching it again, and merges it
    # on the ticket's page. Residents retell a problem in their own words, so no text score decides.
    # One request for the page's cards (intake reads their grids together), not one per card.
    async def candidates() -> Reply | None:
        nos = [t["ticket_no"] for t in shown]
        return await client.post("/api/v1/tickets/merge/candidates", {"ticket_nos": nos}) if nos else None

    found, reasons = await asyncio.gather(
        candidates(), asyncio.gather(*(client.return_reasons(no) for no in asked))
    )
    nearby = {r["ticket_no"]: r["candidates"] for r in found.body["results"]} if found and found.ok else {}
    why = dict(zip(asked, reasons, strict=True))
    for t in shown:
        t["handled_nearby"] = nearby.get(t["ticket_no"], [])
    for t in shown + returned:
        t["return_reasons"] = why.get(t["ticket_no"], [])
    # A dispatch refused for its grid's department comes back with that grid's departments offered:
    # those of the classifier's categories, and (`stale_suggestion`) the one chosen in 其他分类 with no
    # button of its own, first, so that the refusal's "按该网格更新" holds and Enter sends it there.
    error = request.query_params.get("error") or ""
    refused_grid = request.query_params.get("grid") if error else None
    stale = request.query_params.get("field") == "suggested" if error else False
    other = (request.query_params.get("category_other") or None) if stale else None
    for t in shown:  # after the reasons: a category returned as wrong is not suggested again
        here = t["ticket_no"] == wanted
        t["suggestions"] = present.suggestions(
            city, t, refused_grid if here else None, also=other if here else None
        )
        t["grid_apart"] = present.grid_disputed(city, t)  # 定位与地址不一致: for 事发网格
    # A refused action names its card (desk_refused): the refusal is said there, beside the field it
    # is about, with what was picked or typed. A card no longer shown (another desk decided it):
    # said at the top of the page. No card named: a dispatch's (as a refusal named none before).
    card = request.query_params.get("card") or "desk"
    held = dict(zip(DESK_CARDS, (shown, extensions, place_requests), strict=True)).get(card, [])
    on_card = wanted if error and any(t["ticket_no"] == wanted for t in held) else ""
    done = request.query_params.get("done") or ""
    kept = {
        "ticket": on_card,
        "card": card if on_card else "",
        "field": request.query_params.get("field") or "",  # the field the refusal named
        **{k: request.query_params.get(k) or "" for k in DESK_KEPT},
    }
    return await page(
        request,
        "desk.html",
        s=s,
        sections=sections,
        extensions=extensions,
        place_requests=place_requests,
        reopened=reopened,
        returned=returned_section,
        departments=present.departments_of(city),
        categories=[(c, "/".join(city.category_names(c))) for c in city.leaf_categories],
        grid_groups=present.grid_choices(city),  # 事发网格, by street and community (_grid_options.html)
        error=error,
        kept=kept,
        done=done,
        # After a dispatch or a verdict, the card the desk goes on to (desk_redirect), if still shown.
        focus=wanted
        if done and any(t["ticket_no"] == wanted for t in shown + extensions + place_requests)
        else "",
        calendar_notice=present.calendar_notice(city, today_of(request)),
    )


@router.post("/desk/{no}/assign")
async def desk_assign(request: Request, no: str, s: session.Session = Depends(as_desk)):
    form = await checked_form(request, s)
    city = city_of(request)
    # Two clicks: a category (a suggestion, or any leaf from the list), then a department button;
    # the grid (事发网格) when the desk places the ticket (none chosen: the ticket's stays).
    picked = text(form, "category_other") or text(form, "category")
    named = button_category(request, form, city)
    category = named or picked
    body = {
        "department": text(form, "department") or text(form, "department_other"),
        "category": category or None,
        "note": text(form, "note"),
        "grid": text(form, "grid") or None,
    }
    if not body["department"]:
        reply = Reply(422, {"message": f"工单{no}未派出：请先在“其他单位”中选择承办单位"})
    elif stale := stale_suggestion(city, no, form, category):
        reply = Reply(422, {"message": stale, "field": "suggested"})
    else:
        reply = await api(request, s).post(f"/api/v1/dispatch/{no}/assign", body)
    if reply.ok:
        done = dispatched(no, reply.body)
        if named and picked and named != picked and picked in city.category_by_id:
            done += f"，按所按按钮的分类派出，未采用所选的“{city.category_names(picked)[-1]}”"
        return desk_redirect(done, text(form, "next"), "desk")
    # Refused: the category the desk picked still picked, so that the second try is the department
    # alone, not both steps; the refusal beside the select at fault, the grid's or the department's.
    # A button pressed for another category than the one picked: that category is the desk's last
    # choice, chosen in 其他分类 when the card comes back (its button first, as the refusal says).
    field = reply.field if reply.field in ("grid", "suggested") else ""
    target = {"grid": "grid", "suggested": "dept-first"}.get(field, "dept")
    chosen = {"category_other": named} if named and named != picked else {}
    return desk_refused(reply, no, "desk", field, form, f"{target}-{no}", **chosen)


def button_category(request: Request, form: FormData, city: City) -> str:
    """The category a one-click department button names (desk.html: `（物业服务）` on it, `?for=` in
    its formaction), or "": the category the dispatch is sent under, whatever was picked above,
    so that pressing a button labelled with a category does what the label says. 其他单位 (no
    button pressed, or one the form does not name a category for) sends the category picked."""
    named = request.query_params.get("for") or ""
    return named if text(form, "department") and named in city.leaf_categories else ""


def stale_suggestion(city: City, no: str, form: FormData, category: str) -> str:
    """Why a one-click department does not fit the grid the desk chose in 事发网格, or "". The
    buttons name the departments of the ticket's place as the card was drawn; the grid chosen may
    be another street's (a disputed place, a ticket the classifier could not place), whose
    responsibility list names another department. The card comes back with that grid's buttons.
    `category`: the one the dispatch is sent under (the button's, else the one picked).
    其他单位 is the desk's deliberate choice and is not second-guessed."""
    grid, button = text(form, "grid"), text(form, "department")
    if not (grid in city.grids and button and category in city.category_by_id):
        return ""
    lead = present.likely_department(city, category, present.grid_match(city, grid))
    expected = city.department_by_id.get(lead)
    if expected is None or expected.id == button or expected.kind == "dispatch_desk":
        return ""
    return (
        f"工单{no}未派出：事发网格为{city.place_name(grid)}时，"
        f"“{city.category_names(category)[-1]}”由{expected.name}承办，一键派单按钮已按该网格更新，请确认后再派出；"
        "确需派往其他单位的，请在“其他单位”中选择"
    )


@router.post("/desk/{no}/extension/{verdict}")
async def desk_extension(request: Request, no: str, verdict: str, s: session.Session = Depends(as_desk)):
    """The desk decides a department's extension request (延期申请): 批准 moves the deadline (a note
    optional), 驳回 keeps it, with the desk's reason (required), which the department reads."""
    decided = "批准，办结时限已延长" if verdict == "approve" else "驳回，已告知承办单位"
    done = f"工单{no}的延期申请已{decided}"
    return await desk_verdict(request, s, no, verdict, "extension", "ext", done)


@router.post("/desk/{no}/place-request/{verdict}")
async def desk_place_request(request: Request, no: str, verdict: str, s: session.Session = Depends(as_desk)):
    """The desk decides a grid worker's request to correct the grid (事发网格更正申请): 同意 places the
    ticket in the grid asked for, 不同意 drops the request with the desk's reason (required)."""
    decided = "已同意，事发网格已更正" if verdict == "approve" else "未同意，已告知网格员"
    done = f"工单{no}的事发网格更正申请{decided}"
    return await desk_verdict(request, s, no, verdict, "place-request", "placereq", done)


async def desk_verdict(
    request: Request, s: session.Session, no: str, verdict: str, asked: str, card: str, done: str
) -> Response:
    """A verdict on a request the desk decides (`asked`: extension, place-request), with the reason
    typed in its form (`note`). Refused (a 不同意 with no reason): back to the card, the refusal
    beside the verdict's reason field, `{card}-{verdict}-{no}` (desk.html), or its button where it
    has none (a place request's 同意)."""
    form = await checked_form(request, s)
    reply = await api(request, s).post(
        f"/api/v1/tickets/{no}/{asked}/{verdict}", {"note": text(form, "note")}
    )
    if reply.ok:
        return desk_redirect(done, text(form, "next"), card)
    return desk_refused(reply, no, card, verdict, form, f"{card}-{verdict}-{no}")


def dispatched(no: str, ticket: Mapping[str, Any]) -> str:
    """What a dispatch says it did: the department and the category the ticket now has, both, since
    the desk may send a category to a department other than the one suggested for it (a button,
    or 其他单位) and the pair is then read, not guessed from the last click."""
    done = f"工单{no}已派至{(ticket.get('department') or {}).get('name', '')}"
    names = ticket.get("category_names") or ()
    return f"{done}（分类：{names[-1]}）" if names else done


def desk_redirect(done: str, after: str, card: str) -> Response:
    """Back to the desk, done: on the page that holds the card the form named next (`after`), which
    takes the focus (desk_page), so the desk goes on from the keyboard."""
    if not after:
        return RedirectResponse(f"/console/desk?{urlencode({'done': done})}", status_code=303)
    query = urlencode({"done": done, "ticket": after})
    return RedirectResponse(f"/console/desk?{query}#{card}-{quote(after, safe='')}", status_code=303)


def desk_refused(
    reply: Reply, no: str, card: str, field: str, form: FormData, target: str, **chosen: str
) -> Response:
    """Back to the desk, refused, for every card alike (a dispatch, a verdict): to the card of `no`
    (`card`, one of DESK_CARDS; desk_page finds the page that holds it), where the refusal is said
    beside the field it is about (`field`, as desk.html names it), which takes the focus, marked and
    described by why, and what was picked or typed is still there (DESK_KEPT), so the second try is
    the part refused alone. `target`, the field's id, is the fragment: it focuses the field, where
    the card's would take the focus first. `chosen`: what the desk chose other than the form's
    fields say (a button's category, `desk_assign`)."""
    kept = {name: text(form, name) for name in DESK_KEPT} | chosen
    said = {"error": reply.message, "ticket": no, "card": card, "field": field, **kept}
    query = urlencode({k: v for k, v in said.items() if v})
    return RedirectResponse(f"/console/desk?{query}#{quote(target, safe='')}", status_code=303)


# --- residents' erasure requests (the desk) -----------------------------------------------------

ERASURE_FIELDS = {"phone": "居民来电号码", "ticket_no": "工单号", "reason": "删除原因"}
ERASURE_BY = ("phone", "ticket_no")  # the resident found by their phone, or by a ticket's number
ERASURE_REASON = "居民申请删除个人信息"
AUDIT_PAGE_SIZE = 20


def erasure_of(form: FormData) -> dict[str, str]:
    """The form's values; `by` says which of the two the desk chose (the other may hold what was
    typed before the choice changed, and is not sent)."""
    by = text(form, "by")
    values = {
        "by": by if by in ERASURE_BY else "phone",
        **{name: text(form, name).strip() for name in ERASURE_FIELDS},
    }
    # Read as the resident's lookup reads it (20261203000012 is 20261203-000012): the preview shows,
    # and the confirmation sends, the number as the ticket has it. The API reads it the same way.
    values["ticket_no"] = clean_ticket_no(values["ticket_no"])
    return values


def erasure_body(values: dict[str, str]) -> dict[str, str]:
    """What the API is asked: the chosen way to find the resident, and the reason."""
    return {values["by"]: values[values["by"]], "reason": values["reason"]}


async def privacy_page(
    request: Request, s: session.Session, status: int = 200, **context: Any
) -> HTMLResponse:
    """The request form (or its preview), and below it the audit trail, a page at a time."""
    page_no = page_number(request)
    reply = await api(request, s).get("/api/v1/records/privacy/audit", page=page_no, size=AUDIT_PAGE_SIZE)
    items: list[dict] = reply.body["items"] if reply.ok else []
    total: int = reply.body["total"] if reply.ok else 0
    tz = tz_of(request)
    entries = [{**e, "at_local": present.local(e["at"], tz)} for e in items]
    defaults: dict[str, Any] = {
        "values": {"by": "phone", "reason": ERASURE_REASON},
        "errors": {},
        "preview": None,
        "erased": None,
    }
    return await page(
        request,
        "privacy.html",
        status,
        s=s,
        audit=entries,
        audit_notice="" if reply.ok else reply.message,
        page_no=page_no,
        pages=present.page_count(total, AUDIT_PAGE_SIZE),
        **{**defaults, **context},
    )


async def erasure_request(
    request: Request, s: session.Session, path: str
) -> tuple[dict[str, str], Reply, Response | None]:
    """The form's erasure request posted to the API: the values, the reply, and the form again with
    the refusal beside its field (None: accepted)."""
    form = await checked_form(request, s)
    values = erasure_of(form)
    reply = await api(request, s).post(path, erasure_body(values))
    if reply.ok:
        return values, reply, None
    errors = field_errors(reply, ERASURE_FIELDS, "form", form)
    return values, reply, await privacy_page(request, s, reply.status, values=values, errors=errors)


@router.get("/privacy")
async def privacy_form(request: Request, s: session.Session = Depends(as_desk)):
    erased = request.query_params.get("erased") or ""
    return await privacy_page(request, s, erased=int(erased) if erased.isdigit() else None)


@router.post("/privacy/preview")
async def privacy_preview(request: Request, s: session.Session = Depends(as_desk)):
    """The first step: which tickets the erasure would reach, to confirm with the resident."""
    values, reply, refused = await erasure_request(request, s, "/api/v1/records/privacy/erasures/preview")
    if refused is not None:
        return refused
    tz = tz_of(request)
    preview = {
        **reply.body,
        "tickets": [
            {
                **t,
                "received": present.local(t.get("received_at"), tz),
                "status_name": STATUS_LABELS.get(t.get("status") or "", t.get("status") or ""),
                "category_label": "/".join(t.get("category_names") or ()) or "未分类",
                "channel_name": CHANNEL_NAMES.get(t.get("channel") or "", t.get("channel") or ""),
            }
            for t in reply.body["tickets"]
        ],
    }
    # Tickets still being handled or surveyed lose what the department works from, and the survey
    # its number: the desk says so to the resident before confirming (the list shows the latest).
    preview["unfinished"] = [t["ticket_no"] for t in preview["tickets"] if t.get("status") != Status.CLOSED]
    # The reason as the audit will keep it (the API masks the phone and ID numbers typed into it):
    # confirmed as it will be stored, and sent so on confirming, so the page holds no number the
    # audit will not (the erasure masks it again, to the same words).
    values = {**values, "reason": str(reply.body.get("reason") or values["reason"])}
    return await privacy_page(request, s, values=values, preview=preview)


@router.post("/privacy/erase")
async def privacy_erase(request: Request, s: session.Session = Depends(as_desk)):
    """The confirmed erasure; then back to the form (a reload does not erase again)."""
    _, reply, refused = await erasure_request(request, s, "/api/v1/records/privacy/erasures")
    if refused is not None:
        return refused
    return RedirectResponse(f"/console/privacy?erased={reply.body['count']}", status_code=303)


# --- staff access (the desk issues, lists and revokes the staff's credentials) --------------------

ACCESS_FIELDS = {
    "role": "角色",
    "operator": "工号",
    "department": "承办单位",
    "grid": "网格",
    "days": "有效天数",
    "note": "备注",
}
ACCESS_PAGE_SIZE = 50
ACCESS_AUDIT_SIZE = 20
ACCESS_FILTERS = ("role", "q", "page")
TOKEN_ID = re.compile(r"[0-9a-f]{16}")


def grant_of(form: FormData) -> tuple[dict[str, str], dict[str, Any]]:
    """The issue form's values as typed, and the API's request: the fields the chosen role takes
    (the others may hold what was typed before the role changed, and are not sent)."""
    values = {name: text(form, name).strip() for name in ACCESS_FIELDS}
    body: dict[str, Any] = {"role": values["role"], "note": values["note"] or None}
    if values["days"]:
        body["days"] = values["days"]  # the API reads "30" as 30, and refuses what is no number
    for name in access.FIELDS_OF.get(values["role"], ()):
        body[name] = values[name]
    return values, body


def access_query(source: Any) -> dict[str, str]:
    """The list's filters (the page's query, or the form's copy of it), as the page's links keep them."""
    return {k: v for k in ACCESS_FILTERS if isinstance(v := source.get(k), str) and v.strip()}


async def access_page(
    request: Request, s: session.Session, status: int = 200, **context: Any
) -> HTMLResponse:
    """The issue form (or the token just issued), the live credentials a page at a time with their
    filters, and the latest issues and revocations."""
    filters = access_query(request.query_params)
    page_no = page_number(request)
    client = api(request, s)
    listed, audit = await asyncio.gather(
        client.get(
            "/api/v1/tokens",
            role=filters.get("role"),
            q=filters.get("q"),
            page=page_no,
            size=ACCESS_PAGE_SIZE,
        ),
        client.get("/api/v1/tokens/audit", limit=ACCESS_AUDIT_SIZE),
    )
    city, tz = city_of(request), tz_of(request)
    entries = [present.access_audit_row(e, city, tz) for e in audit.body["entries"]] if audit.ok else []
    revoked_id = request.query_params.get("revoked") or ""
    revoked = next(
        (e["held_by"] for e in entries if e["action"] == "revoke" and e["token_id"] == revoked_id), ""
    )
    defaults: dict[str, Any] = {
        "values": {"role": "", "days": str(request.app.state.settings.token_ttl_days)},
        "errors": {},
        "issued": None,
        "idem": uuid.uuid4().hex,
        "revoked_id": revoked_id if TOKEN_ID.fullmatch(revoked_id) else "",
        "revoked": revoked,
        "notice": "",
    }
    words = {"q": filters["q"]} if filters.get("q") else {}
    role_links = [("", "全部", urlencode(words))] + [
        (role, name, urlencode({"role": role, **words})) for role, name in access.ROLE_NAMES.items()
    ]
    return await page(
        request,
        "access.html",
        status,
        s=s,
        filters=filters,
        query=urlencode(filters),
        list_query=urlencode({k: v for k, v in filters.items() if k != "page"}),
        role_links=role_links,
        tokens=[present.access_row(t, city, tz, s.principal.token_id) for t in listed.body["tokens"]]
        if listed.ok
        else [],
        total=listed.body["total"] if listed.ok else 0,
        list_notice="" if listed.ok else listed.message,
        page_no=page_no,
        pages=present.page_count(listed.body["total"] if listed.ok else 0, ACCESS_PAGE_SIZE),
        audit=entries,
        audit_notice="" if audit.ok else audit.message,
        role_choices=list(access.ROLE_NAMES.items()),
        department_choices=[(d["id"], d["name"]) for d in present.departments_of(city)],
        grid_groups=present.grid_choices(city),
        default_days=request.app.state.settings.token_ttl_days,
        **{**defaults, **context},
    )


@router.get("/access")
async def access_list(request: Request, s: session.Session = Depends(as_desk)):
    return await access_page(request, s)


@router.post("/access/issue")
async def access_issue(request: Request, s: session.Session = Depends(as_desk)):
    """A new credential: shown on the page this once (the API keeps only its hash). The form's key
    makes a second click, or a reload that posts again, issue nothing more."""
    form = await checked_form(request, s)
    values, body = grant_of(form)
    idem = text(form, "idem") or uuid.uuid4().hex
    reply = await api(request, s).post("/api/v1/tokens", body, headers={"Idempotency-Key": f"console:{idem}"})
    if reply.ok:
        issued = {
            **reply.body,
            "held_by": present.whom(reply.body, city_of(request)),
            "expires": present.local(reply.body.get("expires_at"), tz_of(request)) or "长期有效",
            "signin_url": f"{str(request.base_url).rstrip('/')}/console/signin",
        }
        return await access_page(request, s, issued=issued)
    errors = field_errors(reply, ACCESS_FIELDS, "form", form)
    status = reply.status if 400 <= reply.status < 500 else 422
    return await access_page(request, s, status, values=values, errors=errors, idem=idem)


@router.post("/access/{tid}/revoke")
async def access_revoke(request: Request, tid: str, s: session.Session = Depends(as_desk)):
    """Revoke one credential (the page asked first, naming who loses access); then the list again,
    its filters kept, saying whose it was (a reload revokes nothing more)."""
    form = await checked_form(request, s)
    reply = await api(request, s).call("DELETE", f"/api/v1/tokens/{tid}")
    query = access_query(dict(parse_qsl(text(form, "query"))))
    if reply.ok:
        after = urlencode({**query, "revoked": reply.body["revoked"]["token_id"]})
        return RedirectResponse(f"/console/access?{after}", status_code=303)
    status = reply.status if 400 <= reply.status < 500 else 422
    return await access_page(request, s, status, notice=reply.message)


# --- the knowledge base (operators read it, departments keep their answers, the desk manages it) ----

as_knowledge = staff("operator", "department", "admin")
KNOWLEDGE_PAGE_SIZE = 20
KNOWLEDGE_FIELDS = {
    "question": "问题",
    "answer": "答复内容",
    "category": "分类",
    "keywords": "关键词",
    "department": "负责单位",
    "id": "编号",
}
KNOWLEDGE_DONE = {
    "added": "已新增条目，话务员几秒内即可检索到。",
    "edited": "已保存修改，话务员几秒内即可看到新的答复。",
    "confirmed": "已确认此答复有效，复核日期已更新为今天。",
    "retired": "已停用此条目，话务员将不再看到它。",
}


def knowledge_choices(city: City) -> dict[str, Any]:
    """The categories and departments an entry may name, for the form's lists."""
    return {
        "category_choices": [(cid, "/".join(city.category_names(cid))) for cid in city.category_path],
        "department_choices": [(d.id, d.name) for d in city.departments],
    }


def knowledge_of_form(form: FormData, *, with_department: bool) -> dict[str, Any]:
    values: dict[str, Any] = {
        "question": text(form, "question"),
        "answer": text(form, "answer"),
        # Sent even when empty: an edit leaves out what is None, so （未分类） would keep the old one.
        "category": text(form, "category"),
        "keywords": text(form, "keywords"),
    }
    if with_department:
        values["department"] = text(form, "department")
    return values


def actor_name(actor: str, city: City) -> str:
    """Who made a change, in words: the seed, a department by name, the desk or an operator."""
    if actor == "city":
        return "城市配置文件（knowledge.yaml）"
    role, _, who = actor.partition(":")
    if role == "department":
        dept = city.department_by_id.get(who)
        return dept.name if dept else who
    if role == "admin":
        return f"派单中心（凭证 {who}）"
    return session.ROLE_NAMES.get(role, role) + (f" {who}" if who else "")


@router.get("/knowledge")
async def knowledge_page(request: Request, s: session.Session = Depends(as_knowledge)):
    """The entries: search, one category (a branch with those under it), only mine (a department),
    only 待复核; those longest unreviewed first. The filters stay in the URL, pages included."""
    q = (request.query_params.get("q") or "").strip()
    category = (request.query_params.get("category") or "").strip()
    mine = request.query_params.get("mine") == "1" and s.principal.role == "department"
    due = request.query_params.get("due") == "1"
    page_no = page_number(request)
    reply = await api(request, s).get(
        "/api/v1/knowledge/entries",
        q=q,
        category=category or None,
        department=s.principal.department if mine else None,
        due="true" if due else None,
        page=page_no,
        size=KNOWLEDGE_PAGE_SIZE,
    )
    errors: dict[str, str] = {}
    notice = ""
    if not reply.ok:
        if reply.status == 503:
            notice = reply.message
        else:
            errors = field_errors(reply, {"q": "关键字", "category": "分类"}, "form")
    total = reply.body["total"] if reply.ok else 0
    filters = (("q", q), ("category", category), ("mine", "1" if mine else ""), ("due", "1" if due else ""))
    return await page(
        request,
        "knowledge.html",
        reply.status if reply.status in (422, 503) else 200,
        s=s,
        entries=reply.body["entries"] if reply.ok else [],
        total=total,
        review_days=reply.body.get("review_days") if reply.ok else None,
        values={"q": q, "category": category, "mine": mine, "due": due},
        errors=errors,
        notice=notice,
        page_no=page_no,
        pages=present.page_count(total, KNOWLEDGE_PAGE_SIZE),
        query=urlencode({k: v for k, v in filters if v}),
        done=KNOWLEDGE_DONE.get(request.query_params.get("done") or "", ""),
        **knowledge_choices(city_of(request)),
    )


@router.get("/knowledge/new")
async def knowledge_new_form(request: Request, s: session.Session = Depends(as_desk)):
    return await page(
        request, "knowledge_new.html", s=s, values={}, errors={}, **knowledge_choices(city_of(request))
    )


@router.post("/knowledge/new")
async def knowledge_add(request: Request, s: session.Session = Depends(as_desk)):
    form = await checked_form(request, s)
    values = {**knowledge_of_form(form, with_department=True), "id": text(form, "id").strip() or None}
    reply = await api(request, s).post("/api/v1/knowledge/entries", values)
    if reply.ok:
        return RedirectResponse(f"/console/knowledge/{reply.body['id']}?done=added", status_code=303)
    errors = field_errors(reply, KNOWLEDGE_FIELDS, "form", form)
    return await page(
        request,
        "knowledge_new.html",
        reply.status,
        s=s,
        values=values,
        errors=errors,
        **knowledge_choices(city_of(request)),
    )


async def knowledge_entry_page(
    request: Request, s: session.Session, entry_id: str, status: int = 200, **context: Any
) -> HTMLResponse:
    """An entry, the forms its reader may use, and its history (newest first)."""
    reply = await api(request, s).get(f"/api/v1/knowledge/entries/{entry_id}")
    if not reply.ok:
        return await page(
            request, "message.html", reply.status, s=s, title="知识库条目", message=reply.message
        )
    city, tz = city_of(request), tz_of(request)
    entry = reply.body
    revisions = [
        {**r, "at_local": present.local(r["at"], tz), "who": actor_name(r["actor"], city)}
        for r in entry["revisions"]
    ]
    defaults: dict[str, Any] = {
        "values": {**entry, "keywords": "、".join(entry["keywords"])},
        "errors": {},
        "done": KNOWLEDGE_DONE.get(request.query_params.get("done") or "", ""),
    }
    return await page(
        request,
        "knowledge_entry.html",
        status,
        s=s,
        entry=entry,
        revisions=revisions,
        updated_local=present.local(entry["updated_at"], tz),
        retired_local=present.local(entry["retired_at"], tz) if entry["retired_at"] else "",
        review_days=city.sla.supervision.knowledge_review_days,
        **knowledge_choices(city),
        **{**defaults, **context},
    )


@router.get("/knowledge/{entry_id}")
async def knowledge_entry(entry_id: str, request: Request, s: session.Session = Depends(as_knowledge)):
    return await knowledge_entry_page(request, s, entry_id)


@router.post("/knowledge/{entry_id}/edit")
async def knowledge_edit(entry_id: str, request: Request, s: session.Session = Depends(as_knowledge)):
    form = await checked_form(request, s)
    values = knowledge_of_form(form, with_department=s.principal.is_admin)
    reply = await api(request, s).call("PUT", f"/api/v1/knowledge/entries/{entry_id}", json=values)
    if reply.ok:
        return RedirectResponse(f"/console/knowledge/{entry_id}?done=edited", status_code=303)
    errors = field_errors(reply, KNOWLEDGE_FIELDS, "form", form)
    return await knowledge_entry_page(request, s, entry_id, reply.status, values=values, errors=errors)


@router.post("/knowledge/{entry_id}/confirm")
async def knowledge_confirm(entry_id: str, request: Request, s: session.Session = Depends(as_knowledge)):
    await checked_form(request, s)
    reply = await api(request, s).post(f"/api/v1/knowledge/entries/{entry_id}/confirm")
    if reply.ok:
        return RedirectResponse(f"/console/knowledge/{entry_id}?done=confirmed", status_code=303)
    return await knowledge_entry_page(request, s, entry_id, reply.status, errors={"form": reply.message})


@router.post("/knowledge/{entry_id}/retire")
async def knowledge_retire(entry_id: str, request: Request, s: session.Session = Depends(as_desk)):
    form = await checked_form(request, s)
    reason = text(form, "reason")
    reply = await api(request, s).post(f"/api/v1/knowledge/entries/{entry_id}/retire", {"reason": reason})
    if reply.ok:
        return RedirectResponse(f"/console/knowledge/{entry_id}?done=retired", status_code=303)
    errors = field_errors(reply, {"reason": "停用原因"}, "form", form)
    return await knowledge_entry_page(request, s, entry_id, reply.status, errors=errors, reason=reason)


# --- joint meetings ------------------------------------------------------------------------------


MEETINGS_PAGE_SIZE = 20


@router.get("/meetings")
async def meetings_page(request: Request, s: session.Session = Depends(as_staff)):
    """The meetings a department is summoned to (whether or not it holds any of their tickets: the
    lead street office holds none), or every meeting for the desk, as the API lists them: those to
    decide first, the nearest deadline first, then the last 30 days' decisions, the latest first."""
    client, city, tz = api(request, s), city_of(request), tz_of(request)
    page_no = page_number(request)
    reply = await client.get("/api/v1/meetings", page=page_no, size=MEETINGS_PAGE_SIZE)
    total = reply.body["total"] if reply.ok else 0
    pages = present.page_count(total, MEETINGS_PAGE_SIZE)
    if reply.ok and page_no > pages:  # past the last page (meetings left the list): the last one
        page_no = pages
        reply = await client.get("/api/v1/meetings", page=page_no, size=MEETINGS_PAGE_SIZE)
    listed = reply.body["meetings"] if reply.ok else []
    q = request.query_params
    return await page(
        request,
        "meetings.html",
        s=s,
        meetings=[present.meeting_row(m, city, tz, datetime.now(UTC)) for m in listed],
        total=total,
        open_count=reply.body["open"] if reply.ok else 0,
        page_no=page_no,
        pages=pages,
        error=q.get("error") or (None if reply.ok else reply.message),
        done=q.get("done"),
        # The meeting a check-in or a decision was about: what came of it is said in its card,
        # when the card is on this page (a decided meeting moves down the list), else at the top.
        said_in=q.get("meeting") if any(m["meeting_id"] == q.get("meeting") for m in listed) else "",
    )


@router.get("/meetings/{mid}")
async def meeting_page(request: Request, mid: str, s: session.Session = Depends(as_staff)):
    """One meeting, as `GET /api/v1/meetings/{id}` has it, for those who read it there: a ticket's
    page links its meeting here, which the list no longer shows once decided 30 days ago. One that
    has left Redis with its tickets is read from the record and says so (`archived`)."""
    reply = await api(request, s).get(f"/api/v1/meetings/{mid}")
    if not reply.ok:
        return await page(request, "message.html", reply.status, s=s, title="联席会议", message=reply.message)
    m = present.meeting_row(reply.body, city_of(request), tz_of(request), datetime.now(UTC))
    q = request.query_params
    # What came of a check-in or a decision made here (meeting_back): said in the card, as on the list.
    return await page(
        request,
        "meeting.html",
        s=s,
        m=m,
        page_no=1,
        own_page=True,
        done=q.get("done"),
        error=q.get("error"),
        said_in=mid,
    )


@router.post("/meetings/{mid}/{step}")
async def meeting_step(request: Request, mid: str, step: str, s: session.Session = Depends(as_staff)):
    form = await checked_form(request, s)
    # Back to the page the form was on: the meeting's own, or the list's page (a check-in changes
    # no meeting's place on the list).
    on_page = {"page": text(form, "page")} if text(form, "page").isdigit() else {}
    if text(form, "back") == "meeting":
        on_page = {"back": "meeting"}
    if step == "decide":
        if not text(form, "lead"):
            return meeting_back(mid, on_page, error=f"联席会议{mid}未记录：请先选择主办单位")
        reply = await api(request, s).post(
            f"/api/v1/meetings/{mid}/decide", {"lead": text(form, "lead"), "note": text(form, "note")}
        )
        lead = city_of(request).department_by_id.get(text(form, "lead"))
        done = f"联席会议{mid}已记录决定：由{lead.name if lead else '所选单位'}主办，相关工单将派往该单位"
    else:
        reply = await api(request, s).post(f"/api/v1/meetings/{mid}/checkin")
        done = f"已在联席会议{mid}报到"
    if not reply.ok:
        return meeting_back(mid, on_page, error=reply.message)
    return meeting_back(mid, on_page, done=done)


def meeting_back(mid: str, on_page: dict[str, str], *, done: str = "", error: str = "") -> Response:
    """Back to the meetings' page the form was on, saying what came of it (`done`, or the `error`)
    in the meeting's card, or at the top when the card has left the page; or back to the meeting's
    own page (`back`), where it is said in its card. The fragment names the message, wherever it
    is: the page opens on it, with the focus there (the form that was used may be gone), the card's
    form below it to correct a refusal."""
    said, at = ({"done": done}, "meeting-done") if done else ({"error": error}, "meeting-error")
    if on_page.get("back") == "meeting":
        own = f"/console/meetings/{quote(mid, safe='')}?{urlencode(said)}#{at}"
        return RedirectResponse(own, status_code=303)
    query = urlencode({**on_page, **said, "meeting": mid})
    return RedirectResponse(f"/console/meetings?{query}#{at}", status_code=303)


# --- the manager's dashboard ---------------------------------------------------------------------

PERIOD_FIELDS = {"from": "起始日期", "to": "结束日期"}
DIMENSION_NAMES = {"department": "承办单位", "category": "诉求分类", "street": "街道", "grid": "网格"}


def period(request: Request) -> tuple[str, str]:
    today = today_of(request)
    q = request.query_params
    return q.get("from") or today.replace(day=1).isoformat(), q.get("to") or today.isoformat()


@router.get("/dashboard")
async def dashboard_page(request: Request, s: session.Session = Depends(as_desk)):
    client, city = api(request, s), city_of(request)
    start, end = period(request)
    tables: dict[str, Any] = {}
    error, error_at = "", ""  # a refusal, and the date it is beside ("" for none: dashboard.html)
    counted_to = end  # the API counts a period that ends after today up to today (统计至今天)
    for dim in DIMENSION_NAMES:
        reply = await client.get("/api/v1/stats", group_by=dim, **{"from": start, "to": end})
        if not reply.ok:
            shown = present.refusal(
                reply.field,
                reply.code,
                reply.message,
                PERIOD_FIELDS,
                {"from": start, "to": end},
                "",
                expected=reply.expected,
            )
            error_at, error = next(iter(shown.items()))
            break
        tables[dim] = reply.body["groups"]
        counted_to = reply.body.get("to", end)
    overall = await client.figures(start, end) if not error else {}
    trend, trend_error = None, ""
    trend_by = present.trend_group(request.query_params.get("trend_by"))
    # The map and the top ten count the appeals received (受理量), as the trend does: the rankings'
    # 派单 counts every dispatch (a joint meeting's decision sends its tickets out again), so a
    # category's dispatches beside its appeals would read as two answers to one question.
    received: dict[str, list[dict[str, Any]]] = {}
    received_error = ""
    if not error:
        asked = list(dict.fromkeys([trend_by, "category", "grid"]))
        replies = await asyncio.gather(
            *(client.get("/api/v1/stats/trend", group_by=g, **{"from": start, "to": end}) for g in asked)
        )
        by = dict(zip(asked, replies, strict=True))
        # The record (PostgreSQL) away takes the trend and the appeals' counts, not the rates, off
        # the page.
        reply = by[trend_by]
        trend, trend_error = (present.trend_view(reply.body), "") if reply.ok else (None, reply.message)
        received = {g: r.body["groups"] for g, r in by.items() if r.ok}
        received_error = next((r.message for r in replies if not r.ok), "")
    volume = {g["group"]: g["count"] for g in received.get("grid", [])}
    top_categories = present.most_received(received.get("category", []), 10)
    tz, now = tz_of(request), datetime.now(UTC)
    # The longest overdue and how many there are, counted and ordered where they are kept (the
    # record): a city behind on thousands sends the page shown, not every one of them.
    late = await client.get("/api/v1/tickets", **OVERDUE_LIST, size=DASHBOARD_OVERDUE_SHOWN)
    overdue = [row(t, tz, now) for t in (late.body["items"] if late.ok else [])]
    return await page(
        request,
        "dashboard.html",
        s=s,
        start=start,
        end=end,
        counted_to=present.counted_to(end, counted_to),
        error=error,
        error_at=error_at,
        tables=tables,
        dimension_names=DIMENSION_NAMES,
        overall=overall,
        bases=present.rate_bases(overall),
        figure_lists=present.figure_lists(city, start, end),
        min_answers=city.sla.ranking.min_answers,
        tickets_link=present.tickets_link,
        map=present.grid_map(city, volume),
        trend=trend,
        trend_by=trend_by,
        trend_error=trend_error,
        top_categories=top_categories,
        top_max=max((g["count"] for g in top_categories), default=0),
        received_error=received_error,
        overdue=overdue,
        overdue_total=late.body["total"] if late.ok else None,
        overdue_error="" if late.ok else late.message,
        overdue_link="/console/tickets?" + urlencode(OVERDUE_LIST),
        urlencode=urlencode,
        calendar_notice=present.calendar_notice(city, today_of(request)),
    )


DASHBOARD_OVERDUE_SHOWN = 50  # the longest overdue of the city's overdue tickets
# The dashboard's 超期工单: every ticket marked overdue (督办) and not closed, whoever holds it (the
# desk late to dispatch included), the longest overdue first; the ticket list it links to, whole.
OVERDUE_LIST = {"overdue": "true", "status": NOT_CLOSED, "sort": "due"}


def live_feed(request: Request) -> LiveFeed:
    """The process's one feed, made on first use (it needs the settings the app's lifespan sets)."""
    state = request.app.state
    if not hasattr(state, "console_live"):
        state.console_live = LiveFeed(state.settings)
    return state.console_live


@router.get("/dashboard/export")
async def dashboard_export(request: Request, s: session.Session = Depends(as_desk)):
    """One ranking of the period as a table for Excel (排名表), through the session as the ticket
    export is; a refusal (a bad period) is said on a page of its own."""
    start, end = period(request)
    dim = request.query_params.get("group_by", "department")
    fmt = "csv" if request.query_params.get("format") == "csv" else "xlsx"
    reply = await api(request, s).download(
        "/api/v1/stats/export", group_by=dim, format=fmt, **{"from": start, "to": end}
    )
    if isinstance(reply, Reply):
        return await page(
            request, "message.html", reply.status, s=s, title="不能导出排名", message=reply.message
        )
    return attachment(reply)


@router.get("/dashboard/trend/export")
async def dashboard_trend_export(request: Request, s: session.Session = Depends(as_desk)):
    """The period's trend by category, street or department (趋势表) as a table for Excel, through
    the session as the rankings are; a refusal is said on a page of its own."""
    start, end = period(request)
    fmt = "csv" if request.query_params.get("format") == "csv" else "xlsx"
    level = "top" if request.query_params.get("level") == "top" else "leaf"
    reply = await api(request, s).download(
        "/api/v1/stats/trend/export",
        group_by=present.trend_group(request.query_params.get("group_by")),
        level=level,
        format=fmt,
        **{"from": start, "to": end},
    )
    if isinstance(reply, Reply):
        return await page(
            request, "message.html", reply.status, s=s, title="不能导出趋势表", message=reply.message
        )
    return attachment(reply)


@router.get("/dashboard/live")
async def dashboard_live(request: Request, s: session.Session = Depends(as_desk)):
    """Server-sent events: the city's figures again whenever an event may have moved them."""
    start, end = period(request)
    client = api(request, s)
    feed = live_feed(request)

    async def stream() -> AsyncIterator[str]:
        async with feed.subscribe() as news:
            await asyncio.wait_for(feed.ready.wait(), timeout=30)
            last = await client.figures(start, end)
            yield "retry: 3000\nevent: ready\ndata: {}\n\n"  # from here on, no event is missed
            pending: list[float] = []
            loop = asyncio.get_running_loop()
            while not await request.is_disconnected():
                wait = max(0.0, min(pending) - loop.time()) if pending else LIVE_CHECK_SECONDS
                try:
                    await asyncio.wait_for(news.get(), timeout=wait)
                    # The notifier counts the event beside us: look again shortly after, and once more.
                    pending = [loop.time() + 0.3, loop.time() + 1.5, loop.time() + 4]
                    continue
                except TimeoutError:
                    pass
                if not pending:
                    if not await signed_in(request, s):
                        return
                    yield ": keep-alive\n\n"
                    continue
                pending = [p for p in pending if p > loop.time()]
                now_figures = await client.figures(start, end)
                if now_figures != last:
                    if not await signed_in(request, s):
                        return
                    last = now_figures
                    shown = present.shown_figures(now_figures)
                    yield f"event: figures\ndata: {json.dumps(shown, ensure_ascii=False)}\n\n"

    return event_stream(stream())


# --- residents -----------------------------------------------------------------------------------


@router.get("/lookup")
async def lookup_form(request: Request) -> Response:
    """The form; with `t`, `e` or `s` (the signed link of a WeChat notice or answer), the ticket it
    opens, or the form saying the link is no good or has expired. A ticket waiting for its rating
    offers the survey's form there too: a WeChat resident has no digits to open the page otherwise."""
    query = request.query_params
    t, expires, sig = query.get("t", ""), query.get("e", ""), query.get("s", "")
    if not t and not sig and not expires:
        return await lookup_page(request)
    values = {"ticket_no": clean_ticket_no(t), "last4": ""}
    link = {"e": expires.strip(), "s": sig.strip()}
    result = await followed(request, values["ticket_no"], link)
    if isinstance(result, resident_lookup.Refused):
        errors = {result.field: result.message}
        response = await lookup_page(request, result.status, values=values, errors=errors)
    else:
        found = resident_lookup.public_view(result.ticket, result.history, city_of(request), tz_of(request))
        rate = await waits_for_rating(request, result.ticket)
        response = await lookup_page(request, values=values, found=found, rate=rate, link=link)
    # The address is the ticket's key: no page it links to is told it.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def lookup_page(request: Request, status: int = 200, **context: Any) -> Response:
    defaults: dict[str, Any] = {
        "values": {},
        "errors": {},
        "found": None,
        "rate": False,
        "answered": None,
        "answer_values": {},
        "answer_errors": {},
        "ratings": resident_lookup.RATINGS,
        "comment_max": resident_lookup.COMMENT_MAX,
        # The signed link that opened the page (its `e` and `s`): the survey's form carries it in
        # place of the digits, and it is checked again when the answer is posted.
        "link": None,
    }
    response = await anonymous_form(request, "lookup.html", status, **{**defaults, **context})
    if context.get("link"):
        response.headers["Referrer-Policy"] = "no-referrer"  # the page holds the link's signature
    return response


async def followed(
    request: Request, ticket_no: str, link: dict[str, str]
) -> resident_lookup.Found | resident_lookup.Refused:
    """The ticket a signed link (`e`, `s`) opens today, counted against the address's tries."""
    state = request.app.state
    client_ip = request.client.host if request.client else "unknown"
    key = lookup_link.link_key(state.settings.caller_id_salt)
    today = lookup_link.day_number(datetime.now(UTC).timestamp())
    return await resident_lookup.follow(
        state.redis, state.store, ticket_no, link["e"], link["s"], client_ip, today, key
    )


async def waits_for_rating(request: Request, ticket: Ticket) -> bool:
    """Whether the ticket's survey is open (回访中): its resident may rate it on the page (the
    survey's message may never have reached them). Only a ticket that says so is asked about:
    most lookups are of tickets still being handled, and need no read of the survey book."""
    if ticket.status != Status.SURVEYED:
        return False
    notifier = request.app.state.notifier
    survey = await notifier.surveys.ticket_survey(ticket.ticket_no, notifier.clock())
    return survey is not None and survey[1]


Looked = tuple[dict[str, str], resident_lookup.Found, dict[str, str] | None]


async def looked_up(request: Request, form: Any) -> Looked | Response:
    """The ticket the form finds, checked and counted against the tries each time the page posts:
    by the signed link it carries (`e`, `s`: the page a link opened, which asked for no digits),
    else by its number and last four digits; with the values as cleaned and the link (None: by
    the digits). Else the page refusing. The same page token (CSRF) either way."""
    values = {
        "ticket_no": clean_ticket_no(text(form, "ticket_no")),
        "last4": resident_lookup.clean_last4(text(form, "last4")),
    }
    link = None
    if text(form, "e") or text(form, "s"):
        link = {"e": text(form, "e").strip(), "s": text(form, "s").strip()}
        values["last4"] = ""  # the link stands for them: digits posted beside it are not read
    if not session.same(text(form, "csrf"), request.cookies.get(session.LOGIN_CSRF_COOKIE)):
        return await lookup_page(request, 403, values=values, errors={"form": "页面已过期，请重新查询"})
    state = request.app.state
    client_ip = request.client.host if request.client else "unknown"
    if link is not None:
        result = await followed(request, values["ticket_no"], link)
    else:
        result = await resident_lookup.find(
            state.redis, state.store, values["ticket_no"], values["last4"], client_ip
        )
    if isinstance(result, resident_lookup.Refused):
        return await lookup_page(request, result.status, values=values, errors={result.field: result.message})
    return values, result, link


@router.post("/lookup")
async def lookup(request: Request) -> Response:
    looked = await looked_up(request, await request.form())
    if isinstance(looked, Response):
        return looked
    values, result, link = looked
    found = resident_lookup.public_view(result.ticket, result.history, city_of(request), tz_of(request))
    rate = await waits_for_rating(request, result.ticket)
    return await lookup_page(request, values=values, found=found, rate=rate, link=link)


@router.post("/lookup/survey")
async def lookup_survey(request: Request) -> Response:
    """The resident's answer to the ticket's open survey, from the lookup page: the number and the
    digits, or the signed link that opened the page, are checked again (and counted, as a lookup
    is), then it closes the survey as an SMS answer would. Sent twice, the page shows the answer
    recorded the first time, also when the second comes while the first is being recorded (a double
    tap, two tabs: `SurveyBook.answer_on_lookup` waits a moment for it)."""
    form = await request.form()
    answer_values = {name: text(form, name) for name in ("rating", "solved", "comment")}
    looked = await looked_up(request, form)
    if isinstance(looked, Response):
        return looked
    values, result, link = looked
    state = request.app.state
    found = resident_lookup.public_view(result.ticket, result.history, city_of(request), tz_of(request))
    answer = resident_lookup.read_answer(**answer_values)
    if isinstance(answer, resident_lookup.Refused):
        return await lookup_page(
            request,
            answer.status,
            values=values,
            found=found,
            rate=True,
            link=link,
            answer_values=answer_values,
            answer_errors={answer.field: answer.message},
        )
    notifier = state.notifier
    try:
        answered = await notifier.surveys.answer_on_lookup(
            result.ticket.ticket_no, answer.rating, answer.solved, answer.comment, notifier.clock()
        )
    except AnswerRefused as refused:
        return await lookup_page(
            request, 409, values=values, found=found, link=link, answer_errors={"form": refused.message}
        )
    shown = resident_lookup.answer_view(answered, posted=(answer.rating, answer.solved))
    found = {**found, "status": shown["status"]}
    return await lookup_page(request, values=values, found=found, answered=shown, link=link)


# --- wiring ----------------------------------------------------------------------------------------


def _docs_route(app: FastAPI) -> None:
    """/docs with Swagger UI's files served from the installed package, not from a CDN."""
    import swagger_ui

    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != app.docs_url]
    app.mount(
        "/console/swagger",
        StaticFiles(directory=Path(swagger_ui.__file__).parent / "static"),
        name="swagger-static",
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/console/swagger/swagger-ui-bundle.js",
            swagger_css_url="/console/swagger/swagger-ui.css",
            swagger_favicon_url="/console/swagger/favicon-32x32.png",
        )


def mount(app: FastAPI) -> None:
    """Add the console to the API app: its pages, its static files, the local /docs."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    _docs_route(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=303)

    app.add_exception_handler(SignInRequired, _to_signin)
    app.add_exception_handler(WrongRole, _forbidden)
    # Last, after the static mounts: any other GET under /console is a page for people, not JSON
    # (a mistyped address, or a form's address opened again from the history or address bar).
    app.add_api_route("/console/{rest:path}", _no_such_page, methods=["GET"], include_in_schema=False)


async def _no_such_page(request: Request, rest: str) -> Response:
    s = await session.load(request.app.state.redis, request.cookies.get(session.COOKIE))
    return await page(
        request,
        "message.html",
        404,
        s=s,
        title="页面不存在",
        message="没有这个页面：地址可能有误，或是提交表单后的地址被再次打开。请从上方菜单或首页继续。",
    )


async def _to_signin(request: Request, exc: Exception) -> Response:
    # Scripts and live streams cannot follow a redirect to a page: they get 401 and send the person there.
    if request.headers.get("X-Requested-With") == "fetch" or "text/event-stream" in request.headers.get(
        "Accept", ""
    ):
        return Response(status_code=401, headers={"X-Sign-In": "/console/signin"})
    return RedirectResponse("/console/signin", status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    s = exc.session if isinstance(exc, WrongRole) else None
    return await page(
        request,
        "message.html",
        403,
        s=s,
        title="无权访问",
        message="当前登录的角色不能访问此页面，或页面已过期。请返回本角色的首页。",
    )
