"""When a message may go out: quiet hours and the daily cap. Pure functions of `now`.

- Quiet hours ("21:00-08:00", local time; "none" disables): a message that is not urgent is held
  until they end.
- Daily cap: at most N messages per phone per local day; more are held until the next morning
  (the end of quiet hours, or 00:00 when there are none). Urgent messages are never held.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    @classmethod
    def parse(cls, spec: str) -> QuietHours | None:
        """ "21:00-08:00" -> QuietHours; "none" (or empty) -> None. Raises ValueError with the reason."""
        if spec.strip().lower() in ("", "none", "off"):
            return None
        m = _RANGE.match(spec)
        if not m:
            raise ValueError(f"QUIET_HOURS {spec!r}: expected HH:MM-HH:MM (e.g. 21:00-08:00) or none")
        h1, m1, h2, m2 = map(int, m.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
            raise ValueError(f"QUIET_HOURS {spec!r}: not a valid time range")
        return cls(time(h1, m1), time(h2, m2))

    def contains(self, t: time) -> bool:
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # spans midnight

    def ends_after(self, local: datetime) -> datetime:
        """The end of the quiet period `local` is in (call only when it is in one)."""
        end = local.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        return end if end > local else end + timedelta(days=1)


@dataclass(frozen=True)
class Policy:
    quiet: QuietHours | None
    daily_cap: int
    tz: ZoneInfo

    def local_day(self, now: datetime) -> date:
        return now.astimezone(self.tz).date()

    def send_at(self, now: datetime, *, urgent: bool, sent_today: int) -> datetime:
        """When a message decided at `now` may go out: `now`, or later when it must be held."""
        if urgent:
            return now
        local = now.astimezone(self.tz)
        if sent_today >= self.daily_cap:
            return self.next_morning(local)
        if self.quiet is not None and self.quiet.contains(local.time()):
            return self.quiet.ends_after(local)
        return now

    def next_morning(self, local: datetime) -> datetime:
        """The first moment of the next local day on which messages may go out."""
        midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=self.tz)
        if self.quiet is not None and self.quiet.contains(midnight.time()):
            return self.quiet.ends_after(midnight)
        return midnight
