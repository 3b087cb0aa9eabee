"""WeChat's safe mode (安全模式) and compatible mode (兼容模式): encrypted pushes and replies. Pure.

In these modes a push is `<xml><ToUserName>..</ToUserName><Encrypt>BASE64</Encrypt></xml>` (compatible
mode keeps the plaintext fields beside it; the encrypted copy is the one we trust) and the query has
`encrypt_type=aes` and `msg_signature = sha1(sorted(token, timestamp, nonce, Encrypt))`.

Encrypt is AES-256-CBC with key = base64(EncodingAESKey + "="), IV = the key's first 16 bytes and
PKCS#7 padding to 32-byte blocks, over: 16 random bytes, the message's length (4 bytes, big-endian),
the message XML, and the account's AppID (checked: a push for another account is refused). A reply
is encrypted the same way and wrapped with its own signature, timestamp and nonce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import xml.etree.ElementTree as ET

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32  # WeChat pads to 32 bytes, not AES's 16


class CryptoError(ValueError):
    """The encrypted push cannot be read, or is not for this account."""


def aes_key(encoding_aes_key: str) -> bytes:
    """The AES key from the console's 43-character EncodingAESKey; ValueError with the reason."""
    if len(encoding_aes_key) != 43:
        raise ValueError(
            f"WECHAT_ENCODING_AES_KEY must be the 43 characters from the account's console, "
            f"got {len(encoding_aes_key)}"
        )
    try:
        return base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error:
        raise ValueError("WECHAT_ENCODING_AES_KEY is not base64 (letters and digits only)") from None


def msg_signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypted])).encode()).hexdigest()


class WeChatCrypto:
    def __init__(self, token: str, encoding_aes_key: str, app_id: str) -> None:
        if not app_id:
            raise ValueError("WECHAT_APP_ID is needed with WECHAT_ENCODING_AES_KEY (safe mode)")
        self.token, self.app_id = token, app_id
        self.key = aes_key(encoding_aes_key)

    def _cipher(self) -> Cipher:
        return Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16]))

    def signature_ok(self, sig: str, timestamp: str, nonce: str, encrypted: str) -> bool:
        expected = msg_signature(self.token, timestamp, nonce, encrypted)
        return sig.isascii() and hmac.compare_digest(expected, sig.lower())

    def decrypt(self, encrypted: str) -> bytes:
        """The message XML inside `Encrypt`; CryptoError when it is not ours or not readable."""
        try:
            data = base64.b64decode(encrypted, validate=True)
        except binascii.Error:
            raise CryptoError("Encrypt不是有效的base64") from None
        if not data or len(data) % 16:
            raise CryptoError("Encrypt长度不是AES分组的整数倍")
        decryptor = self._cipher().decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= BLOCK or len(plain) < 20 + pad:
            raise CryptoError("解密失败（EncodingAESKey不符或消息被篡改）")
        body = plain[16:-pad]
        (length,) = struct.unpack(">I", body[:4])
        xml, app_id = body[4 : 4 + length], body[4 + length :]
        if len(xml) != length or app_id.decode("utf-8", "replace") != self.app_id:
            raise CryptoError("消息不属于本公众号（AppID不符）")
        return xml

    def encrypt(self, xml: str) -> str:
        body = xml.encode("utf-8")
        plain = os.urandom(16) + struct.pack(">I", len(body)) + body + self.app_id.encode()
        pad = BLOCK - len(plain) % BLOCK
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(plain + bytes([pad]) * pad) + encryptor.finalize()).decode()

    def reply(self, xml: str, timestamp: int, nonce: str) -> str:
        """The passive reply in safe mode: the reply XML encrypted, signed and wrapped."""
        encrypted = self.encrypt(xml)
        sig = msg_signature(self.token, str(timestamp), nonce, encrypted)
        return (
            f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt><MsgSignature><![CDATA[{sig}]]></MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        )


def encrypted_field(root: ET.Element) -> str | None:
    """The `Encrypt` of a parsed push, or None for a plaintext push."""
    node = root.find("Encrypt")
    return (node.text or "").strip() if node is not None else None
