"""Chinese text for the classifier: normalisation and jieba segmentation with a domain dictionary.

The dictionary has the governance vocabulary (shared/dictionaries/domain.txt), every category keyword,
and every compound, road and landmark name of the city, so that "阳光花园" or "拖欠工资" stay whole.
One `Segmenter` per process. The segmenter is jieba_fast_dat (jieba's algorithm in C++, 8x faster)
loaded with jieba's own dictionary, which gives jieba's words: identical on the demo corpus, and on
99.99% of the clauses of the govmsg dev set (the rest are ties between equally likely splits of
repeated characters such as 大大大).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import jieba
import jieba_fast_dat

from shared.city import City
from shared.text import nfkc

DICTIONARY_DIR = Path(__file__).resolve().parents[2] / "shared" / "dictionaries"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACE = re.compile(r"\s+")
_DIGITS = re.compile(r"\d+")
# jieba never joins words across punctuation or spaces, so segmenting clause by clause gives the same
# words, and lets a cache serve the clauses that recur in appeals (请尽快处理, 希望有关部门...).
_CLAUSE = re.compile(r"[^\s，。！？；：、,.!?;:（）()【】\[\]“”\"'《》<>…~～]+")
CLAUSE_CACHE = 50_000  # ~20 MB when full
# jieba's dictionary, not jieba_fast_dat's own (whose frequencies differ: 归谁, 盖比 would become words).
JIEBA_DICTIONARY = Path(jieba.__file__).parent / "dict.txt"

jieba_fast_dat.setLogLevel(60)  # it logs its cache loading at INFO to stderr


def normalize(text: str) -> str:
    """NFKC (full-width to half-width), no control characters, single spaces, lower-case Latin."""
    text = nfkc(text)
    text = _CONTROL.sub(" ", text)
    return _SPACE.sub(" ", text).strip().lower()


def _read_words(path: Path) -> list[str]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [w.split()[0] for w in lines if w.strip() and not w.startswith("#")]


def city_vocabulary(city: City) -> set[str]:
    words: set[str] = set()
    for cat in city.category_by_id.values():
        words.update(cat.keywords)
        words.add(cat.name)
    for info in city.grids.values():
        g = info.grid
        for place in (*g.compounds, *g.landmarks):
            words.add(place.name)
            words.update(place.aliases)
        for road in g.roads:
            words.add(road.name)
            words.update(road.aliases)
        words.update((info.community_name, info.street_name))
    return {w for w in words if len(w) >= 2}


class Segmenter:
    """jieba (jieba_fast_dat) with the domain dictionary; callable, so it can be a scikit-learn analyzer."""

    def __init__(self, extra_words: set[str] | frozenset[str] = frozenset()) -> None:
        self.extra_words = frozenset(extra_words)
        self.stopwords = frozenset(_read_words(DICTIONARY_DIR / "stopwords.txt"))
        self._jieba = jieba_fast_dat.Tokenizer(JIEBA_DICTIONARY)
        self._jieba.initialize()
        for w in _read_words(DICTIONARY_DIR / "domain.txt"):
            self._jieba.add_word(w, freq=2000)
        for w in self.extra_words:
            self._jieba.add_word(w, freq=2000)
        self._clause = lru_cache(maxsize=CLAUSE_CACHE)(self._segment_clause)

    def _segment_clause(self, clause: str) -> tuple[str, ...]:
        # HMM off: new-word discovery is slow and the domain dictionary covers the words we need.
        return tuple(w for w in self._jieba.lcut(clause, HMM=False) if w.strip() and w not in self.stopwords)

    @staticmethod
    def clauses(text: str) -> list[str]:
        """The text's clauses (between punctuation and spaces), numbers folded to 0."""
        return _CLAUSE.findall(_DIGITS.sub("0", text))

    def clause_words(self, clause: str) -> tuple[str, ...]:
        return self._clause(clause)

    def words(self, text: str) -> list[str]:
        out: list[str] = []
        for clause in self.clauses(text):
            out.extend(self._clause(clause))
        return out

    def __call__(self, text: str) -> list[str]:
        return self.words(text)

    # Pickle the word list, not jieba's in-memory trie (tens of MB); rebuild it on load.
    def __getstate__(self) -> dict:
        return {"extra_words": sorted(self.extra_words)}

    def __setstate__(self, state: dict) -> None:
        Segmenter.__init__(self, set(state["extra_words"]))


@lru_cache(maxsize=4)
def segmenter_for(words: frozenset[str]) -> Segmenter:
    return Segmenter(words)
