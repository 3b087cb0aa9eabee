"""Every Redis key intake owns, built in one place: the worker, the API views, the preview and the
tests import these instead of spelling the keys themselves.

  dup:caller:{caller_id}    open ticket numbers of a caller (added on receipt, removed on close, or
                            when the resident's personal data is erased from the ticket)
  closed:caller:{caller_id} a caller's tickets closed in the last RECENTLY_CLOSED_DAYS, scored by
                            when they closed: 查询 still finds a ticket closed minutes ago
                            (removed when the resident's personal data is erased from the ticket)
  dup:grid:{grid}           ticket numbers per grid, scored by time (last 7 days kept)
  idem:{key}                an idempotency key's claim, then its ticket number
  rl:{scope}:{who}:{slot}   a rate-limit window's counter (scopes: ip, caller, query)
  intake:public             the public tickets' numbers, scored by receipt time (the Open311 listing)
  wx:loc:{caller_id}        a WeChat user's last location message, for their next appeal
                            (removed when the personal data of one of their tickets is erased)
  wx:last:{caller_id}       a WeChat user's last ticket, which a location message may complete
                            (removed when that ticket's personal data is erased)
  wx:nonce:{ts}:{nonce}     the hash of the plaintext push that came with this signed nonce

The contact record (`contact:{caller_id}`) belongs to the ticket store: `shared.store.contact_key`.
"""

from __future__ import annotations

PUBLIC_BY_TIME = "intake:public"
# How long a closed ticket is still among the caller's recent ones (查询 without a number): the
# resident who asks minutes or days after it closed wants its result, not "nothing found".
RECENTLY_CLOSED_DAYS = 7


def caller_index(caller_id: str) -> str:
    return f"dup:caller:{caller_id}"


def caller_closed(caller_id: str) -> str:
    return f"closed:caller:{caller_id}"


def grid_index(grid: str) -> str:
    return f"dup:grid:{grid}"


def idempotency(key: str) -> str:
    return f"idem:{key}"


def rate_window(scope: str, who: str, slot: int) -> str:
    return f"rl:{scope}:{who}:{slot}"


def wechat_location(caller_id: str | None) -> str:
    return f"wx:loc:{caller_id}"


def wechat_last(caller_id: str | None) -> str:
    return f"wx:last:{caller_id}"


def wechat_photos(caller_id: str | None) -> str:
    """Photos a WeChat user sent before the text they belong to (ids, oldest first)."""
    return f"wx:photos:{caller_id}"


def wechat_nonce(timestamp: str, nonce: str) -> str:
    return f"wx:nonce:{timestamp}:{nonce}"
