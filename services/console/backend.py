"""The API's endpoints, called in-process with the signed-in person's token.

The console has no rules of its own: accepting a ticket, validating an appeal or reading a queue
goes through the same endpoint a JSON client uses, with the same permissions and the same Chinese
error messages. The request never leaves the process (httpx's ASGI transport)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from services.console import present
from services.intake.photo_views import too_large
from services.notifier import scoring
from shared.http import api_error
from shared.photos import ID as PHOTO_ID
from shared.photos import MAX_PER_ITEM


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The API's reason for a refusal, in Chinese."""
        if isinstance(self.body, dict):
            return str(self.body.get("message") or self.body.get("detail") or "请求未被接受")
        return "请求未被接受"

    @property
    def code(self) -> str:
        """The API's code for a refusal (e.g. invalid_request: its schema refused the request)."""
        return str(self.body.get("error") or "") if isinstance(self.body, dict) else ""

    @property
    def field(self) -> str | None:
        return self.body.get("field") if isinstance(self.body, dict) else None

    @property
    def problems(self) -> list[dict[str, Any]]:
        """Every field the API found at fault, when it found several (the first is `field`)."""
        found = self.body.get("problems") if isinstance(self.body, dict) else None
        return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []

    @property
    def expected(self) -> str | None:
        """With invalid_request: what the schema asks of the field, in words (不能大于30), if said."""
        return self.body.get("expected") if isinstance(self.body, dict) else None


def reply_of(r: httpx.Response) -> Reply:
    try:
        return Reply(r.status_code, r.json())
    except ValueError:
        return Reply(r.status_code, {"message": r.text})


def refusal(message: str, field: str = "photos") -> Reply:
    """A refusal the console makes itself, in the API's shape."""
    return Reply(422, {"error": "invalid", "field": field, "message": message})


def strays(path: str) -> bool:
    """Whether an API path the console built leaves the resource its page names. The console's
    routes take any text in a segment (a ticket number, a message id, a meeting id), and a segment
    decoded from the browser's URL may end the path early ("?", "#": `/tickets/X%3F/urge` would
    ask the API for `/tickets/X`) or climb out of it ("." and ".."). The console passes every
    query parameter apart (`params`), so neither belongs in a path it builds."""
    return "?" in path or "#" in path or any(part in (".", "..") for part in path.split("/"))


@dataclass
class Api:
    request: Request
    token: str
    headers: dict[str, str] = field(default_factory=dict)

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
    ) -> httpx.Response:
        if strays(path):
            # Answered as the API answers a number it does not know (its one error shape): nothing
            # is asked of it.
            refused = api_error(404, "not_found", "地址有误，找不到这条记录")
            return httpx.Response(refused.status_code, content=bytes(refused.body))
        client_host = self.request.client.host if self.request.client else "127.0.0.1"
        transport = httpx.ASGITransport(app=self.request.app, client=(client_host, 0))
        async with httpx.AsyncClient(transport=transport, base_url=str(self.request.base_url)) as client:
            return await client.request(
                method,
                path,
                json=json,
                files=files,
                params={k: v for k, v in (params or {}).items() if v not in (None, "")},
                headers={"Authorization": f"Bearer {self.token}", **(headers or {})},
                timeout=60,
            )

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
    ) -> Reply:
        return reply_of(await self.send(method, path, json=json, params=params, headers=headers, files=files))

    async def download(self, path: str, **params: Any) -> httpx.Response | Reply:
        """A file the API sends (an export): the response itself when it succeeds, else the refusal.
        The in-process transport hands the body over whole; the API caps an export's rows."""
        r = await self.send("GET", path, params=params)
        return r if r.is_success else reply_of(r)

    async def attach_photos(self, form: FormData) -> tuple[list[str], Reply | None]:
        """The photos a form sends: those it uploaded before (`kept_photos`, when the form came back
        refused: a browser cannot refill a file input) and its newly chosen files (`photos`), each
        uploaded on its own so that one refused file does not lose the others. Returns their ids,
        and the refusal (every refused file's reason, beside the field) or None."""
        ids = list(
            dict.fromkeys(v for v in form.getlist("kept_photos") if isinstance(v, str) and PHOTO_ID.match(v))
        )
        # An empty file input still sends a part, with no file name.
        chosen = [u for u in form.getlist("photos") if isinstance(u, UploadFile) and u.filename]
        if len(ids) + len(chosen) > MAX_PER_ITEM:
            over = len(ids) + len(chosen) - MAX_PER_ITEM
            return ids, refusal(f"最多附{MAX_PER_ITEM}张照片，请少选{over}张")
        reasons: list[str] = []
        max_bytes = self.request.app.state.settings.photo_max_bytes
        for upload in chosen:
            if upload.size is not None and upload.size > max_bytes:  # said here, without reading it
                reasons.append(too_large(upload.filename or "", upload.size, max_bytes).message)
                continue
            data = await upload.read()
            reply = await self.call(
                "POST",
                "/api/v1/photos",
                files=[("photos", (upload.filename or "photo", data, upload.content_type or "image/jpeg"))],
            )
            if reply.ok:
                ids += [p["photo_id"] for p in reply.body["photos"] if p["photo_id"] not in ids]
            else:
                reasons.append(reply.message)
        return ids, refusal("；".join(reasons)) if reasons else None

    async def get(self, path: str, **params: Any) -> Reply:
        return await self.call("GET", path, params=params)

    async def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> Reply:
        return await self.call("POST", path, json=json, headers=headers)

    # --- lists -------------------------------------------------------------------------------
    # The working lists (a department's queue, the desk's open tickets) are read from the department
    # queues in Redis (the desk's token may read every queue), not from the search endpoint: its rows lack
    # fields these pages use (the appeal's text, extension requests, meeting ids), the record trails the
    # events by its consumer's lag, and is down when PostgreSQL is, while taking and working appeals must
    # go on without it. The ticket list page (/console/tickets) is the one that searches, and the
    # dashboard's overdue tickets, a report rather than a list to work from, are counted and ordered
    # there too: the queues would have to be read whole to count them.

    async def department_page(self, dept_id: str, page: int, size: int, **filters: Any) -> Reply:
        """One page of a department's queue, narrowed by the API's filters (status, overdue,
        category, grid, date, desk)."""
        return await self.get(f"/api/v1/departments/{dept_id}/tickets", **filters, page=page, size=size)

    async def department_ticket_nos(self, dept_id: str) -> set[str]:
        """The numbers of the department's open tickets (none of the tickets read); empty if refused."""
        reply = await self.get(f"/api/v1/departments/{dept_id}/tickets/numbers")
        return set(reply.body["ticket_nos"]) if reply.ok else set()

    async def followed(self, *, page: int, size: int) -> Reply:
        """What the desk follows: every extension request waiting for its decision, and a page of
        the tickets returned at least once (the last, when the list shrank below `page`), picked out
        and paged where they are kept: a city with thousands returned sends a page of them here."""
        return await self.get("/api/v1/dispatch/followed", page=page, size=size)

    async def dispatch_section(self, *, low: bool, page: int, size: int, ticket: str = "") -> Reply:
        """A page of the desk's waiting tickets classified below the review threshold (`low`) or
        not: the page holding `ticket` where it is there, else `page`, else (the list shrank) the
        last."""
        params = {"low": low, "size": size, **({"ticket": ticket} if ticket else {})}
        reply = await self.get("/api/v1/dispatch/queue", **params, page=page)
        if reply.ok and reply.body["page"] > (last := present.page_count(reply.body["total"], size)):
            reply = await self.get("/api/v1/dispatch/queue", **params, page=last)
        return reply

    # --- figures --------------------------------------------------------------------------------

    async def return_reasons(self, no: str) -> list[dict[str, str]]:
        """Each return of the ticket: who, why, the rule disputed, their note (`present.returns_of`,
        from its history); none when the ticket cannot be read."""
        reply = await self.get(f"/api/v1/tickets/{no}")
        return present.returns_of(reply.body.get("history", []) if reply.ok else [])

    async def figures(self, start: str, end: str) -> dict[str, Any]:
        """The whole city's three rates and score for the period (summed over departments)."""
        reply = await self.get("/api/v1/stats", group_by="department", **{"from": start, "to": end})
        if not reply.ok:
            return {"error": reply.message}
        total: dict[str, int] = {}
        for g in reply.body["groups"]:
            scoring.add(total, g)
        w = reply.body["weights"]
        weights = scoring.Weights(w["basically_satisfied"], w["response"], w["resolution"], w["satisfaction"])
        return scoring.rates(total, weights)
