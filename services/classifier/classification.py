"""Classifying a batch of appeals, on the CPU only: the category from the model, the grid from the
locator, the appeal type and urgency from the cue lists together with the model's two small heads.

No I/O client here (no Redis, Kafka or HTTP): `service.py` decides which model is served and loads
it, `app.py` feeds batches in and publishes what comes out, the hotline preview calls the same
code, so an operator is shown the suggestion the pipeline will make.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.classifier.grid import GridLocator
from services.classifier.model import CategoryModel, document
from services.classifier.rules import Cues, load_cues
from shared.city import City
from shared.events import AppealClassified, AppealReceived, CategoryScore, now_utc


def review_threshold(model: CategoryModel, configured: float) -> float:
    """The confidence below which an appeal goes to review: the model's own threshold (chosen on
    held-out predictions to meet the target precision), else the configured one."""
    own = model.threshold
    return configured if own is None else float(own)


class Classifier:
    def __init__(
        self, city: City, model: CategoryModel, *, threshold: float, cues: Cues | None = None
    ) -> None:
        self.city = city
        self.model = model
        self.locator = GridLocator(city)
        self.default_threshold = threshold
        self.cues = cues or load_cues()
        self._names: dict[str, tuple[str, ...]] = {}

    @property
    def threshold(self) -> float:
        return review_threshold(self.model, self.default_threshold)

    def swap(self, model: CategoryModel) -> None:
        self.model = model  # one attribute: a batch in flight keeps the model it started with

    def category_names(self, label: str) -> tuple[str, ...]:
        """Root to leaf when the label is one of the city's leaves, else the label itself."""
        names = self._names.get(label)
        if names is None:
            names = self.city.category_names(label) if label in self.city.category_by_id else (label,)
            self._names[label] = names
        return names

    def classify(self, appeals: Sequence[AppealReceived]) -> list[AppealClassified]:
        if not appeals:
            return []
        model, threshold = self.model, self.threshold
        pred = model.predict([document(a.title, a.text) for a in appeals])
        grids = self.locator.locate_many([(a.text, a.address, a.location, a.patrol_grid) for a in appeals])
        now = now_utc()  # one clock read per batch: the batch is classified at one moment
        out = []
        for i, (appeal, top, grid) in enumerate(zip(appeals, pred.top(2), grids, strict=True)):
            category, confidence = top[0]
            full_text = f"{appeal.title} {appeal.text}"
            out.append(
                AppealClassified.caused(
                    appeal,
                    occurred_at=now,
                    appeal=appeal,
                    category=category,
                    category_names=self.category_names(category),
                    confidence=round(confidence, 4),
                    top=tuple(CategoryScore(category=c, probability=round(p, 4)) for c, p in top),
                    grid=grid,
                    appeal_type=self.cues.appeal_type(full_text, pred.types[i] if pred.types else None),
                    urgent=self.cues.is_urgent(
                        full_text,
                        appeal.urgent_flag,
                        float(pred.urgent[i]) if pred.urgent is not None else None,
                    ),
                    # Without a grid a person places it only where the place decides who leads
                    # it (the router routes the others by their rule); so too a grid the address
                    # contradicts (定位与地址不一致: a patrol report's, or where the lead may differ).
                    needs_review=confidence < threshold
                    or self.city.needs_placing(category, grid.grid)
                    or self.city.place_disputed(category, grid.grid, grid.address_grid, grid.method),
                    review_threshold=round(threshold, 4),
                    model_version=model.version,
                )
            )
        return out
