"""What the analyst's commands do (`appeals corpus / train / evaluate / model / bench classifier`):
writing the demo corpus, reading a labelled JSONL file, training, evaluating, cross-validating,
listing models and benchmarking. The typer commands in services/cli.py only parse options, call
these and print. The services never import this module (nor the demo corpus it uses)."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from services.classifier import corpus, evaluation
from services.classifier.classification import Classifier, review_threshold
from services.classifier.model import (
    CategoryModel,
    cross_validate,
    document,
    latest_model_path,
    learning_curve,
    list_models,
    model_path,
    train,
)
from services.classifier.rules import Cues
from services.classifier.text import Segmenter, city_vocabulary, segmenter_for
from shared.city import City
from shared.feedback import examples


class DataError(ValueError):
    """The data file cannot be used at all (missing, empty, one label)."""


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records with `text` and `label` (and optional `title`) from a JSONL file, and a message per bad
    line ("line 7: ..."); extra fields are kept but ignored by the model."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records, problems = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"line {n}: not valid JSON ({e.msg})")
                continue
            if not isinstance(r, dict):
                problems.append(f"line {n}: not a JSON object")
                continue
            missing = [k for k in ("text", "label") if not isinstance(r.get(k), str) or not r[k].strip()]
            if missing:
                problems.append(f"line {n}: missing or empty {', '.join(missing)}")
                continue
            if "title" in r and not isinstance(r["title"], str):
                problems.append(f"line {n}: title is not a string")
                continue
            records.append(r)
    if not records:
        raise DataError(f"{path}: no usable records" + (f" ({len(problems)} bad lines)" if problems else ""))
    return records, problems


def segmenter(city: City) -> Segmenter:
    return segmenter_for(frozenset(city_vocabulary(city)))


# --- the demo corpus and the demo model -------------------------------------------------------------


def write_corpus(city: City, out: Path, *, per_category: int, seed: int) -> int:
    """Write the demo corpus for `city` as JSONL; returns how many appeals were written."""
    if per_category < 0:
        raise DataError("--per-category must be 0 or more")
    return corpus.write_jsonl(corpus.generate(city, per_category, seed), out)


def demo_records(city: City, *, per_category: int, seed: int) -> tuple[list[dict[str, Any]], str]:
    """The demo corpus as training records, and the source line stored with a model trained on it."""
    records = corpus.generate(city, per_category=per_category, seed=seed)
    return records, f"demo corpus, seed {seed}, {per_category} per category"


def train_demo_model(city: City, model_dir: Path, *, per_category: int = 200, seed: int = 7) -> Path:
    """Train on the generated demo corpus (never on real data) and save a versioned model file."""
    records, source = demo_records(city, per_category=per_category, seed=seed)
    return train(
        records, segmenter(city), unclear=corpus.unclear(seed=seed), extra_metadata={"source": source}
    ).save(model_dir)


def ensure_model(city: City, model_dir: Path) -> Path:
    """The newest model in `model_dir`; on a first start, one trained on the demo corpus now."""
    return latest_model_path(model_dir) or train_demo_model(city, model_dir)


async def reviewed_examples(redis: Redis) -> list[dict[str, Any]]:
    """Reviewers' corrections (Redis) as training records."""
    return [
        {"title": r.get("title", ""), "text": r["text"], "label": r["label"]} for r in await examples(redis)
    ]


def too_rare(records: list[dict[str, Any]], least: int = 2) -> dict[str, int]:
    """Labels with fewer than `least` examples: a model cannot learn or calibrate them."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return {label: n for label, n in counts.items() if n < least}


@dataclass(frozen=True)
class Trained:
    path: Path
    metadata: dict[str, Any]
    left_out: dict[str, int]  # labels with a single example, not trained on


def train_and_save(
    city: City, records: list[dict[str, Any]], out: Path, *, source: str, target_precision: float = 0.95
) -> Trained:
    """`appeals train`: leave out labels with a single example, train, save; the file's metadata."""
    rare = too_rare(records)
    path = train_model(
        city,
        [r for r in records if r["label"] not in rare],
        out,
        source=source,
        target_precision=target_precision,
    )
    metadata = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    return Trained(path, metadata, rare)


def train_model(
    city: City, records: list[dict[str, Any]], out: Path, *, source: str, target_precision: float = 0.95
) -> Path:
    """Train and save. `out` is a folder (the file is named by version) or a `.joblib` file path.
    Labels with a single example must be left out first (`too_rare`)."""
    if len({r["label"] for r in records}) < 2:
        raise DataError("training needs at least two different labels")
    if too_rare(records):
        raise DataError(f"labels with a single example: {sorted(too_rare(records))}")
    # The appeals naming no problem are built from fragments that fit any city's appeals.
    model = train(
        records,
        segmenter(city),
        target_precision=target_precision,
        unclear=corpus.unclear(),
        extra_metadata={"source": source},
    )
    if out.suffix == ".joblib":
        model.save(out.parent)
        saved = model_path(out.parent, model.version)
        if saved != out:
            saved.replace(out)
            saved.with_suffix(".json").replace(out.with_suffix(".json"))
        return out
    return model.save(out)


def resolve_model(model: str, model_dir: Path) -> Path:
    """A model file path, or a version found in the model folder."""
    path = Path(model)
    if path.is_file():
        return path
    if model_path(model_dir, model).is_file():
        return model_path(model_dir, model)
    raise DataError(f"{model}: no such model file, and no version {model!r} in {model_dir}")


def evaluate_model(
    path: Path, records: list[dict[str, Any]], target_precision: float, configured_threshold: float
) -> dict[str, Any]:
    """How the model will behave on `records`: the figures, and at the review threshold it will be
    served with (its own, else the configured one) the precision of the auto-routed appeals and
    their share. A threshold fitted on these records is kept apart, as the best possible here:
    fitted on the test data, it says nothing about the model's behaviour."""
    model = CategoryModel.load(path)
    labels = [r["label"] for r in records]
    proba = model.predict_proba([document(r.get("title", ""), r["text"]) for r in records])
    rep = evaluation.report(labels, proba, model.categories, target_precision=target_precision)
    confidence, correct = evaluation.confidence_and_correct(labels, proba, model.categories)
    threshold = review_threshold(model, configured_threshold)
    rep["best_possible_review"] = {**rep.pop("review"), "fitted_on": "this data"}
    rep["review"] = {
        **evaluation.at_threshold(confidence, correct, threshold),
        "threshold_from": "model" if model.threshold is not None else "REVIEW_CONFIDENCE_THRESHOLD",
    }
    unknown = sorted(set(labels) - set(model.categories))
    rep.update(model_version=model.version, unknown_labels=unknown)
    return rep


def cross_validate_data(
    city: City, records: list[dict[str, Any]], folds: int, target_precision: float
) -> dict[str, Any]:
    """k-fold cross-validation of training on `records` (the review threshold is fitted on the
    out-of-fold predictions, as `appeals train` fits the one it stores)."""
    labels = [r["label"] for r in records]
    least = min(labels.count(x) for x in set(labels))
    if least < folds:
        raise DataError(
            f"{folds}-fold cross-validation needs at least {folds} examples of every label (one has {least})"
        )
    return cross_validate(records, segmenter(city), folds=folds, target_precision=target_precision)


def learning_curve_data(
    city: City, records: list[dict[str, Any]], folds: int, full: dict[str, Any], target_f1: float
) -> dict[str, Any]:
    """The learning curve below the full training folds (`full` is their cross-validation report)
    and the projection to `target_f1`."""
    points = learning_curve(records, segmenter(city), folds=folds)
    points.append(
        {
            "fraction": 1.0,
            "n_train": round(full["n"] * (folds - 1) / folds),
            "macro_f1_mean": full["macro_f1_mean"],
            "macro_f1_std": full["macro_f1_std"],
        }
    )
    return {"points": points, "projection": evaluation.projection(points, target_f1, len(records))}


def model_table(model_dir: Path, approved: str | None) -> list[dict[str, Any]]:
    """The model files in `model_dir`, oldest first, with their figures and whether approved."""
    rows = []
    for path in list_models(model_dir):
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        rows.append(
            {
                "version": meta["version"],
                "approved": meta["version"] == approved,
                "n_train": meta.get("n_train"),
                "macro_f1": (meta.get("metrics") or {}).get("macro_f1"),
                "source": meta.get("source", ""),
            }
        )
    return rows


def bench_model_path(model: str | None, model_dir: Path) -> Path:
    """The model `appeals bench classifier` measures: the one named, else the newest."""
    if model is not None:
        return resolve_model(model, model_dir)
    path = latest_model_path(model_dir)
    if path is None:
        raise DataError(f"no model in {model_dir}: run `appeals train` first")
    return path


def _rss_mb() -> tuple[float, float]:
    """Resident memory now and at peak, in MB (Linux /proc; getrusage as the fallback for the peak)."""
    now = peak = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return now, peak


def bench_classifier(
    city: City, path: Path, cues: Cues, *, n: int, batch: int = 500, seed: int = 99
) -> dict[str, Any]:
    """Load the model (timed), then classify `n` demo appeals (a seed the demo model was not trained
    on) in batches as the worker does: category, grid, type and urgency, events built. One process,
    one thread: the figures are per core. Building the incoming events is not timed (the worker
    gets them from the broker)."""
    from threadpoolctl import threadpool_limits

    import services.classifier.app  # noqa: F401  (the worker's imports: memory as the service has it)
    from shared.events import AppealReceived

    with threadpool_limits(1):
        started = time.perf_counter()
        model = CategoryModel.load(path)
        load_seconds = time.perf_counter() - started
        classifier = Classifier(city, model, threshold=0.5, cues=cues)
        rss_loaded, _ = _rss_mb()
        per_category = max(1, -(-n // len(city.leaf_categories)))
        records = corpus.generate(city, per_category=per_category, seed=seed)[:n]
        wall = cpu = 0.0
        done = correct = located = grid_right = review = 0
        for i in range(0, len(records), batch):
            chunk = records[i : i + batch]
            appeals = [
                AppealReceived(
                    ticket_no=f"B{j:07d}",
                    channel="hotline",
                    title=r["title"],
                    text=r["text"],
                    address=r["address"],
                )
                for j, r in enumerate(chunk, i)
            ]
            started, started_cpu = time.perf_counter(), time.process_time()
            results = classifier.classify(appeals)
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
            # Counted, not kept: the worker holds one batch at a time, and so does the benchmark.
            done += len(results)
            correct += sum(r.category == rec["label"] for r, rec in zip(results, chunk, strict=False))
            located += sum(1 for r in results if r.grid.grid)
            grid_right += sum(
                r.grid.grid == rec["grid"] for r, rec in zip(results, chunk, strict=False) if r.grid.grid
            )
            review += sum(r.needs_review for r in results)
    rss, peak = _rss_mb()
    return {
        "model_version": model.version,
        "appeals": done,
        "batch": batch,
        "seconds": round(wall, 3),
        "appeals_per_second": round(done / wall, 1),
        # CPU time, not wall time: on a busy machine this is still the figure per core.
        "appeals_per_cpu_second": round(done / cpu, 1),
        "model_load_seconds": round(load_seconds, 3),
        "rss_after_load_mb": round(rss_loaded, 1),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
        "category_accuracy": round(correct / done, 4),
        "grid_found_share": round(located / done, 4),
        "grid_accuracy_when_found": round(grid_right / located, 4) if located else None,
        "review_share": round(review / done, 4),
    }
