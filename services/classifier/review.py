"""A reviewer's correction of a classification: checked against the city and turned into the
corrected event. Pure (no I/O): the view reads the queue, records the example and publishes."""

from __future__ import annotations

from datetime import datetime

from services.classifier.grid import grid_match
from shared.city import City
from shared.errors import DomainError
from shared.events import AppealClassified, CategoryScore, derived_id


def not_in_review(ticket_no: str) -> DomainError:
    return DomainError("not_in_review", f"工单{ticket_no}不在待复核队列中（可能已处理）", kind="not_found")


def corrected(
    city: City,
    original: AppealClassified,
    *,
    category: str,
    grid: str | None,
    reviewer: str,
    now: datetime,
) -> AppealClassified:
    """The classification as the reviewer corrected it: their leaf category with confidence 1.0, and
    their grid, else the classifier's (there must be one). Raises DomainError with the reason."""
    if category not in city.leaf_categories:
        raise DomainError(
            "invalid_category",
            f"分类{category!r}不是诉求分类目录中的末级分类，请选择末级分类编号",
            kind="invalid",
            field="category",
        )
    if grid is not None and grid not in city.grids:
        raise DomainError("invalid_grid", f"网格{grid!r}不存在，请检查网格编号", kind="invalid", field="grid")
    if grid is None and original.grid.grid is None:
        raise DomainError(
            "grid_required", "分类器没有找到网格，请同时指定网格编号（grid）", kind="invalid", field="grid"
        )
    match = original.grid if grid is None else grid_match(city, grid, "reviewer", 1.0, "人工复核")
    # The same correction posted twice is the same fact (same id): consumers drop the copy.
    event_id = derived_id(f"{original.event_id}/review/{category}/{match.grid}")
    update = {
        "event_id": event_id,
        "caused_by": original.event_id,
        "occurred_at": now,
        "category": category,
        "category_names": city.category_names(category),
        "confidence": 1.0,
        "top": (CategoryScore(category=category, probability=1.0),),
        "grid": match,
        "needs_review": False,
        "reviewed_by": reviewer,
    }
    # Validated again (model_copy does not), and still frozen.
    return AppealClassified.model_validate({**original.model_dump(), **update})
