"""Character n-gram TF-IDF with a vectorised transform, for the classifier's hot path.

The same features as `TfidfVectorizer(analyzer="char", sublinear_tf=True)` (a test checks they are
equal), but `transform` does not look up every n-gram of every appeal in a Python dict: each n-gram
of up to three characters is packed into one 64-bit integer (21 bits per code point) and found in
the sorted vocabulary with numpy, a whole batch at once. This is what makes batches of thousands of
appeals per second possible on one core.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

_BITS = 21  # every Unicode code point fits in 21 bits; three of them in 63
_WHITE = re.compile(r"\s\s+")


def _pack(gram: str) -> int:
    code = 0
    for k, ch in enumerate(gram):
        code |= ord(ch) << (_BITS * k)
    return code


class CharNgramTfidf(TransformerMixin, BaseEstimator):
    def __init__(
        self, ngram_range: tuple[int, int] = (1, 3), min_df: int = 2, max_features: int | None = None,
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
            analyzer="char", ngram_range=self.ngram_range, sublinear_tf=True, min_df=self.min_df,
            max_features=self.max_features, dtype=np.float32,
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
        counts = sp.csr_matrix(
            (np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(docs), len(self.idf_))
        )  # duplicates are summed: term counts
        counts.sum_duplicates()
        counts.data = np.log(counts.data) + 1  # sublinear tf
        counts = counts @ sp.diags(self.idf_, format="csr")
        return normalize(counts, norm="l2", copy=False).astype(np.float32)
