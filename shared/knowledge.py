"""The knowledge base's rules (知识库), pure: what an entry must hold, when its answer is due for a
review (待复核), and who may change it. The records service (services/records/knowledge.py) keeps
the entries in PostgreSQL and asks these before every write.

Who does what, as in a 12345 centre: the department that owns an answer keeps it current (edits it,
or confirms it is still valid: 确认有效); the dispatch desk manages the base (adds, edits any,
retires: 停用); operators read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from shared.city import City, KnowledgeEntry
from shared.errors import DomainError
from shared.text import without_controls

QUESTION_MIN, QUESTION_MAX = 2, 200  # a question as residents ask it, in one sentence or two
ANSWER_MIN, ANSWER_MAX = 5, 2000  # what an operator reads out: a paragraph, not a policy document
KEYWORDS_MAX = 10  # the residents' other words for it
KEYWORD_MAX = 20
REASON_MAX = 200  # why an entry was retired: a sentence for its history

ID = re.compile(r"[a-z0-9][a-z0-9-]{2,63}")  # like the file's ids: kb-social-card-replace
READERS = frozenset({"operator", "department", "admin"})
FIELD_NAMES = {
    "question": "问题",
    "answer": "答复内容",
    "category": "分类",
    "keywords": "关键词",
    "department": "负责单位",
    "reason": "停用原因",
    "id": "编号",
}


# Control and invisible characters (a NUL cannot even be stored in PostgreSQL's text): dropped.
clean = without_controls


def _invalid(code: str, message: str, field: str) -> DomainError:
    return DomainError(code, message, kind="invalid", field=field)


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid("invalid_field", f"{FIELD_NAMES[name]}应为文字", name)
    value = clean(value)
    return " ".join(value.split()) if name != "answer" else value.strip()


def checked_entry(
    city: City, entry_id: str, raw: Mapping[str, Any], *, reviewed: date | None
) -> KnowledgeEntry:
    """The entry `raw` describes (question, answer, category, keywords, department), checked: the
    question and the answer are required and bounded, the category and the department exist in the
    city, the keywords are a short list. Raises DomainError naming the first field at fault and
    the others (`also`)."""
    question = _text(raw, "question")
    answer = _text(raw, "answer")
    category = _text(raw, "category") or None
    department = _text(raw, "department") or None
    # Every field is checked, so the form says each mistake at once.
    faults: list[DomainError] = []
    if len(question) < QUESTION_MIN:
        faults.append(
            _invalid("question_required", f"请填写问题（居民通常怎么问，至少{QUESTION_MIN}个字）", "question")
        )
    elif len(question) > QUESTION_MAX:
        faults.append(
            _invalid(
                "question_too_long",
                f"问题太长（{len(question)}字），请控制在{QUESTION_MAX}字以内",
                "question",
            )
        )
    if len(answer) < ANSWER_MIN:
        faults.append(
            _invalid(
                "answer_required",
                f"请填写答复内容（话务员可直接告知来电人的答复，至少{ANSWER_MIN}个字）",
                "answer",
            )
        )
    elif len(answer) > ANSWER_MAX:
        faults.append(
            _invalid(
                "answer_too_long", f"答复内容太长（{len(answer)}字），请控制在{ANSWER_MAX}字以内", "answer"
            )
        )
    if category is not None and category not in city.category_by_id:
        faults.append(
            _invalid("unknown_category", f"分类“{category[:40]}”不存在，请从分类列表中选择", "category")
        )
    keywords: tuple[str, ...] = ()
    try:
        keywords = checked_keywords(raw.get("keywords"))
    except DomainError as e:
        faults.append(e)
    if department is None:
        faults.append(_invalid("department_required", "请选择负责单位（负责核对此答复的单位）", "department"))
    elif department not in city.department_by_id:
        faults.append(
            _invalid("unknown_department", f"单位“{department[:40]}”不存在，请从单位列表中选择", "department")
        )
    if faults:
        first = faults[0]
        raise DomainError(first.code, first.message, kind="invalid", field=first.field, also=faults[1:])
    return KnowledgeEntry(
        id=entry_id,
        question=question,
        answer=answer,
        category=category,
        keywords=keywords,
        department=department,
        reviewed=reviewed,
    )


def checked_keywords(value: object) -> tuple[str, ...]:
    """A list of words, or one line of them separated by commas, spaces or 、: at most KEYWORDS_MAX,
    each at most KEYWORD_MAX characters, without repeats."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = clean(value)
        for sep in "，,、;；\n\t":
            value = value.replace(sep, " ")
        words = value.split()
    elif isinstance(value, list | tuple) and all(isinstance(w, str) for w in value):
        words = [clean(w).strip() for w in value if clean(w).strip()]
    else:
        raise _invalid("invalid_field", "关键词应为词语列表", "keywords")
    words = list(dict.fromkeys(words))
    if len(words) > KEYWORDS_MAX:
        raise _invalid(
            "too_many_keywords",
            f"关键词太多（{len(words)}个），请保留最常用的{KEYWORDS_MAX}个以内",
            "keywords",
        )
    for w in words:
        if len(w) > KEYWORD_MAX:
            raise _invalid(
                "keyword_too_long",
                f"关键词“{w[:KEYWORD_MAX]}…”太长，每个关键词请控制在{KEYWORD_MAX}字以内",
                "keywords",
            )
    return tuple(words)


def checked_id(value: object) -> str | None:
    """The id the desk gives a new entry (None: one is made up for it)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not ID.fullmatch(value.strip()):
        raise _invalid(
            "invalid_id",
            "编号只能用小写字母、数字和连字符（如 kb-heating-season），3到64个字符；也可留空自动生成",
            "id",
        )
    return value.strip()


def checked_reason(reason: object) -> str:
    """Why an entry is retired: required, one sentence (it goes into the entry's history)."""
    text = " ".join(clean(reason).split()) if isinstance(reason, str) else ""
    if not text:
        raise _invalid("reason_required", "请填写停用原因（如：政策已调整，答复不再适用）", "reason")
    if len(text) > REASON_MAX:
        raise _invalid(
            "reason_too_long", f"停用原因太长（{len(text)}字），请控制在{REASON_MAX}字以内", "reason"
        )
    return text


# --- browsing by category ------------------------------------------------------------------------


def category_filter(city: City, value: str | None) -> frozenset[str] | None:
    """The categories a list narrowed to `value` (a category id) shows: the category and, for a
    branch, every category under it (城市管理 shows 路灯故障's entries). None: not narrowed.

    Taken from the city's tree, not from the ids' dotted form, so a city's ids need not be paths.
    An id the city does not have is refused rather than answered with an empty list: an operator
    on a call would take "nothing found" for "the hotline has no answer"."""
    wanted = " ".join(clean(value).split()) if value else ""
    if not wanted:
        return None
    if wanted not in city.category_by_id:
        raise _invalid("unknown_category", _unknown_category(city, wanted), "category")
    return city.branch(wanted)


def _unknown_category(city: City, wanted: str) -> str:
    # Someone who typed the category's name (路灯故障, or 城市管理/市政设施/路灯故障) is told its id.
    named = [
        cid for cid, names in city.category_names_by_id.items() if wanted in (names[-1], "/".join(names))
    ]
    if len(named) == 1:
        return f"分类请填写编号：“{wanted[:40]}”的编号是 {named[0]}"
    return (
        f"分类“{wanted[:40]}”不存在，请填写分类目录中的编号（如 city.facility.streetlight），"
        "上级分类包含其下各类"
    )


# --- review age ----------------------------------------------------------------------------------


def review_cutoff(today: date, review_days: int) -> date:
    """Entries last confirmed before this day are due for a review."""
    return today - timedelta(days=review_days)


def review_due(reviewed: date | None, today: date, review_days: int) -> bool:
    """Not confirmed within `review_days` (or never): 待复核, to be checked before it is given."""
    return reviewed is None or reviewed < review_cutoff(today, review_days)


# --- who may do what ---------------------------------------------------------------------------


def may_read(role: str) -> bool:
    return role in READERS


def may_add(role: str) -> bool:
    return role == "admin"


def may_retire(role: str) -> bool:
    return role == "admin"


def owns(role: str, department: str | None, entry: KnowledgeEntry) -> bool:
    """The department that owns the answer (and keeps it current)."""
    return role == "department" and department is not None and entry.department == department


def may_edit(role: str, department: str | None, entry: KnowledgeEntry) -> bool:
    """The desk edits any entry; a department only its own."""
    return role == "admin" or owns(role, department, entry)


def may_confirm(role: str, department: str | None, entry: KnowledgeEntry) -> bool:
    """确认有效: the owning department, or the desk."""
    return role == "admin" or owns(role, department, entry)


def edit_reviews(role: str, department: str | None, entry: KnowledgeEntry) -> bool:
    """An edit by the owning department is its review of the answer: it is current as of today."""
    return owns(role, department, entry)


def edited(
    city: City,
    current: KnowledgeEntry,
    raw: Mapping[str, Any],
    *,
    role: str,
    department: str | None,
    today: date,
) -> KnowledgeEntry:
    """The entry after `raw` changes it (fields left out keep their value), as `role` may change it:
    the desk edits any entry, a department only its own and without giving it to another department;
    the owning department's edit counts as its review (`reviewed` is today)."""
    if not may_edit(role, department, current):
        raise DomainError(
            "forbidden",
            "只有派单中心或负责此答复的单位可以修改此条目"
            if role == "department"
            else "只有派单中心或负责单位可以修改知识库",
            kind="forbidden",
        )
    merged = {
        "question": current.question,
        "answer": current.answer,
        "category": current.category,
        "keywords": list(current.keywords),
        "department": current.department,
        **{k: v for k, v in raw.items() if k in FIELD_NAMES and k not in ("reason", "id") and v is not None},
    }
    if role == "department" and merged["department"] != current.department:
        raise DomainError(
            "forbidden",
            "负责单位只能由派单中心调整；如此答复应由其他单位负责，请联系派单中心",
            kind="forbidden",
            field="department",
        )
    reviewed = today if edit_reviews(role, department, current) else current.reviewed
    return checked_entry(city, current.id, merged, reviewed=reviewed)
