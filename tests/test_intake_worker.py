"""The intake worker's handlers on a real Redis: a caller's tickets join their open-ticket index,
and a ticket erased on its resident's request leaves the caller's keys (and, should the notice be
lost, the duplicate preview still never shows it)."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta

from services.intake import keys
from services.intake.app import DuplicateIndex, PlacedBy, UpdateOf
from services.intake.domain import Submission
from services.intake.preview import Previewer
from shared.events import (
    AppealReceived,
    Caller,
    DepartmentRef,
    GridMatch,
    PersonalDataRemoved,
    Place,
    TicketAssigned,
    TicketUpdated,
)
from shared.privacy import REMOVED, caller_id
from shared.store import TicketStore, ticket_key
from shared.tickets import Status, Ticket
from tests.cities import demo_city


def appeal(no: str, cid: str) -> AppealReceived:
    return AppealReceived(ticket_no=no, channel="wechat", text="路灯坏了", caller=Caller(caller_id=cid))


async def test_an_erased_ticket_leaves_its_callers_index_last_wechat_ticket_and_waiting_location(redis):
    index = DuplicateIndex(redis, TicketStore(redis))
    erased, kept, other = (uuid.uuid4().hex[:20] for _ in range(3))  # callers of this test only
    await index.received(
        [
            appeal("20261123-888001", erased),
            appeal("20261123-888002", erased),
            appeal("20261123-888003", other),
        ]
    )
    await redis.set(keys.wechat_last(erased), "20261123-888001")
    await redis.set(keys.wechat_last(kept), "20261123-888009")  # a caller with another last ticket
    await redis.set(keys.wechat_last(other), "20261123-888003")
    # A location and a photo sent for the next appeal: where the resident was, what they showed.
    for cid in (erased, other):
        await redis.set(keys.wechat_location(cid), '{"lng": 116.4, "lat": 39.9, "label": "和平里"}')
        await redis.rpush(keys.wechat_photos(cid), "p" + cid)

    notice = PersonalDataRemoved(ticket_no="20261123-888001", caller_id=erased)
    await index.erased([notice, PersonalDataRemoved(ticket_no="20261123-888008", caller_id=kept)])
    await index.erased([notice])  # redelivered: nothing more to do, nothing fails

    assert await redis.smembers(keys.caller_index(erased)) == {b"20261123-888002"}
    assert await redis.exists(keys.wechat_last(erased)) == 0
    assert await redis.get(keys.wechat_last(kept)) == b"20261123-888009"  # not the erased ticket
    assert await redis.smembers(keys.caller_index(other)) == {b"20261123-888003"}
    assert await redis.get(keys.wechat_last(other)) == b"20261123-888003"
    assert await redis.exists(keys.wechat_location(erased), keys.wechat_photos(erased)) == 0
    assert await redis.exists(keys.wechat_location(other), keys.wechat_photos(other)) == 2
    every = (keys.caller_index, keys.wechat_last, keys.wechat_location, keys.wechat_photos)
    await redis.delete(*(k(c) for k in every for c in (erased, kept, other)))


async def test_the_duplicate_preview_never_shows_an_erased_ticket(redis):
    """The erasure's notice never reached the worker (a broker lost after the relay sent it), so the
    caller's index still leads to the erased ticket. The preview, which reads the tickets anyway,
    leaves it out by its mark and takes it out of the index; in the grid, where erased tickets stay,
    its placeholder text is matched by nothing."""
    store = TicketStore(redis)
    index = DuplicateIndex(redis, store)
    phone = f"138{random.randint(10**7, 10**8 - 1)}"
    cid = caller_id(phone)
    erased, kept = (f"20261123-{n}" for n in random.sample(range(880100, 889999), 2))
    text = "阳光花园3号楼门口的路灯坏了一个多星期了，晚上出门黑漆漆的"
    appeals = [
        AppealReceived(ticket_no=no, channel="hotline", text=text, caller=Caller(caller_id=cid))
        for no in (erased, kept)
    ]
    await store.create_many(appeals)
    await index.received(appeals)
    grid = f"test-{uuid.uuid4().hex[:8]}"
    await redis.zadd(keys.grid_index(grid), {erased: time.time(), kept: time.time()})
    assert await store.remove_personal_data(erased)  # and no notice reaches intake
    previewer = Previewer(demo_city(), store, classifiers=None)  # type: ignore[arg-type]

    again = Submission(channel="hotline", text="我之前反映的事情怎么样了，还没人来处理", phone=phone)
    found = await previewer.duplicates(again, None, follow_up=True)
    assert [(d.ticket.ticket_no, d.reason) for d in found] == [(kept, "same_caller")]
    assert await redis.smembers(keys.caller_index(cid)) == {kept.encode()}

    neighbour = f"139{random.randint(10**7, 10**8 - 1)}"
    placeholder = Submission(channel="hotline", text=f"【{REMOVED}】", phone=neighbour)
    assert await previewer.duplicates(placeholder, grid) == []
    await redis.delete(keys.caller_index(cid), keys.grid_index(grid))


async def test_a_callers_other_open_ticket_is_the_one_they_call_about_only_if_it_is_the_same_problem(redis):
    """The operator tells the caller their open ticket is being handled only when the call is about
    it: the same category, words alike, or the caller asking after an earlier appeal. A caller with
    a noise complaint open who now reports a broken light gets a new ticket; the noise one is shown
    as the caller's other problem."""
    store = TicketStore(redis)
    phone = f"138{random.randint(10**7, 10**8 - 1)}"
    cid = caller_id(phone)
    no = f"20261123-{random.randint(890000, 899999)}"
    noise = AppealReceived(
        ticket_no=no, channel="hotline", text="楼上邻居天天装修，电钻声音太吵了", caller=Caller(caller_id=cid)
    )
    await store.create_many([noise])
    await DuplicateIndex(redis, store).received([noise])
    (ticket,) = await store.get_many([no])
    assert ticket is not None
    await redis.set(f"t:{no}", ticket.model_copy(update={"category": "env.noise"}).model_dump_json())
    previewer = Previewer(demo_city(), store, classifiers=None)  # type: ignore[arg-type]

    async def reason(text: str, category: str, follow_up: bool = False) -> str:
        call = Submission(channel="hotline", text=text, phone=phone)
        (found,) = await previewer.duplicates(call, None, category, follow_up=follow_up)
        return found.reason

    assert await reason("小区路灯坏了好几盏，晚上很黑", "city.facility.streetlight") == "caller_other"
    assert await reason("楼上又在装修了，吵得睡不着", "env.noise") == "same_caller"  # its category
    assert await reason("楼上邻居天天装修，电钻声音太吵", "env.neighbour") == "same_caller"  # its words
    assert await reason("我之前反映的事情怎么样了", "misc.other", follow_up=True) == "same_caller"
    await redis.delete(keys.caller_index(cid), f"t:{no}")


async def placed_by_desk(
    redis, text: str, status: Status
) -> tuple[TicketStore, DuplicateIndex, str, str, str]:
    """A ticket of `text` in the store, in `status`, which the desk placed in a new grid, still in
    the index of the old grid where the classifier had put it: (store, index, its number, old, new)."""
    store = TicketStore(redis)
    old, new = (f"test-{uuid.uuid4().hex[:8]}" for _ in range(2))
    no = f"20261123-{random.randint(860000, 879999)}"
    a = AppealReceived(ticket_no=no, channel="hotline", text=text)
    placed = Ticket.from_appeal(a).model_copy(
        update={"status": status, "grid": GridMatch(grid=new, method="desk", confidence=1.0)}
    )
    await redis.set(ticket_key(no), placed.model_dump_json())
    await redis.zadd(keys.grid_index(old), {no: time.time()})
    return store, DuplicateIndex(redis, store), no, old, new


async def found_in_the_new_grid_only(
    redis, store: TicketStore, text: str, no: str, old: str, new: str
) -> None:
    """The same words again are found as the placed ticket in its new grid, and not in the old one
    (then the test's keys go)."""
    previewer = Previewer(demo_city(), store, classifiers=None)  # type: ignore[arg-type]
    again = Submission(channel="hotline", text=text, phone=f"139{random.randint(10**7, 10**8 - 1)}")
    assert [(d.ticket.ticket_no, d.reason) for d in await previewer.duplicates(again, new)] == [
        (no, "similar_text")
    ]
    assert await previewer.duplicates(again, old) == []
    await redis.delete(ticket_key(no), keys.grid_index(old), keys.grid_index(new))


async def test_a_ticket_the_desk_placed_is_compared_in_its_new_grid_and_no_more_in_the_old(redis):
    """Every assignment puts its ticket in its grid's index: the classifier's, or the one the
    dispatch desk chose (the classifier found none, or another), and the grid it left passes it
    over."""
    text = "建设路12号门口的井盖丢了，晚上很危险，已经有人差点掉下去"
    store, index, no, old, new = await placed_by_desk(redis, text, Status.ASSIGNED)
    dept = DepartmentRef(id="urban_mgmt", name="区城市管理委员会")
    due = datetime.now(UTC) + timedelta(days=1)

    def assigned(grid: str, chosen: bool) -> PlacedBy:
        event = TicketAssigned(
            ticket_no=no,
            department=dept,
            via="operator",
            explanation="人工派单",
            category="urban.manhole",
            grid=grid,
            grid_chosen=chosen,
            respond_by=due,
            resolve_by=due,
        )
        return PlacedBy.from_json(event.json_bytes)

    classifiers = f"test-{uuid.uuid4().hex[:8]}"
    first = assigned(classifiers, False)  # routed in the grid the classifier found
    await index.placed([first])
    assert await redis.zscore(keys.grid_index(classifiers), no) == first.occurred_at.timestamp()
    # Assigned again there later (returned, or a joint meeting's decision): it keeps its time.
    again = first.model_copy(update={"occurred_at": first.occurred_at + timedelta(hours=1)})
    await index.placed([again])
    assert await redis.zscore(keys.grid_index(classifiers), no) == first.occurred_at.timestamp()
    await index.placed([assigned(new, True)])
    assert await redis.zscore(keys.grid_index(new), no) is not None
    await redis.delete(keys.grid_index(classifiers))
    await found_in_the_new_grid_only(redis, store, text, no, old, new)


async def test_a_ticket_placed_after_its_assignment_is_compared_in_its_new_grid_and_no_more_in_the_old(redis):
    """事发网格 after the assignment (`ticket.updated` `placed`): the update puts the ticket in its new
    grid's index, from the time it was placed; the grid it left passes it over. Other updates (of
    the version before too) place nothing."""
    text = "和平路口的路灯坏了一个星期了，晚上特别黑，过马路很危险"
    store, index, no, old, new = await placed_by_desk(redis, text, Status.ACCEPTED)
    at = datetime.now(UTC)

    def update(action: str, grid: str, **payload) -> UpdateOf:
        event = TicketUpdated(
            ticket_no=no,
            action=action,
            status="accepted",
            actor="dispatch_desk",
            grid=grid,
            occurred_at=at,
            **payload,
        )
        return UpdateOf.from_json(event.json_bytes)

    elsewhere = f"test-{uuid.uuid4().hex[:8]}"
    older = TicketUpdated(
        ticket_no=no, action="accepted", status="accepted", actor="d", grid=elsewhere, on_time=True
    )
    await index.updated([UpdateOf.from_json(older.model_copy(update={"version": 2}).json_bytes)])
    assert await redis.zscore(keys.grid_index(elsewhere), no) is None  # an acceptance places nothing
    await index.updated([update("placed", new, place=Place(grid=new, was=old))])
    assert await redis.zscore(keys.grid_index(new), no) == at.timestamp()
    await found_in_the_new_grid_only(redis, store, text, no, old, new)
