"""A department's queue on the real Redis: open tickets by deadline, closed ones on their own list."""

from __future__ import annotations

from datetime import timedelta

from services.router.service import Queues
from shared import tickets as st
from shared.store import TicketStore
from tests.cities import demo_city
from tests.router_factory import T0, assigned_ticket


async def test_closed_tickets_move_to_the_departments_closed_list(redis):
    city = demo_city()
    store = TicketStore(redis)
    queues = Queues(redis, store)
    a, b = (assigned_ticket(city, no=f"20261123-7710{i}") for i in range(2))
    dept = a.department.id
    closed = b.model_copy(update={"status": st.CLOSED, "closed_at": T0 + timedelta(days=3)})
    for t in (a, closed):
        await redis.set(f"t:{t.ticket_no}", t.model_dump_json())
    await queues.index([a, b])
    await queues.index([closed])

    _total, open_page = await queues.page(dept, status=None, overdue=None, page=1, size=50)
    assert a.ticket_no in [t.ticket_no for t in open_page]
    assert b.ticket_no not in [t.ticket_no for t in open_page]
    _total, closed_page = await queues.page(dept, status=st.CLOSED, overdue=None, page=1, size=50)
    assert [t.ticket_no for t in closed_page if t.ticket_no.startswith("20261123-7710")] == [b.ticket_no]
    await redis.delete(f"queue:{dept}", f"queue:{dept}:closed")
