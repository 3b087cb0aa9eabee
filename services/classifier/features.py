"""TF-IDF features with fast transforms, for the classifier's hot path.

Words: the same features as `TfidfVectorizer(analyzer=segmenter, sublinear_tf=True)`, but the
vocabulary columns of each clause are cached with the clause, so a recurring clause costs one cache
hit instead of a dict lookup per word.

Characters:
The same features as `TfidfVectorizer(analyzer="char", sublinear_tf=True)` (a test checks they are
equal), but `transform` does not look up every n-gram of every appeal in a Python dict: each n-gram
of up to three characters is packed into one 64-bit integer (21 bits per code point) and found in
the sorted vocabulary with numpy, a whole batch at once. This is what makes batches of thousands of
appeals per second possible on one core.
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

    In place on the matrix's data, with no sparse product and no input checks: those (a diagonal
    matrix built, multiplied, its result checked by `normalize`) cost about a millisecond per call
    whatever the batch, three calls per batch, and a lightly loaded pipeline classifies batches of
    one to five appeals. The values are the same; the columns of a row now stay sorted."""
    counts = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_docs, len(idf))
    )  # duplicates are summed: term counts
    counts.sum_duplicates()
    counts.data = np.log(counts.data) + 1
    counts.data *= idf[counts.indices]
    inplace_csr_row_normalize_l2(counts)  # what `normalize(norm="l2")` does to a float csr matrix
    return counts


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
            code, where = code[same_doc], doc_of[:m][same_doc]
            pos = np.minimum(np.searchsorted(self.codes_, code), len(self.codes_) - 1)
            known = self.codes_[pos] == code
            rows.append(where[known])
            cols.append(self.columns_[pos[known]])
        r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        return _tfidf(r, c, len(docs), self.idf_)
