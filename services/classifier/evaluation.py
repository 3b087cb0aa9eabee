"""Measuring a category model: accuracy, macro-F1, per-class figures, confusion matrix, calibration
error, the confidence threshold that meets a target precision on auto-routed appeals, and what a
given threshold does (precision of the auto-routed appeals, their share).

Pure functions over labels and predicted probabilities (no I/O, no model): `appeals train` and
`appeals evaluate --cv` feed them held-out predictions, never the training set's own;
`appeals evaluate --model` a test set, judged at the model's own threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE: the gap between stated confidence and observed accuracy, averaged over equal-width bins
    weighted by how many predictions fall in each (0 = a confidence of 0.8 is right 80% of the time)."""
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def _unreachable(target: float) -> dict[str, float | None]:
    """No threshold meets `target`: nothing is routed automatically, everything goes to review."""
    return {
        "target_precision": target,
        "threshold": None,
        "coverage": 0.0,
        "precision": None,
        "review_share": 1.0,
    }


def threshold_for_precision(
    confidence: np.ndarray, correct: np.ndarray, target: float
) -> dict[str, float | None]:
    """The lowest confidence threshold at which the appeals routed automatically (confidence >= it)
    are right at least `target` of the time, with the share they make up (coverage). The rest go to
    review. `threshold` is None when no threshold reaches the target."""
    n = len(confidence)
    if n == 0:
        return _unreachable(target)
    order = np.argsort(-confidence, kind="stable")
    conf, ok = confidence[order], correct[order].astype(float)
    precision = np.cumsum(ok) / np.arange(1, n + 1)  # precision of the k most confident
    # Cut only between distinct confidences: everything at the threshold is auto-routed too.
    last_of_value = np.r_[conf[1:] != conf[:-1], True]
    meets = np.flatnonzero((precision >= target) & last_of_value)
    if len(meets) == 0:
        return _unreachable(target)
    k = int(meets[-1])  # the most appeals auto-routed while still meeting the target
    coverage = (k + 1) / n
    return {
        "target_precision": target,
        "threshold": float(conf[k]),
        "coverage": round(coverage, 4),
        "precision": round(float(precision[k]), 4),
        "review_share": round(1 - coverage, 4),
    }


def at_threshold(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, Any]:
    """What a given threshold does: the share of appeals routed automatically (confidence >= it, as
    the classifier decides), how often those are right, and the share left for review."""
    n = len(confidence)
    auto = confidence >= threshold
    routed = int(auto.sum())
    return {
        "threshold": threshold,
        "precision": round(float(correct[auto].mean()), 4) if routed else None,
        "auto_routed_share": round(routed / n, 4) if n else 0.0,
        "review_share": round(1 - routed / n, 4) if n else 1.0,
    }


def keeping_out(
    review: dict[str, Any],
    confidence: np.ndarray,
    correct: np.ndarray,
    unclear: np.ndarray,
    *,
    routed_at_most: float,
) -> dict[str, Any]:
    """`review` (a threshold fitted for precision on held-out `confidence` / `correct`) raised where
    needed so that at most `routed_at_most` of the appeals naming no problem (`unclear`: the model's
    confidence in their top category) reach it, with the held-out figures at the raised threshold.
    A clean corpus's appeals are right even at a low confidence, so the precision target alone sets a
    threshold that a call saying only "我要投诉" passes. `unclear` says what the raise cost and kept
    out; nothing changes when there are no such appeals or nothing is routed automatically anyway."""
    own = review.get("threshold")
    if len(unclear) == 0 or own is None:
        return review
    floor = float(np.quantile(unclear, 1 - routed_at_most, method="higher"))
    threshold = max(float(own), floor)
    raised = {**review, "precision_threshold": own}
    if threshold > own:
        at = at_threshold(confidence, correct, threshold)
        raised.update(
            threshold=threshold,
            precision=at["precision"],
            coverage=at["auto_routed_share"],
            review_share=at["review_share"],
        )
    raised["unclear"] = {
        "n": len(unclear),
        "routed_at_most": routed_at_most,
        "routed": round(float((unclear >= threshold).mean()), 4),
    }
    return raised


def confidence_and_correct(
    labels: Sequence[str] | np.ndarray, proba: np.ndarray, classes: Sequence[str] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each prediction's confidence (the top probability) and whether its top class is the label."""
    pred = np.asarray(list(classes))[proba.argmax(axis=1)]
    return proba.max(axis=1), pred == np.asarray(labels)


def report(
    labels: Sequence[str] | np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str] | np.ndarray,
    *,
    target_precision: float = 0.95,
) -> dict[str, Any]:
    """Every figure `appeals evaluate` prints, from true labels and predicted probabilities. `review`
    is the threshold fitted on these predictions to meet `target_precision`: meaningful on held-out
    predictions (training, cross-validation), only a best case on a test set."""
    classes = list(classes)
    y = np.asarray(labels)
    pred = np.asarray(classes)[proba.argmax(axis=1)]
    confidence, correct = confidence_and_correct(labels, proba, classes)
    names = sorted(set(classes) | set(y.tolist()))
    p, r, f, support = precision_recall_fscore_support(y, pred, labels=names, zero_division=0)
    return {
        "n": len(y),
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "macro_f1": round(
            float(f1_score(y, pred, labels=sorted(set(y.tolist())), average="macro", zero_division=0)), 4
        ),
        "per_class": {
            name: {
                "precision": round(float(p[i]), 4),
                "recall": round(float(r[i]), 4),
                "f1": round(float(f[i]), 4),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
        "labels": names,
        "confusion_matrix": confusion_matrix(y, pred, labels=names).tolist(),
        "calibration_error": round(expected_calibration_error(confidence, correct), 4),
        "review": threshold_for_precision(confidence, correct, target_precision),
    }


def projection(points: Sequence[dict[str, Any]], target: float, n_all: int) -> dict[str, Any]:
    """Where the learning curve is heading, from its upper half (training sizes of at least half the
    largest; curves flatten, so the steep start would promise too much): a least-squares line of
    macro-F1 over log2(training size). `at_all_data` is its value for a model trained on all `n_all`
    examples (what `appeals train` ships, a little more than each fold saw); `n_for_target` how many
    labelled examples would reach `target` if the trend held (None when the curve does not rise; the
    largest training size when it reached `target` already, `reached`).
    A rough guide, not a promise."""
    top = max(p["n_train"] for p in points)
    upper = [p for p in points if p["n_train"] >= top / 2]
    n = np.array([p["n_train"] for p in upper], dtype=float)
    f1 = np.array([p["macro_f1_mean"] for p in upper], dtype=float)
    if len(n) < 2 or np.ptp(n) == 0:
        raise ValueError("a projection needs two training sizes at least in the curve's upper half")
    slope, intercept = np.polyfit(np.log2(n), f1, 1)
    reached = bool(f1[n.argmax()] >= target)
    if reached:
        needed: int | None = int(n.max())
    elif slope <= 0:
        needed = None
    else:
        needed = int(np.ceil(2 ** ((target - intercept) / slope)))
    return {
        "target_macro_f1": target,
        "per_doubling": round(float(slope), 4),
        "n_all": n_all,
        "at_all_data": round(float(intercept + slope * np.log2(n_all)), 4),
        "n_for_target": needed,
        "reached": reached,  # the curve's largest training size has the target already
    }


def format_learning_curve(points: Sequence[dict[str, Any]], proj: dict[str, Any]) -> str:
    lines = [
        "learning curve (same test folds, stratified shares of each training fold)",
        "share  trained on  macro-F1",
    ]
    lines += [
        f"{p['fraction']:>5.0%}  {p['n_train']:>10}  {p['macro_f1_mean']:.4f} ± {p['macro_f1_std']:.4f}"
        for p in points
    ]
    target = proj["target_macro_f1"]
    lines.append(
        f"trained on all {proj['n_all']:,}: about {proj['at_all_data']:.4f} expected on unseen appeals "
        "(the trend of the curve's upper half)"
    )
    if proj["n_for_target"] is None:
        lines.append(f"macro-F1 does not rise with more data here; no projection to {target:.2f}")
    elif proj["reached"]:
        lines.append(f"{target:.2f} reached already, trained on {proj['n_for_target']:,} labelled appeals")
    else:
        lines.append(
            f"+{proj['per_doubling']:.4f} macro-F1 per doubling of the training data: "
            f"{target:.2f} at about {proj['n_for_target']:,} labelled appeals if the trend held"
        )
    return "\n".join(lines)


def _fitted(rv: dict[str, Any]) -> str:
    if rv["threshold"] is None:
        return (
            f"no confidence threshold reaches precision {rv['target_precision']:.0%}: "
            "every appeal would go to review"
        )
    return (
        f"threshold {rv['threshold']:.4f} gives precision {rv['precision']:.2%} on auto-routed "
        f"appeals (target {rv['target_precision']:.0%}), coverage {rv['coverage']:.2%}, "
        f"review {rv['review_share']:.2%}"
    )


def format_report(rep: dict[str, Any]) -> str:
    """The report as text for an analyst's terminal."""
    lines = [f"appeals evaluated: {rep['n']}"]
    if "folds" in rep:
        lines.append(
            f"cross-validation: {rep['folds']} folds, macro-F1 per fold "
            f"{', '.join(f'{x:.4f}' for x in rep['fold_macro_f1'])}"
        )
        lines.append(
            f"macro-F1 {rep['macro_f1_mean']:.4f} ± {rep['macro_f1_std']:.4f} (mean ± std over folds)"
        )
    lines += [
        f"accuracy           {rep['accuracy']:.4f}",
        f"macro-F1           {rep['macro_f1']:.4f}",
        f"calibration error  {rep['calibration_error']:.4f} (ECE, 10 bins)",
    ]
    if "best_possible_review" in rep:  # a model on a test set: as it will be served, then the best case
        rv = rep["review"]
        source = "its own" if rv["threshold_from"] == "model" else "REVIEW_CONFIDENCE_THRESHOLD"
        precision = "n/a" if rv["precision"] is None else f"{rv['precision']:.2%}"
        lines.append(
            f"at the model's threshold {rv['threshold']:.4f} ({source}): precision {precision} on "
            f"auto-routed appeals, auto-routed {rv['auto_routed_share']:.2%}, review {rv['review_share']:.2%}"
        )
        lines.append("best possible on this data (threshold fitted on it, not what the model will do):")
        lines.append("  " + _fitted(rep["best_possible_review"]))
    else:
        lines.append(_fitted(rep["review"]))
    width = max(len(n) for n in rep["per_class"]) if rep["per_class"] else 5
    lines.append("")
    lines.append(f"{'class':<{width}}  precision  recall  f1      support")
    for name, c in rep["per_class"].items():
        lines.append(
            f"{name:<{width}}  {c['precision']:.4f}     {c['recall']:.4f}  {c['f1']:.4f}  {c['support']}"
        )
    lines.append("")
    lines.append("confusion matrix (rows: true, columns: predicted, in the order above)")
    for name, row in zip(rep["labels"], rep["confusion_matrix"], strict=False):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:4d}" for v in row))
    return "\n".join(lines)
