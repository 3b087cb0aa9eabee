"""WeChat safe mode, pure: Tencent's published sample decrypts, our replies round-trip, and anything
not encrypted for this account with this key is refused."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake import wechat
from services.intake.wechat_crypto import CryptoError, WeChatCrypto, aes_key, encrypted_field, msg_signature

# The sample from WeChat's message encryption SDK (WXBizMsgCrypt, Sample.py): token, key, AppID, and a
# push with its msg_signature. Decrypting it independently checks the key derivation, AES-CBC with the
# key's IV, the 32-byte padding, the length prefix and the AppID suffix.
SAMPLE_TOKEN = "spamtest"
SAMPLE_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SAMPLE_APPID = "wx2c2769f8efd9abc2"
SAMPLE_TIMESTAMP, SAMPLE_NONCE = "1409735669", "1320562132"
SAMPLE_SIGNATURE = "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
SAMPLE_ENCRYPT = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2L"
    "dJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6u"
    "x5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJ"
    "pXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLC"
    "zpu9GhglF2PE="
)


def sample() -> WeChatCrypto:
    return WeChatCrypto(SAMPLE_TOKEN, SAMPLE_KEY, SAMPLE_APPID)


def test_wechats_own_sample_push_is_verified_and_decrypted():
    crypto = sample()
    assert msg_signature(SAMPLE_TOKEN, SAMPLE_TIMESTAMP, SAMPLE_NONCE, SAMPLE_ENCRYPT) == SAMPLE_SIGNATURE
    assert crypto.signature_ok(SAMPLE_SIGNATURE, SAMPLE_TIMESTAMP, SAMPLE_NONCE, SAMPLE_ENCRYPT)
    msg = wechat.parse(crypto.decrypt(SAMPLE_ENCRYPT))
    assert (msg.msg_type, msg.content, msg.msg_id) == ("text", "abcdteT", "6054768590064713728")
    assert msg.from_user == "oyORnuP8q7ou2gfYjqLzSIWZf0rs"
    assert msg.to_user == "gh_10f6c3c3ac5a"


def test_a_push_for_another_account_or_with_another_key_is_refused():
    with pytest.raises(CryptoError, match="AppID"):
        WeChatCrypto(SAMPLE_TOKEN, SAMPLE_KEY, "wx0000000000000000").decrypt(SAMPLE_ENCRYPT)
    with pytest.raises(CryptoError):
        WeChatCrypto(SAMPLE_TOKEN, "B" * 43, SAMPLE_APPID).decrypt(SAMPLE_ENCRYPT)
    assert not sample().signature_ok(SAMPLE_SIGNATURE, SAMPLE_TIMESTAMP, "1", SAMPLE_ENCRYPT)
    for bad in ("not base64!", base64.b64encode(b"short").decode(), ""):
        with pytest.raises(CryptoError):
            sample().decrypt(bad)


@given(st.text(min_size=0, max_size=600))
def test_replies_round_trip_and_are_padded_to_32_byte_blocks(text):
    crypto = sample()
    encrypted = crypto.encrypt(text)
    assert len(base64.b64decode(encrypted)) % 32 == 0
    assert crypto.decrypt(encrypted).decode("utf-8") == text


def test_the_reply_envelope_is_signed_over_its_own_timestamp_and_nonce():
    crypto = sample()
    envelope = wechat.read_xml(
        crypto.reply("<xml><Content><![CDATA[工单号]]></Content></xml>", 1700000000, "42").encode()
    )
    fields = {child.tag: child.text for child in envelope}
    assert fields["TimeStamp"] == "1700000000"
    assert fields["Nonce"] == "42"
    assert fields["MsgSignature"] == msg_signature(SAMPLE_TOKEN, "1700000000", "42", fields["Encrypt"])
    assert "工单号" in crypto.decrypt(encrypted_field(envelope)).decode()


def test_a_wrong_key_or_missing_appid_is_a_configuration_error_with_the_reason():
    with pytest.raises(ValueError, match="43 characters"):
        aes_key("tooshort")
    with pytest.raises(ValueError, match="base64"):
        aes_key("!" * 43)
    with pytest.raises(ValueError, match="WECHAT_APP_ID"):
        WeChatCrypto(SAMPLE_TOKEN, SAMPLE_KEY, "")
