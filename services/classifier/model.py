"""The category model: a scikit-learn pipeline over title + text, saved as a versioned file.

Features: word TF-IDF over jieba tokens (domain dictionary) and character 1-3-gram TF-IDF, which
keeps working on typos and words jieba splits badly. Classifier: a linear model with calibrated
probabilities, so "confidence 0.8" means right about 80% of the time.

A model file is `<model_dir>/category-<version>.joblib` holding the fitted pipeline and its metadata
(version, categories, data hash, metrics, created at). `latest_model_path` picks the newest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from services.classifier.text import Segmenter, normalize

MODEL_PREFIX = "category-"


def document(title: str, text: str) -> str:
    """What the model reads: the title (often the gist) and the text, normalised."""
    return normalize(f"{title}。{text}" if title else text)


def build_pipeline(segmenter: Segmenter, *, c: float = 0.5, calibration_folds: int = 3) -> Pipeline:
    features = FeatureUnion(
        [
            (
                "words",
                TfidfVectorizer(
                    analyzer=segmenter, ngram_range=(1, 1), sublinear_tf=True, min_df=2,
                    max_features=200_000, dtype=np.float32,
                ),
            ),
            (
                "chars",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=2,
                    max_features=300_000, dtype=np.float32,
                ),
            ),
        ]
    )
    classifier = CalibratedClassifierCV(LinearSVC(C=c), method="sigmoid", cv=calibration_folds)
    return Pipeline([("features", features), ("clf", classifier)])


def data_hash(records: Sequence[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.get('title', '')}\x1f{r['text']}\x1f{r['label']}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class CategoryModel:
    pipeline: Pipeline
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def categories(self) -> list[str]:
        return list(self.pipeline.classes_)

    def predict_proba(self, docs: Sequence[str]) -> np.ndarray:
        return self.pipeline.predict_proba(list(docs))

    def top(self, docs: Sequence[str], k: int = 2) -> list[list[tuple[str, float]]]:
        """For each document, the k most probable categories, best first."""
        proba = self.predict_proba(docs)
        classes = self.pipeline.classes_
        best = np.argsort(-proba, axis=1)[:, :k]
        return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(proba, best)]

    def save(self, model_dir: Path) -> Path:
        model_dir.mkdir(parents=True, exist_ok=True)
        path = model_dir / f"{MODEL_PREFIX}{self.version}.joblib"
        tmp = path.with_suffix(".tmp")
        joblib.dump({"pipeline": self.pipeline, "metadata": self.metadata}, tmp, compress=3)
        tmp.replace(path)  # never leave a half-written model where the service looks
        path.with_suffix(".json").write_text(
            json.dumps(self.metadata, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        return path

    @classmethod
    def load(cls, path: Path) -> CategoryModel:
        blob = joblib.load(path)
        return cls(pipeline=blob["pipeline"], metadata=blob["metadata"])


def train(
    records: Sequence[dict[str, Any]], segmenter: Segmenter, *, extra_metadata: dict | None = None
) -> CategoryModel:
    """Fit the pipeline on records with `text`, `label` and optional `title`."""
    docs = [document(r.get("title", ""), r["text"]) for r in records]
    labels = [r["label"] for r in records]
    pipeline = build_pipeline(segmenter)
    pipeline.fit(docs, labels)
    created = datetime.now(UTC)
    digest = data_hash(records)
    metadata = {
        "version": f"{created:%Y%m%dT%H%M%S}-{digest[:8]}",
        "created_at": created.isoformat(),
        "data_hash": digest,
        "n_train": len(records),
        "categories": sorted(set(labels)),
        **(extra_metadata or {}),
    }
    return CategoryModel(pipeline, metadata)


def latest_model_path(model_dir: Path) -> Path | None:
    paths = sorted(model_dir.glob(f"{MODEL_PREFIX}*.joblib"))
    return paths[-1] if paths else None
