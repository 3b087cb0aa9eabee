"""The classifier worker: appeal.received -> appeal.classified (flagged `needs_review` when unsure).

It serves the approved model (Redis key `classifier:model:approved`, see `service.ServedClassifier`)
and checks that key every MODEL_CHECK_SECONDS: a newly approved model is loaded in a thread and
swapped in between batches, without a restart."""

from __future__ import annotations

import logging

from faststream import FastStream
from threadpoolctl import threadpool_limits

from services.classifier.service import ServedClassifier, queue_for_review
from shared.bus import callers_path, publish
from shared.events import AppealReceived
from shared.metrics import APPEALS_CLASSIFIED, APPEALS_FOR_REVIEW
from shared.runtime import Runtime, run_periodically
from shared.settings import Settings

NAME = "classifier"
log = logging.getLogger(__name__)


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    served = ServedClassifier.from_settings(rt.city, rt.settings)
    # One thread for NumPy's BLAS, for good: a worker is one core's work (more cores, more
    # replicas). With a thread per core, OpenBLAS's idle threads spin between a batch's small
    # products and took a quarter of this worker's CPU from the other processes (perf, flat out).
    threadpool_limits(1)
    app = rt.app(metrics_port=rt.settings.metrics_port_classifier)

    @app.on_startup
    async def load_model() -> None:
        await served.load(rt.redis)

    # A bad file or a Redis hiccup is logged and the current model kept; the next round retries.
    run_periodically(app, rt.settings.model_check_seconds, lambda: served.refresh(rt.redis), "model reload")

    async def on_appeals_received(appeals: list[AppealReceived]) -> None:
        results = served.classifier.classify(appeals)
        review = [r for r in results if r.needs_review]
        await queue_for_review(rt.redis, review)  # before publishing: a retry rewrites the same entry
        await publish(rt.publisher, results)
        for r in results:
            APPEALS_CLASSIFIED.labels(category=r.category).inc()
        APPEALS_FOR_REVIEW.inc(len(review))

    # On the caller's path to the assignment: polled often (see shared.bus).
    rt.subscribe(AppealReceived, on_appeals_received, **callers_path(rt.settings))
    return app
