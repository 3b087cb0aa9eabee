"""The category model: a scikit-learn pipeline over title + text, saved as a versioned file.

Features: word TF-IDF over jieba tokens (domain dictionary) and character n-gram TF-IDF, which keeps
working on typos and words jieba splits badly. Classifier: a linear SVM with calibrated
probabilities (a multinomial logistic regression over its scores), so "confidence 0.8" means right
about 80% of the time (chosen by cross-validation on real appeals, see docs/classifier.md).
Two small heads share the features when the training data has them: the appeal type and the
urgency flag (the demo corpus has both; real exports often do not).

The model is label-agnostic: labels are whatever the training data says (the city's leaf ids for the
demo model, a message board's own categories for an evaluation set).

A model file is `<model_dir>/category-<version>.joblib` with its metadata beside it as JSON (version,
created at, data hash, categories, held-out metrics and the review threshold).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion
from sklearn.svm import LinearSVC
from sklearn.utils.extmath import safe_sparse_dot

from services.classifier import evaluation
from services.classifier.features import CharNgramTfidf, WordTfidf
from services.classifier.text import Segmenter, normalize
from shared.city import City

MODEL_PREFIX = "category-"
# At most this share of the appeals naming no problem reaches the review threshold (`train`).
UNCLEAR_ROUTED = 0.05
HOLDOUT_FOLDS = 3  # out-of-fold predictions for calibration, the metrics and the review threshold
C = 1.0  # the SVM's regularisation, chosen by cross-validation (docs/classifier.md)


def document(title: str, text: str) -> str:
    """What the model reads: the title (often the gist) and the text, normalised."""
    return normalize(f"{title}。{text}" if title else text)


def build_features(segmenter: Segmenter) -> FeatureUnion:
    return FeatureUnion(
        [
            ("words", WordTfidf(segmenter, min_df=2)),
            ("chars", CharNgramTfidf(ngram_range=(1, 3), min_df=2, max_features=300_000)),
            # The title (or first sentence) again on its own: it states the gist (+0.01 macro-F1 in CV).
            ("head", CharNgramTfidf(ngram_range=(1, 2), min_df=1, head=True)),
        ]
    )


class CalibratedLinear:
    """A linear SVM with calibrated probabilities: a multinomial logistic regression over its
    decision scores (all classes' scores at once, so it also learns how classes are confused).

    The calibrator is fitted on out-of-fold decision scores, so the same cross-validation gives the
    calibration and the held-out predictions the metrics and the review threshold are measured on:
    k + 1 SVM fits in all (scikit-learn's CalibratedClassifierCV fits k more for its held-out
    predictions). It beat one Platt sigmoid per class in cross-validation on real appeals
    (docs/classifier.md) and costs one (n, k) x (k, k) product per batch."""

    sigmoids_: list[tuple[float, float]]  # only in model files from before the logistic calibrator

    def __init__(self, c: float = 1.0) -> None:
        self.c = c

    def _svm(self) -> LinearSVC:
        return LinearSVC(C=self.c)

    @staticmethod
    def _scores(svm: LinearSVC, x: Any) -> np.ndarray:
        # LinearSVC.decision_function's product, without its input checks (a fixed cost per call,
        # three calls per batch): x is the features' own matrix.
        d = safe_sparse_dot(x, svm.coef_.T, dense_output=True) + svm.intercept_
        if d.shape[1] == 1:  # binary: one score for both classes
            return np.column_stack([-d[:, 0], d[:, 0]])
        return d

    def fit(self, x: Any, labels: Sequence[Any] | np.ndarray, folds: int = 3) -> np.ndarray:
        """Fit on all of x; return the out-of-fold probabilities (each row from a model without it)."""
        y = np.asarray(labels)
        self.classes_ = np.unique(y)
        oof_scores = np.zeros((len(y), len(self.classes_)))
        for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y):
            svm = self._svm().fit(x[train_idx], y[train_idx])
            cols = np.searchsorted(self.classes_, svm.classes_)
            oof_scores[np.ix_(test_idx, cols)] = self._scores(svm, x[test_idx])
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(oof_scores, y)
        # Kept as plain arrays: a softmax in numpy at prediction time. Binary: one row, the
        # positive class's logit against 0.
        self.coef_, self.intercept_ = lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64)
        self.svm_ = self._svm().fit(x, y)
        return lr.predict_proba(oof_scores)

    def _calibrate(self, scores: np.ndarray) -> np.ndarray:
        if not hasattr(self, "coef_"):  # a model file saved before: one Platt sigmoid per class
            return _platt(scores, self.sigmoids_)
        z = scores @ self.coef_.T + self.intercept_
        if z.shape[1] == 1:
            z = np.column_stack([np.zeros(len(z)), z[:, 0]])
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict_proba(self, x: Any) -> np.ndarray:
        return self._calibrate(self._scores(self.svm_, x))


def _platt(scores: np.ndarray, sigmoids: list[tuple[float, float]]) -> np.ndarray:
    a = np.array([s[0] for s in sigmoids])
    b = np.array([s[1] for s in sigmoids])
    p = 1.0 / (1.0 + np.exp(-(scores * a + b)))
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)


def data_hash(records: Sequence[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.get('title', '')}\x1f{r['text']}\x1f{r['label']}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class Prediction:
    classes: np.ndarray
    proba: np.ndarray  # (n, n_classes)
    types: list[tuple[str, float]] | None = None  # the type head's best guess and its probability
    urgent: np.ndarray | None = None  # the urgency head's probability

    def top(self, k: int = 2) -> list[list[tuple[str, float]]]:
        best = np.argsort(-self.proba, axis=1)[:, :k]
        # Whole arrays to Python lists: indexing one numpy scalar at a time cost twice as much.
        names = self.classes[best].tolist()
        probs = np.take_along_axis(self.proba, best, axis=1).tolist()
        return [list(zip(n, p, strict=True)) for n, p in zip(names, probs, strict=True)]


@dataclass
class CategoryModel:
    features: FeatureUnion
    classifier: Any
    heads: dict[str, Any] = field(default_factory=dict)  # "type", "urgent"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def categories(self) -> list[str]:
        return [str(c) for c in self.classifier.classes_]

    @property
    def threshold(self) -> float | None:
        return (self.metadata.get("metrics") or {}).get("review", {}).get("threshold")

    def transform(self, docs: Sequence[str]) -> Any:
        """The feature matrix: FeatureUnion.transform's, without its per-call machinery (joblib
        dispatch, output checks) when the union is the plain one `build_features` makes."""
        union = self.features
        parts = [t for _, t in union.transformer_list]
        if union.transformer_weights is None and all(hasattr(t, "transform") for t in parts):
            return sp.hstack([t.transform(docs) for t in parts]).tocsr()
        return union.transform(docs)

    def predict(self, docs: Sequence[str]) -> Prediction:
        x = self.transform(list(docs))
        pred = Prediction(self.classifier.classes_, self.classifier.predict_proba(x))
        if "type" in self.heads:
            head = self.heads["type"]
            p = head.predict_proba(x)
            best = p.argmax(axis=1)
            pred.types = [(str(head.classes_[j]), float(p[i, j])) for i, j in enumerate(best)]
        if "urgent" in self.heads:
            head = self.heads["urgent"]
            pred.urgent = head.predict_proba(x)[:, list(head.classes_).index(True)]
        return pred

    def predict_proba(self, docs: Sequence[str]) -> np.ndarray:
        return self.classifier.predict_proba(self.transform(list(docs)))

    def top(self, docs: Sequence[str], k: int = 2) -> list[list[tuple[str, float]]]:
        """For each document, the k most probable categories, best first."""
        return self.predict(docs).top(k)

    def save(self, model_dir: Path) -> Path:
        model_dir.mkdir(parents=True, exist_ok=True)
        path = model_dir / f"{MODEL_PREFIX}{self.version}.joblib"
        tmp = path.with_suffix(".tmp")
        blob = {
            "features": self.features,
            "classifier": self.classifier,
            "heads": self.heads,
            "metadata": self.metadata,
        }
        joblib.dump(blob, tmp)  # uncompressed: loads faster, and the service loads it at start
        tmp.replace(path)  # never leave a half-written model where the service looks
        path.with_suffix(".json").write_text(
            json.dumps(self.metadata, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        return path

    @classmethod
    def load(cls, path: Path) -> CategoryModel:
        blob = joblib.load(path)
        return cls(blob["features"], blob["classifier"], blob["heads"], blob["metadata"])


def _min_per_class(labels: Sequence[Any] | np.ndarray) -> int:
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return int(counts.min())


def fit_heads(x: Any, records: Sequence[dict[str, Any]], folds: int) -> dict[str, Any]:
    """Type and urgency heads, when every record carries `type` / `urgent` and there is a choice."""
    heads: dict[str, Any] = {}
    if all(r.get("type") for r in records) and len({r["type"] for r in records}) > 1:
        types = [r["type"] for r in records]
        if _min_per_class(types) >= folds:
            heads["type"] = CalibratedLinear(0.5)
            heads["type"].fit(x, types, folds)
    if all("urgent" in r for r in records) and len({bool(r["urgent"]) for r in records}) > 1:
        urgent = [bool(r["urgent"]) for r in records]
        if _min_per_class(urgent) >= folds:
            heads["urgent"] = CalibratedLinear(0.5)
            heads["urgent"].fit(x, urgent, folds)
    return heads


def train(
    records: Sequence[dict[str, Any]],
    segmenter: Segmenter,
    *,
    target_precision: float = 0.95,
    unclear: Sequence[dict[str, Any]] = (),
    unclear_routed: float = UNCLEAR_ROUTED,
    extra_metadata: dict | None = None,
) -> CategoryModel:
    """Fit the model on records with `text`, `label` and optional `title` (`type`, `urgent` too).

    The metrics and the review threshold stored with the model come from out-of-fold predictions
    (each appeal predicted by an SVM that did not see it); the vocabulary is fitted once on all data.
    `unclear`: appeals that name no problem (`title`, `text`; never trained on), of which at most
    `unclear_routed` may reach the review threshold (`evaluation.keeping_out`).
    """
    docs = [document(r.get("title", ""), r["text"]) for r in records]
    labels = np.asarray([str(r["label"]) for r in records])
    if len(set(labels)) < 2:
        raise ValueError("training needs at least two different labels")
    least = _min_per_class(labels)
    if least < 2:
        raise ValueError("training needs at least two examples of every label")
    folds = min(HOLDOUT_FOLDS, least)
    features = build_features(segmenter)
    x = features.fit_transform(docs)
    classifier = CalibratedLinear(C)
    oof = classifier.fit(x, labels, folds)
    metrics = evaluation.report(labels, oof, classifier.classes_, target_precision=target_precision)
    if unclear:
        confidence, correct = evaluation.confidence_and_correct(labels, oof, classifier.classes_)
        vague = classifier.predict_proba(
            features.transform([document(r.get("title", ""), r["text"]) for r in unclear])
        )
        metrics["review"] = evaluation.keeping_out(
            metrics["review"], confidence, correct, vague.max(axis=1), routed_at_most=unclear_routed
        )
    metrics["measured_on"] = f"{folds}-fold out-of-fold predictions on the training data"
    created = datetime.now(UTC)
    digest = data_hash(records)
    metadata = {
        "version": f"{created:%Y%m%dT%H%M%S%f}-{digest[:8]}",
        "created_at": created.isoformat(),
        "data_hash": digest,
        "n_train": len(records),
        "categories": sorted(set(labels.tolist())),
        "metrics": metrics,
        **(extra_metadata or {}),
    }
    return CategoryModel(features, classifier, fit_heads(x, records, folds), metadata)


def _fold_predictions(
    records: Sequence[dict[str, Any]],
    segmenter: Segmenter,
    classes: list[str],
    *,
    folds: int,
    seed: int,
    fraction: float = 1.0,
):
    """For each of `folds` stratified folds: (test indices, probabilities over `classes`) from a model
    trained on the other folds, or on a stratified `fraction` of them (the test folds never change)."""
    labels = np.asarray([str(r["label"]) for r in records])
    rng = np.random.default_rng(seed)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(np.zeros(len(labels)), labels):
        if fraction < 1.0:
            # The same share of every label, at least two (a model needs two examples of a label).
            train_idx = np.concatenate(
                [
                    rng.permutation(idx)[: max(2, round(fraction * len(idx)))]
                    for idx in (train_idx[labels[train_idx] == c] for c in np.unique(labels[train_idx]))
                ]
            )
        model = train([records[i] for i in train_idx], segmenter)
        proba = np.zeros((len(test_idx), len(classes)))
        proba[:, [classes.index(c) for c in model.categories]] = model.predict_proba(
            [document(records[i].get("title", ""), records[i]["text"]) for i in test_idx]
        )
        yield len(train_idx), test_idx, proba


def cross_validate(
    records: Sequence[dict[str, Any]],
    segmenter: Segmenter,
    *,
    folds: int = 5,
    target_precision: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """k-fold cross-validation of the whole recipe (vocabulary included): each fold trains a model on
    the other folds and predicts this one. Macro-F1 per fold (mean ± std) and the pooled report."""
    labels = np.asarray([str(r["label"]) for r in records])
    classes = sorted(set(labels.tolist()))
    oof = np.zeros((len(records), len(classes)))
    fold_f1 = []
    for _, test_idx, proba in _fold_predictions(records, segmenter, classes, folds=folds, seed=seed):
        oof[test_idx] = proba
        fold_f1.append(evaluation.report(labels[test_idx], proba, classes)["macro_f1"])
    rep = evaluation.report(labels, oof, classes, target_precision=target_precision)
    rep.update(
        folds=folds,
        fold_macro_f1=fold_f1,
        macro_f1_mean=round(float(np.mean(fold_f1)), 4),
        macro_f1_std=round(float(np.std(fold_f1)), 4),
    )
    return rep


def learning_curve(
    records: Sequence[dict[str, Any]],
    segmenter: Segmenter,
    *,
    folds: int = 5,
    fractions: Sequence[float] = (0.25, 0.5, 0.75),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Cross-validated macro-F1 when training on growing shares of each training fold, to see how
    much more labelled data would buy (`evaluation.projection`). The full share is `cross_validate`."""
    labels = np.asarray([str(r["label"]) for r in records])
    classes = sorted(set(labels.tolist()))
    points = []
    for fraction in fractions:
        sizes, f1 = [], []
        for n_train, test_idx, proba in _fold_predictions(
            records, segmenter, classes, folds=folds, seed=seed, fraction=fraction
        ):
            sizes.append(n_train)
            f1.append(evaluation.report(labels[test_idx], proba, classes)["macro_f1"])
        points.append(
            {
                "fraction": fraction,
                "n_train": round(float(np.mean(sizes))),
                "macro_f1_mean": round(float(np.mean(f1)), 4),
                "macro_f1_std": round(float(np.std(f1)), 4),
            }
        )
    return points


def unlearned(learned: Iterable[str], city: City) -> list[str]:
    """The city's categories a model was not trained on, by name (名称（id）): it never puts an appeal
    in them, so theirs go to others. A category added to the city's data after the model was
    trained is one, until a model trained since is approved."""
    known = set(learned)
    return [f"{city.category_names(c)[-1]}（{c}）" for c in city.leaf_categories if c not in known]


def list_models(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob(f"{MODEL_PREFIX}*.joblib"))


def latest_model_path(model_dir: Path) -> Path | None:
    paths = list_models(model_dir)
    return paths[-1] if paths else None


def model_path(model_dir: Path, version: str) -> Path:
    return model_dir / f"{MODEL_PREFIX}{version}.joblib"
