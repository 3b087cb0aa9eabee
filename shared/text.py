"""Text as people type it, made safe to store and show. Pure."""

from __future__ import annotations

import re

# Control characters but tab and newline (a NUL cannot even be stored in PostgreSQL's text), and the
# zero-width and bidi controls that change how a text displays.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def without_controls(text: str) -> str:
    return CONTROL.sub("", text)
