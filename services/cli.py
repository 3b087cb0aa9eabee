"""`appeals`: the command line. `appeals up` runs the whole system embedded; `appeals run X` runs one
service against the servers named by KAFKA_BOOTSTRAP_SERVERS and REDIS_URL (as deploy/ does)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
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


WORKERS = ("intake", "classifier", "router", "notifier")


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
    from shared.city import load_city
    from shared.embedded import EmbeddedServers, environment_for

    settings = get_settings()
    embedded = not (os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("REDIS_URL"))
    servers = EmbeddedServers(kafka_port=9092, redis_port=6379) if embedded else None
    children: list[subprocess.Popen] = []
    try:
        if servers:
            typer.echo("starting the embedded Kafka broker (Tansu) and Redis ...")
            servers.start()
            env = environment_for(servers)
        else:
            env = dict(os.environ)
        city = load_city(settings.city_config_dir)
        typer.echo(f"city: {city.district.city}{city.district.name}, {len(city.grids)} grids, "
                   f"{len(city.departments)} departments, {len(city.leaf_categories)} categories")
        typer.echo("loading the category model (the first start trains one on the demo corpus) ...")
        model = load_or_train(city, settings.model_dir)
        typer.echo(f"model {model.version}")
        if with_services:
            for name in (*WORKERS, "api"):
                children.append(
                    subprocess.Popen([sys.executable, "-m", "services.cli", "run", name], env=env)
                )
            _wait_for_api(settings.api_host, settings.api_port, children)
        base = f"http://{settings.api_host}:{settings.api_port}"
        typer.echo(f"""
The system is up.
  API docs     {base}/docs
  submit       curl -s -X POST {base}/api/v1/appeals -H 'Content-Type: application/json' \\
                 -d '{{"channel":"hotline","caller_phone":"13812345678","text":"阳光花园3号楼门口的路灯坏了一个星期，晚上很黑","address":"阳光花园3号楼"}}'
  a ticket     curl -s {base}/api/v1/tickets/<ticket_no>
  metrics      {base}/metrics and 127.0.0.1:{settings.metrics_port_intake}-{settings.metrics_port_notifier}/metrics (intake, classifier, router, notifier)
  Kafka        {env.get('KAFKA_BOOTSTRAP_SERVERS')}    Redis {env.get('REDIS_URL')}
Press Ctrl-C to stop everything.""")
        while all(c.poll() is None for c in children) or not children:
            time.sleep(0.5)
        failed = [c.args[-1] for c in children if c.poll() is not None]
        typer.echo(f"service(s) stopped unexpectedly: {', '.join(failed)}; shutting down", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("\nstopping ...")
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGINT)
        for c in children:
            try:
                c.wait(15)
            except subprocess.TimeoutExpired:
                c.kill()
        if servers:
            servers.stop()
        typer.echo("stopped.")


def _wait_for_api(host: str, port: int, children: list[subprocess.Popen], timeout: float = 120) -> None:
    from shared.embedded import port_open

    deadline = time.monotonic() + timeout
    while not port_open(port, host):
        if any(c.poll() is not None for c in children):
            raise typer.Exit(1)
        if time.monotonic() > deadline:
            typer.echo(f"the API did not start on {host}:{port}", err=True)
            raise typer.Exit(1)
        time.sleep(0.2)


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


@cli.command("upload-slips")
def upload_slips(
    file: Path = typer.Argument(None, help="CSV (UTF-8) or XLSX of typed slips: box_id, date, text, phone, address."),
    demo: int = typer.Option(0, help="Instead of FILE, upload this many synthetic anonymous slips."),
    api: str = typer.Option(None, help="API base URL (default: API_HOST:API_PORT)."),
) -> None:
    """Upload suggestion-box slips; prints accepted/rejected rows and the rows per second."""
    import tempfile

    from services.intake.upload import upload, write_demo_csv

    settings = get_settings()
    base = api or f"http://{settings.api_host}:{settings.api_port}"
    if (file is None) == (demo == 0):
        raise typer.BadParameter("give a FILE or --demo N")
    with tempfile.TemporaryDirectory() as tmp:
        path = file or write_demo_csv(Path(tmp) / "demo-slips.csv", demo)
        result, seconds = upload(base, path)
    for row in [r for r in result["rows"] if "error" in r][:20]:
        typer.echo(f"line {row['line']}: {row['field']}: {row['error']}")
    total = result["accepted"] + result["rejected"]
    typer.echo(f"{result['accepted']} accepted, {result['rejected']} rejected, {total} rows in {seconds:.2f}s "
               f"({total / seconds:.0f} rows/s)")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
