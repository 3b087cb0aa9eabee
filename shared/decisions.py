"""What a pure decision returns, and the shapes the stores apply: no I/O, no client library.

A decision is a function of the ticket as it is (None: there is none yet) to an `Outcome` (the
ticket as it is to be and the events that record it) or None ("nothing to do", e.g. the event was
already applied). The router's workflow and timers, and intake's appeal recording, return these;
`shared.store.TicketStore` writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shared.events import AppealReceived, Event
from shared.tickets import Ticket

# The last few hundred applied event ids are plenty: a duplicate arrives close to its original.
APPLIED_KEPT = 300


@dataclass(frozen=True)
class Outcome:
    """A decided change: the ticket as it is to be, the new facts to publish (history + outbox), and
    facts that arrived from elsewhere and only go into the history (e.g. the appeal itself)."""

    ticket: Ticket
    publish: Sequence[Event] = ()
    record: Sequence[Event] = ()


# Given the current ticket (None if there is none yet), the outcome, or None for "nothing to do".
Decision = Callable[[Ticket | None], Outcome | None]


# One decision about several tickets at once, each seen as it is (None: there is none): the outcome
# per ticket it changes, or None for "nothing to do" (e.g. refused). 并案 decides the duplicate and
# the main ticket together, because each side is only right if the other is.
JointDecision = Callable[[Mapping[str, Ticket | None]], Mapping[str, Outcome] | None]


@dataclass(frozen=True)
class Change:
    """One decision about one ticket, as a batch write takes it."""

    ticket_no: str
    decide: Decision


def applied(ticket: Ticket, *events: Event) -> list[str]:
    """The ticket's applied ids with these events' ids added (the idempotency check's memory), each
    once: an assignment names the appeal its ticket was made from, whose id is there already, and a
    second copy would push an older id out of the kept window sooner."""
    return [*ticket.applied, *(i for e in events if (i := e.event_id) not in ticket.applied)][-APPLIED_KEPT:]


def record_appeal(ticket: Ticket | None, appeal: AppealReceived) -> Outcome | None:
    """Create the ticket for a new appeal (intake and router may both try; first wins)."""
    if ticket is not None:
        return None
    return Outcome(Ticket.from_appeal(appeal), record=[appeal])
