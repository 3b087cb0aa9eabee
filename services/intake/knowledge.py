"""The hotline's knowledge base (知识库): which answers fit what a caller says. Pure: built from a
sequence of entries (those kept in the record, services/records/knowledge.py; the city's
`knowledge.yaml` until the record answers), then asked per call. The API process holds one and
swaps it for a new one when the base changes.

Matched on character n-grams (TF-IDF, cosine), not on jieba's words: a caller says 社保卡丢了 where
the entry says 社保卡补办, and the shared 社保/保卡 carry the match without a dictionary that knows
both. An entry filed under the category the classifier suggests (or a branch above it) ranks a
little higher: the same words mean other things in other fields.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date

from sklearn.feature_extraction.text import TfidfVectorizer

from shared.city import City, KnowledgeEntry
from shared.knowledge import review_due

MIN_SCORE = 0.12  # below it an entry shares too little with the call to be worth a look
CATEGORY_BONUS = 0.08


@dataclass(frozen=True)
class Suggestion:
    entry: KnowledgeEntry
    score: float


class KnowledgeBase:
    def __init__(self, entries: Sequence[KnowledgeEntry], city: City) -> None:
        self.city = city
        self.entries = tuple(entries)
        self.review_days = city.sla.supervision.knowledge_review_days
        self._vectorizer: TfidfVectorizer | None = None
        if self.entries:
            self._vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3), sublinear_tf=True)
            # The question and the residents' words count twice: they are how callers put it.
            self._matrix = self._vectorizer.fit_transform(
                [f"{e.question} {e.question} {' '.join(e.keywords) * 2} {e.answer}" for e in self.entries]
            )

    def search(
        self,
        text: str,
        *,
        category: str | None = None,
        within: Collection[str] | None = None,
        k: int = 3,
    ) -> list[Suggestion]:
        """The entries that fit `text` best (at most `k`, each scoring at least MIN_SCORE).
        `category`: the appeal's suggested category, a hint that ranks its entries higher; `within`:
        the only categories to answer from (the operator narrowed the search, shared/knowledge.py:
        category_filter), which leaves out the entries filed under none."""
        if self._vectorizer is None or not text.strip():
            return []
        scores = (self._matrix @ self._vectorizer.transform([text]).T).toarray().ravel()
        path = set(self.city.category_path.get(category, ())) if category else set()
        ranked = sorted(
            (
                Suggestion(e, float(s) + (CATEGORY_BONUS if e.category in path else 0.0))
                for e, s in zip(self.entries, scores, strict=True)
                if within is None or e.category in within
            ),
            key=lambda s: -s.score,
        )
        return [s for s in ranked if s.score >= MIN_SCORE][:k]

    def view(self, s: Suggestion, today: date) -> dict[str, object]:
        """A suggestion as the API gives it; `review_due`: its department has not confirmed it within
        the city's review period (the operator checks it before giving it)."""
        e = s.entry
        dept = self.city.department_by_id.get(e.department) if e.department else None
        return {
            "id": e.id,
            "question": e.question,
            "answer": e.answer,
            "category": e.category,
            "department": dept.name if dept else None,
            "reviewed": e.reviewed.isoformat() if e.reviewed else None,
            "review_due": review_due(e.reviewed, today, self.review_days),
            "score": round(s.score, 2),
        }
