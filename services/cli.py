"""`appeals`: the command line. `appeals up` runs the whole system embedded; `appeals run X` runs one
service against the servers named by KAFKA_BOOTSTRAP_SERVERS and REDIS_URL (as deploy/ does)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import typer

from services.dlq import dlq_cli
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.city import City

cli = typer.Typer(help="12345 appeal intake and routing (接诉即办).", no_args_is_help=True)
cli.add_typer(dlq_cli, name="dlq")


# The embedded PostgreSQL of `appeals up`: beside a system PostgreSQL on 5432. The record's commands
# (`appeals records ...`, `appeals privacy erase`) reach it there without DATABASE_URL, as the other
# commands reach `appeals up`'s Redis by REDIS_URL's default.
UP_POSTGRES_PORT = 5433


class Service(StrEnum):
    api = "api"
    intake = "intake"
    classifier = "classifier"
    router = "router"
    meetings = "meetings"
    notifier = "notifier"
    records = "records"


def _worker_app(name: str):
    from services.launcher import worker_app

    return worker_app(name)


@cli.command()
def run(service: Service) -> None:
    """Run one service in the foreground (servers from KAFKA_BOOTSTRAP_SERVERS / REDIS_URL)."""
    from shared.privacy import UnsafeSettings, check_salt

    s = get_settings()
    _keep_freed_memory()
    try:
        check_salt(s)
    except UnsafeSettings as e:
        _fail(str(e))
    if service in (Service.api, Service.classifier):
        _ensure_model(s)  # both serve the model (the API in its hotline preview)
    if service is Service.api:
        import uvicorn

        from services.api import create_app

        # uvloop (libuv's event loop) and httptools (llhttp) to parse HTTP, both in C: a submitted
        # appeal took 4 to 9% less of the API's CPU than on asyncio's loop and h11 (README, Why
        # these libraries). Named, not left to uvicorn's "auto", which would fall back silently.
        uvicorn.run(
            create_app(s, serving=True),
            host=s.api_host,
            port=s.api_port,
            log_level="warning",
            loop="uvloop",
            http="httptools",
            # Longer than any client's idle keep-alive (browsers, httpx's 5 s, a proxy's 60 s): a
            # server that closes an idle connection first races the client's next request on it,
            # which the client sees as a dropped connection. uvicorn's default is 5 s.
            timeout_keep_alive=75,
        )
        return
    # The workers stay on asyncio's own loop: on uvloop they took no less CPU per appeal in five
    # alternating pipeline benchmarks on a quiet machine.
    asyncio.run(_worker_app(service.value).run())


def take_sigint() -> None:
    """Stop on SIGINT however the command was started. Started in the background by a script
    (`appeals up &`), a process inherits SIGINT ignored and Python then leaves it so: `kill -INT`
    did nothing, and a benchmark so started ran on to its end with its servers."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _keep_freed_memory() -> None:
    """Let glibc's allocator keep freed memory for the next request instead of returning it to the
    kernel. A worker's buffers of a few hundred kilobytes (a fetch of records, a batch's script
    call, a query's rows) are made and freed many times a second; by default each one is mapped
    from the kernel afresh and its pages faulted in, which made packing a 230 KB Redis command six
    times slower than packing the same bytes into memory already held. Costs at most the
    thresholds below in resident memory. Elsewhere than glibc, nothing is changed."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 16 << 20)
    mallopt(m_trim_threshold, 64 << 20)
    mallopt(m_top_pad, 16 << 20)


def _ensure_model(settings: Settings) -> None:
    """On a first start, a model trained on the demo corpus now (here, not in the services: they
    only serve models)."""
    from services.classifier.model import latest_model_path

    if latest_model_path(settings.model_dir) is None:
        from services.classifier import analyst
        from shared.city import load_city

        typer.echo("no model yet: training one on the demo corpus ...", err=True)
        analyst.ensure_model(load_city(settings.city_config_dir), settings.model_dir)


def _served_model(settings: Settings) -> tuple[Path, str]:
    """The model the classifier workers will serve, as `services.classifier.service.load_model`
    picks it: the approved one (in Redis) when its file is there, else the newest; with the words
    saying which."""
    from services.classifier.model import latest_model_path, model_path
    from services.classifier.service import approved_version

    approved = asyncio.run(_with_redis(settings, approved_version))
    if approved and (path := model_path(settings.model_dir, approved)).is_file():
        return path, f"model {approved} (approved)"
    newest = latest_model_path(settings.model_dir)
    assert newest is not None, "_ensure_model trained one"
    version = json.loads(newest.with_suffix(".json").read_text(encoding="utf-8"))["version"]
    if approved:
        return newest, f"model {version} (the newest: the approved {approved} is not in {settings.model_dir})"
    return newest, f"model {version} (the newest; none approved)"


def _warn_unlearned(settings: Settings, city: City, path: Path) -> None:
    """Say, where the person starting the system reads it, which of the city's categories the
    served model lacks (a category added to the city's data since it was trained)."""
    from services.classifier.model import unlearned

    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    if missing := unlearned(meta.get("categories") or (), city):
        typer.echo(
            f"warning: model {meta['version']} was not trained on {'、'.join(missing)}: their appeals "
            "go to other categories; train and approve a model: .venv/bin/appeals train --approve",
            err=True,
        )


@cli.command()
def check(
    services: list[Service] = typer.Argument(None, help="Services to check (default: all of them)."),
) -> None:
    """Load what each service loads at start-up (city, cues, dictionaries, templates, the model) and
    classify one appeal, without the broker or Redis: a broken install fails here, not in production."""
    from services.preflight import check as preflight

    settings = get_settings()
    for service in services or list(Service):
        try:
            for line in preflight(service.value, settings):
                typer.echo(f"{service.value}: ok  {line}")
        except Exception as e:
            _fail(f"{service.value}: FAILED  {type(e).__name__}: {e}")


@cli.command()
def up(
    with_services: bool = typer.Option(True, help="Start the five workers and the API too."),
) -> None:
    """Start the whole system: broker, Redis, PostgreSQL, five workers and the API. Ctrl-C stops all."""
    from services.launcher import Launcher, external_servers_configured
    from shared.city import load_city
    from shared.embedded import EmbeddedServers

    settings = get_settings()
    embedded = (
        None
        if external_servers_configured()
        else EmbeddedServers(
            kafka_port=9092,
            redis_port=6379,
            data_dir=settings.data_dir,  # Redis and PostgreSQL keep their data here across restarts
            postgres=not settings.database_url,
            postgres_port=UP_POSTGRES_PORT,
            log_dir=settings.data_dir / "logs",
        )
    )
    launcher = Launcher(embedded=embedded, log_dir=settings.data_dir / "logs")

    def stop_requested(*_: object) -> None:
        raise KeyboardInterrupt  # a service manager's SIGTERM stops everything in order, as Ctrl-C

    signal.signal(signal.SIGTERM, stop_requested)
    take_sigint()
    try:
        if embedded:
            typer.echo("starting the embedded Kafka broker (Tansu), Redis and PostgreSQL ...")
            launcher.start_servers()
        city = load_city(settings.city_config_dir)
        typer.echo(
            f"city: {city.district.city}{city.district.name}, {len(city.grids)} grids, "
            f"{len(city.departments)} departments, {len(city.leaf_categories)} categories"
        )
        typer.echo("checking the category model (the first start trains one on the demo corpus) ...")
        _ensure_model(settings)
        served, said = _served_model(settings)
        typer.echo(said)
        _warn_unlearned(settings, city, served)
        if with_services:
            launcher.start_all()
            launcher.wait_for_ports(
                [
                    settings.api_port,
                    settings.metrics_port_intake,
                    settings.metrics_port_classifier,
                    settings.metrics_port_router,
                    settings.metrics_port_notifier,
                    settings.metrics_port_records,
                ]
            )
            if embedded:  # the embedded broker kept nothing: drive on what it still owed
                from shared.redrive import redrive

                again = asyncio.run(_with_redis(settings, lambda r: redrive(settings, r)))
                if again:
                    typer.echo(f"{again} event(s) the lost topics may have owed: published again")
        typer.echo(_up_banner(settings, launcher.env, launcher.log_dir, _invoked_as()))
        while True:  # a service that exits is started again (with backoff); the rest keep running
            launcher.supervise(report=lambda line: typer.echo(line, err=True))
            time.sleep(0.5)
    except KeyboardInterrupt:
        typer.echo("\nstopping ...")
    finally:
        launcher.stop_all()
        typer.echo("stopped.")


def _invoked_as() -> str:
    """The command as the person typed it (`.venv/bin/appeals` after `make up`, where `appeals` is
    on no PATH), so that the commands `appeals up` prints run when pasted; else `appeals`."""
    import shlex
    import sys

    return shlex.quote(sys.argv[0]) if Path(sys.argv[0]).name == "appeals" else "appeals"


def _up_banner(settings: Settings, env: dict[str, str], log_dir: Path | None, appeals: str) -> str:
    """What `appeals up` prints once the system is up. Its commands are meant to be pasted into
    another terminal: each on one logical line, the JSON body whole (a backslash-newline inside
    single quotes is kept as it is, and broke the JSON)."""
    base = f"http://{settings.api_host}:{settings.api_port}"
    appeal = {
        "caller_phone": "13812345678",
        "text": "阳光花园3号楼门口的路灯坏了一个星期",
        "address": "阳光花园3号楼",
    }
    body = json.dumps(appeal, ensure_ascii=False, separators=(",", ":"))
    return f"""
The system is up.
  console      {base}/console/  (sign in with a token: {appeals} token --operator 0231, or
               --grid-worker W017 --grid s01c01g02, --department urban_mgmt, --admin)
  API docs     {base}/docs
  submit       curl -s -X POST {base}/api/v1/appeals \\
                 -H "Authorization: Bearer $({appeals} token --operator 0231)" \\
                 -H 'Content-Type: application/json' \\
                 -d '{body}'
  a ticket     curl -s {base}/api/v1/tickets/<ticket_no> -H "Authorization: Bearer $({appeals} token --admin)"
  metrics      {base}/metrics/ and
               127.0.0.1:{settings.metrics_port_intake}-{settings.metrics_port_records}/metrics
               (intake, classifier, router, notifier, records)
  Kafka        {env.get("KAFKA_BOOTSTRAP_SERVERS")}    Redis {env.get("REDIS_URL")}
  PostgreSQL   {env.get("DATABASE_URL")}  (psql and this URL: see README, Records)
  logs         {log_dir}
Press Ctrl-C to stop everything."""


bench = typer.Typer(help="Benchmarks that print figures (speed is measured here, never in tests).")
cli.add_typer(bench, name="bench")


@bench.command("pipeline")
def bench_pipeline(
    rate: float = typer.Option(
        0, min=0, help="Offered appeals a second (0: as fast as the broker takes them)."
    ),
    duration: float = typer.Option(30, min=1, help="Seconds at --rate."),
    n: int = typer.Option(20_000, help="How many appeals to push through, without --rate."),
    callers: int = typer.Option(2_000, help="Distinct callers (each gets acknowledgement SMS)."),
    replicas: int = typer.Option(1, min=1, help="Processes of each worker (scale-out on more cores)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    broker_limit: bool = typer.Option(True, help="Also measure the broker's limit with no-op handlers."),
    broker_limit_messages: int = typer.Option(0, min=0, help="Messages for the broker limit (0: auto)."),
    via_api: bool = typer.Option(
        False, "--via-api", help="Submit by POST /api/v1/appeals, as operators do, not to the broker."
    ),
    concurrency: int = typer.Option(32, min=1, help="With --via-api: requests out at once."),
    wait_for_record: bool = typer.Option(
        False,
        "--wait-for-record",
        help="Count the CPU until PostgreSQL holds every assignment, not only until the last is read.",
    ),
    rounds: int = typer.Option(
        1, min=1, help="Run it this many times on the same servers and workers (the last round's figures)."
    ),
) -> None:
    """Latency (ack -> ticket.assigned, per stage) at a fixed rate, throughput, and the broker's limit.

    Starts embedded servers and the workers unless KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are set
    (then the workers must be running already)."""
    from services.bench import run_pipeline_bench

    take_sigint()
    try:
        run_pipeline_bench(
            n=n,
            callers=callers,
            rate=rate,
            duration=duration,
            replicas=replicas,
            json_path=json_path,
            broker_limit=broker_limit,
            broker_limit_messages=broker_limit_messages,
            via_api=via_api,
            concurrency=concurrency,
            wait_for_record=wait_for_record,
            rounds=rounds,
        )
    except KeyboardInterrupt:
        typer.echo("interrupted: the servers and workers it started are stopped; no figures", err=True)
        raise typer.Exit(130) from None


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(2)


def _read_data(data: Path) -> list[dict]:
    from services.classifier.analyst import DataError, read_records

    try:
        records, problems = read_records(data)
    except DataError as e:
        _fail(str(e))
    for p in problems:
        typer.echo(f"{data}: {p} (skipped)", err=True)
    return records


T = TypeVar("T")


async def _with_redis(settings: Settings, work: Callable[[Redis], Awaitable[T]]) -> T:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    redis = Redis.from_url(settings.redis_url)
    try:
        return await work(redis)
    except RedisError as e:
        _fail(f"cannot reach Redis at {settings.redis_url} (REDIS_URL): {e}")
    finally:
        await redis.aclose()


@cli.command()
def corpus(
    out: Path = typer.Option(..., help="JSONL file to write."),
    per_category: int = typer.Option(200, min=0, help="Appeals per leaf category."),
    seed: int = typer.Option(0, help="Another seed gives other texts (a test set apart from training)."),
    city: Path = typer.Option(
        None, help="City configuration folder. Default: CITY_CONFIG_DIR, else the demo city."
    ),
) -> None:
    """Write the demo corpus: seeded, labelled synthetic appeals for every leaf category (JSONL)."""
    from services.classifier import analyst
    from services.classifier.corpus import ContentError
    from shared.city import CityConfigError, load_city

    try:
        town = load_city(city or get_settings().city_config_dir)
        n = analyst.write_corpus(town, out, per_category=per_category, seed=seed)
    except (CityConfigError, ContentError, analyst.DataError) as e:
        _fail(str(e))
    typer.echo(f"wrote {n} appeals ({len(town.leaf_categories)} categories x {per_category}) to {out}")


@cli.command()
def train(
    out: Path = typer.Option(
        None, help="Model folder (file named by version) or a .joblib path. Default: DATA_DIR/models."
    ),
    data: Path = typer.Option(None, help="JSONL with text, label, optional title. Default: the demo corpus."),
    per_category: int = typer.Option(200, help="Demo corpus size per category, when no --data."),
    seed: int = typer.Option(7, help="Demo corpus seed, when no --data."),
    include_feedback: bool = typer.Option(
        False, "--include-feedback", help="Add reviewers' corrections (Redis)."
    ),
    approve: bool = typer.Option(
        False, "--approve", help="Make the new model the one the classifier serves."
    ),
    target_precision: float = typer.Option(
        0.95, min=0.5, max=1.0, help="Precision the review threshold must meet."
    ),
) -> None:
    """Train the category model and write a versioned model file with its metadata."""
    from services.classifier import analyst, service
    from shared.city import load_city

    settings = get_settings()
    city = load_city(settings.city_config_dir)
    out = out or settings.model_dir
    if data is None:
        records, source = analyst.demo_records(city, per_category=per_category, seed=seed)
    else:
        records, source = _read_data(data), str(data)
    if include_feedback:
        fed = asyncio.run(_with_redis(settings, analyst.reviewed_examples))
        records += fed
        source += f" + {len(fed)} reviewed examples"
        typer.echo(f"added {len(fed)} labelled examples from reviewers")
    try:
        trained = analyst.train_and_save(city, records, out, source=source, target_precision=target_precision)
    except analyst.DataError as e:
        _fail(str(e))
    if trained.left_out:
        typer.echo(
            f"left out {len(trained.left_out)} label(s) with a single example: "
            f"{', '.join(sorted(trained.left_out))}",
            err=True,
        )
    meta = trained.metadata
    typer.echo(f"wrote {trained.path} (version {meta['version']}, {meta['n_train']} examples)")
    review = (meta.get("metrics") or {}).get("review")
    if review:
        typer.echo(
            f"held-out macro-F1 {meta['metrics']['macro_f1']:.4f}; review threshold {review['threshold']} "
            f"(precision {review['precision']}, review share {review['review_share']:.2%})"
        )
        if unclear := review.get("unclear"):
            typer.echo(
                f"appeals naming no problem routed automatically: {unclear['routed']:.2%} of {unclear['n']} "
                f"(at most {unclear['routed_at_most']:.0%}; threshold for precision alone "
                f"{review['precision_threshold']})"
            )
    if approve:
        if trained.path.parent.resolve() != settings.model_dir.resolve():
            _fail(f"--approve needs the model in {settings.model_dir} (where the classifier looks)")
        version = meta["version"]
        asyncio.run(_with_redis(settings, lambda r: service.approve(r, settings.model_dir, version)))
        typer.echo(
            f"approved {version}: classifier workers switch to it within {settings.model_check_seconds:g} s"
        )


@cli.command()
def evaluate(
    data: Path = typer.Option(..., help="JSONL with text, label, optional title."),
    model: str = typer.Option(None, help="Model file or version to evaluate (not with --cv)."),
    cv: int = typer.Option(0, min=0, help="Instead of a model: k-fold cross-validation of training on DATA."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    target_precision: float = typer.Option(
        0.95, min=0.5, max=1.0, help="Precision for the review threshold fitted on the predictions."
    ),
    curve: bool = typer.Option(
        False,
        "--learning-curve",
        help="With --cv: also train on 25/50/75% of each training fold and project "
        "how much labelled data --target-f1 needs.",
    ),
    target_f1: float = typer.Option(
        0.90, min=0.0, max=1.0, help="The macro-F1 the learning curve projects to."
    ),
) -> None:
    """Accuracy, macro-F1, per-class figures, confusion matrix, calibration error, and review: with
    --model, precision and auto-routed share at the model's own threshold (the fitted one only as
    the best possible on DATA); with --cv, the threshold fitted on out-of-fold predictions."""
    settings = get_settings()
    if (model is None) == (cv == 0):
        _fail("give exactly one of --model MODEL_PATH or --cv K (K >= 2)")
    if cv == 1:
        _fail("--cv needs at least 2 folds")
    if curve and not cv:
        _fail("--learning-curve needs --cv K: the curve is cross-validated")
    records = _read_data(data)
    # After the checks: scikit-learn and jieba take seconds to load, a mistyped option should not.
    from services.classifier import analyst, evaluation
    from shared.city import load_city

    try:
        if cv:
            city = load_city(settings.city_config_dir)
            rep = analyst.cross_validate_data(city, records, cv, target_precision)
            if curve:
                rep["learning_curve"] = analyst.learning_curve_data(city, records, cv, rep, target_f1)
        else:
            rep = analyst.evaluate_model(
                analyst.resolve_model(model, settings.model_dir),
                records,
                target_precision,
                settings.review_confidence_threshold,
            )
    except analyst.DataError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(rep, ensure_ascii=False))
        return
    typer.echo(evaluation.format_report(rep))
    if "learning_curve" in rep:
        typer.echo(
            "\n"
            + evaluation.format_learning_curve(
                rep["learning_curve"]["points"], rep["learning_curve"]["projection"]
            )
        )


model_cli = typer.Typer(help="The model registry: list models, approve the one the classifier serves.")
cli.add_typer(model_cli, name="model")


@model_cli.command("list")
def model_list() -> None:
    """Model files in DATA_DIR/models with their figures; * marks the approved one."""
    from services.classifier import analyst, service

    settings = get_settings()
    try:
        approved = asyncio.run(_with_redis(settings, service.approved_version))
    except typer.Exit:
        approved = None  # the files are still worth listing
        typer.echo("(approval unknown without Redis)", err=True)
    for row in analyst.model_table(settings.model_dir, approved):
        mark = "*" if row["approved"] else " "
        typer.echo(
            f"{mark} {row['version']}  n={row['n_train']}  macro-F1={row['macro_f1']}  {row['source']}"
        )


@model_cli.command("approve")
def model_approve(
    version: str = typer.Argument(..., help="Version, as `appeals model list` shows it."),
) -> None:
    """Make VERSION the model the classifier serves (workers switch without a restart)."""
    from services.classifier import service

    settings = get_settings()
    try:
        path = asyncio.run(_with_redis(settings, lambda r: service.approve(r, settings.model_dir, version)))
    except FileNotFoundError as e:
        _fail(str(e))
    typer.echo(f"approved {version} ({path}); workers switch within {settings.model_check_seconds:g} s")


@bench.command("classifier")
def bench_classifier(
    model: str = typer.Option(None, help="Model file or version (default: the newest in DATA_DIR/models)."),
    n: int = typer.Option(20_000, min=100, help="How many demo appeals to classify."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """Classify demo appeals in one process on one core: appeals/s, model load time, memory."""
    from services.classifier import analyst
    from services.classifier.rules import load_cues
    from shared.city import load_city

    settings = get_settings()
    try:
        path = analyst.bench_model_path(model, settings.model_dir)
    except analyst.DataError as e:
        _fail(str(e))
    city = load_city(settings.city_config_dir)
    figures = analyst.bench_classifier(city, path, load_cues(settings.city_config_dir), n=n)
    if as_json:
        typer.echo(json.dumps(figures, ensure_ascii=False))
        return
    for key, value in figures.items():
        typer.echo(f"{key:26s} {value}")


@cli.command()
def token(
    operator: str = typer.Option(None, help="Mint a hotline operator's token (registers appeals only)."),
    grid_worker: str = typer.Option(
        None, "--grid-worker", help="Mint a grid worker's token (reports, its grid's tickets), with --grid."
    ),
    grid: str = typer.Option(None, help="The grid id a grid worker patrols (see areas.yaml)."),
    department: str = typer.Option(None, help="Mint a token for this department id (see departments.yaml)."),
    admin: bool = typer.Option(False, "--admin", help="Mint a dispatch-desk (admin) token."),
    sms_gateway: bool = typer.Option(
        False, "--sms-gateway", help="Mint the SMS provider's token (incoming SMS and receipts only)."
    ),
    days: int = typer.Option(
        None, help="Days until the new token expires (default TOKEN_TTL_DAYS; 0: never)."
    ),
    note: str = typer.Option(
        "", help="Whom the new token is for (a name), shown in the lists and the audit."
    ),
    list_: bool = typer.Option(
        False, "--list", help="List the live tokens (id, role, who, expiry, last use, note)."
    ),
    revoke: str = typer.Option(None, help="Revoke a token, given its id from --list (or the token)."),
) -> None:
    """Mint an API bearer token (printed once; only its hash is stored), list or revoke tokens.
    A grant is checked by the same rules as the desk's access page and /api/v1/tokens
    (shared.access), and refused with the same reason. Minting and revoking are audited as done
    from the shell by this user (cli:USER), as the desk's access page (/console/access) audits its
    own."""
    import getpass

    from shared.access import InvalidGrant, checked_grant
    from shared.auth import issue_grant, list_tokens, revoke_token
    from shared.city import CityConfigError, load_city

    settings = get_settings()
    try:
        actor = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # a container's user without a name
        actor = "cli:?"
    if list_:
        for t in asyncio.run(_with_redis(settings, list_tokens)):
            expires = _when(t.expires_at) if t.expires_at else "never"
            used = _when(t.last_used_at) if t.last_used_at else "-"
            typer.echo(
                f"{t.token_id}  {t.role:11s} {t.operator or t.department or '-':16s} "
                f"{t.grid + '  ' if t.grid else ''}"
                f"created {_when(t.created_at)}  expires {expires}  used {used}"
                f"{'  ' + t.note if t.note else ''}"
            )
        return
    if revoke is not None:
        if not asyncio.run(_with_redis(settings, lambda r: revoke_token(r, revoke, actor=actor))):
            raise typer.BadParameter(f"no live token with id {revoke!r} (see appeals token --list)")
        typer.echo(f"revoked {revoke}")
        return
    people = (department is not None) + (operator is not None) + (grid_worker is not None)
    if admin + sms_gateway + people != 1:
        raise typer.BadParameter(
            "give exactly one of --operator ID, --grid-worker ID --grid GRID_ID, --department DEPT_ID,"
            " --admin or --sms-gateway (or --list, --revoke ID)"
        )
    role = (
        "admin"
        if admin
        else "sms_gateway"
        if sms_gateway
        else "operator"
        if operator is not None
        else "grid_worker"
        if grid_worker is not None
        else "department"
    )
    try:
        city = load_city(settings.city_config_dir)
    except CityConfigError as e:
        _fail(str(e))
    try:
        grant = checked_grant(
            city,
            role=role,
            operator=operator if operator is not None else grid_worker,
            department=department,
            grid=grid,
            days=days,
            note=note,
            default_days=settings.token_ttl_days,
        )
    except InvalidGrant as e:
        # The API's reason, said beside the option that carries the field at fault.
        _fail(f"{_token_option(role, e.field)}: {e.message}")
    token, _ = asyncio.run(
        _with_redis(
            settings,
            lambda r: issue_grant(r, grant, actor=actor),
        )
    )
    typer.echo(token)


def _token_option(role: str, field: str | None) -> str:
    """The option of `appeals token` that carries a grant's field (shared.access), for `role`."""
    if field == "operator":
        return "--grid-worker" if role == "grid_worker" else "--operator"
    return f"--{field}" if field in ("department", "grid", "days", "note") else "--" + role.replace("_", "-")


def _when(ts: int | None) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "?"


@bench.command("records")
def bench_records(
    n: int = typer.Option(200_000, help="Tickets projected into the record (six events each)."),
    redis_closed: int = typer.Option(
        100_000, help="Closed tickets then recorded and piled into Redis (retention every 20,000)."
    ),
) -> None:
    """Projection rate, search times on N tickets, Redis memory with retention, restart time."""
    from services.records import bench as records_bench

    records_bench.main(n, redis_closed)


@bench.command("notifier")
def bench_notifier(n: int = typer.Option(5000, help="How many appeals to acknowledge.")) -> None:
    """Measure acknowledgements/s and scorecard events/s of the notifier against REDIS_URL (cleans up),
    or, without REDIS_URL, against a Redis of its own."""
    from services.notifier import bench

    typer.echo(json.dumps(bench.main(get_settings(), n)))


@cli.command("upload-slips")
def upload_slips(
    file: Path = typer.Argument(
        None, help="CSV (UTF-8) or XLSX of typed slips: box_id, date, text, phone, address."
    ),
    demo: int = typer.Option(0, help="Instead of FILE, upload this many synthetic anonymous slips."),
    api: str = typer.Option(None, help="API base URL (default: API_HOST:API_PORT)."),
    token: str = typer.Option(
        ...,
        envvar="APPEALS_TOKEN",
        help="An operator's token (appeals token --operator ID), or set APPEALS_TOKEN.",
    ),
) -> None:
    """Upload suggestion-box slips; prints accepted/rejected rows and the rows per second."""
    import tempfile
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from services.intake.upload import upload, write_demo_csv

    settings = get_settings()
    base = api or f"http://{settings.api_host}:{settings.api_port}"
    if (file is None) == (demo == 0):
        raise typer.BadParameter("give a FILE or --demo N")
    with tempfile.TemporaryDirectory() as tmp:
        today = datetime.now(ZoneInfo(settings.timezone)).date()
        path = file or write_demo_csv(Path(tmp) / "demo-slips.csv", demo, today=today)
        try:
            result, seconds = upload(base, path, token)
        except RuntimeError as e:
            _fail(str(e))
    for row in [r for r in result["rows"] if "error" in r][:20]:
        typer.echo(f"line {row['line']}: {row['field']}: {row['error']}")
    total = result["accepted"] + result["rejected"]
    typer.echo(
        f"{result['accepted']} accepted, {result['rejected']} rejected, {total} rows in {seconds:.2f}s "
        f"({total / seconds:.0f} rows/s)"
    )


records_cli = typer.Typer(help="The record in PostgreSQL (DATABASE_URL): rebuild, backfill, retention.")
cli.add_typer(records_cli, name="records")
privacy_cli = typer.Typer(help="Residents' personal data.")
cli.add_typer(privacy_cli, name="privacy")


def _database_url(settings: Settings) -> str:
    """DATABASE_URL, else the PostgreSQL `appeals up` starts: the record's commands are run in
    another terminal beside it, where DATABASE_URL is not set (`appeals up` sets it for its own
    processes only)."""
    from shared.embedded import EmbeddedServers

    return settings.database_url or EmbeddedServers(postgres_port=UP_POSTGRES_PORT).database_url


async def _with_records(settings, work):
    """Run `work(records, store, retention)` against DATABASE_URL (else `appeals up`'s PostgreSQL)
    and REDIS_URL."""
    import psycopg

    from services.records import db
    from services.records.retention import Retention
    from services.records.service import Records
    from shared.city import load_city
    from shared.redis_client import connect
    from shared.store import TicketStore

    url = _database_url(settings)
    try:
        await db.migrate(url)
        pool = db.pool(url)
        await pool.open(wait=True, timeout=10)
    except psycopg.OperationalError as e:
        if settings.database_url:
            _fail(f"cannot reach PostgreSQL (DATABASE_URL): {e}")
        _fail(
            f"cannot reach PostgreSQL at {url}, the one `appeals up` starts "
            f"(set DATABASE_URL for another): {e}"
        )
    redis = connect(settings.redis_url)
    try:
        store = TicketStore(redis)
        return await work(
            Records(pool, load_city(settings.city_config_dir)), store, Retention(pool, store, settings)
        )
    finally:
        await pool.close()
        await redis.aclose()


@records_cli.command("rebuild")
def records_rebuild(
    since: str = typer.Option(
        None,
        help="Fold again the tickets with events at or after this time (ISO, e.g. 2026-11-01). "
        "Without it: every ticket, from scratch.",
    ),
) -> None:
    """Rebuild the tickets and meetings tables from the stored events (replays change nothing)."""
    from datetime import datetime

    settings = get_settings()
    try:
        start = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise typer.BadParameter(f"--since {since!r}: expected an ISO date or time") from None
    n = asyncio.run(_with_records(settings, lambda records, _s, _r: records.rebuild(start)))
    typer.echo(f"rebuilt {n} tickets" + (f" with events since {since}" if since else " from scratch"))


@records_cli.command("backfill")
def records_backfill() -> None:
    """Copy the events in Redis's ticket histories into the record (events it has not seen)."""
    n = asyncio.run(
        _with_records(get_settings(), lambda records, store, _r: records.backfill_from_store(store))
    )
    typer.echo(f"read {n} events from Redis; the record has every one of them now")


@records_cli.command("retention")
def records_retention() -> None:
    """Run the retention jobs now (the records worker runs them every RETENTION_SCAN_SECONDS)."""
    done = asyncio.run(_with_records(get_settings(), lambda _rec, _s, retention: retention.run()))
    typer.echo(
        f"{done['left_redis']} closed tickets and {done['meetings_left_redis']} decided meetings left Redis; "
        f"personal data removed from {done['personal_data_removed']} tickets; "
        f"{done['unattached_photos_deleted']} photos no ticket took deleted"
    )


@privacy_cli.command("erase")
def privacy_erase(
    by: str = typer.Option(..., help="Who erases (staff id): goes into the audit entry."),
    phone: str = typer.Option("", help="The resident's phone number, as they give it."),
    ticket: str = typer.Option(
        "", help="Or the number of one of the resident's tickets (a WeChat resident has no phone)."
    ),
    reason: str = typer.Option("居民申请删除个人信息", help="Why: goes into the audit entry."),
) -> None:
    """Remove one resident's personal data from every ticket (record and Redis), with an audit
    entry. The resident is found by their phone or by a ticket number (exactly one)."""
    from services.records.erasure import Erasures, checked_lookup, checked_reason
    from shared.errors import DomainError

    async def erase(retention):
        erasures = Erasures(retention.pool, retention)
        subject = await erasures.subject(lookup)
        return subject, await erasures.erase(subject, by, reason)

    try:
        lookup = checked_lookup(phone, ticket)
        reason = checked_reason(reason)
        work = _with_records(get_settings(), lambda _rec, _s, retention: erase(retention))
        subject, done = asyncio.run(work)
    except DomainError as e:
        raise typer.BadParameter(e.message) from None
    typer.echo(
        f"personal data removed from {done['count']} tickets; audit entry written "
        f"(caller {subject.caller_id}, found by {subject.by})"
    )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
