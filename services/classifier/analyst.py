"""What the analyst's commands do (`appeals train / evaluate / model / bench classifier`): reading a
labelled JSONL file, training, evaluating, cross-validating, approving and benchmarking models.
The typer commands in services/cli.py only parse options and print."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from services.classifier import corpus
from services.classifier.model import (
    CategoryModel,
    cross_validate,
    document,
    learning_curve,
    model_path,
    train,
)
from services.classifier.text import city_vocabulary, segmenter_for
from shared.city import City


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


def segmenter(city: City):
    return segmenter_for(frozenset(city_vocabulary(city)))


def too_rare(records: list[dict[str, Any]], least: int = 2) -> dict[str, int]:
    """Labels with fewer than `least` examples: a model cannot learn or calibrate them."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return {label: n for label, n in counts.items() if n < least}


def train_model(
    city: City, records: list[dict[str, Any]], out: Path, *, source: str, target_precision: float = 0.95
) -> Path:
    """Train and save. `out` is a folder (the file is named by version) or a `.joblib` file path.
    Labels with a single example must be left out first (`too_rare`)."""
    if len({r["label"] for r in records}) < 2:
        raise DataError("training needs at least two different labels")
    if too_rare(records):
        raise DataError(f"labels with a single example: {sorted(too_rare(records))}")
    model = train(
        records, segmenter(city), target_precision=target_precision, extra_metadata={"source": source}
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


def evaluate_model(path: Path, records: list[dict[str, Any]], target_precision: float) -> dict[str, Any]:
    from services.classifier import evaluation

    model = CategoryModel.load(path)
    proba = model.predict_proba([document(r.get("title", ""), r["text"]) for r in records])
    rep = evaluation.report(
        [r["label"] for r in records], proba, model.categories, target_precision=target_precision
    )
    unknown = sorted({r["label"] for r in records} - set(model.categories))
    rep.update(model_version=model.version, unknown_labels=unknown)
    return rep


def cross_validate_data(
    city: City, records: list[dict[str, Any]], folds: int, target_precision: float
) -> dict[str, Any]:
    return cross_validate(records, segmenter(city), folds=folds, target_precision=target_precision)


def learning_curve_data(
    city: City, records: list[dict[str, Any]], folds: int, full: dict[str, Any], target_f1: float
) -> dict[str, Any]:
    """The learning curve below the full training folds (`full` is their cross-validation report)
    and the projection to `target_f1`."""
    from services.classifier import evaluation

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


def bench_classifier(city: City, path: Path, *, n: int, batch: int = 500, seed: int = 99) -> dict[str, Any]:
    """Load the model (timed), then classify `n` demo appeals (a seed the demo model was not trained
    on) in batches as the worker does: category, grid, type and urgency, events built. One process,
    one thread: the figures are per core. Building the incoming events is not timed (the worker
    gets them from the broker)."""
    from threadpoolctl import threadpool_limits

    import services.classifier.app  # noqa: F401  (the worker's imports: memory as the service has it)
    from services.classifier.rules import load_cues
    from services.classifier.service import Classifier
    from shared.events import AppealReceived

    with threadpool_limits(1):
        started = time.perf_counter()
        model = CategoryModel.load(path)
        load_seconds = time.perf_counter() - started
        classifier = Classifier(city, model, threshold=0.5, cues=load_cues())
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
