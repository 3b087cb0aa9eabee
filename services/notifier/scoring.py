"""Scoring for the scorecard: the three rates (三率) and the combined score, which counters an event
adds to, and the rates from the counters. Pure functions (the counting in Redis: `scorecard.py`).

    response rate     = responses on time / responses due
                        (due: accepted, or merged, within the deadline, or the deadline passed
                        without it; a ticket still inside its deadline is not due yet, and
                        with none due the rate is None, not 0. A period counted before `due`
                        existed, with no assignment nor response due counted since, keeps
                        responses on time / tickets assigned: `response_measure`)
    resolution rate   = answered surveys saying "solved" / answered surveys
    satisfaction rate = (satisfied + w × basically satisfied) / answered surveys   (w: 0.9 by default)
    score             = 100 × (a·response + b·resolution + c·satisfaction) / (a + b + c)
                        (a, b, c: SCORE_WEIGHTS, default 0.1,0.5,0.4; a rate with no data yet is
                        left out and the remaining weights are renormalised; no survey answered:
                        None, as the response rate alone is no score to compare with the others)

Counting: an assignment counts on the day it happens (reroutes after a return and the desk's
re-dispatches, 改派, count again, for the new department; the dispatch desk's waiting room does not
count); an acceptance on the day it happens; a survey answer on the day it arrives. Surveys closed
with no answer, and skipped ones (anonymous, opted out), are counted apart and are in no
denominator (a survey ended by the resident's erasure of their personal data counts nowhere); so
are urges (催办: a resident calling again about an open ticket), on the day of the
call, for the department that has the ticket then, and the grid workers' checks of resolutions on
the spot (现场核查: checked, and found not solved), on the day of the check, for the department whose
resolution was checked, and the resolutions of the streets' mediation committees (人民调解: mediated,
and those where the parties reached an agreement), on the day of the resolution, for the committee,
and the duplicates merged (并案: merged), on the day of the merge, for the department (or the desk)
that held the duplicate; a merge of a duplicate a department held and had not accepted yet also
counts as that department's response (see `fields_for`), once: carried along when its main ticket is
merged into another (`remerged`), it counts nowhere again. A merged duplicate gets no survey, so it
is in no resolution or satisfaction rate. The resident's survey stays the measure of resolution and
satisfaction. Of the answered surveys, those a hotline operator took on the phone (电话回访: the
answer names the operator) are also counted apart (answered_by_phone): they are in the rates as
any answer is, and the counter says how many answers the SMS alone would not have had. An answer
to a survey whose resolution had been sent back by then (a grid worker's check found it not solved,
现场核查未解决: the survey was void before the resident answered) rates work that no longer stands:
it is in no rate, counted apart (answered_void), and says nothing of the resolution that follows.

Placement (事发网格): the grid a ticket counts in may change after counts were made for it: the
dispatch desk places a ticket already assigned in another grid (`placed`), or dispatches a ticket
returned to it (退单, e.g. 属地有误) choosing another grid (人工派单, `grid_chosen`). Each event counts in
the grid it carries, so the ticket's counts before the change would stay in its old grid (or 未定位)
and the later ones go to the new grid: the ticket would be split between two grids in the rankings,
a grid could show a response over no assignment, and the old one be charged for a ticket it no
longer has. Every event that sets the ticket's grid (`sets_grid`: a placement, or an assignment in
a grid the desk chose) moves them (`placement_moves`): each earlier event's
counters, on that event's day, out of its grid and street and into the new ones; its department and
category stay. An assignment in the grid the counts are already in moves nothing.

A move may be made before an earlier count it moves (on another topic, still to be read): the old
group then shows that count below zero, or a rate's numerator above its denominator, until it comes.
`rates` gives no rate and no score for such a group (`settling`: 统计中) rather than a figure below
0% or above 100%, and `rank` does not rank it.

Ranking: a group with fewer answered surveys in the period than the city's `min_answers`
(sla.yaml `ranking`) has too few answers for its score to mean much (样本不足): one survey
answered 满意 would give 100. `ranked` says it is not, and `rank` puts such groups after the
ranked ones, whatever their score. A group with no survey answered has no score at all (`rates`),
and is not ranked either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TypeGuard
from zoneinfo import ZoneInfo

from shared.city import City
from shared.events import Event, SurveyAnswered, TicketAssigned, TicketUpdated

DIMENSIONS = ("department", "category", "grid", "street")
FIELDS = (
    "assigned",
    "responded",
    "responded_on_time",
    "answered",
    "solved",
    "satisfied",
    "basically_satisfied",
    "unsatisfied",
    "no_answer",
    "skipped",
    "answered_directly",  # of the assigned: calls the operator answered on the spot (直接答复)
    # 受理件数: of the assigned, a ticket's first dispatch (`TicketAssigned.first`), so each ticket
    # once however often it is sent on: what the direct-answer rate is a share of. Counted from the
    # version that says which dispatch is the first; a period with none keeps the share of all the
    # assignments it was counted for (`direct_answer_base`).
    "first_assigned",
    "handled_on_spot",  # of the assigned: what grid workers found and dealt with there (现场处置)
    "urged",  # 催办件数: repeat calls about an open ticket, each counted on its day (not in a rate)
    "verified",  # 核查件数: resolutions a grid worker checked on the spot (现场核查), not in a rate
    "verification_failed",  # of the verified: found not solved and sent back (核查未解决), not in a rate
    "mediated",  # 调解件数: resolutions by a mediation committee (人民调解), not in a rate
    "mediation_agreed",  # of the mediated: the parties reached an agreement (达成协议), not in a rate
    "merged",  # 并案件数: duplicates merged into a ticket already being handled, not in a rate
    "answered_by_phone",  # of the answered: on an operator's call (电话回访), not by SMS; no rate of its own
    # 作废回访: answers to a survey whose resolution a grid worker's check had already sent back
    # (现场核查未解决); not in `answered`, nor in any rate.
    "answered_void",
    # 应响应: a department's response came due, counted once on the day it did: an acceptance (or a
    # merge answering for it) within the deadline, else the deadline passing unmet (the router's
    # overdue notice, or the late acceptance that came before the notice). A ticket still inside
    # its deadline is in neither: a department is not marked down for a ticket it still has time
    # for. due_on_time: of those, answered within the deadline.
    "due",
    "due_on_time",
    # Beside each assignment, from the version that counts `due` on: a period with none of these
    # was counted before it, and keeps the measure it was counted for (on time / assigned).
    "due_counted",
)
_RATING_FIELD = {1: "satisfied", 2: "basically_satisfied", 3: "unsatisfied"}
_FIRST_CONTACT_FIELD = {"answered": ("answered_directly",), "on_spot": ("handled_on_spot",)}


@dataclass(frozen=True)
class Weights:
    basic: float = 0.9  # what one 基本满意 is worth in the satisfaction rate
    response: float = 0.1
    resolution: float = 0.5
    satisfaction: float = 0.4

    @classmethod
    def parse(cls, basic: float, score_weights: str) -> Weights:
        """From SATISFACTION_BASIC_WEIGHT and SCORE_WEIGHTS ("0.1,0.5,0.4"); ValueError says why."""
        try:
            parts = [float(p) for p in score_weights.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
            raise ValueError(
                f"SCORE_WEIGHTS {score_weights!r}: expected three non-negative numbers for "
                "response, resolution, satisfaction, e.g. 0.1,0.5,0.4"
            )
        if not 0 <= basic <= 1:
            raise ValueError(f"SATISFACTION_BASIC_WEIGHT {basic}: must be between 0 and 1")
        return cls(basic, *parts)


def fields_for(event: Event) -> tuple[str, ...]:
    """The counters one event adds 1 to (for each of its groups)."""
    if isinstance(event, TicketAssigned):
        if event.via == "dispatch_desk":
            return ()
        first = ("first_assigned",) if event.first else ()
        return ("assigned", "due_counted", *first, *_FIRST_CONTACT_FIELD.get(event.via, ()))
    if isinstance(event, TicketUpdated):
        if event.action == "accepted":
            if event.on_time:
                return ("responded", "responded_on_time", "due", "due_on_time")
            return ("responded",) if event.marked_overdue else ("responded", "due")
        if (
            event.action == "overdue"
            and event.supervision is not None
            and event.supervision.stage == "respond"
        ):
            return ("due",)  # the response deadline passed with the ticket still not accepted
        if event.action == "urged":
            return ("urged",)
        if event.action == "verified" and event.verification is not None:
            return ("verified",) if event.verification.solved else ("verified", "verification_failed")
        if event.action == "merged" and event.merge is not None:
            # A duplicate a department held and had not accepted yet (已派单) counted as assigned to
            # it on its day, and will now never be accepted. Counters only ever add, per day, and
            # the assignment may be days back, so it cannot be taken out of `assigned`; instead the
            # merge answers for that department's response, as an acceptance would, on the day of
            # the merge and on time if it came within the response deadline. The rate can only
            # stay or rise ((r + 1) / a >= r / a): the department is not marked down for a
            # duplicate the desk took from it. One waiting at the desk counted nowhere.
            on_time = event.merge.response_on_time
            if on_time is None:
                return ("merged",)
            if on_time:
                return ("merged", "responded", "responded_on_time", "due", "due_on_time")
            return ("merged", "responded") if event.marked_overdue else ("merged", "responded", "due")
        if event.action == "resolved" and event.mediation is not None:  # only a committee's carries one
            return ("mediated", "mediation_agreed") if event.mediation.outcome == "agreed" else ("mediated",)
        return ()
    if isinstance(event, SurveyAnswered):
        if event.outcome == "answered" and event.rating is not None and event.void:
            # Its resolution was sent back before the answer came: the 满意 is about work found not
            # done, and the department is redoing it; the redo's own survey will rate it.
            return ("answered_void",)
        if event.outcome == "answered" and event.rating is not None:
            solved = ("solved",) if event.solved else ()
            by_phone = ("answered_by_phone",) if event.by else ()  # the operator who asked (电话回访)
            return ("answered", _RATING_FIELD[event.rating], *solved, *by_phone)
        if event.outcome == "no_answer":
            return ("no_answer",)
        if event.outcome in ("opted_out", "skipped_anonymous"):
            return ("skipped",)
        # "erased" (the resident's personal data was removed on their request) counts nowhere: it
        # is no opt-out nor an anonymous appeal, and says nothing of the department's work. The
        # record's rates (`services.records.rates`) leave it out of `skipped` alike.
    return ()


def groups_for(city: City, department: str | None, category: str | None, grid: str | None) -> dict[str, str]:
    """The group of each dimension a ticket belongs to; "unknown" where it has none (yet)."""
    info = city.grids.get(grid) if grid else None
    return {
        "department": department or "unknown",
        "category": category or "unknown",
        "grid": grid or "unknown",
        "street": info.street_id if info else "unknown",
    }


# The dimensions a placement moves counts in: where the ticket is. Its department and category stay.
PLACE_DIMENSIONS = ("grid", "street")
# What a placement moves: (dimension, group, day) -> counter -> signed count.
Moves = dict[tuple[str, str, date], dict[str, int]]


def sets_grid(event: Event) -> TypeGuard[TicketAssigned | TicketUpdated]:
    """Whether `event` sets the grid its ticket counts in from then on (its `grid`), whatever grid
    the ticket's earlier counts are in: the desk's placement (`placed`), or an assignment in a grid
    the desk chose as it dispatched (`grid_chosen`: 人工派单 with 事发网格, e.g. a ticket returned as
    属地有误). Every other assignment carries the grid the ticket has, where its counts already are
    (reroute, 改派, mediation, a meeting's decision), or is its first, with no counts before it:
    reading their histories to find nothing to move cost every assignment a round trip and a parse
    on the notifier's busiest path. A reviewer's correction of a ticket back at the desk may carry
    another grid too, but the desk's assignment counts nothing: what it would move is an urge made
    while the ticket waited there, which stays where it was made."""
    if isinstance(event, TicketAssigned):
        return event.grid_chosen
    return isinstance(event, TicketUpdated) and event.action == "placed" and event.place is not None


def placement_moves(city: City, placed: Event, history: Sequence[Event], tz: ZoneInfo) -> Moves:
    """What the event `placed`, which sets the ticket's grid (`sets_grid`: a placement, or an
    assignment), moves: for each event of the ticket's `history` (its events in the order they
    happened) before it that `fields_for` counts, on that event's day, its counters out of the grid
    and street it counts in now and into `placed`'s grid and street (the street only when it
    differs). An event counts in the grid it carries, or in the grid a later event that set the grid
    before `placed` moved it to (moved as this function says). Nothing when `placed` sets no grid,
    or is not in the history (then what came before it is not known), or when the counts before it
    are in its grid already (an assignment that keeps the ticket's grid)."""
    if not sets_grid(placed):
        return {}
    counted: list[tuple[Event, tuple[str, ...], str | None]] = []
    for event in history:
        if event.event_id == placed.event_id:
            break
        if sets_grid(event):
            counted = [(e, fields, event.grid) for e, fields, _ in counted]
        if isinstance(event, TicketAssigned | TicketUpdated | SurveyAnswered) and (
            fields := fields_for(event)
        ):
            counted.append((event, fields, event.grid))
    else:
        return {}
    new = groups_for(city, None, None, placed.grid)
    moves: Moves = {}
    for event, fields, grid in counted:
        old = groups_for(city, None, None, grid)
        day = event.occurred_at.astimezone(tz).date()
        for dim in PLACE_DIMENSIONS:
            if old[dim] == new[dim]:
                continue
            for sign, group in ((-1, old[dim]), (1, new[dim])):
                counts = moves.setdefault((dim, group, day), {})
                for f in fields:
                    counts[f] = counts.get(f, 0) + sign
    return moves


def _ratio(num: float, den: int) -> float | None:
    # A share outside [0, 1] is no rate: what `settling` says of the counters, or a period cut
    # between an assignment and its acceptance under the measure before `due` (on time / assigned).
    return num / den if den > 0 and 0 <= num <= den else None


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


# Of each pair, the part is counted by the same events as the whole, so it is never above it. A move
# ahead of a count takes out the whole and, only if that event had it, the part: a group whose
# counters say part > whole, or one below zero, is in the middle of a move (`settling`).
_PARTS = (
    ("due_on_time", "due"),
    ("solved", "answered"),
    ("answered_by_phone", "answered"),
    ("answered_directly", "assigned"),
    ("handled_on_spot", "assigned"),
    ("first_assigned", "assigned"),
    ("verification_failed", "verified"),
    ("mediation_agreed", "mediated"),
)


def settling(c: Mapping[str, int]) -> bool:
    """Whether a group's counters (all of FIELDS) are not consistent at the moment (统计中): a move
    of a ticket's counts into another grid (`placement_moves`) was made before a count it moves,
    still to be read from another topic, so the old group has that count taken out before it is
    in: a counter below zero, or a part above its whole. It lasts until the count comes (seconds);
    the counts add up then, whatever the order."""
    return any(n < 0 for n in c.values()) or any(c[part] > c[whole] for part, whole in _PARTS)


def response_measure(counts: Mapping[str, int]) -> tuple[str, str]:
    """The counters the response rate is (on time, over): ("due_on_time", "due"), or for a period
    counted before `due` existed, ("responded_on_time", "assigned"). The rate and the base the
    dashboard shows under it both read it, so they cannot disagree.

    A period was counted with `due` when it has an assignment counted so (`due_counted`) or any
    response that came due: a department with no new dispatch in the period may still have had
    responses come due in it (a ticket dispatched the day before, accepted or overdue today; a
    reopened ticket accepted again), and its rate is those, not on time / no assignment. Days
    counted before `due` existed have neither, so a period made only of them keeps the old
    measure. Above zero, not just non-zero: a counter below zero is a move in progress
    (`settling`), not a count."""
    c = {f: int(counts.get(f, 0) or 0) for f in ("due_counted", "due")}
    if c["due_counted"] > 0 or c["due"] > 0:
        return "due_on_time", "due"
    return "responded_on_time", "assigned"


def direct_answer_base(counts: Mapping[str, int]) -> str:
    """The counter the direct-answer rate is a share of: the tickets first dispatched in the period
    (`first_assigned`), or for a period counted before that existed, every assignment. The one
    period that spans the change shares its earlier days' direct answers among its later days'
    first dispatches only, so it reads high (above 100%: no rate, `_ratio`)."""
    return "first_assigned" if int(counts.get("first_assigned", 0) or 0) > 0 else "assigned"


def rates(counts: Mapping[str, int], w: Weights) -> dict[str, float | int | None]:
    """The counters, the three rates and the score for one group. A group whose counters are not
    consistent at the moment (`settling`, 统计中) has no rate and no score: a figure below 0% or
    above 100%, or one off by the count on its way, is not shown, nor ranked (`rank`)."""
    c = {f: int(counts.get(f, 0)) for f in FIELDS}
    if settling(c):
        return c | dict.fromkeys(_RATES) | {"settling": True}
    on_time, over = response_measure(c)
    response = _ratio(c[on_time], c[over])
    resolution = _ratio(c["solved"], c["answered"])
    satisfaction = _ratio(c["satisfied"] + w.basic * c["basically_satisfied"], c["answered"])
    parts = [(w.response, response), (w.resolution, resolution), (w.satisfaction, satisfaction)]
    weight = sum(wt for wt, r in parts if r is not None)
    score = 100 * sum(wt * r for wt, r in parts if r is not None) / weight if weight else None
    if resolution is None and (w.resolution or w.satisfaction):
        # No survey answered: the score would be the response rate alone (100 for a grid that
        # accepted on time), beside others' made mostly of what residents said. Not comparable: none.
        score = None
    return c | {
        "response_rate": _round(response, 4),
        "resolution_rate": _round(resolution, 4),
        "satisfaction_rate": _round(satisfaction, 4),
        "score": _round(score, 2),
        # Not in the score: how much of the hotline's work ends on the call (直接答复率).
        "direct_answer_rate": _round(_ratio(c["answered_directly"], c[direct_answer_base(c)]), 4),
        "settling": False,
    }


# What `rates` computes from the counters (None where there is nothing to count).
_RATES = ("response_rate", "resolution_rate", "satisfaction_rate", "score", "direct_answer_rate")


def rank(rows: Iterable[dict], min_answers: int) -> list[dict]:
    """The groups' rates (`rates`, each with its `group`) in ranking order: those with at least
    `min_answers` answered surveys (`ranked`) by score, best first, then those with too few
    (样本不足), by score too; a group with no score last in each (one whose counters are settling,
    统计中, has none), then by group id."""
    out = [r | {"ranked": r["answered"] >= min_answers and r["score"] is not None} for r in rows]
    return sorted(out, key=lambda r: (not r["ranked"], r["score"] is None, -(r["score"] or 0), r["group"]))


def add(total: dict[str, int], counts: Mapping[str, int]) -> None:
    for f in FIELDS:
        total[f] = total.get(f, 0) + int(counts.get(f, 0))
