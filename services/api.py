"""The HTTP API: one FastAPI app composed of each service's views (intake, router, notifier).

It holds a Kafka producer (acks=all, shared.bus.EventPublisher) and the Redis ticket store;
it runs no consumers."""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app

from services.classifier import views as classifier_views
from services.intake import open311_views, wechat_views
from services.intake import views as intake_views
from services.intake.limits import RateLimited, RateLimiter
from services.intake.preview import Previewer
from services.intake.service import IntakeService
from services.notifier import views as notifier_views
from services.notifier.ratebook import RateBook
from services.notifier.service import Notifier
from services.records import views as records_views
from services.router import views as router_views
from shared.bus import EventPublisher, ensure_topics, publish
from shared.city import load_city
from shared.http import api_error
from shared.redis_client import connect
from shared.runtime import configure_logging
from shared.settings import Settings, get_settings
from shared.store import TicketStore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    wechat_crypto = wechat_views.safe_mode(settings)  # a bad EncodingAESKey stops the start, with the reason

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level)
        redis = connect(settings.redis_url)
        publisher = EventPublisher(settings, client_id="api")
        await ensure_topics(settings)
        await publisher.start()
        store = TicketStore(redis)
        app.state.settings = settings
        app.state.wechat_crypto = wechat_crypto
        app.state.city = load_city(settings.city_config_dir)
        app.state.redis = redis
        app.state.publisher = publisher
        app.state.store = store
        limiter = RateLimiter(
            redis,
            per_caller_per_hour=settings.rate_limit_per_caller_per_hour,
            per_ip_per_minute=settings.rate_limit_per_ip_per_minute,
        )
        app.state.intake = IntakeService(publisher, store, timezone=settings.timezone, limiter=limiter)
        app.state.intake_preview = Previewer(
            app.state.city, store, settings.model_dir, settings.review_confidence_threshold
        )
        app.state.notifier = Notifier.from_settings(settings, store, partial(publish, publisher))
        app.state.ratebook = RateBook.from_settings(redis, app.state.city, settings)
        try:
            yield
        finally:
            await publisher.stop()
            await redis.aclose()

    app = FastAPI(
        title="12345 appeals API",
        description="Resident appeal intake and routing (接诉即办).",
        version="1.0",
        lifespan=lifespan,
    )
    # records_views before router_views: /tickets/export must not be read as a ticket number.
    for views in (
        intake_views,
        wechat_views,
        open311_views,
        classifier_views,
        records_views,
        router_views,
        notifier_views,
    ):
        app.include_router(views.router)
    app.mount("/metrics", make_asgi_app())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The same shape as our own validation errors: which field, and why.
        first = exc.errors()[0] if exc.errors() else {"loc": ["body"], "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return api_error(
            422,
            "invalid_request",
            f"{field}: {first['msg']}",
            field=field,
            details=[{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()],
        )

    # Any channel's submission may hit a caller's limit (the SMS view, say): 429 with Retry-After.
    app.add_exception_handler(RateLimited, lambda _, exc: intake_views.too_many(exc))

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> dict:
        await request.app.state.redis.ping()
        return {"status": "ok"}

    return app
