"""Classification of a batch of appeals (category: model; grid: locator; type and urgency: cue lists
with the model), the model registry in Redis, and the review queue.

No Kafka here: `app.py` feeds batches in and publishes what comes out.

  classifier:model:approved  JSON {version, approved_at}: the model the workers serve. Workers poll
                             it and swap models without a restart; `appeals model approve` sets it.
  classifier:review          hash ticket_no -> the AppealClassified waiting for a person
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

from services.classifier import corpus
from services.classifier.grid import GridLocator
from services.classifier.model import CategoryModel, document, latest_model_path, model_path, train
from services.classifier.rules import Cues, load_cues
from services.classifier.text import city_vocabulary, segmenter_for
from shared.city import City
from shared.events import AppealClassified, AppealReceived, CategoryScore, now_utc

log = logging.getLogger(__name__)

APPROVED_KEY = "classifier:model:approved"
REVIEW_KEY = "classifier:review"


class Classifier:
    def __init__(
        self, city: City, model: CategoryModel, *, threshold: float, cues: Cues | None = None
    ) -> None:
        self.city = city
        self.model = model
        self.locator = GridLocator(city)
        self.default_threshold = threshold
        self.cues = cues or load_cues()
        self._names: dict[str, tuple[str, ...]] = {}

    @property
    def threshold(self) -> float:
        """The model's own threshold (chosen on held-out predictions to meet the target precision),
        else the configured one."""
        t = self.model.threshold
        return self.default_threshold if t is None else float(t)

    def swap(self, model: CategoryModel) -> None:
        self.model = model  # one attribute: a batch in flight keeps the model it started with

    def category_names(self, label: str) -> tuple[str, ...]:
        """Root to leaf when the label is one of the city's leaves, else the label itself."""
        names = self._names.get(label)
        if names is None:
            names = self.city.category_names(label) if label in self.city.category_by_id else (label,)
            self._names[label] = names
        return names

    def classify(self, appeals: Sequence[AppealReceived]) -> list[AppealClassified]:
        if not appeals:
            return []
        model, threshold = self.model, self.threshold
        pred = model.predict([document(a.title, a.text) for a in appeals])
        grids = self.locator.locate_many([(a.text, a.address, a.location) for a in appeals])
        now = now_utc()  # one clock read per batch: the batch is classified at one moment
        out = []
        for i, (appeal, top, grid) in enumerate(zip(appeals, pred.top(2), grids, strict=False)):
            category, confidence = top[0]
            full_text = f"{appeal.title} {appeal.text}"
            out.append(
                AppealClassified.caused(
                    appeal,
                    occurred_at=now,
                    appeal=appeal,
                    category=category,
                    category_names=self.category_names(category),
                    confidence=round(confidence, 4),
                    top=tuple(CategoryScore(category=c, probability=round(p, 4)) for c, p in top),
                    grid=grid,
                    appeal_type=self.cues.appeal_type(full_text, pred.types[i] if pred.types else None),
                    urgent=self.cues.is_urgent(
                        full_text,
                        appeal.urgent_flag,
                        float(pred.urgent[i]) if pred.urgent is not None else None,
                    ),
                    needs_review=confidence < threshold or grid.grid is None,
                    review_threshold=round(threshold, 4),
                    model_version=model.version,
                )
            )
        return out


def train_demo_model(city: City, model_dir: Path, *, per_category: int = 200, seed: int = 7) -> Path:
    """Train on the generated demo corpus (never on real data) and save a versioned model file."""
    records = corpus.generate(city, per_category=per_category, seed=seed)
    model = train(
        records,
        segmenter_for(frozenset(city_vocabulary(city))),
        extra_metadata={"source": f"demo corpus, seed {seed}, {per_category} per category"},
    )
    return model.save(model_dir)


def load_or_train(city: City, model_dir: Path, version: str | None = None) -> CategoryModel:
    """The approved `version` when its file is there, else the newest model in `model_dir`; on the
    first start, one trained on the demo corpus."""
    if version and model_path(model_dir, version).is_file():
        return CategoryModel.load(model_path(model_dir, version))
    if version:
        log.error("approved model %s not found in %s; serving the newest model instead", version, model_dir)
    path = latest_model_path(model_dir) or train_demo_model(city, model_dir)
    return CategoryModel.load(path)


# --- the model registry ------------------------------------------------------------------------


async def approved_version(redis: Redis) -> str | None:
    raw = await redis.get(APPROVED_KEY)
    return json.loads(raw)["version"] if raw else None


async def approve(redis: Redis, model_dir: Path, version: str) -> Path:
    """Make `version` the model every classifier worker serves (they switch within seconds)."""
    path = model_path(model_dir, version)
    if not path.is_file():
        raise FileNotFoundError(f"no model {version} in {model_dir} (expected {path.name})")
    await redis.set(
        APPROVED_KEY, json.dumps({"version": version, "approved_at": datetime.now(UTC).isoformat()})
    )
    return path


# --- the review queue ------------------------------------------------------------------------


async def queue_for_review(redis: Redis, results: Sequence[AppealClassified]) -> None:
    if results:
        await redis.hset(REVIEW_KEY, mapping={r.ticket_no: r.model_dump_json() for r in results})


async def waiting_for_review(redis: Redis) -> list[AppealClassified]:
    raw = await redis.hgetall(REVIEW_KEY)
    items = [AppealClassified.model_validate_json(v) for v in raw.values()]
    return sorted(items, key=lambda r: r.appeal.received_at)


async def in_review(redis: Redis, ticket_no: str) -> AppealClassified | None:
    raw = await redis.hget(REVIEW_KEY, ticket_no)
    return AppealClassified.model_validate_json(raw) if raw else None


async def done_reviewing(redis: Redis, ticket_nos: Sequence[str]) -> None:
    if ticket_nos:
        await redis.hdel(REVIEW_KEY, *ticket_nos)
