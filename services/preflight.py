"""`appeals check`: what a service loads at start-up, done without the broker or Redis.

An installed image (a wheel, not the source tree) must carry every data file the code opens: the demo
city, the cue lists, the segmenter dictionaries, the SMS templates. A missing one otherwise shows up
only when the worker starts in production. The check builds the service the way `appeals run` does
(no connection is opened before start), loads its data files, and for the classifier classifies one
appeal end to end with the model it would serve."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from shared.privacy import check_salt
from shared.settings import Settings

SERVICES = ("api", "intake", "classifier", "router", "meetings", "notifier", "records")
SAMPLE_TEXT = "阳光花园3号楼门口的路灯坏了一个星期，晚上很黑"


def check(service: str, settings: Settings) -> list[str]:
    """Run `service`'s start-up checks; returns one line per check passed, raises on the first failure."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    done: list[str] = []
    check_salt(settings)
    done.append(
        "secrets: production values" if settings.appeals_env == "production" else "secrets: development"
    )
    for step in _STEPS[service]:
        done.append(step(settings))
    return done


def _city(settings: Settings) -> str:
    from shared.city import load_city

    city = load_city(settings.city_config_dir)
    return f"city: {city.district.city}{city.district.name}, {len(city.leaf_categories)} categories"


def _worker(name: str) -> Callable[[Settings], str]:
    def build(settings: Settings) -> str:
        from services.launcher import worker_app

        worker_app(name, settings)  # builds; connects only when run
        return f"{name}: app built"

    return build


def _api(settings: Settings) -> str:
    from services.api import create_app

    create_app(settings)
    return "api: app built"


def _templates(settings: Settings) -> str:
    from services.notifier.texts import load_texts

    load_texts(settings.notifications_file)
    return "notifier: SMS templates valid"


def _classify(settings: Settings) -> str:
    from services.classifier.analyst import ensure_model
    from services.classifier.classification import Classifier
    from services.classifier.model import unlearned
    from services.classifier.rules import load_cues
    from services.classifier.service import load_model
    from services.classifier.text import DICTIONARY_DIR
    from shared.city import load_city
    from shared.events import AppealReceived

    # The segmenter reads its dictionaries leniently (a city may have none); the shipped ones must be there.
    missing = [f for f in ("domain.txt", "stopwords.txt") if not (DICTIONARY_DIR / f).is_file()]
    if missing:
        raise FileNotFoundError(f"segmenter dictionaries missing from {DICTIONARY_DIR}: {missing}")
    city = load_city(settings.city_config_dir)
    ensure_model(city, settings.model_dir)  # the demo model when the folder has none, as `appeals run` does
    model = load_model(settings.model_dir)
    classifier = Classifier(
        city, model, threshold=settings.review_confidence_threshold, cues=load_cues(settings.city_config_dir)
    )
    appeal = AppealReceived(
        ticket_no="CHECK-000001",
        channel="hotline",
        text=SAMPLE_TEXT,
        address="阳光花园3号楼",
        received_at=datetime.now(UTC),
    )
    (result,) = classifier.classify([appeal])
    missing = unlearned(model.categories, city)
    return (
        # Without Redis the approval is not known: the newest model is the one checked.
        f"classifier: model {model.version} (the newest) put the sample appeal in {result.category} "
        f"({result.confidence:.2f}), grid {result.grid.grid}, type {result.appeal_type}"
        + (f"; not trained on {'、'.join(missing)} (appeals train --approve)" if missing else "")
    )


def _migrations(settings: Settings) -> str:
    from services.records.db import MIGRATIONS, migration_files

    found = migration_files()
    if not found:
        raise FileNotFoundError(f"no schema migrations in {MIGRATIONS}")
    return f"records: {len(found)} schema migration(s)"


_STEPS: dict[str, tuple[Callable[[Settings], str], ...]] = {
    "api": (_city, _templates, _api),
    "intake": (_city, _worker("intake")),
    "classifier": (_city, _classify, _worker("classifier")),
    "router": (_city, _worker("router")),
    "meetings": (_city, _worker("meetings")),
    "notifier": (_city, _templates, _worker("notifier")),
    "records": (_city, _migrations),  # its app needs DATABASE_URL; the check stays offline
}
