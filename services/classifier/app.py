"""The classifier worker: appeal.received -> appeal.classified (flagged `needs_review` when unsure).

It serves the approved model (Redis key `classifier:model:approved`) and polls that key every
MODEL_CHECK_SECONDS: a newly approved model is loaded in a thread and swapped in between batches,
without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from faststream import FastStream

from services.classifier.model import CategoryModel, model_path
from services.classifier.rules import load_cues
from services.classifier.service import Classifier, approved_version, load_or_train, queue_for_review
from shared import topics
from shared.bus import batch_subscriber, parse_or_dead_letter, publish
from shared.events import AppealReceived
from shared.metrics import APPEALS_CLASSIFIED, APPEALS_FOR_REVIEW, BATCH_SECONDS
from shared.runtime import Runtime
from shared.settings import Settings

NAME = "classifier"
log = logging.getLogger(__name__)


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    state: dict[str, object] = {}
    app = rt.app(metrics_port=rt.settings.metrics_port_classifier)

    async def reload_if_approved() -> None:
        classifier: Classifier = state["classifier"]  # type: ignore[assignment]
        version = await approved_version(rt.redis)
        if version is None or version == classifier.model.version:
            return
        path = model_path(rt.settings.model_dir, version)
        if not path.is_file():
            if state.get("missing") != version:
                log.error(
                    "approved model %s not found at %s; keeping %s", version, path, classifier.model.version
                )
                state["missing"] = version
            return
        model = await asyncio.to_thread(CategoryModel.load, path)
        classifier.swap(model)
        log.info("switched to model %s", version)

    async def watch_registry() -> None:
        while True:
            await asyncio.sleep(rt.settings.model_check_seconds)
            try:
                await reload_if_approved()
            except Exception:  # a bad file or a Redis hiccup must not stop the worker
                log.exception("model reload failed; keeping the current model")

    @app.on_startup
    async def load_model() -> None:
        version = await approved_version(rt.redis)
        model = await asyncio.to_thread(load_or_train, rt.city, rt.settings.model_dir, version)
        state["classifier"] = Classifier(
            rt.city,
            model,
            threshold=rt.settings.review_confidence_threshold,
            cues=load_cues(rt.settings.city_config_dir),
        )
        log.info("serving model %s", model.version)

    @app.after_startup
    async def start_watching() -> None:
        state["watcher"] = asyncio.create_task(watch_registry())

    @app.on_shutdown
    async def stop_watching() -> None:
        task = state.get("watcher")
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @batch_subscriber(rt.broker, topics.APPEAL_RECEIVED, NAME)
    async def on_appeals_received(bodies: list[bytes]) -> None:
        started = time.perf_counter()
        appeals = await parse_or_dead_letter(
            rt.publisher, AppealReceived, topics.APPEAL_RECEIVED, bodies, NAME
        )
        classifier: Classifier = state["classifier"]  # type: ignore[assignment]
        results = classifier.classify(appeals)
        review = [r for r in results if r.needs_review]
        await queue_for_review(rt.redis, review)  # before publishing: a retry rewrites the same entry
        await publish(rt.publisher, results)
        for r in results:
            APPEALS_CLASSIFIED.labels(category=r.category).inc()
        APPEALS_FOR_REVIEW.inc(len(review))
        BATCH_SECONDS.labels(consumer=NAME).observe(time.perf_counter() - started)

    return app
