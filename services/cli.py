"""`appeals`: the command line. `appeals up` runs the whole system embedded; `appeals run X` runs one
service against the servers named by KAFKA_BOOTSTRAP_SERVERS and REDIS_URL (as deploy/ does)."""

from __future__ import annotations

import asyncio
import json
import time
from enum import Enum
from pathlib import Path

import typer

from shared.settings import get_settings

cli = typer.Typer(help="12345 appeal intake and routing (接诉即办).", no_args_is_help=True)


class Service(str, Enum):
    api = "api"
    intake = "intake"
    classifier = "classifier"
    router = "router"
    notifier = "notifier"



def _worker_app(name: str):
    from importlib import import_module

    return import_module(f"services.{name}.app").build_app()


@cli.command()
def run(service: Service) -> None:
    """Run one service in the foreground (servers from KAFKA_BOOTSTRAP_SERVERS / REDIS_URL)."""
    if service is Service.api:
        import uvicorn

        from services.api import create_app

        s = get_settings()
        uvicorn.run(create_app(s), host=s.api_host, port=s.api_port, log_level="warning")
        return
    asyncio.run(_worker_app(service.value).run())


@cli.command()
def up(
    with_services: bool = typer.Option(True, help="Start the four services and the API too."),
) -> None:
    """Start the whole system: broker, Redis, the four services and the API. Ctrl-C stops it all."""
    from services.classifier.service import load_or_train
    from services.launcher import Launcher, external_servers_configured
    from shared.city import load_city
    from shared.embedded import EmbeddedServers

    settings = get_settings()
    embedded = None if external_servers_configured() else EmbeddedServers(kafka_port=9092, redis_port=6379)
    launcher = Launcher(embedded=embedded)
    try:
        if embedded:
            typer.echo("starting the embedded Kafka broker (Tansu) and Redis ...")
            launcher.start_servers()
        city = load_city(settings.city_config_dir)
        typer.echo(f"city: {city.district.city}{city.district.name}, {len(city.grids)} grids, "
                   f"{len(city.departments)} departments, {len(city.leaf_categories)} categories")
        typer.echo("loading the category model (the first start trains one on the demo corpus) ...")
        typer.echo(f"model {load_or_train(city, settings.model_dir).version}")
        if with_services:
            launcher.start_all()
            launcher.wait_for_ports([
                settings.api_port, settings.metrics_port_intake, settings.metrics_port_classifier,
                settings.metrics_port_router, settings.metrics_port_notifier,
            ])
        env = launcher.env
        base = f"http://{settings.api_host}:{settings.api_port}"
        typer.echo(f"""
The system is up.
  API docs     {base}/docs
  submit       curl -s -X POST {base}/api/v1/appeals -H 'Content-Type: application/json' \\
                 -d '{{"channel":"hotline","caller_phone":"13812345678","text":"阳光花园3号楼门口的路灯坏了一个星期，晚上很黑","address":"阳光花园3号楼"}}'
  a ticket     curl -s {base}/api/v1/tickets/<ticket_no> -H "Authorization: Bearer $(appeals token --admin)"
  metrics      {base}/metrics/ and 127.0.0.1:{settings.metrics_port_intake}-{settings.metrics_port_notifier}/metrics (intake, classifier, router, notifier)
  Kafka        {env.get('KAFKA_BOOTSTRAP_SERVERS')}    Redis {env.get('REDIS_URL')}
Press Ctrl-C to stop everything.""")
        while (stopped := launcher.first_exited()) is None:
            time.sleep(0.5)
        typer.echo(f"{stopped} stopped unexpectedly; shutting everything down", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("\nstopping ...")
    finally:
        launcher.stop_all()
        typer.echo("stopped.")


bench = typer.Typer(help="Benchmarks that print figures (speed is measured here, never in tests).")
cli.add_typer(bench, name="bench")


@bench.command("pipeline")
def bench_pipeline(
    n: int = typer.Option(20_000, help="How many appeals to push through."),
    callers: int = typer.Option(2_000, help="Distinct callers (each gets acknowledgement SMS)."),
) -> None:
    """Push N appeals through classifier, router and notifier; print throughput and latency.

    Starts embedded servers and the workers unless KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are set
    (then the workers must be running already)."""
    from services.bench import run_pipeline_bench

    run_pipeline_bench(n=n, callers=callers)


@cli.command()
def train(
    out: Path = typer.Option(None, help="Folder for the model file (default: DATA_DIR/models)."),
    data: Path = typer.Option(None, help="JSONL with text, label, optional title. Default: the demo corpus."),
    per_category: int = typer.Option(200, help="Demo corpus size per category, when no --data."),
    seed: int = typer.Option(7, help="Demo corpus seed, when no --data."),
) -> None:
    """Train the category model and write a versioned model file."""
    from services.classifier.model import CategoryModel
    from services.classifier.service import train_demo_model
    from shared.city import load_city

    settings = get_settings()
    city = load_city(settings.city_config_dir)
    out = out or settings.model_dir
    if data is None:
        path = train_demo_model(city, out, per_category=per_category, seed=seed)
    else:
        from services.classifier.model import train as fit
        from services.classifier.text import city_vocabulary, segmenter_for

        records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
        model = fit(records, segmenter_for(frozenset(city_vocabulary(city))),
                    extra_metadata={"source": str(data)})
        path = model.save(out)
    meta = CategoryModel.load(path).metadata
    typer.echo(f"wrote {path} (version {meta['version']}, {meta['n_train']} examples)")


@cli.command()
def token(
    department: str = typer.Option(None, help="Mint a token for this department id."),
    admin: bool = typer.Option(False, "--admin", help="Mint a dispatch-desk (admin) token."),
) -> None:
    """Mint an API bearer token (printed once; only its hash is stored)."""
    from redis.asyncio import Redis

    from shared.auth import issue_token
    from shared.city import load_city

    settings = get_settings()
    if admin == (department is not None):
        raise typer.BadParameter("give exactly one of --department DEPT_ID or --admin")
    if department is not None and department not in load_city(settings.city_config_dir).department_by_id:
        raise typer.BadParameter(f"unknown department {department!r} (see departments.yaml)")

    async def mint() -> str:
        redis = Redis.from_url(settings.redis_url)
        try:
            return await issue_token(redis, "admin" if admin else "department", department)
        finally:
            await redis.aclose()

    typer.echo(asyncio.run(mint()))


@cli.command("bench-notifier")
def bench_notifier(n: int = typer.Option(5000, help="How many appeals to acknowledge.")) -> None:
    """Measure acknowledgements/s and rate events/s of the notifier against REDIS_URL (cleans up)."""
    from services.notifier import bench

    typer.echo(json.dumps(asyncio.run(bench.run(get_settings(), n))))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
