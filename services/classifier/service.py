"""Classification of a batch of appeals: category (model), grid (locator), type and urgency (rules).

No Kafka here: `app.py` feeds batches in and publishes what comes out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.classifier import corpus
from services.classifier.grid import GridLocator
from services.classifier.model import CategoryModel, document, latest_model_path, train
from services.classifier.rules import appeal_type, is_urgent
from services.classifier.text import city_vocabulary, segmenter_for
from shared.city import City
from shared.events import AppealClassified, AppealReceived, CategoryScore


class Classifier:
    def __init__(self, city: City, model: CategoryModel, *, threshold: float) -> None:
        self.city = city
        self.model = model
        self.locator = GridLocator(city)
        self.threshold = threshold

    def classify(self, appeals: Sequence[AppealReceived]) -> list[AppealClassified]:
        if not appeals:
            return []
        tops = self.model.top([document(a.title, a.text) for a in appeals], k=2)
        out = []
        for appeal, top in zip(appeals, tops):
            category, confidence = top[0]
            grid = self.locator.locate(appeal.text, appeal.address, appeal.location)
            full_text = f"{appeal.title} {appeal.text}"
            out.append(
                AppealClassified.caused(
                    appeal,
                    appeal=appeal,
                    category=category,
                    category_names=self.city.category_names(category),
                    confidence=round(confidence, 4),
                    top=tuple(CategoryScore(category=c, probability=round(p, 4)) for c, p in top),
                    grid=grid,
                    appeal_type=appeal_type(full_text),
                    urgent=is_urgent(full_text, appeal.urgent_flag),
                    needs_review=confidence < self.threshold or grid.grid is None,
                    model_version=self.model.version,
                )
            )
        return out


def train_demo_model(city: City, model_dir: Path, *, per_category: int = 200, seed: int = 7) -> Path:
    """Train on the generated demo corpus (never on real data) and save a versioned model file."""
    records = corpus.generate(city, per_category=per_category, seed=seed)
    model = train(
        records,
        segmenter_for(frozenset(city_vocabulary(city))),
        extra_metadata={"source": f"demo corpus, seed {seed}, {per_category} per category"},
    )
    return model.save(model_dir)


def load_or_train(city: City, model_dir: Path) -> CategoryModel:
    """The newest model in `model_dir`; on first start, train one on the demo corpus."""
    path = latest_model_path(model_dir) or train_demo_model(city, model_dir)
    return CategoryModel.load(path)
