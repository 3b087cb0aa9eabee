"""The signed link to a ticket's public progress: what signs a number and its last day, what a link
may not change, and when it stops opening."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from shared import lookup_link
from shared.lookup_link import (
    SIG_CHARS,
    LinkState,
    LookupLinks,
    check,
    day_number,
    link_key,
    lookup_links,
    params,
    sign,
)
from shared.settings import Settings

NO = "20261123-000001"
SALT = "a-long-random-secret-for-these-tests-0123456789"
KEY = link_key(SALT)
TODAY = day_number(datetime(2026, 11, 23, 9, 30, tzinfo=UTC).timestamp())
LAST = TODAY + 29  # a 30-day link made today


def test_a_day_is_the_unix_day_in_utc():
    assert day_number(0) == 0
    assert day_number(86_399.9) == 0
    assert day_number(86_400) == 1
    assert (datetime(2026, 11, 23, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days == TODAY


def test_a_link_opens_for_its_days_and_not_a_day_more():
    query = params(NO, TODAY, 30, KEY)
    assert query == {"t": NO, "e": str(LAST), "s": sign(NO, LAST, KEY)}
    sig = query["s"]
    assert len(sig) == SIG_CHARS == 16
    assert int(sig, 16) >= 0  # hex
    for day in (TODAY, TODAY + 1, LAST):
        assert check(NO, query["e"], sig, day, KEY) is LinkState.VALID, day
    assert check(NO, query["e"], sig, LAST + 1, KEY) is LinkState.EXPIRED
    assert check(NO, query["e"], sig, LAST + 400, KEY) is LinkState.EXPIRED
    # The same link all day: a notice sent twice opens the same page.
    assert params(NO, TODAY, 30, KEY) == query
    assert params(NO, TODAY, 1, KEY)["e"] == str(TODAY)  # a one-day link opens today only


def test_the_default_key_is_the_settings_salt_s():
    assert sign(NO, LAST) == sign(NO, LAST, link_key(lookup_link.get_settings().caller_id_salt))
    assert check(NO, str(LAST), sign(NO, LAST), TODAY) is LinkState.VALID


@pytest.mark.parametrize("later", [LAST + 1, LAST + 30, LAST + 3650, 999_999])
def test_an_edited_expiry_is_invalid_not_extended(later: int):
    sig = sign(NO, LAST, KEY)
    # Moved past the day it was signed for, the link is no one's: not valid, and not even "expired"
    # (that is said only of a link we signed).
    assert check(NO, str(later), sig, TODAY, KEY) is LinkState.INVALID
    assert check(NO, str(later), sig, LAST + 1, KEY) is LinkState.INVALID


@pytest.mark.parametrize(
    "written",
    ["0" + str(LAST), f"+{LAST}", f" {LAST}", f"{LAST}.0", "-1", "0", "1" * 7, "２" * 5, "e", f"{LAST}\n"],
)
def test_an_expiry_not_as_we_write_it_is_invalid(written: str):
    # Only the one spelling signed: no leading zero, no sign, no full-width digits, six digits at most.
    assert check(NO, written, sign(NO, LAST, KEY), TODAY, KEY) is LinkState.INVALID


def test_a_link_from_before_links_expired_is_told_as_expired():
    # Those links were `?t=…&s=<HMAC of the number alone>`: no `e`. They have lived long enough.
    old_sig = hmac.new(KEY, NO.encode(), hashlib.sha256).hexdigest()[:SIG_CHARS]
    assert check(NO, "", old_sig, TODAY, KEY) is LinkState.EXPIRED
    assert check(NO, "", "", TODAY, KEY) is LinkState.EXPIRED
    # Nor does the old signature open anything with a day added to it.
    assert check(NO, str(LAST), old_sig, TODAY, KEY) is LinkState.INVALID


def test_a_tampered_number_is_refused():
    sig = sign(NO, LAST, KEY)
    for other in ("20261123-000002", "20261123-0000010", "20261123000001", "", NO + " ", f"{NO}\n{LAST}"):
        assert check(other, str(LAST), sig, TODAY, KEY) is LinkState.INVALID, other


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0" * SIG_CHARS,
        "short",
        "f" * 64,
        "签名" * 8,  # not ASCII: refused, not an error
    ],
)
def test_a_wrong_signature_is_refused(bad: str):
    assert check(NO, str(LAST), bad, TODAY, KEY) is LinkState.INVALID
    assert check(NO, str(LAST), bad, LAST + 1, KEY) is LinkState.INVALID  # a forgery never "expires"


def test_a_signature_cut_or_lengthened_is_refused():
    sig = sign(NO, LAST, KEY)
    full = hmac.new(KEY, f"{NO}\n{LAST}".encode(), hashlib.sha256).hexdigest()
    assert full.startswith(sig)
    for bad in (sig[:-1], full, sig + "0"):
        assert check(NO, str(LAST), bad, TODAY, KEY) is LinkState.INVALID
    if sig.upper() != sig:
        # The link as signed, not another spelling.
        assert check(NO, str(LAST), sig.upper(), TODAY, KEY) is LinkState.INVALID


def test_the_links_key_is_not_the_caller_id_s():
    # The caller id is an HMAC keyed by the salt itself: the link's key is another.
    assert link_key(SALT) != SALT.encode()
    with_the_salt = hmac.new(SALT.encode(), f"{NO}\n{LAST}".encode(), hashlib.sha256).hexdigest()
    assert sign(NO, LAST, link_key(SALT)) != with_the_salt[:SIG_CHARS]
    assert sign(NO, LAST, link_key(SALT + "x")) != sign(NO, LAST, link_key(SALT))  # another salt, other links


def test_the_settings_links_open_the_page_with_the_ticket_and_its_days():
    assert lookup_links(Settings()) is None  # no public page known: no links
    settings = Settings(
        wechat_template_url="https://12345.example.cn/console/lookup?from=wx#top",
        lookup_link_days=7,
        caller_id_salt=SALT,
    )
    links = lookup_links(settings)
    assert links == LookupLinks(settings.wechat_template_url, 7, KEY)
    url = links.url(NO, TODAY)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == (
        "https",
        "12345.example.cn",
        "/console/lookup",
        "top",
    )
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {"from": "wx", "t": NO, "e": str(TODAY + 6), "s": sign(NO, TODAY + 6, KEY)}


@pytest.mark.parametrize(
    "page",
    ["example.cn/console/lookup", "ftp://example.cn/", 'https://a.cn/"x', "https://a.cn/<a>", "https://a b"],
)
def test_a_page_that_is_no_url_stops_the_start(page: str):
    with pytest.raises(ValueError, match="WECHAT_TEMPLATE_URL"):
        lookup_links(Settings(wechat_template_url=page))


def test_the_lifetime_must_be_a_positive_number_of_days():
    assert Settings().lookup_link_days == 30
    for bad in (0, -1):
        with pytest.raises(ValueError, match="lookup_link_days"):
            Settings(lookup_link_days=bad)
