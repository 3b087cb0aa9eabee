"""The city's configuration: administrative areas, departments, categories, responsibilities, SLAs.

All of it is data a city edits (YAML files in one folder, `CITY_CONFIG_DIR`). It is validated on load:
every cross-reference is checked and every error names the file and the entry, so an analyst can fix
the YAML without reading Python.

Files in the folder:
  areas.yaml            district > streets > communities > grids (with compounds, roads, landmarks)
  departments.yaml      the departments that receive tickets
  categories.yaml       the appeal category tree (leaves are what the classifier predicts)
  responsibilities.yaml the responsibility list (权责清单): category (+ optional area) -> departments
  sla.yaml              deadline classes, the category -> class map, and the working-day calendar
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.yamlfile import read_yaml

log = logging.getLogger(__name__)

# How long before the working-day calendar ends the services log it at start-up and the console's
# dispatch desk and dashboard say it: the State Council's notice for next year usually comes out in
# November, so two months leave time to add it before a deadline is counted past the calendar.
CALENDAR_WARN_DAYS = 60

DEMO_CITY_DIR = Path(__file__).parent / "demo_city"


class CityConfigError(ValueError):
    """The city configuration is invalid; the message says which file and entry, and why."""


class _Model(BaseModel):
    # coerce_numbers_to_str: an unquoted phone or numeric-looking id in YAML is still text.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


# --- areas -------------------------------------------------------------------------------------


class Road(_Model):
    """A road segment covered by a grid: house numbers `from_no`..`to_no` (inclusive) of `name`."""

    name: str
    from_no: int = Field(1, ge=0)
    to_no: int = Field(99999, ge=0)
    aliases: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _range(self) -> Road:
        if self.to_no < self.from_no:
            raise ValueError(f"road {self.name}: to_no {self.to_no} is below from_no {self.from_no}")
        return self


class Place(_Model):
    """A residential compound (小区) or landmark, with the other names residents use for it."""

    name: str
    aliases: tuple[str, ...] = ()


class Grid(_Model):
    id: str
    name: str
    compounds: tuple[Place, ...] = ()
    roads: tuple[Road, ...] = ()
    landmarks: tuple[Place, ...] = ()
    # Polygon as (longitude, latitude) vertices, WGS-84; closed implicitly.
    polygon: tuple[tuple[float, float], ...] = ()

    @field_validator("polygon")
    @classmethod
    def _polygon(cls, v: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        if v and len(v) < 3:
            raise ValueError("a polygon needs at least 3 vertices")
        return v


class Community(_Model):
    id: str
    name: str
    grids: tuple[Grid, ...]


class Street(_Model):
    id: str
    name: str
    communities: tuple[Community, ...]


class District(_Model):
    id: str
    name: str
    city: str = ""
    streets: tuple[Street, ...]


# --- departments, categories --------------------------------------------------------------------

DepartmentKind = Literal[
    "district_office",
    "dispatch_desk",
    "bureau",
    "street_office",
    "mediation",  # a street's People's Mediation Committee (人民调解委员会): disputes between parties
    "utility",
    "property",
    "other",
]
# Kinds that serve one street and must say which (`Department.street`).
STREET_KINDS = frozenset({"street_office", "mediation"})


class Department(_Model):
    id: str
    name: str
    kind: DepartmentKind = "bureau"
    street: str | None = None  # street offices: the street they govern; mediation committees: they serve
    phone: str | None = None  # the supervisor's contact for overdue notices (督办)
    supervisor_mobile: str | None = None  # where overdue / escalation notices go by SMS (none: no SMS)

    @field_validator("supervisor_mobile")
    @classmethod
    def _mobile(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from shared.privacy import InvalidPhone, normalize_phone

        try:
            phone = normalize_phone(value)
        except InvalidPhone as e:
            raise ValueError(str(e)) from None
        if "-" in phone:
            raise ValueError(f"“{value}”是固话，督办短信需要手机号")
        return phone


class Category(_Model):
    id: str
    name: str
    keywords: tuple[str, ...] = ()  # domain words for the tokenizer dictionary and the corpus
    # 人民调解: appeals of this category may be disputes between parties (neighbours, an owner and
    # the property company), which the department holding one may refer to the street's mediation
    # committee (转人民调解); a street light or a water main is no one's dispute to mediate. Said on
    # a branch, it holds for the categories under it, unless one of them says otherwise. Unsaid
    # everywhere above: false.
    mediation: bool | None = None
    children: tuple[Category, ...] = ()


# --- responsibilities, SLA ----------------------------------------------------------------------


class ResponsibilityRule(_Model):
    """Category (leaf or branch) -> lead and co-handling departments, optionally for one area only."""

    category: str
    street: str | None = None
    community: str | None = None
    grid: str | None = None
    lead: str
    co: tuple[str, ...] = ()
    note: str = ""


class Responsibilities(_Model):
    fallback_owner: str  # unclear jurisdiction never leaves a ticket unowned
    dispatch_desk: str  # low-confidence classifications wait here for an operator (人工派单)
    rules: tuple[ResponsibilityRule, ...]


class SlaClass(_Model):
    """Respond (accept) within `respond_hours` clock hours; resolve in hours or working days."""

    name: str
    respond_hours: float = Field(gt=0)
    resolve_hours: float | None = Field(None, gt=0)
    resolve_days: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_resolve(self) -> SlaClass:
        if (self.resolve_hours is None) == (self.resolve_days is None):
            raise ValueError(f"SLA class {self.name}: give exactly one of resolve_hours, resolve_days")
        return self


class Supervision(_Model):
    """Timers (督办) and joint meetings (联席会议): optional section `supervision` of sla.yaml."""

    warning_ratio: float = Field(0.8, gt=0, lt=1)  # warn when this share of the time is used
    escalate_ratio: float = Field(1.5, gt=1)  # escalate when overdue by this multiple of the time
    meeting_days: int = Field(3, gt=0)  # working days for a joint meeting to decide
    dispatch_hours: float = Field(2, gt=0)  # clock hours for the dispatch desk to dispatch a ticket in review
    check_hours: float = Field(48, gt=0)  # clock hours for a grid worker to check a report nobody rates
    hotspot_count: int = Field(5, ge=2)  # this many appeals of one category in one grid ...
    hotspot_window_days: float = Field(7, gt=0)  # ... within this many days is a hotspot
    # A joint meeting that named the lead for a category in a grid is a precedent (先例) for this many
    # days after its decision: the next appeals of that category in that grid go to that lead, not
    # by the responsibility list round the same returns again. 0: no precedents.
    meeting_precedent_days: float = Field(30, ge=0, le=365)
    ambiguity_margin: float = Field(0.1, ge=0, le=1)  # top-two scores this close: a joint meeting
    # ... when the two together are at least this likely; below, the model cannot tell what the
    # appeal is about (a vague call), and a person at the desk reads it rather than a meeting of
    # the departments of two guesses
    ambiguity_floor: float = Field(0.5, ge=0, le=1)
    # A knowledge-base answer its department has not confirmed for this many days is 待复核: the
    # operator is told to check it before giving it (policies change every few weeks).
    knowledge_review_days: int = Field(180, gt=0, le=3650)


class Ranking(_Model):
    """Who is ranked by the score (综合得分): optional section `ranking` of sla.yaml."""

    # A group (a department, a category, a street, a grid) with fewer answered surveys in the
    # period is not ranked (样本不足): its resolution and satisfaction rates, most of the score, rest
    # on one or two residents (one 满意 is 100). It is listed after the ranked ones.
    min_answers: int = Field(3, ge=1, le=1000)


class SlaConfig(_Model):
    classes: dict[str, SlaClass]
    default_class: str
    categories: dict[str, str] = {}  # category id (leaf or branch) -> class id
    # department kind -> class id: a ticket held by a department of that kind gets the class whatever
    # its category (a mediation committee's time is set by how mediation works); urgent still wins
    department_kinds: dict[str, str] = {}
    urgent_class: str  # what urgent appeals get, whatever their category
    holidays: tuple[date, ...] = ()  # statutory holidays (no work)
    workdays: tuple[date, ...] = ()  # make-up working days on weekends (调休)
    urgent_categories: tuple[str, ...] = ()  # always urgent (the urgent class), whatever the text
    supervision: Supervision = Supervision()
    ranking: Ranking = Ranking()

    @property
    def calendar_ends(self) -> date | None:
        """The last day the working-day calendar covers: the end of the last year it lists a holiday
        or a make-up working day for (the State Council's notice gives a whole year at a time). None
        for a city that lists none: it counts weekends only, by its choice. Past this day deadlines
        are still counted, by weekends only, which misses the holidays (元旦, 春节) that no one listed."""
        days = (*self.holidays, *self.workdays)
        return date(max(days).year, 12, 31) if days else None

    def calendar_running_out(self, today: date) -> str:
        """What to tell people while the calendar ends within CALENDAR_WARN_DAYS of `today` (or has
        ended): `工作日历只到2026-12-31：请在sla.yaml中补充2027年的节假日和调休安排`; else ""."""
        ends = self.calendar_ends
        if ends is None or (ends - today).days > CALENDAR_WARN_DAYS:
            return ""
        return f"工作日历只到{ends.isoformat()}：请在sla.yaml中补充{ends.year + 1}年的节假日和调休安排"


# --- the whole city -----------------------------------------------------------------------------


class GridInfo(_Model):
    """A grid with the names of everything above it: what events and views carry."""

    grid: Grid
    community_id: str
    community_name: str
    street_id: str
    street_name: str

    @property
    def full_name(self) -> str:
        """The grid's name, after its community's where it does not say it: 和平里社区第一网格 as it
        is, 第一网格 as 东湖社区第一网格."""
        own = self.grid.name
        return own if self.community_name in own else f"{self.community_name}{own}"

    @property
    def place(self) -> str:
        """Where the grid is, as every page, card, history line and refusal writes it: its street,
        a slash, then its full name (和平街道/东湖社区第一网格). One spelling, so the place the desk
        reads on a card is the place the history says, word for word."""
        return f"{self.street_name}/{self.full_name}"


# --- the hotline's knowledge base ----------------------------------------------------------------


class KnowledgeEntry(_Model):
    """An answer an operator may give on the call (直接答复), owned by a department."""

    id: str
    question: str = Field(min_length=2)
    answer: str = Field(min_length=5)
    category: str | None = None  # a leaf or branch of categories.yaml
    keywords: tuple[str, ...] = ()
    department: str | None = None  # who owns the answer and confirms it
    reviewed: date | None = None  # when they last did


class City(_Model):
    district: District
    departments: tuple[Department, ...]
    categories: tuple[Category, ...]
    responsibilities: Responsibilities
    sla: SlaConfig
    knowledge: tuple[KnowledgeEntry, ...] = ()  # optional file: a city may have none

    model_config = ConfigDict(
        extra="forbid", frozen=True, coerce_numbers_to_str=True, ignored_types=(cached_property,)
    )

    # Indexes, built once: the hot path looks things up by id.
    @cached_property
    def grids(self) -> dict[str, GridInfo]:
        return {
            g.id: GridInfo(
                grid=g, community_id=c.id, community_name=c.name, street_id=s.id, street_name=s.name
            )
            for s in self.district.streets
            for c in s.communities
            for g in c.grids
        }

    @cached_property
    def department_by_id(self) -> dict[str, Department]:
        return {d.id: d for d in self.departments}

    def department_names(self, ids: Iterable[str] | None) -> list[str]:
        """The departments' names, in order; an id the city no longer has (a record older than its
        edit) as itself."""
        return [d.name if (d := self.department_by_id.get(i)) else i for i in ids or ()]

    @cached_property
    def category_by_id(self) -> dict[str, Category]:
        out: dict[str, Category] = {}

        def walk(cats: tuple[Category, ...]) -> None:
            for c in cats:
                out[c.id] = c
                walk(c.children)

        walk(self.categories)
        return out

    @cached_property
    def category_path(self) -> dict[str, tuple[str, ...]]:
        """Category id -> ids from the root down to it (itself last)."""
        out: dict[str, tuple[str, ...]] = {}

        def walk(cats: tuple[Category, ...], prefix: tuple[str, ...]) -> None:
            for c in cats:
                out[c.id] = (*prefix, c.id)
                walk(c.children, out[c.id])

        walk(self.categories, ())
        return out

    def place_name(self, grid_id: str | None) -> str:
        """A grid's place by name (GridInfo.place), or 未定位 for none, or one the city does not have."""
        info = self.grids.get(grid_id or "")
        return info.place if info is not None else "未定位"

    def branch(self, category_id: str) -> frozenset[str]:
        """The category and every category under it (城市管理 takes 路灯故障): what a list narrowed
        to it shows. Taken from the tree, not from the ids' dotted form."""
        return frozenset(cid for cid, path in self.category_path.items() if category_id in path)

    @cached_property
    def placed_categories(self) -> frozenset[str]:
        """The categories whose lead the place can change: a rule for them (or a category above
        them) narrowed to a street, community or grid. Without a grid such an appeal needs a person
        (the dispatch desk); any other is routed by its rule wherever it happened."""
        narrowed = {r.category for r in self.responsibilities.rules if r.street or r.community or r.grid}
        return frozenset(cid for cid, path in self.category_path.items() if narrowed.intersection(path))

    def needs_placing(self, category: str, grid: str | None) -> bool:
        """Whether an appeal of `category` at `grid` waits for a person to place it: no grid, and a
        category whose lead the place decides. The classifier's review and the router's desk agree
        on it."""
        return grid is None and category in self.placed_categories

    def place_disputed(self, category: str, grid: str | None, address_grid: str | None, method: str) -> bool:
        """Whether an appeal placed in `grid` by `method` whose address names another grid
        (`address_grid`, 定位与地址不一致) waits for a person (the dispatch desk) to confirm the place
        before it goes out. The classifier's review and the router's desk agree on it.

        A patrol report (`method` "patrol"): always. Its grid is the credential's, where the worker
        patrols, not an observation of the place, while the address is what the worker typed as the
        place: which grid's worker follows it up (and checks its resolution on the spot) and where it
        counts is a person's call. Coordinates: only where the place can change the department, a
        rule for the category narrowed to an area holding one grid and not the other. A phone's fix
        is an observation; most disagreements are neighbouring grids served by the same department,
        and holding them at the desk would only delay them: they go out by their rule, the
        disagreement shown on the ticket for the department and the grid's worker."""
        if grid is None or address_grid is None or address_grid == grid:
            return False
        if method == "patrol":
            return True
        return self.place_decides_department(category, grid, address_grid)

    def place_decides_department(self, category: str | None, grid: str, other: str) -> bool:
        """Whether the responsibility list may name another department for `category` in `grid`
        than in `other`: a rule for the category narrowed to an area holding one and not the other.
        Where it does not (a district-wide department), which of the two is the place is no reason
        for the department to send the ticket back."""
        path = self.category_path.get(category or "", ())
        a, b = self.grids.get(grid), self.grids.get(other)
        if a is None or b is None:
            return False

        def holds(rule: ResponsibilityRule, info: GridInfo, gid: str) -> bool:
            # The rule's area as the router reads it (`rules._area_specificity`): its grid, else
            # its community, else its street.
            if rule.grid is not None:
                return rule.grid == gid
            if rule.community is not None:
                return rule.community == info.community_id
            return rule.street == info.street_id

        return any(
            holds(r, a, grid) != holds(r, b, other)
            for r in self.responsibilities.rules
            if r.category in path and (r.street or r.community or r.grid)
        )

    @cached_property
    def leaf_categories(self) -> tuple[str, ...]:
        return tuple(cid for cid, c in self.category_by_id.items() if not c.children)

    def mediable(self, category_id: str | None) -> bool:
        """Whether an appeal of the category may be referred to people's mediation (转人民调解):
        the nearest `mediation` said on the category or a branch above it (categories.yaml)."""
        for cid in reversed(self.category_path.get(category_id or "", ())):
            said = self.category_by_id[cid].mediation
            if said is not None:
                return said
        return False

    @cached_property
    def mediation_categories(self) -> tuple[str, ...]:
        """The leaves that may be referred to people's mediation, in the tree's order."""
        return tuple(c for c in self.leaf_categories if self.mediable(c))

    @cached_property
    def category_names_by_id(self) -> dict[str, tuple[str, ...]]:
        # Built once: the router and the classifier ask for every appeal.
        return {
            cid: tuple(self.category_by_id[c].name for c in path) for cid, path in self.category_path.items()
        }

    def category_names(self, category_id: str) -> tuple[str, ...]:
        """Names from the root down, e.g. ('城市管理', '市政设施', '道路破损')."""
        return self.category_names_by_id[category_id]

    @cached_property
    def community_street(self) -> dict[str, str]:
        return {c.id: s.id for s in self.district.streets for c in s.communities}

    @model_validator(mode="after")
    def _cross_references(self) -> City:
        problems: list[str] = []

        def unique(kind: str, ids: list[str]) -> None:
            seen: set[str] = set()
            for i in ids:
                if i in seen:
                    problems.append(f"{kind}: id {i!r} is used twice")
                seen.add(i)

        streets = [s.id for s in self.district.streets]
        communities = [c.id for s in self.district.streets for c in s.communities]
        grids = [g.id for s in self.district.streets for c in s.communities for g in c.grids]
        unique("areas.yaml streets", streets)
        unique("areas.yaml communities", communities)
        unique("areas.yaml grids", grids)
        unique("departments.yaml", [d.id for d in self.departments])
        all_cats: list[str] = []

        def walk(cats: tuple[Category, ...]) -> None:
            for c in cats:
                all_cats.append(c.id)
                walk(c.children)

        walk(self.categories)
        unique("categories.yaml", all_cats)

        depts, cats = {d.id for d in self.departments}, set(all_cats)
        for d in self.departments:
            if d.kind in STREET_KINDS and not d.street:
                problems.append(f"departments.yaml {d.id}: a {d.kind} department needs `street`")
            if d.street and d.street not in streets:
                problems.append(f"departments.yaml {d.id}: unknown street {d.street!r}")
        # A referral (转人民调解) goes to the committee of the ticket's street: there must be one answer.
        committees: dict[str, str] = {}
        for d in self.departments:
            if d.kind == "mediation" and d.street:
                if d.street in committees:
                    problems.append(
                        f"departments.yaml {d.id}: street {d.street} has a mediation committee already "
                        f"({committees[d.street]})"
                    )
                committees.setdefault(d.street, d.id)
        # Committees and nothing to refer to them: every 转人民调解 would be refused. Said on load,
        # as the categories that may be disputes between parties are the city's to name.
        said = {c.id: c.mediation for c in self.category_by_id.values()}
        if committees and not any(said.values()):
            problems.append(
                "categories.yaml: departments.yaml has mediation committees, but no category says "
                "`mediation: true` (disputes between parties that may be referred to them); mark them"
            )
        r = self.responsibilities
        for field, dept in (("fallback_owner", r.fallback_owner), ("dispatch_desk", r.dispatch_desk)):
            if dept not in depts:
                problems.append(f"responsibilities.yaml {field}: unknown department {dept!r}")
        community_street = {c.id: s.id for s in self.district.streets for c in s.communities}
        grid_community = {g.id: c.id for s in self.district.streets for c in s.communities for g in c.grids}
        seen_scopes: dict[tuple, int] = {}
        for n, rule in enumerate(r.rules, 1):
            where = f"responsibilities.yaml rule {n} ({rule.category})"
            scope = (rule.category, rule.street, rule.community, rule.grid)
            if scope in seen_scopes:
                problems.append(
                    f"{where}: same category and area as rule {seen_scopes[scope]}; "
                    "name one lead and list the others under co"
                )
            seen_scopes.setdefault(scope, n)
            if rule.community and rule.street and community_street.get(rule.community) != rule.street:
                problems.append(f"{where}: community {rule.community} is not in street {rule.street}")
            if rule.grid and rule.community and grid_community.get(rule.grid) != rule.community:
                problems.append(f"{where}: grid {rule.grid} is not in community {rule.community}")
            if rule.category not in cats:
                problems.append(f"{where}: unknown category {rule.category!r}")
            for dept in (rule.lead, *rule.co):
                if dept not in depts:
                    problems.append(f"{where}: unknown department {dept!r}")
            for kind, value, known in (
                ("street", rule.street, streets),
                ("community", rule.community, communities),
                ("grid", rule.grid, grids),
            ):
                if value is not None and value not in known:
                    problems.append(f"{where}: unknown {kind} {value!r}")
        unique("knowledge.yaml", [k.id for k in self.knowledge])
        for k in self.knowledge:
            if k.category is not None and k.category not in cats:
                problems.append(f"knowledge.yaml {k.id}: unknown category {k.category!r}")
            if k.department is not None and k.department not in depts:
                problems.append(f"knowledge.yaml {k.id}: unknown department {k.department!r}")
        s = self.sla
        for day in set(s.holidays) & set(s.workdays):
            problems.append(f"sla.yaml: {day} is listed both as a holiday and as a make-up working day")
        for day in s.workdays:
            if day.weekday() < 5:
                problems.append(
                    f"sla.yaml workdays: {day} is a weekday already (make-up days fall on weekends)"
                )
        for field, cls in (("default_class", s.default_class), ("urgent_class", s.urgent_class)):
            if cls not in s.classes:
                problems.append(f"sla.yaml {field}: unknown class {cls!r}")
        for cat in s.urgent_categories:
            if cat not in cats:
                problems.append(f"sla.yaml urgent_categories: unknown category {cat!r}")
        for cat, cls in s.categories.items():
            if cat not in cats:
                problems.append(f"sla.yaml categories: unknown category {cat!r}")
            if cls not in s.classes:
                problems.append(f"sla.yaml categories {cat}: unknown class {cls!r}")
        kinds = get_args(DepartmentKind)
        for kind, cls in s.department_kinds.items():
            if kind not in kinds:
                problems.append(
                    f"sla.yaml department_kinds: unknown department kind {kind!r} (one of {', '.join(kinds)})"
                )
            if cls not in s.classes:
                problems.append(f"sla.yaml department_kinds {kind}: unknown class {cls!r}")
            elif cls == s.urgent_class:
                # The router marks a ticket with the urgent class urgent (紧急): every ticket such a
                # department held would be flagged so. Urgency is the appeal's, not its holder's.
                problems.append(
                    f"sla.yaml department_kinds {kind}: {cls!r} is the urgent class, which is for "
                    "urgent appeals (urgent_categories), not for a kind of department"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self


_FILES = {
    "district": "areas.yaml",
    "departments": "departments.yaml",
    "categories": "categories.yaml",
    "responsibilities": "responsibilities.yaml",
    "sla": "sla.yaml",
}
_OPTIONAL_FILES = {"knowledge": "knowledge.yaml"}


_calendar_warned: set[tuple[str, date]] = set()  # once per process: (folder, the calendar's end)


def warn_if_calendar_runs_out(city: City, folder: str | Path | None, today: date | None = None) -> bool:
    """At a service's start: log (a warning, once per process for a city folder and calendar) that the
    working-day calendar ends within CALENDAR_WARN_DAYS; whether this call logged it. Not in
    `load_city`, which the `appeals` commands call too: their output is read by scripts."""
    said = city.sla.calendar_running_out(today or datetime.now(UTC).date())
    ends, where = city.sla.calendar_ends, str(folder or DEMO_CITY_DIR)
    if not said or ends is None or (where, ends) in _calendar_warned:
        return False
    _calendar_warned.add((where, ends))
    log.warning("%s (%s): deadlines past %s count weekends only", said, where, ends.isoformat())
    return True


def load_city(folder: str | Path | None = None) -> City:
    """Load and validate the city configuration from `folder` (default: the demo city)."""
    folder = Path(folder) if folder else DEMO_CITY_DIR
    raw: dict[str, object] = {}
    for key, filename in _FILES.items():
        path = folder / filename
        if not path.is_file():
            raise CityConfigError(f"{path}: file missing (a city configuration needs {filename})")
        try:
            raw[key] = read_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise CityConfigError(f"{path}: not valid YAML: {e}") from e
    for key, filename in _OPTIONAL_FILES.items():
        path = folder / filename
        if path.is_file():
            try:
                raw[key] = read_yaml(path.read_text(encoding="utf-8")) or []
            except yaml.YAMLError as e:
                raise CityConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        return City.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = list(err["loc"])
            if not loc:  # cross-reference problems: already "file entry: why", several per error
                msg = err["msg"].removeprefix("Value error, ")
                lines.extend(msg.split("\n"))
                continue
            file = {**_FILES, **_OPTIONAL_FILES}.get(str(loc[0]), "")
            lines.append(f"{file} {'.'.join(map(str, loc[1:]))}: {err['msg']}".strip())
        raise CityConfigError(f"{folder}: invalid city configuration:\n  " + "\n  ".join(lines)) from e
