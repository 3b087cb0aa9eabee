"""Reading a rendered console page's markup in unit tests (no browser)."""

from __future__ import annotations

import re


def described_by(html: str, field_id: str) -> list[str]:
    """The ids a field's aria-describedby names, each checked to be on the page. The field is found
    by its id wherever it stands among the tag's attributes (a radio's type comes first)."""
    tag = re.search(rf'<(?:input|textarea|select)\s(?:[^<>]*\s)?id="{re.escape(field_id)}"[^<>]*>', html)
    assert tag is not None, field_id
    found = re.search(r'aria-describedby="([^"]*)"', tag[0])
    ids = found[1].split() if found else []
    for i in ids:
        assert f'id="{i}"' in html, f"{field_id} names {i}, which is not on the page"
    return ids
