"""The analyst's commands as a city runs them: train on a JSONL file with any labels, evaluate a model
(text and --json), cross-validate on the real message-board data, and the classifier benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.classifier import corpus
from services.classifier.model import CategoryModel
from services.cli import cli
from shared.settings import get_settings
from tests.cities import demo_city
from tests.conftest import ROOT

# Every test here runs `appeals` to train or load a model: seconds to tens of seconds each, so they
# belong with the slow group, not the one that runs in seconds.
pytestmark = pytest.mark.integration

GOVMSG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "govmsg"


def appeals(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`appeals ARGS` as a shell runs it: a process of its own (the training and the benchmark)."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def appeals_here(*args: str) -> subprocess.CompletedProcess:
    """`appeals ARGS` run by the same command-line code in this process: the same options, exit
    code, stdout and stderr, without paying a fresh Python's imports of scikit-learn and jieba
    (seconds each) for every check of what `evaluate` prints."""
    get_settings.cache_clear()  # the environment as it is now, as a new process would read it
    r = CliRunner().invoke(cli, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(["appeals", *args], r.exit_code, r.stdout, r.stderr)


def top_level(records: list[dict]) -> list[dict]:
    """Demo appeals labelled with their first-level category name: labels that are not city leaves."""
    city = demo_city()
    return [{**r, "label": city.category_names(r["label"])[0]} for r in records]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cli")
    data = d / "train.jsonl"
    corpus.write_jsonl(top_level(corpus.generate(demo_city(), per_category=8, seed=31)), data)
    with data.open("a", encoding="utf-8") as f:
        f.write("{broken\n")
        f.write(json.dumps({"title": "没有正文", "label": "城市管理"}, ensure_ascii=False) + "\n")
    out = appeals("train", "--data", str(data), "--out", str(d / "model.joblib"))
    assert out.returncode == 0, out.stderr
    n = sum(1 for _ in data.open(encoding="utf-8"))
    assert f"line {n - 1}: not valid JSON" in out.stderr
    assert f"line {n}: missing or empty text" in out.stderr
    test = d / "test.jsonl"
    corpus.write_jsonl(top_level(corpus.generate(demo_city(), per_category=3, seed=32)), test)
    return d / "model.joblib", test


def test_train_writes_a_versioned_model_with_its_metadata(trained):
    model, _ = trained
    meta = json.loads(model.with_suffix(".json").read_text(encoding="utf-8"))
    assert {"version", "created_at", "data_hash", "categories", "metrics", "n_train"} <= set(meta)
    assert "城市管理" in meta["categories"]
    assert len(meta["data_hash"]) == 16
    assert meta["metrics"]["review"]["target_precision"] == 0.95


def test_evaluate_prints_the_figures_and_one_json_object(trained):
    model, test = trained
    out = appeals_here("evaluate", "--model", str(model), "--data", str(test), "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["n"] == sum(1 for _ in test.open(encoding="utf-8"))
    assert 0 <= rep["macro_f1"] <= 1
    assert 0 <= rep["accuracy"] <= 1
    assert 0 <= rep["calibration_error"] <= 1
    assert set(rep["per_class"]["城市管理"]) == {"precision", "recall", "f1", "support"}
    assert len(rep["confusion_matrix"]) == len(rep["labels"])
    text = appeals_here("evaluate", "--model", str(model), "--data", str(test))
    assert text.returncode == 0
    assert "macro-F1" in text.stdout
    assert "confusion matrix" in text.stdout


def with_threshold(model: Path, threshold: float, folder: Path) -> Path:
    """A copy of `model` that stores another review threshold."""
    m = CategoryModel.load(model)
    metrics = {**m.metadata["metrics"], "review": {**m.metadata["metrics"]["review"], "threshold": threshold}}
    m.metadata = {**m.metadata, "version": f"t{threshold}", "metrics": metrics}
    return m.save(folder)


def test_evaluate_reports_the_models_own_threshold_not_one_fitted_on_the_test_data(trained, tmp_path):
    model, test = trained
    own = json.loads(model.with_suffix(".json").read_text(encoding="utf-8"))["metrics"]["review"]["threshold"]
    rep = json.loads(appeals_here("evaluate", "--model", str(model), "--data", str(test), "--json").stdout)
    assert rep["review"]["threshold"] == own
    assert rep["review"]["threshold_from"] == "model"
    assert rep["best_possible_review"]["fitted_on"] == "this data"

    # At a stored threshold of 0 every appeal is routed automatically: precision is the accuracy.
    everything = with_threshold(model, 0.0, tmp_path)
    rep = json.loads(
        appeals_here("evaluate", "--model", str(everything), "--data", str(test), "--json").stdout
    )
    assert rep["review"]["auto_routed_share"] == 1.0
    assert rep["review"]["review_share"] == 0.0
    assert rep["review"]["precision"] == rep["accuracy"]

    # Above every confidence nothing is: the report says so instead of fitting a threshold.
    nothing = with_threshold(model, 1.01, tmp_path)
    out = appeals_here("evaluate", "--model", str(nothing), "--data", str(test))
    assert out.returncode == 0, out.stderr
    assert "at the model's threshold 1.0100 (its own): precision n/a" in out.stdout
    assert "auto-routed 0.00%" in out.stdout
    assert "best possible on this data" in out.stdout


def test_evaluate_refuses_what_it_cannot_do(trained, tmp_path):
    model, test = trained
    assert appeals_here("evaluate", "--data", str(test)).returncode == 2  # neither --model nor --cv
    no_cv = appeals_here("evaluate", "--model", str(model), "--data", str(test), "--learning-curve")
    assert no_cv.returncode == 2
    assert "--learning-curve needs --cv" in no_cv.stderr
    missing = appeals_here("evaluate", "--model", str(model), "--data", str(tmp_path / "none.jsonl"))
    assert missing.returncode == 2
    assert "no such file" in missing.stderr


def test_bench_prints_speed_load_time_and_memory(trained):
    model, _ = trained
    out = appeals("bench", "classifier", "--model", str(model), "--n", "300", "--json")
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["appeals"] == 300
    assert figures["appeals_per_second"] > 0
    assert figures["model_load_seconds"] > 0
    assert figures["peak_rss_mb"] > 0


def test_cross_validation_on_the_real_message_board_data(tmp_path):
    if not (GOVMSG / "dev.jsonl").is_file():
        pytest.skip(f"real data not here ({GOVMSG}/dev.jsonl); see docs/classifier.md")
    # A quick run: 2 folds over every other message. The README's figure is the full 5-fold run.
    lines = (GOVMSG / "dev.jsonl").read_text(encoding="utf-8").splitlines()[::2]
    data = tmp_path / "govmsg-half.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = appeals_here("evaluate", "--data", str(data), "--cv", "2", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["n"] == len(lines)
    assert len(rep["per_class"]) == 7
    assert rep["folds"] == 2
    assert 0.6 < rep["macro_f1_mean"] <= 1.0  # sane, far above chance (~0.14), not a tuned number


def test_learning_curve_trains_on_growing_shares_of_the_same_folds(tmp_path):
    data = tmp_path / "train.jsonl"
    corpus.write_jsonl(top_level(corpus.generate(demo_city(), per_category=6, seed=33)), data)
    out = appeals_here("evaluate", "--data", str(data), "--cv", "2", "--learning-curve", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    points = rep["learning_curve"]["points"]
    assert [p["fraction"] for p in points] == [0.25, 0.5, 0.75, 1.0]
    sizes = [p["n_train"] for p in points]
    assert sizes == sorted(sizes)
    assert sizes[-1] == rep["n"] // 2
    assert points[-1]["macro_f1_mean"] == rep["macro_f1_mean"]
    assert rep["learning_curve"]["projection"]["n_all"] == rep["n"]
    text = appeals_here("evaluate", "--data", str(data), "--cv", "2", "--learning-curve")
    assert text.returncode == 0
    assert "learning curve" in text.stdout
    assert "per doubling" in text.stdout


def test_appeals_up_names_the_model_the_workers_serve_the_approved_one(settings, tmp_path: Path):
    """Not the newest file when another is approved: `up` said "model <newest>" while the workers
    served the approved one."""
    import redis as sync_redis

    from services import cli
    from services.classifier.service import APPROVED_KEY

    # A database of Redis no other test uses: the approval there reaches no running classifier.
    url = settings.redis_url.rsplit("/", 1)[0] + "/9"
    mine = settings.model_copy(update={"redis_url": url, "data_dir": tmp_path})
    mine.model_dir.mkdir(parents=True)
    for version in ("20261101-000000", "20261201-000000"):
        (mine.model_dir / f"category-{version}.joblib").write_bytes(b"")
        (mine.model_dir / f"category-{version}.json").write_text(json.dumps({"version": version}))
    r = sync_redis.Redis.from_url(url)
    try:
        r.delete(APPROVED_KEY)
        assert cli._served_model(mine) == (
            mine.model_dir / "category-20261201-000000.joblib",
            "model 20261201-000000 (the newest; none approved)",
        )
        r.set(APPROVED_KEY, json.dumps({"version": "20261101-000000"}))
        assert cli._served_model(mine) == (
            mine.model_dir / "category-20261101-000000.joblib",
            "model 20261101-000000 (approved)",
        )
        r.set(APPROVED_KEY, json.dumps({"version": "20251231-000000"}))  # its file is gone
        path, said = cli._served_model(mine)
        assert path.name == "category-20261201-000000.joblib"
        assert "the approved 20251231-000000 is not in" in said
    finally:
        r.delete(APPROVED_KEY)
        r.close()
