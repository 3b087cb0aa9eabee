"""Near-identical appeal texts, for the operator's "this is already being handled" check. Pure.

Texts are compared as sets of character 3-grams of their normalised form (no punctuation or spaces,
full-width folded, lower case): Chinese has no spaces to split words on, and 3-grams survive small
edits (a changed word, a different greeting). Two texts are near-identical when the Jaccard
similarity of their 3-gram sets is at least NEAR_IDENTICAL (0.6): the same complaint retold by
another resident usually scores 0.6-0.9, two different problems in the same compound under 0.3.
"""

from __future__ import annotations

import re

from shared.text import nfkc

NEAR_IDENTICAL = 0.6
DUPLICATE_WINDOW_SECONDS = 7 * 86400  # a grid's tickets compared with a new text: the last 7 days
_NOT_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    return _NOT_WORD.sub("", nfkc(text).lower())


def shingles(text: str, n: int = 3) -> frozenset[str]:
    s = normalize(text)
    if len(s) <= n:
        return frozenset({s}) if s else frozenset()
    return frozenset(s[i : i + n] for i in range(len(s) - n + 1))


def similarity(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def near_identical(a: str, b: str, threshold: float = NEAR_IDENTICAL) -> bool:
    return similarity(a, b) >= threshold
