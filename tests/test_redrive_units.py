"""What a re-drive publishes again of one ticket's history (`shared.redrive.owed`), and that every
record it picks parses back into its event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.events import PersonalDataRemoved
from shared.redrive import as_event, changed_at, owed

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def record(topic: str, minutes: int, **fields) -> dict:
    return {
        "topic": topic,
        "event_id": f"{topic}-{minutes}",
        "occurred_at": (T0 + timedelta(minutes=minutes)).isoformat(),
        **fields,
    }


HISTORY = [
    record("appeal.received", 0),
    record("appeal.classified", 1),
    record("ticket.assigned", 2),
    record("meeting.convened", 3),  # kept in the history only: never published
    record("ticket.updated", 60),
    record("survey.sent", 61),
]


def ids(records: list[dict]) -> list[str]:
    return [r["event_id"] for r in records]


def test_a_ticket_still_received_owes_its_appeal_however_old():
    assert ids(owed("received", HISTORY[:1], None)) == ["appeal.received-0"]
    assert ids(owed("received", HISTORY[:1], T0 + timedelta(days=3))) == ["appeal.received-0"]


def test_an_open_ticket_owes_its_published_events_of_the_window_in_order():
    assert ids(owed("surveyed", HISTORY, T0)) == [
        "appeal.received-0",
        "appeal.classified-1",
        "ticket.assigned-2",
        "ticket.updated-60",
        "survey.sent-61",
    ]
    assert ids(owed("surveyed", HISTORY, T0 + timedelta(minutes=30))) == [
        "ticket.updated-60",
        "survey.sent-61",
    ]


def test_a_ticket_changed_before_the_window_owes_nothing():
    assert owed("assigned", HISTORY[:3], None) == []


def test_a_closed_ticket_never_owes_its_appeal():
    # Its caller would join the open-ticket index again, after the close had taken it out.
    assert "appeal.received-0" not in ids(owed("closed", HISTORY, T0))
    assert ids(owed("closed", HISTORY, T0))[-2:] == ["ticket.updated-60", "survey.sent-61"]


def test_the_last_change_is_the_update_or_else_the_reception():
    assert changed_at({"received_at": T0.isoformat()}) == T0
    later = T0 + timedelta(hours=1)
    assert changed_at({"received_at": T0.isoformat(), "updated_at": later.isoformat()}) == later
    assert changed_at({}) is None
    assert changed_at({"received_at": "2026-11-30T08:00:00"}) == T0  # no zone written: UTC


def test_a_history_record_that_does_not_parse_is_left_out():
    assert as_event({"topic": "ticket.updated", "event_id": "x"}) is None


def test_a_sent_erasure_notice_scrubbed_since_is_left_out_without_a_warning(caplog):
    """The relay scrubs an erasure's notice once sent: it is no event any more, and that is no
    fault of the history to warn about at every start."""
    notice = {"topic": "ticket.personal_data_removed", "event_id": "n", "ticket_no": "20261201-000001"}
    with caplog.at_level("WARNING", logger="shared.redrive"):
        assert as_event({**notice, "caller_id": None}) is None
        assert as_event(notice) is None
    assert caplog.records == []
    unsent = as_event({**notice, "caller_id": "abc", "occurred_at": "2026-12-01T08:00:00+00:00"})
    assert isinstance(unsent, PersonalDataRemoved)
    assert unsent.caller_id == "abc"
    with caplog.at_level("WARNING", logger="shared.redrive"):
        assert as_event({"topic": "ticket.updated", "event_id": "x"}) is None
    assert len(caplog.records) == 1  # a broken record of any other kind is still said
