"""Appeal type (诉求/投诉/咨询/求助/建议) and urgency from cue words. Pure functions.

The cue lists are defaults; a city can override them in its configuration (see shared/city.py)."""

from __future__ import annotations

from shared.events import AppealType

# Checked in this order: the first type with a cue wins (a complaint phrased as a question is still
# a complaint).
TYPE_CUES: tuple[tuple[AppealType, tuple[str, ...]], ...] = (
    ("求助", ("求助", "救命", "帮帮", "被困", "救助", "困难家庭")),
    ("投诉", ("投诉", "举报", "乱收费", "不作为", "态度恶劣", "欺骗")),
    ("建议", ("建议", "提议", "能否增设", "希望增加", "可否")),
    ("咨询", ("请问", "咨询", "怎么办理", "如何办理", "是否", "能不能", "需要什么材料")),
)

URGENT_CUES: tuple[str, ...] = (
    "燃气泄漏", "煤气泄漏", "天然气泄漏", "闻到煤气", "闻到燃气", "煤气味", "燃气味",
    "着火", "起火", "火灾", "冒烟", "被困", "困在电梯", "困电梯", "触电", "漏电",
    "整栋楼停水", "整栋停水", "整栋楼停电", "整栋停电", "大面积停电", "爆管", "坍塌", "塌陷",
)


def appeal_type(text: str) -> AppealType:
    for kind, cues in TYPE_CUES:
        if any(c in text for c in cues):
            return kind
    return "诉求"


def is_urgent(text: str, operator_flag: bool = False) -> bool:
    return operator_flag or any(c in text for c in URGENT_CUES)
