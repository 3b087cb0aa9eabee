"""Versioned domain events: small, immutable facts, one model per topic (see `shared.topics`).

Rules every event follows:
- `event_id` is unique per fact. Consumers are idempotent on it: the same event twice changes nothing.
  An event caused by another gets a deterministic id (`Event.caused(...)`), so a handler that runs
  twice for the same input produces the same output ids, and the consumers downstream drop the copy.
- `version` is the event's schema version; a change that is not backward compatible bumps it.
- No raw personal data: callers travel as a masked phone and a stable hashed id (`Caller`). The raw
  number lives only in the ticket store's contact record, for the services whose role needs it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Channel = Literal["hotline", "wechat", "box", "sms", "open311", "web", "patrol"]
AppealType = Literal["诉求", "投诉", "咨询", "求助", "建议"]
# How a ticket's grid was found: by the classifier (coordinates, gazetteer, model), a reviewer's
# correction, the patrolling grid worker's own grid, or the dispatch desk's choice as it dispatched
# the ticket (desk: the place the classifier could not find, or got wrong, 人工选定).
GridMethod = Literal["coordinates", "gazetteer", "model", "reviewer", "patrol", "desk", "none"]


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A random id (128 bits, 32 hex digits, the shape of `uuid4().hex`): every event and message
    takes one, and building a `UUID` object for it cost five times the random bytes."""
    return os.urandom(16).hex()


_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes


def derived_id(name: str) -> str:
    """`uuid5(NAMESPACE_URL, name).hex`, without the `UUID` object (a third of the time): the ids
    derived from a cause must stay the ones earlier versions derived, so a cause read again after
    an upgrade still yields the same id."""
    b = bytearray(hashlib.sha1(_URL_NAMESPACE + name.encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return b.hex()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(_Frozen):
    topic: ClassVar[str]

    event_id: str = Field(default_factory=new_id)
    version: int = 1
    occurred_at: datetime = Field(default_factory=now_utc)
    ticket_no: str
    caused_by: str | None = None  # the event this one answers, if any

    @classmethod
    def caused(cls, cause: Event, /, **fields: Any) -> Self:
        """An event that `cause` led to, with an id derived from the cause (same cause, same id)."""
        derived = derived_id(f"{cause.event_id}/{cls.__name__}")
        fields.setdefault("ticket_no", cause.ticket_no)
        return cls(event_id=derived, caused_by=cause.event_id, **fields)

    @classmethod
    def from_json(cls, body: bytes) -> Self:
        """The event a message carries, with the message's bytes kept as its JSON: a consumer that
        writes it to a history, records it or sends it on does not serialise it again. (The bytes
        are the event's: every field is checked, and no field the model lacks is allowed.)"""
        event = cls.model_validate_json(body)
        if body[:1] == b"{":
            event.__dict__["json_bytes"] = bytes(body)
        return event

    @property
    def json_bytes(self) -> bytes:
        """The event's JSON as UTF-8 (`json_of`), made once: a router event is written to its
        ticket's history and then published, and serialising it is most of the cost of either. An
        event is frozen, so the bytes cannot go stale; `model_copy` drops them (see below). Kept in
        `__dict__` by hand: functools.cached_property takes a lock on every first read (3.11)."""
        cache = self.__dict__
        data = cache.get("json_bytes")
        if data is None:
            data = cache["json_bytes"] = self._serialised()
        return data

    def _serialised(self) -> bytes:
        """The event's JSON made anew (`json_bytes` keeps it)."""
        return json_of(self)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("json_bytes", None)  # pydantic copies cached properties with the fields
        return copy

    def to_bytes(self) -> bytes:
        return self.json_bytes


class View(Event):
    """The part of an event that one consumer reads: a few of the event's fields (same names, same
    types and defaults: `tests/test_shared_core.py` holds every view to its event), the rest of the
    message skipped. Intake's indexes read three fields of an appeal whose text and classification
    are most of its bytes; validating the whole of it was two thirds of that worker's time. A
    message whose other fields are broken is left to the consumers that read them, which
    dead-letter it. A view is read, never published.

    A subclass names its event in `of`; its topic is the event's."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    of: ClassVar[type[Event]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.topic = cls.of.topic

    @classmethod
    def from_json(cls, body: bytes) -> Self:
        """The view a message holds. Its bytes are not kept: a view is neither stored nor sent on,
        and keeping them cost a sixth of reading one."""
        return cls.model_validate_json(body)

    def to_bytes(self) -> bytes:
        raise TypeError(f"{type(self).__name__} is a view of {self.of.__name__}: read, never published")


class Part(BaseModel):
    """A view of a model inside an event (`View`): the fields read, the rest skipped."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def topic_first(topic: str, body: bytes) -> bytes:
    """An event's JSON object (`body`, from pydantic's serializer or its message) with its topic put
    first: how a ticket's history and the record store events. A topic is a plain name, with
    nothing in it to escape, and no event has a field of that name."""
    return b'{"topic":"' + topic.encode() + b'",' + body[1:]


class Payload(dict[str, Any]):
    """An event's JSON object as orjson read it from a message, with the message's bytes (`body`).
    A consumer that stores events as they came (the records worker) writes `topic_first(topic,
    body)` rather than the object dumped again, which encodes every string with Chinese in it to
    UTF-8 anew (a batch of 8,700 events: 14 ms joined, 21 to 27 ms dumped). So the object is read,
    never changed, but for the `topic` the consumer sets."""

    __slots__ = ("body",)

    def __init__(self, data: dict[str, Any], body: bytes) -> None:
        super().__init__(data)
        self.body = body


def json_of(model: BaseModel) -> bytes:
    """`model_dump_json()` as the UTF-8 bytes pydantic makes, not decoded into a str. What goes to
    Redis, Kafka or PostgreSQL is sent as bytes: a str with Chinese in it is held as UCS-2 and
    encoded back to UTF-8 at every send, which in a batch of tickets cost more than building it."""
    return model.__pydantic_serializer__.to_json(model)


# --- value objects -----------------------------------------------------------------------------


class GeoPoint(_Frozen):
    lng: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)


class Caller(_Frozen):
    """Who raised the appeal, without the personal data: departments see this."""

    caller_id: str | None = None  # stable salted hash of the normalised phone; None when anonymous
    masked_phone: str | None = None  # 138****5678

    @property
    def anonymous(self) -> bool:
        return self.caller_id is None


class CategoryScore(_Frozen):
    category: str
    probability: float


class GridMatch(_Frozen):
    grid: str | None
    community: str | None = None
    street: str | None = None
    method: GridMethod = "none"
    confidence: float = 0.0
    evidence: str = ""  # what matched: the compound, road or landmark name, or the coordinates
    # 定位与地址不一致: the grid came from the coordinates or the patrolling worker's grid, and the
    # address alone clearly names a place in this other grid (the classifier's gazetteer: not a tie,
    # not the model's guess). The grid stays `grid`; a person confirms or corrects it at the desk.
    address_grid: str | None = None


class DepartmentRef(_Frozen):
    id: str
    name: str


# --- the facts ---------------------------------------------------------------------------------


class AppealReceived(Event):
    topic: ClassVar[str] = "appeal.received"

    channel: Channel
    text: str
    title: str = ""
    address: str = ""
    location: GeoPoint | None = None
    caller: Caller = Caller()
    urgent_flag: bool = False  # the operator marked it urgent
    operator_id: str | None = None  # who registered it: a hotline operator's or a grid worker's id
    photos: tuple[str, ...] = ()  # ids of the photos sent with it (shared.photos), never the bytes
    # Closed at first contact: the operator answered it on the call (直接答复, e.g. a question the
    # knowledge base answers; what the resident was told), or the grid worker who found it dealt
    # with it there (现场处置; what was done). The router resolves it at once.
    direct_answer: str = ""
    # A grid worker's report (channel "patrol"): the grid the worker patrols, from the credential.
    # The classifier takes it as the appeal's grid unless the coordinates fall in another.
    patrol_grid: str | None = None
    received_at: datetime = Field(default_factory=now_utc)


class AppealLocated(Event):
    """The resident told us where, after (or apart from) the appeal: a WeChat location message.

    Applied to the ticket by intake (location, and the address when it had none); the category and
    grid already decided are not redone, the dispatcher and department see the place."""

    topic: ClassVar[str] = "appeal.located"

    channel: Channel
    location: GeoPoint
    address: str = ""


class AppealPhotosAdded(Event):
    """The resident sent photos after the appeal: WeChat image messages. Applied to the ticket by
    intake (added to its photos, at most 9 in all), like a location sent after the text."""

    topic: ClassVar[str] = "appeal.photos_added"

    channel: Channel
    photos: tuple[str, ...]  # ids (shared.photos)


class AppealClassified(Event):
    """The classifier's verdict; it carries the appeal so the router needs nothing else."""

    topic: ClassVar[str] = "appeal.classified"

    # 2: `grid.address_grid`, the grid the address names when the coordinates (or the patrolling
    # worker's grid) placed the appeal in another. Version 1 parses unchanged (no such field: no
    # disagreement was looked for).
    version: int = 2
    category: str  # leaf category id
    category_names: tuple[str, ...]  # root to leaf, e.g. ('城市管理', '市政设施', '道路破损')
    confidence: float
    top: tuple[CategoryScore, ...]  # the best two, for spotting appeals that need several departments
    grid: GridMatch
    appeal_type: AppealType = "诉求"
    urgent: bool = False
    needs_review: bool = False
    review_threshold: float | None = None  # the confidence the model needed to be routed automatically
    model_version: str
    reviewed_by: str | None = None  # a person corrected it (confidence 1.0): routed by the rules
    # Last, so that its JSON ends the classification's (`_serialised`, `json_without_appeal`).
    appeal: AppealReceived

    def _serialised(self) -> bytes:
        """With the appeal's own bytes put in rather than serialised again: the classifier has them
        from the message it read (a third of the classification's cost)."""
        own = self.__pydantic_serializer__.to_json(self, exclude=_APPEAL)
        return b"".join((own[:-1], b',"appeal":', self.appeal.json_bytes, b"}"))

    def json_without_appeal(self) -> bytes:
        """The classification's JSON without its appeal (how a ticket's history keeps it, whose first
        record is the appeal): its bytes cut where the appeal begins when the appeal is last in them,
        as this version writes it, rather than serialised again. A `,"appeal":{` cannot occur
        inside a string of JSON (a quote in one is escaped), and the appeal holds no such field."""
        body = self.json_bytes
        at = body.rfind(b',"appeal":{')
        if at > 0 and body.rfind(_LAST_BEFORE_APPEAL, 0, at) != -1:
            return body[:at] + b"}"
        return self.__pydantic_serializer__.to_json(self, exclude=_APPEAL)  # an earlier order


_APPEAL = {"appeal"}
# The field just before the appeal: written before it, the appeal is last (`json_without_appeal`).
_LAST_BEFORE_APPEAL = f',"{list(AppealClassified.model_fields)[-2]}":'.encode()


class TicketAssigned(Event):
    """The ticket has a new owner (the dispatch desk too), with the deadlines it starts."""

    topic: ClassVar[str] = "ticket.assigned"

    # 2: the caller's hashed id, so the notifier reads no ticket to find the phone; 3: the category's
    # names, so the record names a category the dispatch desk changed as it names the classifier's;
    # 4: `grid_chosen`, the grid the dispatch desk chose as it dispatched (人工选定), which the record
    # takes as the ticket's grid. Older versions parse unchanged (grid_chosen False: their `grid` is
    # the classifier's, the ticket's at the time, which the record had from the classification).
    # 5: `first`, whether this is the ticket's first owner other than the dispatch desk (None before:
    # not known).
    version: int = 5
    caller_id: str | None = None
    department: DepartmentRef
    co_departments: tuple[DepartmentRef, ...] = ()
    via: Literal[
        "rule",
        "fallback",
        "dispatch_desk",
        "operator",  # the desk dispatched it from its queue (人工派单)
        "reroute",  # returned, and sent to the responsibility list's next candidate
        "redispatch",  # the desk moved it from the department that held it (改派), with its reason
        "mediation",  # the department that held it referred it to its street's mediation committee
        "meeting",
        "answered",
        "on_spot",
    ]
    rule: str = ""  # which responsibility rule matched, in words
    explanation: str  # why, for a department that disputes it
    category: str
    category_names: tuple[str, ...] = ()  # root to leaf (absent before version 3)
    grid: str | None  # the ticket's grid from this assignment on
    # The dispatch desk placed the ticket in `grid` as it dispatched it (人工选定: the classifier
    # found no grid, or the desk corrected it); its community and street are the grid's (areas.yaml).
    grid_chosen: bool = False
    urgent: bool = False
    respond_by: datetime
    resolve_by: datetime
    # The ticket's first dispatch (受理): no department had it before. A ticket counts once in the
    # appeals the direct-answer rate is a share of, however often it is sent on (returns, 改派,
    # mediation, a joint meeting's decision).
    first: bool | None = None


TicketAction = Literal[
    "accepted",
    "returned",
    "extension_requested",
    "extension_approved",
    "extension_refused",
    "resolved",
    "surveyed",
    "closed",
    "reopened",
    "warning",
    "overdue",
    "escalated",
    "urged",
    "verified",
    "merged",  # 并案: this ticket (a duplicate, 从件) was merged into another one and is closed
    "duplicate_merged",  # 并案: a duplicate was merged into this ticket (主件); its status stays
    # 并案: the main ticket this closed duplicate was merged into was merged into another ticket,
    # which this one follows now (its status stays closed)
    "remerged",
    # 事发网格: the dispatch desk placed the ticket in a grid after it was assigned (or confirmed
    # the located grid of a disputed place); its department and status stay
    "placed",
    # 申请更正事发网格: the grid worker of the ticket's grid asks the desk to place it in another grid
    # (what was seen on the spot); the desk's refusal, with its reason. Its approval is `placed`.
    "place_requested",
    "place_refused",
]
Rating = Literal[1, 2, 3]  # 1 满意, 2 基本满意, 3 不满意
# How a survey ended: answered (a rating), a comment (words without a rating, or after the survey
# closed), no answer within the window, or not asked (the phone opted out; anonymous appeal; the
# resident's personal data was erased on their request, `erased`: the survey still open then ends,
# and a ticket erased before its resolution is surveyed no more, though it was never anonymous).
SurveyOutcome = Literal["answered", "comment", "no_answer", "opted_out", "skipped_anonymous", "erased"]
AnswerVia = Literal["lookup"]  # where a resident answered other than by replying (`SurveyAnswered.via`)
MeetingReason = Literal["ambiguous", "returned_twice", "reopened_twice", "hotspot"]
ReturnReason = Literal["not_ours", "wrong_grid", "duplicate", "needs_other", "wrong_category"]
Stage = Literal["dispatch", "respond", "resolve", "meeting", "check"]  # the clock a deadline timer watches


class Returned(_Frozen):
    """`returned` (退单): why, and how often the ticket has been returned now."""

    reason: ReturnReason
    reason_name: str
    disputed_rule: str = ""  # the responsibility rule the department disputes, in its words
    returns: int


class Extension(_Frozen):
    """`extension_requested` / `_approved` / `_refused`: the days asked for and, once decided, the
    deadline before and after."""

    days: int
    reason: str = ""
    old_resolve_by: datetime | None = None
    resolve_by: datetime | None = None  # approved: the new resolution deadline


class DeadlineNotice(_Frozen):
    """`warning` / `overdue` / `escalated` by a deadline timer (督办)."""

    stage: Stage
    stage_name: str  # the stage in words, e.g. 办结
    deadline: datetime
    supervisor: str | None = None  # overdue, escalated: the department whose supervisor is told
    to: str | None = None  # escalated: the office it is escalated to


class MeetingSpec(_Frozen):
    """`escalated` to a joint meeting (联席会议): what the meeting needs, so that whoever sees the
    event first can open it."""

    meeting_id: str
    reason: MeetingReason
    lead_street: str
    summoned: tuple[str, ...]
    category: str | None = None
    grid: str | None = None
    deadline: datetime


class Answer(_Frozen):
    """`reopened` / `closed` by the survey: the resident's answer, or why there was none."""

    outcome: SurveyOutcome = "answered"
    rating: Rating | None = None
    solved: bool | None = None
    reopens: int = 0  # how often the ticket has been reopened, this time included
    # reopened: the deadlines the department has again (重办 gets its full time anew, from the
    # answer: the category's, or a committee's mediation time); None when the ticket had no category
    # to time it by, and in events of older versions.
    respond_by: datetime | None = None
    resolve_by: datetime | None = None


class Urge(_Frozen):
    """`urged` (催办): the resident called again about the open ticket; the call's words are the
    event's `note`, the operator who took the call its `actor`. The status does not change."""

    urges: int  # how often the ticket has been urged now, this time included


class Verification(_Frozen):
    """`verified` (现场核查): the grid worker of the ticket's grid went to look at what the
    department reported resolved. What the worker saw is the event's `note`, the photos taken there
    its `photos`, the worker (工号) its `actor`. Confirmed: the status stays. Not solved: the ticket
    goes back to the department that resolved it (重办, the event's status `assigned`), with its
    full time again from the check (the category's, or a committee's mediation time)."""

    solved: bool
    reopens: int = 0  # not solved: how often the ticket has been reopened, this time included
    respond_by: datetime | None = None  # not solved: the deadlines the department has again
    resolve_by: datetime | None = None
    # Not solved: the survey of the resolution sent back (its id, the resolution's event id), void
    # from then on; None when there was none, and in events written before it was said.
    survey_id: str | None = None


MediationOutcome = Literal["agreed", "not_agreed"]  # 调解成功，达成协议 / 调解不成


class Mediation(_Frozen):
    """`resolved` by a street's People's Mediation Committee (人民调解委员会): what the mediator
    recorded after hearing both sides. Agreed: the agreement's terms (调解协议). Not agreed: nothing
    here; the resolution's note says what the parties were told (litigation, arbitration, the
    competent department). Also the body the API takes for it."""

    outcome: MediationOutcome
    agreement: str = Field("", max_length=5000)


class Merge(_Frozen):
    """`merged` / `duplicate_merged` (并案): the dispatch desk merged the duplicate (从件) into the
    ticket already being handled (主件), with its reason as the event's `note`. Both sides' events
    carry the two numbers, so a consumer of either knows which side it reads (`ticket_no`).

    A duplicate that was a main ticket itself brings its own duplicates along (`moved`, on both
    sides' events), and each of those gets `remerged`: `duplicate` is that ticket, already closed,
    `into` the ticket it follows now and `via` the one it had been merged into. `moved` and `via`
    were added later; optional, so events written before them parse unchanged."""

    into: str  # the main ticket (主件)
    duplicate: str  # the duplicate (从件), closed by the merge
    # The duplicate's side, when a department held it and had not accepted it yet (已派单): whether
    # the merge came within its response deadline. The merge answers for that department's
    # response in the three rates (see services.notifier.scoring); None when the duplicate waited at
    # the dispatch desk (待人工派单), which no rate counts, on the main ticket's side, and on
    # `remerged` (that duplicate's merge answered for its department once already).
    response_on_time: bool | None = None
    # merged, duplicate_merged: the duplicates merged into `duplicate` before, which move with it.
    moved: tuple[str, ...] = ()
    # remerged: the ticket `duplicate` had been merged into, itself merged into `into` now.
    via: str | None = None


class Place(_Frozen):
    """`placed` (事发网格): where the dispatch desk placed a ticket already assigned (a ticket that
    never waited at the desk, routed without a grid: 未定位; or one placed wrongly). The grid is the
    ticket's from then on, with the community and street areas.yaml puts it in; the event's `grid`
    is this one. `was`: the grid it had (None: 未定位). `confirmed`: the desk chose the grid the
    ticket was already located in while its address named another (定位与地址不一致), which settles
    that question."""

    grid: str
    community: str | None = None
    street: str | None = None
    was: str | None = None
    confirmed: bool = False


class PlaceRequest(_Frozen):
    """`place_requested` / `place_refused`: the grid a grid worker (`by`, the event's actor on a
    request) asks the desk to place the ticket in, and what was seen on the spot (`reason`); `was`:
    the grid it had when asked. The event's `grid` stays the ticket's: nothing moves until the desk
    agrees, which is a `placed`. Refused: the desk's reason is the event's `note`."""

    grid: str
    was: str | None = None
    reason: str = ""
    by: str = ""


# The payload field each action must carry (escalated: one of the two).
PAYLOAD_OF_ACTION: dict[str, tuple[str, ...]] = {
    "accepted": ("on_time",),
    "resolved": ("on_time",),
    "returned": ("returned",),
    "extension_requested": ("extension",),
    "extension_approved": ("extension",),
    "extension_refused": ("extension",),
    "surveyed": ("survey_id",),
    "closed": ("answer",),
    "reopened": ("answer",),
    "warning": ("supervision",),
    "overdue": ("supervision",),
    "escalated": ("supervision", "meeting"),
    "urged": ("urge",),
    "verified": ("verification",),
    "merged": ("merge",),
    "duplicate_merged": ("merge",),
    "remerged": ("merge",),
    "placed": ("place",),
    "place_requested": ("place_request",),
    "place_refused": ("place_request",),
}
_PAYLOADS = tuple(dict.fromkeys(f for fields in PAYLOAD_OF_ACTION.values() for f in fields))


class TicketUpdated(Event):
    """One transition of the department workflow (the router's state machine).

    Besides the action it carries what its consumers need about the ticket (the caller's hashed id,
    category, grid, department), so none of them reads the ticket it was just told about, and the
    action's own payload: exactly the field(s) `PAYLOAD_OF_ACTION` names, typed."""

    topic: ClassVar[str] = "ticket.updated"

    # 2: typed payloads and the ticket's facts instead of a free `data` dict; 3: `placed` with its
    # `place` (the grid the desk set after the assignment). Older versions parse unchanged (no
    # `place`, and no action that needs one); 4: `place_requested` / `place_refused` with their
    # `place_request` (a grid worker's request to correct the grid). Older versions parse unchanged;
    # 5: `closed` by a survey's end may carry the answer's outcome "erased" (`SurveyOutcome`: the
    # resident's personal data was erased). Older versions parse unchanged.
    version: int = 5
    action: TicketAction
    status: str  # the status after the transition (a shared.tickets.Status value)
    # department id, "resident", "system", an operator id (urged: who took the call) or a grid
    # worker's id (verified: who checked on the spot); placed: the dispatch desk
    actor: str
    department: DepartmentRef | None = None
    # resolved: the resolution note; returned, reopened: the words given; urged: the call; verified:
    # what the grid worker saw; placed: the history's line (事发网格人工选定为…，原为…)
    note: str = ""
    # resolved: the department's photos of the result (处置照片); verified: the grid worker's
    photos: tuple[str, ...] = ()
    caller_id: str | None = None  # the caller's salted hash (None: anonymous)
    category: str | None = None
    grid: str | None = None  # placed: the grid it is placed in now

    on_time: bool | None = None  # accepted, resolved: within the deadline
    returned: Returned | None = None
    extension: Extension | None = None
    supervision: DeadlineNotice | None = None
    meeting: MeetingSpec | None = None
    survey_id: str | None = None  # surveyed: the survey that went out
    answer: Answer | None = None
    urge: Urge | None = None
    verification: Verification | None = None
    # Added after version 2 was out: optional, so events written before it parse unchanged.
    merge: Merge | None = None
    # Beside `on_time`, on a resolution by a mediation committee only (None on every other event,
    # and on events written before committees took tickets: the version stays 2, old events parse).
    mediation: Mediation | None = None
    # accepted, merged: whether the ticket had been marked overdue (the router's timer told the
    # department its response deadline had passed) before this late step. The scorecard counts a
    # response that came due unmet once: from the timer, or from the late step that beat it. None
    # on other actions, and on events written before it existed.
    marked_overdue: bool | None = None
    place: Place | None = None  # placed (version 3)
    place_request: PlaceRequest | None = None  # place_requested, place_refused (version 4)

    @model_validator(mode="after")
    def _payload_fits_action(self) -> Self:
        # Runs for every TicketUpdated parsed (the notifier and the router read them all): the
        # fields straight from __dict__, and "exactly one of wanted, nothing else" as one test.
        fields = self.__dict__
        present = [f for f in _PAYLOADS if fields[f] is not None]
        wanted = PAYLOAD_OF_ACTION[self.action]
        if len(present) != 1 or present[0] not in wanted:
            raise ValueError(f"{self.action} carries exactly one of {wanted}, not {present or 'none'}")
        if fields["mediation"] is not None and self.action != "resolved":
            raise ValueError(f"{self.action} carries no mediation (only a resolution does)")
        place = fields["place"]
        if place is not None and fields["grid"] != place.grid:
            # Intake's index reads `grid` alone (a view): the two must say the same place.
            raise ValueError(f"placed in {place.grid} carries grid {fields['grid']}")
        return self


class SurveySent(Event):
    topic: ClassVar[str] = "survey.sent"

    survey_id: str
    # Whom it went to, masked: a phone (138****5678) for SMS, or a WeChat openid (`mask_openid`) for
    # a resident who wrote in by WeChat. The name is the first version's, when surveys went by SMS
    # alone; kept, since renaming it would break every event recorded before.
    masked_phone: str
    message_id: str
    text: str


class SurveyAnswered(Event):
    """How a survey ended, or the resident's comment on it. It carries the ticket's department,
    category and grid as they were at resolution (the notifier keeps them with the survey), so the
    scorecard counts the answer in its groups without reading the ticket. Events written before
    those fields existed have them as None."""

    topic: ClassVar[str] = "survey.answered"

    # 2: `outcome` may be "erased" (the resident's personal data was erased on their request; before,
    # such a survey ended as opted_out, or as skipped_anonymous when erased before the resolution).
    # Older versions parse unchanged.
    version: int = 2
    survey_id: str
    rating: Rating | None
    solved: bool | None = None
    text: str  # the resident's words, as sent (by phone: as the operator wrote them down)
    outcome: SurveyOutcome = "answered"
    department: DepartmentRef | None = None
    category: str | None = None
    grid: str | None = None
    by: str | None = None  # the operator who asked on the phone (电话回访); None: by SMS
    # Answered on the resident's lookup page (查询页: by ticket number and the phone's last four
    # digits, or by a signed link) instead of by a reply: counted as any answer, and not as 电话回访
    # (`by` stays None).
    # None: by their reply (SMS, WeChat) or on the phone.
    via: AnswerVia | None = None
    # The survey's resolution had been sent back before this answer came (a grid worker's check found
    # it not solved, 现场核查未解决): the answer rates work that no longer stands, and counts in no
    # rate (`scoring.fields_for`). False in events written before it was said.
    void: bool = False


class PersonalDataRemoved(Event):
    """A resident's personal data was erased on their request, from this ticket: the services that
    keep keys linking the caller to the ticket (intake's duplicate index, the notifier's message and
    survey records) remove them. Written by the erasure with the scrubbed ticket, into its history
    and the outbox, so the outbox relay publishes it. Who asked and why are in the erasure's audit,
    not here.

    The hashed caller id is all it carries: once its ticket's history is scrubbed again (the relay
    does so once it has sent it), it is no event any more, like a located event without its place."""

    topic: ClassVar[str] = "ticket.personal_data_removed"

    caller_id: str  # the salted hash (`shared.privacy.caller_id`), never the phone


class MeetingConvened(Event):
    """A joint meeting (联席会议 / 吹哨报到): the lead street office calls departments together.
    `ticket_no` is the first ticket attached (the message key); `tickets` are all of them."""

    topic: ClassVar[str] = "meeting.convened"

    meeting_id: str
    reason: MeetingReason
    lead_street: DepartmentRef
    summoned: tuple[DepartmentRef, ...]
    tickets: tuple[str, ...]
    category: str | None = None
    grid: str | None = None
    deadline: datetime
    explanation: str


class MeetingUpdated(Event):
    """A meeting moved on: more tickets attached, a department checked in (报到), or the decision."""

    topic: ClassVar[str] = "meeting.updated"

    meeting_id: str
    action: Literal["attached", "checked_in", "decided"]
    actor: str
    department: DepartmentRef | None = None  # who checked in, or the lead decided on
    tickets: tuple[str, ...] = ()
    note: str = ""
    # attached: the departments the joining tickets summon besides those summoned before (a
    # hotspot's tickets bring theirs), so that the record knows whom the meeting summons. Added
    # later: optional, so facts written before it parse unchanged.
    summoned: tuple[DepartmentRef, ...] = ()
