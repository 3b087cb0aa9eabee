"""TF-IDF features with fast transforms, for the classifier's hot path.

Words: the same features as `TfidfVectorizer(analyzer=segmenter, sublinear_tf=True)`, but the
vocabulary columns of each clause are cached with the clause, so a recurring clause costs one cache
hit instead of a dict lookup per word.

Characters:
The same features as `TfidfVectorizer(analyzer="char", sublinear_tf=True)` (a test checks they are
equal), but `transform` does not look up every n-gram of every appeal in a Python dict: each n-gram
of up to three characters is packed into one 64-bit integer (21 bits per code point) and found in a
hash table of the vocabulary with numpy, a whole batch at once (`_CodeTable`). This is what makes
batches of thousands of appeals per second possible on one core.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

_BITS = 21  # every Unicode code point fits in 21 bits; three of them in 63
_WHITE = re.compile(r"\s\s+")


def _pack(gram: str) -> int:
    code = 0
    for k, ch in enumerate(gram):
        code |= ord(ch) << (_BITS * k)
    return code


def _tfidf(rows: np.ndarray, cols: np.ndarray, n_docs: int, idf: np.ndarray) -> sp.csr_matrix:
    """Counts from (row, column) pairs, then sublinear tf, idf and l2 rows, as TfidfVectorizer does.

    The matrix is built as its parts, with no sparse product and no input checks: those (a diagonal
    matrix built, multiplied, its result checked by `normalize`) cost about a millisecond per call
    whatever the batch, three calls per batch, and a lightly loaded pipeline classifies batches of
    one to five appeals. The counts come from one sort of the pairs, each packed into an integer
    (`np.unique`): scipy's own way from pairs (to coordinates, to rows, then each row's columns
    sorted and summed) took three times as long. The values are the same; the columns of a row are
    sorted."""
    n_cols = len(idf)
    pairs, counts = np.unique(rows * n_cols + cols, return_counts=True)  # sorted: by row, then column
    doc = pairs // n_cols
    col = pairs - doc * n_cols
    indptr = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc, minlength=n_docs), out=indptr[1:])
    data = np.log(counts.astype(np.float32)) + 1
    data *= idf[col]
    matrix = sp.csr_matrix((data, col, indptr), shape=(n_docs, n_cols))
    inplace_csr_row_normalize_l2(matrix)  # what `normalize(norm="l2")` does to a float csr matrix
    return matrix


class _CodeTable:
    """The vocabulary's packed n-grams (`_pack`) and their columns in an open-addressing hash table
    that numpy probes for a whole batch at once: a multiplicative hash, then the next slot while the
    one looked at holds another code. At most a quarter full, most codes are found (or found
    missing at an empty slot) at the first slot; half full took a fifth longer. Twelve bytes a slot:
    3 MB for the demo model's 33,573 n-grams, 25 MB at the 300,000 a model keeps at most. A binary
    search of the sorted codes (`np.searchsorted`) took eight times as long, more than half the time
    of the character features."""

    _EMPTY = -1  # no packed n-gram is negative (21 bits per code point, three at most)
    _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # 2**64 over the golden ratio: spreads nearby codes

    def __init__(self, codes: np.ndarray, columns: np.ndarray) -> None:
        bits = max(4, int(np.ceil(np.log2(max(1, len(codes)) * 4))))
        self._mask = (1 << bits) - 1
        self._shift = np.uint64(64 - bits)
        self.keys = np.full(1 << bits, self._EMPTY, dtype=np.int64)
        self.values = np.zeros(1 << bits, dtype=np.int32)  # columns: a vocabulary is far below 2**31
        # Placed in rounds, as a lookup will probe: in each round every code not yet placed takes
        # its slot if it is empty (one code per slot: the first), and the others move on one slot.
        slot, todo = self._slots(codes), np.arange(len(codes))
        while len(todo):
            free = self.keys[slot] == self._EMPTY
            slots, first = np.unique(slot[free], return_index=True)
            taken = todo[free][first]
            self.keys[slots], self.values[slots] = codes[taken], columns[taken]
            placed = np.zeros(len(todo), dtype=bool)
            placed[np.flatnonzero(free)[first]] = True
            todo, slot = todo[~placed], (slot[~placed] + 1) & self._mask

    def _slots(self, codes: np.ndarray) -> np.ndarray:
        return ((codes.astype(np.uint64) * self._MULTIPLIER) >> self._shift).astype(np.int64)

    def columns(self, codes: np.ndarray) -> np.ndarray:
        """Each code's column, -1 for a code not in the vocabulary."""
        out = np.full(len(codes), -1, dtype=np.int64)
        slot, todo = self._slots(codes), np.arange(len(codes))
        while len(todo):
            found = self.keys[slot]
            hit = found == codes
            out[todo[hit]] = self.values[slot[hit]]
            on = ~hit & (found != self._EMPTY)
            todo, slot, codes = todo[on], (slot[on] + 1) & self._mask, codes[on]
        return out


class WordTfidf(TransformerMixin, BaseEstimator):
    def __init__(self, segmenter: Any = None, min_df: int = 2, cache_size: int = 50_000):
        self.segmenter = segmenter
        self.min_df = min_df
        self.cache_size = cache_size

    def fit(self, docs: Sequence[str], y=None) -> WordTfidf:
        tfidf = TfidfVectorizer(
            analyzer=self.segmenter, sublinear_tf=True, min_df=self.min_df, dtype=np.float32
        ).fit(docs)
        self.vocabulary_ = tfidf.vocabulary_
        self.idf_ = tfidf.idf_.astype(np.float32)
        self._make_cache()
        return self

    def fit_transform(self, docs: Sequence[str], y=None) -> sp.csr_matrix:
        return self.fit(docs).transform(docs)

    def _make_cache(self) -> None:
        self._columns = lru_cache(maxsize=self.cache_size)(self._clause_columns)

    def _clause_columns(self, clause: str) -> tuple[int, ...]:
        vocab = self.vocabulary_
        return tuple(vocab[w] for w in self.segmenter.clause_words(clause) if w in vocab)

    def transform(self, docs: Sequence[str]) -> sp.csr_matrix:
        rows: list[int] = []
        cols: list[int] = []
        for i, doc in enumerate(docs):
            before = len(cols)
            for clause in self.segmenter.clauses(doc):
                cols.extend(self._columns(clause))
            rows.extend([i] * (len(cols) - before))
        return _tfidf(
            np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), len(docs), self.idf_
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_columns", None)  # a cache, rebuilt on load
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if hasattr(self, "vocabulary_"):
            self._make_cache()


class CharNgramTfidf(TransformerMixin, BaseEstimator):
    def __init__(
        self,
        ngram_range: tuple[int, int] = (1, 3),
        min_df: int = 2,
        max_features: int | None = None,
        head: bool = False,
    ):
        self.ngram_range = ngram_range
        self.min_df = min_df
        self.max_features = max_features
        self.head = head  # only the first sentence: the title when there is one (see model.document)

    def _docs(self, docs: Sequence[str]) -> list[str]:
        return [d.split("。", 1)[0] for d in docs] if self.head else list(docs)

    def fit(self, docs: Sequence[str], y=None) -> CharNgramTfidf:
        if not 1 <= self.ngram_range[0] <= self.ngram_range[1] <= 3:
            raise ValueError("CharNgramTfidf packs at most three characters per n-gram")
        tfidf = TfidfVectorizer(
            analyzer="char",
            ngram_range=self.ngram_range,
            sublinear_tf=True,
            min_df=self.min_df,
            max_features=self.max_features,
            dtype=np.float32,
        ).fit(self._docs(docs))
        grams = list(tfidf.vocabulary_)
        codes = np.array([_pack(g) for g in grams], dtype=np.int64)
        columns = np.array([tfidf.vocabulary_[g] for g in grams], dtype=np.int64)
        order = np.argsort(codes)
        self.codes_, self.columns_ = codes[order], columns[order]
        self.idf_ = tfidf.idf_.astype(np.float32)
        self._table = _CodeTable(self.codes_, self.columns_)
        return self

    def fit_transform(self, docs: Sequence[str], y=None) -> sp.csr_matrix:
        return self.fit(docs).transform(docs)

    def transform(self, docs: Sequence[str]) -> sp.csr_matrix:
        docs = [_WHITE.sub(" ", d.lower()) for d in self._docs(docs)]  # as the char analyzer does
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        points = np.frombuffer("".join(docs).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        doc_of = np.repeat(np.arange(len(docs)), lengths)
        rows, cols = [], []
        for n in range(self.ngram_range[0], self.ngram_range[1] + 1):
            m = len(points) - n + 1
            if m <= 0:
                continue
            code = points[:m].copy()
            for k in range(1, n):
                code |= points[k : k + m] << (_BITS * k)
            same_doc = doc_of[:m] == doc_of[n - 1 : n - 1 + m]  # no n-gram across two appeals
            column = self._table.columns(code[same_doc])
            known = column >= 0
            rows.append(doc_of[:m][same_doc][known])
            cols.append(column[known])
        r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        return _tfidf(r, c, len(docs), self.idf_)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_table", None)  # made from the codes, on load
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if hasattr(self, "codes_"):
            self._table = _CodeTable(self.codes_, self.columns_)
