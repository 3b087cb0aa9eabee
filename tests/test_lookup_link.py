"""The signed link to a ticket's public progress: what signs a number, what a link may not change."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from shared import lookup_link
from shared.lookup_link import SIG_CHARS, link_key, sign, verified

NO = "20261123-000001"
KEY = link_key("a-long-random-secret-for-these-tests-0123456789")


def test_a_number_signed_is_verified():
    sig = sign(NO, KEY)
    assert len(sig) == SIG_CHARS == 16
    assert int(sig, 16) >= 0  # hex
    assert verified(NO, sig, KEY)
    assert sign(NO, KEY) == sig  # the same link every time: a notice sent twice opens the same page


def test_the_default_key_is_the_settings_salt_s():
    assert sign(NO) == sign(NO, link_key(lookup_link.get_settings().caller_id_salt))
    assert verified(NO, sign(NO))


def test_a_tampered_number_is_refused():
    sig = sign(NO, KEY)
    for other in ("20261123-000002", "20261123-0000010", "20261123000001", "", NO + " "):
        assert not verified(other, sig, KEY), other


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
    assert not verified(NO, bad, KEY)


def test_a_signature_cut_or_lengthened_is_refused():
    sig = sign(NO, KEY)
    full = hmac.new(KEY, NO.encode(), hashlib.sha256).hexdigest()
    assert full.startswith(sig)
    assert not verified(NO, sig[:-1], KEY)
    assert not verified(NO, full, KEY)  # the whole HMAC is not the link's signature
    assert not verified(NO, sig + "0", KEY)
    if sig.upper() != sig:
        assert not verified(NO, sig.upper(), KEY)  # the link as signed, not another spelling


def test_the_links_key_is_not_the_caller_id_s():
    salt = "a-long-random-secret-for-these-tests-0123456789"
    # The caller id is an HMAC keyed by the salt itself: the link's key is another.
    assert link_key(salt) != salt.encode()
    with_the_salt = hmac.new(salt.encode(), NO.encode(), hashlib.sha256).hexdigest()
    assert sign(NO, link_key(salt)) != with_the_salt[:SIG_CHARS]
    assert sign(NO, link_key(salt + "x")) != sign(NO, link_key(salt))  # another salt, other links
