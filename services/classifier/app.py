"""The classifier worker: appeal.received -> appeal.classified (and appeal.review when unsure)."""

from __future__ import annotations

import time

from faststream import FastStream

from services.classifier.service import Classifier, load_or_train
from shared import topics
from shared.bus import batch_subscriber, parse_or_dead_letter, publish
from shared.events import AppealReceived
from shared.metrics import APPEALS_CLASSIFIED, APPEALS_FOR_REVIEW, BATCH_SECONDS
from shared.runtime import Runtime
from shared.settings import Settings

NAME = "classifier"


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    state: dict[str, Classifier] = {}
    app = rt.app(metrics_port=rt.settings.metrics_port_classifier)

    @app.on_startup
    async def load_model() -> None:
        model = load_or_train(rt.city, rt.settings.model_dir)
        state["classifier"] = Classifier(
            rt.city, model, threshold=rt.settings.review_confidence_threshold
        )

    @batch_subscriber(rt.broker, topics.APPEAL_RECEIVED, NAME)
    async def on_appeals_received(bodies: list[bytes]) -> None:
        started = time.perf_counter()
        appeals = await parse_or_dead_letter(
            rt.publisher, AppealReceived, topics.APPEAL_RECEIVED, bodies, NAME
        )
        results = state["classifier"].classify(appeals)
        await publish(rt.publisher, results)
        review = [r for r in results if r.needs_review]
        await publish(rt.publisher, review, topic=topics.APPEAL_REVIEW)
        for r in results:
            APPEALS_CLASSIFIED.labels(category=r.category).inc()
        APPEALS_FOR_REVIEW.inc(len(review))
        BATCH_SECONDS.labels(consumer=NAME).observe(time.perf_counter() - started)

    return app
