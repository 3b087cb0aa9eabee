"""The classifier's I/O: which model is served (the model files and the registry in Redis), the one
builder of the served classifier, and the review queue. The classification itself is pure
(`classification.py`); training is the analyst's (`analyst.py`, `appeals train`).

  classifier:model:approved  JSON {version, approved_at}: the model the workers serve. Workers poll
                             it and swap models without a restart; `appeals model approve` sets it.
  classifier:review          hash ticket_no -> the AppealClassified waiting for a person
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
from redis.asyncio import Redis

from services.classifier.classification import Classifier
from services.classifier.model import CategoryModel, latest_model_path, model_path, unlearned
from services.classifier.rules import Cues, load_cues
from shared.city import City
from shared.errors import DomainError
from shared.events import AppealClassified
from shared.settings import Settings
from shared.store import ticket_key
from shared.tickets import Status

log = logging.getLogger(__name__)

APPROVED_KEY = "classifier:model:approved"
REVIEW_KEY = "classifier:review"


class NoModelError(DomainError):
    """No model file to serve: none was trained (or the folder is not the one the services read)."""

    kind = "unavailable"

    def __init__(self, model_dir: Path) -> None:
        super().__init__(
            "no_model",
            f"{model_dir}中没有分类模型：请先运行 `appeals train` 训练模型（或检查 DATA_DIR 设置）",
        )


def load_model(model_dir: Path, version: str | None = None) -> CategoryModel:
    """The approved `version` when its file is there, else the newest model in `model_dir`."""
    if version and model_path(model_dir, version).is_file():
        return CategoryModel.load(model_path(model_dir, version))
    if version:
        log.error("approved model %s not found in %s; serving the newest model instead", version, model_dir)
    path = latest_model_path(model_dir)
    if path is None:
        raise NoModelError(model_dir)
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


def warn_unlearned(model: CategoryModel, city: City) -> None:
    """Say so when the model served lacks some of the city's categories: nothing else would."""
    if missing := unlearned(model.categories, city):
        log.warning(
            "model %s was not trained on %d of the city's categories (%s): their appeals are put in "
            "others; train and approve a model (appeals train --approve)",
            model.version,
            len(missing),
            "、".join(missing),
        )


class ServedClassifier:
    """The classifier the pipeline serves, built in one place: the approved model (else the newest
    file), the city's cue lists (`cues.yaml` in CITY_CONFIG_DIR, else the defaults) and the
    configured review threshold for a model without its own. The classifier workers and the hotline
    preview each hold one, so an operator is shown the suggestion the pipeline will make.

    `refresh` follows the registry: a newly approved model is loaded off the event loop and swapped
    in; an approved version whose file is missing is logged once and the current model kept."""

    def __init__(self, city: City, model_dir: Path, *, threshold: float, cues: Cues) -> None:
        self.city = city
        self.model_dir = model_dir
        self.threshold = threshold
        self.cues = cues
        self._classifier: Classifier | None = None
        self._missing: str | None = None  # an approved version without a file, already logged
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, city: City, settings: Settings) -> ServedClassifier:
        return cls(
            city,
            settings.model_dir,
            threshold=settings.review_confidence_threshold,
            cues=load_cues(settings.city_config_dir),
        )

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            raise RuntimeError("ServedClassifier.load() was not awaited")
        return self._classifier

    async def load(self, redis: Redis) -> Classifier:
        """Build the classifier from the approved model (seconds: off the event loop)."""
        version = await approved_version(redis)
        model = await asyncio.to_thread(load_model, self.model_dir, version)
        self._classifier = Classifier(self.city, model, threshold=self.threshold, cues=self.cues)
        log.info("serving model %s", model.version)
        warn_unlearned(model, self.city)
        return self._classifier

    async def refresh(self, redis: Redis) -> bool:
        """Swap in the approved model if it is another one; True when the model changed."""
        classifier = self.classifier
        version = await approved_version(redis)
        if version is None or version == classifier.model.version:
            return False
        path = model_path(self.model_dir, version)
        if not path.is_file():
            if self._missing != version:
                log.error(
                    "approved model %s not found at %s; keeping %s", version, path, classifier.model.version
                )
                self._missing = version
            return False
        model = await asyncio.to_thread(CategoryModel.load, path)
        classifier.swap(model)
        log.info("switched to model %s", version)
        warn_unlearned(model, self.city)
        return True

    async def current(self, redis: Redis) -> Classifier:
        """The classifier, built on first use and checked against the registry on every call (one
        Redis read): for callers that classify now and then, like the hotline preview."""
        async with self._lock:
            if self._classifier is None:
                return await self.load(redis)
            await self.refresh(redis)
            return self._classifier


# --- the review queue ------------------------------------------------------------------------


async def queue_for_review(redis: Redis, results: Sequence[AppealClassified]) -> None:
    if results:
        await redis.hset(REVIEW_KEY, mapping={r.ticket_no: r.json_bytes for r in results})


async def review_page(redis: Redis, page: int | None, size: int) -> tuple[int, list[AppealClassified]]:
    """How many appeals wait for a person, and those of `page` (`size` a page; None: every one),
    oldest first. Those whose tickets were settled another way (an operator dispatched them at the
    desk) leave the queue as they are found. Each appeal and its ticket is looked at as the JSON
    kept (its time, its ticket's status), and only the page's are made models: a queue of
    thousands is read once, not parsed whole for the twenty shown."""
    raw = await redis.hgetall(REVIEW_KEY)
    nos = [no.decode() if isinstance(no, bytes) else str(no) for no in raw]
    statuses: list[str | None] = []
    for i in range(0, len(nos), 500):
        for t in await redis.mget([ticket_key(no) for no in nos[i : i + 500]]):
            statuses.append(orjson.loads(t)["status"] if t else None)
    open_ = (None, Status.RECEIVED, Status.REVIEW)
    settled = [no for no, status in zip(nos, statuses, strict=True) if status not in open_]
    await done_reviewing(redis, settled)
    waiting = sorted(
        (
            (datetime.fromisoformat(orjson.loads(v)["appeal"]["received_at"]), no, v)
            for no, v, status in zip(nos, raw.values(), statuses, strict=True)
            if status in open_
        ),
        key=lambda w: w[:2],
    )
    shown = waiting if page is None else waiting[(page - 1) * size : page * size]
    return len(waiting), [AppealClassified.model_validate_json(v) for _, _, v in shown]


async def in_review(redis: Redis, ticket_no: str) -> AppealClassified | None:
    raw = await redis.hget(REVIEW_KEY, ticket_no)
    return AppealClassified.model_validate_json(raw) if raw else None


async def done_reviewing(redis: Redis, ticket_nos: Sequence[str]) -> None:
    if ticket_nos:
        await redis.hdel(REVIEW_KEY, *ticket_nos)
