"""Quiet hours and the daily cap, with an explicit clock. Pure."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.notifier.policy import Policy, QuietHours

SH = ZoneInfo("Asia/Shanghai")
POLICY = Policy(QuietHours.parse("21:00-08:00"), daily_cap=3, tz=SH)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=SH)


def test_parse():
    assert QuietHours.parse("21:00-08:00") == QuietHours(time(21), time(8))
    assert QuietHours.parse("none") is None
    for bad in ("21-8", "25:00-08:00", "08:00-08:00", "night"):
        with pytest.raises(ValueError, match="QUIET_HOURS"):
            QuietHours.parse(bad)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (at(23, 10), at(23, 10)),  # daytime: now
        (at(23, 20, 59), at(23, 20, 59)),
        (at(23, 21), at(24, 8)),  # evening: next morning
        (at(23, 23, 30), at(24, 8)),
        (at(24, 3), at(24, 8)),  # after midnight: this morning
        (at(24, 7, 59), at(24, 8)),
        (at(24, 8), at(24, 8)),
    ],
)
def test_quiet_hours_hold_until_they_end(now, expected):
    assert POLICY.send_at(now, urgent=False, sent_today=0) == expected


def test_urgent_messages_go_at_any_hour_and_past_the_cap():
    assert POLICY.send_at(at(23, 23), urgent=True, sent_today=99) == at(23, 23)


def test_daily_cap_holds_until_the_next_morning():
    assert POLICY.send_at(at(23, 10), urgent=False, sent_today=2) == at(23, 10)
    assert POLICY.send_at(at(23, 10), urgent=False, sent_today=3) == at(24, 8)
    no_quiet = Policy(None, daily_cap=3, tz=SH)
    assert no_quiet.send_at(at(23, 10), urgent=False, sent_today=3) == at(24, 0)
    assert no_quiet.send_at(at(23, 23), urgent=False, sent_today=0) == at(23, 23)


def test_daytime_quiet_hours():
    lunch = Policy(QuietHours.parse("12:00-14:00"), daily_cap=3, tz=SH)
    assert lunch.send_at(at(23, 12, 30), urgent=False, sent_today=0) == at(23, 14)
    assert lunch.send_at(at(23, 23), urgent=False, sent_today=0) == at(23, 23)


def test_local_day_is_in_the_city_timezone():
    assert POLICY.local_day(datetime.fromisoformat("2026-11-23T17:00:00+00:00")).day == 24


def test_settings_are_checked_when_the_notifier_is_built():
    from redis.asyncio import Redis

    from services.notifier.gateway import HttpSmsGateway, OutboxGateway
    from services.notifier.service import Notifier
    from shared.settings import Settings
    from shared.store import TicketStore

    store = TicketStore(Redis.from_url("redis://127.0.0.1:1/0"))  # never connected: building does no I/O

    async def publish(events) -> None:
        return None

    built = Notifier.from_settings(Settings(quiet_hours="22:30-07:00", sms_daily_cap=3), store, publish)
    assert built.policy.quiet == QuietHours(time(22, 30), time(7))
    assert built.policy.daily_cap == 3
    assert isinstance(built.gateway, OutboxGateway)
    http = Notifier.from_settings(
        Settings(sms_gateway="http", sms_gateway_url="https://sms.example.com/send"), store, publish
    )
    assert isinstance(http.gateway, HttpSmsGateway)
    with pytest.raises(ValueError, match="QUIET_HOURS"):
        Notifier.from_settings(Settings(quiet_hours="evenings"), store, publish)
    with pytest.raises(ValueError, match="SURVEY_REMINDER_HOURS"):
        Notifier.from_settings(Settings(survey_reminder_hours=48, survey_window_hours=24), store, publish)
    # The phone callback (电话回访) is due when the reminder goes out, unless it has its own time,
    # which must come while the survey is still open.
    assert built.surveys.callback_after == built.surveys.reminder_after == timedelta(hours=24)
    own = Notifier.from_settings(Settings(survey_callback_hours=6), store, publish)
    assert (own.surveys.callback_after, own.surveys.reminder_after) == (
        timedelta(hours=6),
        timedelta(hours=24),
    )
    later = Notifier.from_settings(Settings(survey_callback_hours=36), store, publish)
    assert later.surveys.callback_after == timedelta(hours=36)
    with pytest.raises(
        ValueError, match=r"SURVEY_CALLBACK_HOURS \(48\) must be below SURVEY_WINDOW_HOURS \(48\)"
    ):
        Notifier.from_settings(Settings(survey_callback_hours=48), store, publish)
    with pytest.raises(ValueError, match="SURVEY_CALLBACK_HOURS"):
        Notifier.from_settings(
            Settings(survey_reminder_hours=2, survey_callback_hours=30, survey_window_hours=24),
            store,
            publish,
        )
    with pytest.raises(ValueError, match="SMS_GATEWAY_URL"):
        Notifier.from_settings(Settings(sms_gateway="http"), store, publish)


def test_a_citys_own_file_without_the_supervisor_notices_uses_the_shipped_texts(tmp_path):
    import yaml

    from services.notifier.texts import DEFAULT_FILE, load_texts

    raw = yaml.safe_load(DEFAULT_FILE.read_text(encoding="utf-8"))
    for name in ("overdue_notice", "escalated_notice"):
        del raw["templates"][name]
    raw["signature"] = "【市热线】"
    own = tmp_path / "notifications.yaml"
    own.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    text = load_texts(own).render(
        "overdue_notice", ticket_no="20261123-000001", stage="签收", deadline="", department="区城管委"
    )
    assert text.startswith("【市热线】督办提醒：区城管委承办的工单20261123-000001")


def test_the_merge_notice_names_the_ticket_to_follow_and_a_city_may_leave_it_out(tmp_path):
    import yaml

    from services.notifier.texts import DEFAULT_FILE, NotificationsError, load_texts

    shipped = load_texts().render("merged_notice", ticket_no="20261123-000005", into="20261123-000001")
    assert shipped == (
        "【12345】您反映的问题（工单号20261123-000005）与工单20261123-000001为同一问题，已合并办理，"
        "可回复“查询20261123-000001”了解进度。"
    )
    # Carried along, a chained merge: the ticket theirs followed, and the one to follow now.
    carried = load_texts().render(
        "remerged_notice", ticket_no="20261123-000005", via="20261123-000001", into="20261123-000009"
    )
    assert carried == (
        "【12345】您反映的问题（工单号20261123-000005）此前并入的工单20261123-000001已与工单20261123-000009"
        "合并办理，请改为回复“查询20261123-000009”了解进度。"
    )
    raw = yaml.safe_load(DEFAULT_FILE.read_text(encoding="utf-8"))
    del raw["templates"]["merged_notice"]  # a city's file from before 并案: the shipped text is used
    del raw["templates"]["remerged_notice"]
    own = tmp_path / "notifications.yaml"
    own.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert load_texts(own).render("merged_notice", ticket_no="1", into="2").startswith("【12345】")
    assert (
        load_texts(own)
        .render("remerged_notice", ticket_no="1", via="2", into="3")
        .endswith("查询3”了解进度。")
    )
    # Without the number to follow, the resident would be told nothing they can act on.
    raw["templates"]["merged_notice"] = "{signature}工单{ticket_no}已合并办理。"
    own.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(NotificationsError, match=r"'merged_notice' must show the ticket to follow \{into\}"):
        load_texts(own)
    raw["templates"]["merged_notice"] = "{signature}工单{ticket_no}并入{into}，联系人{phone}"
    own.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(NotificationsError, match=r"'merged_notice': unknown field \{phone\}"):
        load_texts(own)
