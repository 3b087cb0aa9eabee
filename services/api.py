"""The HTTP API: one FastAPI app composed of each service's views (intake, router, notifier).

It holds a Kafka producer (acks=all, shared.bus.EventPublisher) and the Redis ticket store;
it runs no consumers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from zoneinfo import ZoneInfo

from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import make_asgi_app
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from services.access import views as access_views
from services.classifier import views as classifier_views
from services.classifier.service import ServedClassifier
from services.console import callbacks as console_callbacks
from services.console import reported as console_reported
from services.console import views as console_views
from services.intake import open311_views, photo_views, wechat_views
from services.intake import views as intake_views
from services.intake.knowledge import KnowledgeBase
from services.intake.limits import RateLimiter
from services.intake.preview import Previewer
from services.intake.queries import ProgressQueries
from services.intake.service import IntakeService
from services.intake.sms import SmsIntake
from services.notifier import views as notifier_views
from services.notifier.scorecard import Scorecard
from services.notifier.service import Notifier
from services.records import knowledge_views as records_knowledge_views
from services.records import privacy_views as records_privacy_views
from services.records import stats_views as records_stats_views
from services.records import views as records_views
from services.records.callers import CallerHistories
from services.records.knowledge import Follower, KnowledgeService
from services.records.views import open_pool
from services.router import views as router_views
from services.router.service import FollowUps
from shared.bodies import BodyLimits, Limit
from shared.bus import EventPublisher, ensure_topics, publish
from shared.city import KnowledgeEntry, load_city, warn_if_calendar_runs_out
from shared.errors import DomainError, Unavailable
from shared.http import api_error, domain_error, http_exception, schema_words, valid_path_params
from shared.lookup_link import lookup_links
from shared.photo_store import PhotoStore
from shared.privacy import check_salt
from shared.redis_client import connect
from shared.runtime import configure_logging, readiness, settle_heap
from shared.settings import Settings, get_settings
from shared.store import TicketStore

log = logging.getLogger(__name__)


def follow_knowledge(app: FastAPI) -> asyncio.Task[None]:
    """The knowledge base operators are suggested: the city's file at once, then the record's entries
    (seeded from the file), reloaded whenever any replica changes them (services/records/knowledge.py)."""
    state = app.state
    city, previewer = state.city, state.intake_preview

    def install(entries: Sequence[KnowledgeEntry]) -> None:
        previewer.knowledge = KnowledgeBase(entries, city)  # swapped whole: a search in flight keeps its own

    async def service() -> KnowledgeService:
        await open_pool(state)
        if getattr(state, "knowledge_service", None) is None:
            state.knowledge_service = KnowledgeService(
                state.records_pool,
                state.redis,
                city,
                timezone=state.settings.timezone,
                on_change=follower.wake,
            )
        return state.knowledge_service

    follower = Follower(service, state.redis, city.knowledge, install)
    state.knowledge_follower = follower
    state.knowledge_service_of = service  # the views' way to it
    return asyncio.create_task(follower.run(), name="knowledge-follower")


def create_app(settings: Settings | None = None, *, serving: bool = False) -> FastAPI:
    """The API and the console. `serving`: the process serves it (`appeals run api`), so the
    garbage collector is set for serving once it has started (`shared.runtime.settle_heap`); tests
    leave their own process's collector alone."""
    settings = settings or get_settings()
    wechat_crypto = wechat_views.safe_mode(settings)  # a bad EncodingAESKey stops the start, with the reason
    check_salt(settings)  # so does a public caller-id salt in production
    links = lookup_links(settings)  # and a WECHAT_TEMPLATE_URL that is no URL

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level)
        redis = connect(settings.redis_url)
        publisher = EventPublisher(settings, client_id="api", linger_ms=settings.kafka_api_linger_ms)
        await ensure_topics(settings)
        await publisher.start()
        store = TicketStore(redis)
        app.state.settings = settings
        app.state.wechat_crypto = wechat_crypto
        app.state.city = load_city(settings.city_config_dir)
        warn_if_calendar_runs_out(app.state.city, settings.city_config_dir)  # sla.yaml's next year
        # Ticket changes made here keep their timers and queue entries in the same write.
        FollowUps.attach(store, app.state.city.sla.supervision)
        app.state.redis = redis
        app.state.publisher = publisher
        app.state.store = store
        app.state.photos = PhotoStore.from_settings(settings, redis)
        limiter = RateLimiter(
            redis,
            per_caller_per_hour=settings.rate_limit_per_caller_per_hour,
            per_ip_per_minute=settings.rate_limit_per_ip_per_minute,
        )
        app.state.intake = IntakeService(
            publisher,
            store,
            timezone=settings.timezone,
            limiter=limiter,
            public_channels=settings.public_channels,
        )
        app.state.progress = ProgressQueries(store, limiter, timezone=settings.timezone)
        app.state.lookup_links = links  # the answer to 查询 in WeChat links each ticket it names
        app.state.sms_intake = SmsIntake(app.state.intake, app.state.progress)
        # The operator's preview asks the record for the caller's history through the API's own
        # pool, opened on first use; the record being away only leaves the history out.
        histories = CallerHistories(partial(open_pool, app.state), ZoneInfo(settings.timezone))
        app.state.intake_preview = Previewer(
            app.state.city,
            store,
            ServedClassifier.from_settings(app.state.city, settings),
            timezone=settings.timezone,
            history=histories.view,
        )
        following = follow_knowledge(app)
        app.state.notifier = Notifier.from_settings(
            settings, store, partial(publish, publisher), city=app.state.city
        )
        app.state.scorecard = Scorecard.from_settings(redis, app.state.city, settings)
        if serving:
            settle_heap()  # as the workers do: a request's objects live until it is answered
        try:
            yield
        finally:
            following.cancel()
            with suppress(asyncio.CancelledError):
                await following
            pool = getattr(app.state, "records_pool", None)
            if pool is not None:
                await pool.close()
            await publisher.stop()
            await redis.aclose()

    app = FastAPI(
        title="12345 appeals API",
        description="Resident appeal intake and routing (接诉即办).",
        version="1.0",
        lifespan=lifespan,
        dependencies=[Depends(valid_path_params)],
    )
    # records_views before router_views: /tickets/export must not be read as a ticket number.
    for views in (
        intake_views,
        photo_views,
        wechat_views,
        open311_views,
        classifier_views,
        records_views,
        records_privacy_views,
        records_stats_views,
        records_knowledge_views,
        router_views,
        notifier_views,
        access_views,
    ):
        app.include_router(views.router)
    app.mount("/metrics", make_asgi_app())
    app.add_middleware(
        BodyLimits,
        default=Limit(settings.max_body_bytes, "请精简内容后重试"),
        by_prefix={
            **intake_views.body_limits(settings),
            **photo_views.body_limits(settings),
            **console_views.body_limits(settings),
        },
    )
    app.include_router(console_callbacks.router)  # before the console's catch-all for unknown pages
    app.include_router(console_reported.router)
    console_views.mount(app)  # the web console at /, and /docs served without a CDN

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The same shape as our own validation errors: which field, and why.
        first = exc.errors()[0] if exc.errors() else {"loc": ["body"], "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path", "header"))
        field = field or "body"
        # The constraint in words where there are some (不能大于30), for a client to show its user.
        words = schema_words(first)
        return api_error(
            422,
            "invalid_request",
            f"请求参数{field}不符合要求（{words or first['msg']}），请按接口文档填写",
            field=field,
            expected=words,
            details=[{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()],
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_exception(exc)  # 401/403 from authentication, 404/405 from routing, 413: one shape

    async def store_away(request: Request, exc: Exception) -> JSONResponse:
        # Redis or the broker cannot be reached: nothing a client did, and a retry may work.
        log.warning("%s %s: %r", request.method, request.url.path, exc)
        return domain_error(Unavailable())

    for away in (RedisConnectionError, RedisTimeoutError, KafkaError):
        app.add_exception_handler(away, store_away)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up while its request was still coming in (a browser closed, a phone's
        # link dropped): nothing was taken and nobody is left to answer. Not a server error: it
        # was logged as one, with a traceback, for every such request.
        log.info("%s %s: the client went away before its request was read", request.method, request.url.path)
        return Response(status_code=499)  # "client closed request", as nginx logs it; never sent

    @app.exception_handler(DomainError)
    async def refused(request: Request, exc: DomainError) -> JSONResponse:
        # Pure code and services raise these (a rate limit, a broker away, an invalid field); every
        # view lets them through to here, so every refusal has the one shape.
        return domain_error(exc)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> dict:
        await request.app.state.redis.ping()
        return {"status": "ok"}

    # Liveness: the process answers (a Redis or broker outage is no reason to restart it).
    @app.get("/livez", include_in_schema=False)
    async def livez() -> dict:
        return {"status": "ok"}

    # Readiness: Redis and the broker answer; otherwise take this replica out of the load balancer.
    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        state = request.app.state
        problems = await readiness({"redis": state.redis.ping, "broker": state.publisher.check})
        ok = not any(problems.values())
        body = {"status": "ok" if ok else "unavailable", **{k: v or "ok" for k, v in problems.items()}}
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
