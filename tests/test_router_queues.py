"""A department's queue on the real Redis: open tickets by deadline, closed ones on their own list."""

from __future__ import annotations

import uuid
from datetime import timedelta

from services.router.service import Queues
from shared import tickets as st
from shared.events import DepartmentRef
from shared.store import TicketStore
from tests.cities import demo_city
from tests.router_factory import T0, assigned_ticket


async def test_closed_tickets_move_to_the_departments_closed_list(redis):
    city = demo_city()
    store = TicketStore(redis)
    queues = Queues(redis, store)
    # A department of its own: the city's departments hold the session's other tickets (closed ones
    # newer than these, a page of which might not reach these), and their queues are not this
    # test's to delete.
    dept = f"test-queue-{uuid.uuid4().hex[:8]}"
    own = DepartmentRef(id=dept, name="测试单位")
    a, b = (
        assigned_ticket(city, no=f"20261123-7710{i}").model_copy(update={"department": own}) for i in range(2)
    )
    closed = b.model_copy(update={"status": st.CLOSED, "closed_at": T0 + timedelta(days=3)})
    for t in (a, closed):
        await redis.set(f"t:{t.ticket_no}", t.model_dump_json())
    await queues.index([a, b])
    await queues.index([closed])

    _total, open_page = await queues.page(dept, status=None, overdue=None, page=1, size=50)
    assert [t.ticket_no for t in open_page] == [a.ticket_no]
    _total, closed_page = await queues.page(dept, status=st.CLOSED, overdue=None, page=1, size=50)
    assert [t.ticket_no for t in closed_page] == [b.ticket_no]
    await redis.delete(f"queue:{dept}", f"queue:{dept}:closed")
    await redis.hdel("queue:owner", a.ticket_no, b.ticket_no)
