"""How the console shows things: deadlines as time left, event histories as sentences, the grid map
as SVG. Pure functions over the API's JSON; no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from services.notifier import scoring
from services.notifier.service import RESENDABLE
from services.router.rules import FIRST_CONTACT, Precedent, located_apart, matching_rules, route
from services.router.sla import add_working_days, sla_class_for
from shared import trend
from shared.access import ROLE_NAMES, subject_words
from shared.city import City
from shared.events import GridMatch
from shared.survey_reply import comment_in_note, rating_words
from shared.tickets import MEDIATION_OUTCOME_NAMES, RATING_NAMES

ACTION_NAMES = {
    "accepted": "签收",
    "returned": "退单",
    "extension_requested": "申请延期",
    "extension_approved": "延期已批准",
    "extension_refused": "延期未批准",
    "resolved": "办结",
    "surveyed": "转入回访",  # the SMS itself is the survey.sent record beside it
    "rated": "市民评价",
    "closed": "关闭",
    "reopened": "重新办理",
    "warning": "临期提醒",
    "overdue": "超期督办",
    "escalated": "升级督办",
    "urged": "来电催办",
    "verified": "现场核查",
    "merged": "并案",
    "duplicate_merged": "并案",
    "remerged": "并案",
    "placed": "事发网格",
    "place_requested": "申请更正事发网格",
    "place_refused": "事发网格更正申请未同意",
}
# Steps whose note says them whole: 并入工单X合并办理：… / 并案：工单Y并入本工单（…） /
# 随工单Y并入工单X… / 事发网格人工选定为X，原为Y（12345派单中心）.
# 网格员W017申请将事发网格更正为X（现为Y）：… / 12345派单中心不同意将事发网格更正为X（网格员W017申请）：…
SAID_BY_NOTE = ("merged", "duplicate_merged", "remerged", "placed", "place_requested", "place_refused")
TOPIC_NAMES = {
    "appeal.received": "受理登记",
    "appeal.classified": "智能分类",
    "appeal.located": "定位",
    "appeal.photos_added": "补充照片",
    "appeal.review": "转人工复核",
    "ticket.assigned": "派单",
    "survey.sent": "回访短信已发送",
    "survey.answered": "市民回复回访",
    "ticket.personal_data_removed": "个人信息已按居民申请删除",
    "meeting.convened": "召开联席会议",
    "meeting.updated": "联席会议进展",
}
VIA_NAMES = {
    "rule": "按权责清单",
    "fallback": "按兜底规则",
    "dispatch_desk": "转派单中心",
    "operator": "人工派单",
    "reroute": "退单后改派",
    "redispatch": "派单中心改派",
    "mediation": "转人民调解",
    "meeting": "联席会议确定",
    "answered": "话务员当场答复",
    "on_spot": "网格员现场处置",
}


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def local(value: str | datetime | None, tz: ZoneInfo) -> str:
    moment = parse_time(value) if isinstance(value, str) or value is None else value
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M") if moment else ""


def due_of(ticket: Mapping[str, Any]) -> datetime | None:
    """The deadline that matters now: to accept while assigned, to resolve once accepted, and for
    the joint meeting to decide while one holds the ticket (the clock its supervision runs by)."""
    if ticket.get("status") == "assigned":
        return parse_time(ticket.get("respond_by"))
    if ticket.get("status") == "accepted":
        return parse_time(ticket.get("resolve_by"))
    if ticket.get("status") == "meeting":
        return parse_time(ticket.get("meeting_by"))
    return None


# What a ticket's 承办单位 is while a joint meeting holds it: the meeting decides who leads, and the
# department the ticket still names (the one that returned it twice, or whose resolution the resident
# or the grid worker sent back twice) is only summoned to it.
PENDING_MEETING = "待会议确定"


def holder_name(ticket: Mapping[str, Any]) -> str:
    """The 承办单位 a ticket's page or a list row names: 待会议确定 while a joint meeting holds the
    ticket, else its department's name ("" when none: not yet dispatched). Reads a ticket as the
    router gives it (`department`) or a list item as the record does (`department_name`)."""
    if ticket.get("status") == "meeting":
        return PENDING_MEETING
    return str(ticket.get("department_name") or (ticket.get("department") or {}).get("name") or "")


def due_label(status: str | None) -> str:
    """What the time left counts down to (see due_of)."""
    return {"assigned": "签收时限", "accepted": "办结时限", "meeting": "会议时限"}.get(status or "", "时限")


def deadline_shown(ticket: Mapping[str, Any], tz: ZoneInfo) -> str:
    """A list's 办结时限 cell. Where no department's resolve deadline runs it says what does: at the
    dispatch desk the ticket awaits dispatch (its deadlines are set when it is dispatched), and held
    by a joint meeting only the meeting's clock runs (its 会议时限, as the ticket's page says, due_of)."""
    status = ticket.get("status")
    if status == "review":
        return "待派单"
    if status == "meeting":
        due = due_of(ticket)
        return f"{due_label(status)} {local(due, tz)}" if due else "待联席会议决定"
    return local(ticket.get("resolve_by"), tz)


# What a department is told after each action on a ticket, with what happens next.
DONE = {
    "resent": "已向市民补发通知，发送结果见“短信与微信通知”。",
    "accept": "已签收，请在办结时限内办理。",
    "resolve": "已办结，系统将向市民发送回访短信。",
    "extend": "延期申请已提交，等待派单中心审核。",
    "return": "工单{no}已退单，将改派其他单位或由派单中心人工派单。",
    # A first return, where the ticket went is known: the list's next candidate, or the desk.
    "return_rerouted": "工单{no}已退单，已按权责清单改派至{to}。",
    "return_desk": "工单{no}已退单，已转派单中心重新派单。",
    # A second return: the workflow convenes a joint meeting (吹哨报到) instead of routing it again.
    "return_meeting": "工单{no}已退单。此工单已两次被退回，将召集联席会议确定承办单位。",
    # The desk's 事发网格 (on the ticket's page, which then names the place and has the history's line).
    "place": "事发网格已更新为{place}，已记入办理记录；该网格的网格员将看到此工单。",
    # The grid worker's 申请更正事发网格 (the page then shows the request waiting).
    "place_requested": "更正申请已提交，等待派单中心审核；同意后工单将移至您选择的网格。",
    "place_confirmed": "已确认事发网格为{place}，已记入办理记录，位置核实的提示不再显示。",
    # The desk's 改派 (on the ticket's page, which then shows the ticket with its new department).
    "redispatch": "已改派至{department}，其签收和办结时限重新计算；原承办单位不再看到此工单。",
    # 转人民调解: the ticket has gone to the committee, `to` (the department's queue, where it is told).
    "mediate": "工单{no}已转{to}调解，本单位不再承办此工单。",
    # The grid worker's 现场核查 (the page then shows the ticket with the check's outcome).
    "verified": "核查结果已记录：{verification}。",
    "verified_back": "已退回{department}重新办理，承办单位将看到您写的现场情况和照片。",
    # The desk's 并案 (on the duplicate's page, which then links to the ticket it follows).
    "merge": "工单{no}已并入工单{into}合并办理并关闭，原承办单位不再承办；已短信告知市民跟进工单{into}。",
}


def left_queue(action: str, no: str, *, to: str, to_meeting: bool, to_desk: bool = False) -> str:
    """What a department is told in its queue after a ticket left it (退单, 转人民调解): who has it
    now (`to`, a name; "" when not known), the dispatch desk (`to_desk`), or that a joint meeting
    is to settle it (`to_meeting`: a ticket's second return)."""
    if action != "return":  # 转人民调解: the street's committee, named where the ticket says which
        return DONE[action].format(no=no, to=to or "街道人民调解委员会")
    said = (
        "return_meeting" if to_meeting else "return_desk" if to_desk else "return_rerouted" if to else action
    )
    return DONE[said].format(no=no, to=to)


def batch_picked(picked: Sequence[str], on_page: Sequence[str], whole_page: bool) -> list[str]:
    """The tickets a 批量签收 form names: those ticked, or with 全选 every new ticket the page
    listed (`on_page`: without the script 全选 ticks nothing else), each once, in the page's order."""
    return list(dict.fromkeys([*(on_page if whole_page else ()), *picked]))


def batch_outcome(body: dict[str, Any]) -> dict[str, Any]:
    """A 批量签收's answer (the API's) as the queue says it: how many were accepted, and the refused
    with the workflow's reasons."""
    refused = [
        {"ticket_no": t["ticket_no"], "reason": t.get("message", "")}
        for t in body.get("tickets", [])
        if t.get("outcome") != "accepted"
    ]
    late = sum(t.get("outcome") == "accepted" and t.get("on_time") is False for t in body.get("tickets", []))
    return {"accepted": int(body.get("accepted", 0)), "late": late, "refused": refused, "error": ""}


def time_left(due: datetime | None, now: datetime) -> tuple[str, bool]:
    """("剩余3小时20分", False), or ("已超期1天2小时", True)."""
    if due is None:
        return "", False
    seconds = int((due - now).total_seconds())
    late = seconds < 0
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = (f"{days}天" if days else "") + (f"{hours}小时" if hours else "")
    if not days:
        # Within its first minute either way a deadline is 不足1分钟 off, not "已超期0分".
        parts += f"{minutes}分" if minutes or hours else "不足1分钟"
    return ("已超期" if late else "剩余") + parts, late


# 短信与微信通知 on a ticket's page (the desk's): what each kind of message to the resident is, and
# what became of it (`services.notifier.states`); a kind or state not named here is shown as it is.
NOTICE_KIND_NAMES = {
    "ack": "受理告知",
    "progress": "进度告知",
    "result": "办理结果",
    "survey": "回访评价",
    "reminder": "评价提醒",
    "clarification": "评价未识别",
    "which_ticket": "询问评价哪件工单",
    "confirmation": "评价确认",
    "opt_out": "退订确认",
    "query": "查询答复",
}
NOTICE_STATE_NAMES = {
    "held": "暂缓发送",
    "sent": "已发送",
    "retrying": "发送失败，稍后重试",
    "failed": "发送失败",
    "cancelled": "已取消",
    "delivered": "已送达",
    "undelivered": "未送达",
}

# Why a message waits (`services.notifier.dispatch`: the day's cap for that phone is checked first).
HELD_FOR = {"quiet_hours": "夜间免打扰时段", "daily_cap": "该号码今日通知已达上限"}


def notices(messages: Sequence[Mapping[str, Any]], tz: ZoneInfo) -> list[dict[str, Any]]:
    """The messages to a ticket's resident (`GET /api/v1/tickets/{no}/messages`), as its page lists
    them: when, what, to whom on which channel, what became of it (`state`, and `detail`: why it
    waits and until when, the provider's reason) and the text."""
    out = []
    for m in messages:
        state = str(m.get("state") or "")
        words = NOTICE_STATE_NAMES.get(state, state)
        detail = ""
        if state == "held" and m.get("replaced_by"):
            detail = "已补发，到时不再发送"
        elif state == "held" and m.get("until"):
            why = HELD_FOR.get(str(m.get("held_for")), "免打扰时段或当日条数已满")
            detail = f"{why}，将于{local(m['until'], tz)}发出"
        elif state == "undelivered" and m.get("kept") and not m.get("dropped"):
            detail = "市民再次发来消息时补发"
        elif state == "cancelled":
            detail = "已补发，原定发送取消" if m.get("replaced_by") else "市民已退订回访"
        if reason := m.get("receipt_error") or (m.get("error") if state != "held" else ""):
            detail = f"{detail}；{reason}" if detail else str(reason)
        out.append(
            {
                "at": local(m.get("created_at") or m.get("at") or m.get("sent_at"), tz),
                "kind": NOTICE_KIND_NAMES.get(str(m.get("kind")), str(m.get("kind") or "")),
                "channel": "微信" if m.get("channel") == "wechat" else "短信",
                "to": str(m.get("phone") or m.get("openid") or ""),
                "state": words,
                "detail": detail,
                "text": str(m.get("text") or ""),
                "id": str(m.get("message_id") or ""),
                "resent": "（补发）" if m.get("resent_from") else "",
                # 补发 is offered for what the notifier sends again (`Notifier.resend`).
                "resendable": m.get("kind") in RESENDABLE
                and bool(m.get("text"))
                and bool(m.get("message_id")),
            }
        )
    return out


OUTCOME_NAMES = {
    "no_answer": "市民未答复",
    "opted_out": "市民已退订回访",
    "skipped_anonymous": "匿名诉求不回访",
    # The resident's personal data was removed on their request: not their opt-out, nor anonymous.
    "erased": "市民个人信息已删除，不再回访",
}


def payload_words(record: Mapping[str, Any]) -> str:
    """What a workflow step carried, in words: the return's reason, the days asked for, the stage
    that ran late, the resident's rating, a mediation's outcome. Events carry it in the field the
    action names (`returned`, `extension`, `supervision`, `answer`, `mediation`); records written
    before that kept it in `data`."""
    if mediation := record.get("mediation"):
        return mediation_words(mediation)
    returned = record.get("returned") or {}
    extension = record.get("extension") or {}
    supervision = record.get("supervision") or {}
    answer = record.get("answer") or {}
    data = record.get("data") or {}
    if returned.get("reason_name") or data.get("reason_name"):
        return str(returned.get("reason_name") or data["reason_name"])
    days = extension.get("days") or data.get("days")
    if days:
        reason = extension.get("reason") or ""
        return f"{days}个工作日" + (f"（{reason}）" if reason else "")
    if supervision.get("stage_name"):
        return f"{supervision['stage_name']}时限"
    if answer:
        rating = RATING_NAMES.get(answer.get("rating") or 0)
        return rating or OUTCOME_NAMES.get(answer.get("outcome") or "", "")
    return ""


def describe(record: Mapping[str, Any], city: City) -> str:
    """One history record (an event as the store keeps it) as a sentence for staff."""
    topic = record.get("topic", "")
    if topic == "ticket.assigned":
        dept = (record.get("department") or {}).get("name", "")
        via = VIA_NAMES.get(record.get("via", ""), record.get("via", ""))
        return f"派单至{dept}（{via}）：{record.get('explanation', '')}"
    if topic == "ticket.updated" and record.get("action") == "urged":
        # The resident's words first: that is what the department must read.
        actor = record.get("actor", "")
        by = "派单中心" if actor == city.responsibilities.dispatch_desk else f"话务员{actor}"
        urges = (record.get("urge") or {}).get("urges")
        count = f"第{urges}次，" if urges else ""
        return f"{ACTION_NAMES['urged']}：{record.get('note') or '（未记录来电内容）'}（{count}{by}）"
    if topic == "ticket.updated" and record.get("action") == "verified":
        return verification_words(record)
    if topic == "ticket.updated" and record.get("action") in SAID_BY_NOTE:
        return record.get("note") or ACTION_NAMES[record["action"]]
    if topic == "ticket.updated" and (record.get("answer") or {}).get("rating") in RATING_NAMES:
        return answered_words(record)
    if topic == "ticket.updated":
        action = ACTION_NAMES.get(record.get("action", ""), record.get("action", ""))
        dept = (record.get("department") or {}).get("name")
        note, carried = record.get("note") or "", payload_words(record)
        # An extension request's reason is both its note and its payload's: said once. A refusal's
        # note is the desk's own reason, told apart from the department's that it follows.
        said = note if note not in carried else ""
        if note and record.get("action") == "extension_refused":
            said = f"驳回理由：{note}"
        words = [w for w in (dept, carried, said, photo_count(record)) if w]
        # Staff end their notes with a full stop: not kept before the "，" that goes on (…照明。，附照片).
        words = [w.rstrip("。，；.,;") for w in words[:-1]] + words[-1:]
        return action + ("：" + "，".join(words) if words else "")
    if topic in ("appeal.classified", "appeal.review"):
        names = "/".join(record.get("category_names") or ()) or record.get("category", "")
        confidence = record.get("confidence")
        share = f"（置信度{confidence:.0%}）" if isinstance(confidence, int | float) else ""
        return f"{TOPIC_NAMES[topic]}：{names}{share}"
    if topic == "survey.answered":
        # The answer as its confirmation said it: 满意，问题未解决 is not 满意.
        rating = rating_words(r, record.get("solved")) if (r := record.get("rating")) in (1, 2, 3) else ""
        if record.get("by"):  # asked on the phone (电话回访)
            return f"电话回访（话务员{record['by']}）：{rating}"
        if record.get("via") == "lookup":  # on the resident's lookup page, not by a reply
            return f"市民在查询页评价：{rating}"
        outcome = record.get("outcome") or "answered"
        if rating or outcome == "answered":
            return f"市民回复回访：{rating}"
        if outcome == "comment":  # a reply after the survey had closed
            return "市民补充意见" + (f"：{record['text']}" if record.get("text") else "")
        # The survey ended without an answer: why, in words (not the outcome's code).
        return f"回访结束：{OUTCOME_NAMES.get(outcome, '未答复')}"
    if topic == "meeting.updated":
        return meeting_words(record)
    if topic == "meeting.convened":
        return f"{TOPIC_NAMES[topic]}：{record.get('explanation') or record.get('note') or ''}"
    if topic == "appeal.received" and record.get("photos"):
        return f"{TOPIC_NAMES[topic]}（{photo_count(record)}）"
    return TOPIC_NAMES.get(topic, topic)


def answered_words(record: Mapping[str, Any]) -> str:
    """A step the resident's survey answer took (closed, reopened), as staff write it: the rating in
    words (回访结果) and, when the resident said more than their answer, what they said (市民意见),
    never their reply as sent ("满意，1"; notes written before kept it so)."""
    answer = record.get("answer") or {}
    action = ACTION_NAMES.get(record.get("action", ""), record.get("action", ""))
    dept = (record.get("department") or {}).get("name")
    result = f"回访结果：{rating_words(answer['rating'], answer.get('solved'))}"
    comment = comment_in_note(record.get("note") or "")
    words = [w for w in (dept, result, f"市民意见：{comment}" if comment else "") if w]
    return f"{action}：" + "；".join(words)


def meeting_words(record: Mapping[str, Any]) -> str:
    """A joint meeting's step (`meeting.updated`): who checked in, whom the desk named the lead and
    why, or which tickets were attached. The event's note is the decision's only; a check-in
    carries none, so the sentence names the department."""
    dept = (record.get("department") or {}).get("name", "")
    note = record.get("note") or ""
    action = record.get("action")
    if action == "checked_in":
        return f"联席会议报到：{dept}"
    if action == "decided":
        return f"联席会议决定：由{dept}主办" + (f"（{note}）" if note else "")
    if action == "attached":
        return "联席会议关联工单：" + "、".join(record.get("tickets") or ())
    return f"{TOPIC_NAMES['meeting.updated']}：{note}" if note else TOPIC_NAMES["meeting.updated"]


TITLE_CHARS = 30  # a ticket named in a sentence: its title, or the start of its text


def merge_confirmation(no: str, preview: Mapping[str, Any], city: City) -> dict[str, Any]:
    """并案, a typed main ticket's number confirmed before the merge: what the merge will do, the
    main ticket named by its title, grid, department and status (`preview`: the API's
    `merge/preview` answer), so that a mistyped number is caught; and who moves along."""
    main = preview["into"]
    title = main.get("title") or " ".join(str(main.get("text") or "").split())
    if len(title) > TITLE_CHARS:
        title = title[: TITLE_CHARS - 1] + "…"
    grid = (main.get("grid") or {}).get("grid")
    facts = [
        title,
        city.grids[grid].grid.name if grid in city.grids else "未定位网格",
        (main.get("department") or {}).get("name") or "未派单",
        main.get("status_name") or "",
    ]
    into = main["ticket_no"]
    moved = list(preview.get("moved") or ())
    return {
        "into": into,
        "moved": moved,
        "sentence": f"将工单{no}并入工单{into}（{'，'.join(f for f in facts if f)}）",
    }


def mediation_words(mediation: Mapping[str, Any]) -> str:
    """调解成功，达成协议（协议：…） / 调解不成."""
    outcome = MEDIATION_OUTCOME_NAMES.get(mediation.get("outcome") or "", "")
    agreement = mediation.get("agreement") or ""
    return outcome + (f"（协议：{agreement}）" if agreement else "")


def verified_line(ticket: Mapping[str, Any], tz: ZoneInfo) -> str:
    """The ticket's check on the spot in one line: 已解决（网格员W017，2026-11-24 10:00）; "" before one."""
    outcome = {"solved": "已解决", "not_solved": "未解决，已退回重办"}.get(ticket.get("verification") or "")
    if not outcome:
        return ""
    who = f"网格员{ticket.get('verified_by') or ''}"
    return f"{outcome}（{who}，{local(ticket.get('verified_at'), tz)}）"


def verification_words(record: Mapping[str, Any]) -> str:
    """网格员W017现场核查：已解决（路灯已亮） / 网格员W017现场核查未解决：…，退回…重新办理."""
    who = f"网格员{record.get('actor', '')}"
    note, photos = record.get("note") or "", photo_count(record)
    if (record.get("verification") or {}).get("solved"):
        said = "，".join(w for w in (note, photos) if w)
        return f"{who}现场核查：已解决" + (f"（{said}）" if said else "")
    dept = (record.get("department") or {}).get("name") or "承办单位"
    return f"{who}现场核查未解决：{note}" + (f"（{photos}）" if photos else "") + f"，退回{dept}重新办理"


def photo_count(record: Mapping[str, Any]) -> str:
    """ "附照片2张" for an event that carries photos (the thumbnails are on the ticket)."""
    return f"附照片{len(record['photos'])}张" if record.get("photos") else ""


def page_count(total: int, size: int) -> int:
    """How many pages `total` items take, `size` a page (one, empty, when there are none)."""
    return max(1, -(-total // size))


def is_day(value: str) -> bool:
    """Whether `value` is a day as a date field sends it (2026-12-02)."""
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def refusal(
    field: str | None,
    code: str,
    message: str,
    fields: Mapping[str, str],
    values: Mapping[str, str],
    default: str,
    said_as: Mapping[str, str] | None = None,
    expected: str | None = None,
) -> dict[str, str]:
    """The API's refusal as {form field: message}, beside the field it names (else at `default`).
    When the API's schema refused the request (code invalid_request), its message is for developers
    (the parameter's English name): staff are told instead, by the field's label, what to fill in,
    and what the value should be when the API says (`expected`: 不能大于30). `said_as`: how the
    API's messages name a field that this page labels otherwise (intake says 诉求内容 for every
    channel; the patrol form asks for 问题描述)."""
    at = field if field is not None and field in fields else default
    label = fields.get(at, "")
    if code == "invalid_request" and label:
        if not (values.get(at) or "").strip():
            return {at: f"请填写{label}"}
        return {at: f"{label}{expected}" if expected else f"{label}不符合要求，请检查后重新填写"}
    return {at: relabelled(message, (said_as or {}).get(at), label)}


def relabelled(message: str, said: str | None, label: str | None) -> str:
    """The API's message in the page's words: its name for the field (`said`, 诉求内容) at its start
    replaced by the field's label on the page (问题描述), so it names what the person sees."""
    if said and label and message.startswith(said):
        return label + message[len(said) :]
    return message


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def score_text(score: float | None) -> str:
    """综合得分 as the dashboard shows it, on the page and in its live updates alike (a number sent
    to the page's script lost its ".0": 100.0 came back as 100)."""
    return "—" if score is None else f"{score:.1f}"


def shown_figures(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The dashboard's figures as its cards show them, for the live updates: the rates in percent,
    the score as text, each rate's base beside it; the counts as they are."""
    shown = {k: percent(v) if k.endswith("_rate") else v for k, v in figures.items()}
    if "score" in figures:
        shown["score"] = score_text(figures["score"])
    return shown | rate_bases(figures)


def counted_to(asked: str, counted: str) -> str:
    """What the dashboard says under the period when the API counted it up to today, not to the end
    asked for (a day still to come: `shared.periods.counted_period`), and that the period before
    and the year before compare as many days; "" when it counted the period asked for."""
    if counted == asked or not is_day(counted):
        return ""
    return f"结束日期{asked}尚未到来，统计至今天（{counted}）；环比、同比按同样的天数比较。"


BASES = ("response_base", "resolution_base", "satisfaction_base", "direct_answer_base")


def rate_bases(figures: Mapping[str, Any]) -> dict[str, str]:
    """What each of the three rates is counted over, beside it on the dashboard (解决率 50.0%（4/8）),
    from the counters `scoring.rates` returns with them: the response rate over the responses due
    (or, for a period counted before those were, over the tickets assigned: the rate's own choice,
    `scoring.response_measure`), the resolution and satisfaction rates over the answered surveys,
    satisfaction with its 满意 and 基本满意 (the latter weighted); the direct-answer rate over the
    tickets dispatched, each once (or all assignments, as `scoring.direct_answer_base` chooses).
    "" where a rate has nothing to count yet, or its counters are in the middle of a move
    (`scoring.settling`): it shows —."""

    def n(key: str) -> int:
        return int(figures.get(key) or 0)

    if figures.get("settling"):
        return dict.fromkeys(BASES, "")

    on_time, due = scoring.response_measure(figures)  # as the rates above them are counted
    dispatched = n(scoring.direct_answer_base(figures))
    answered = n("answered")
    return {
        "direct_answer_base": f"（{n('answered_directly')}/{dispatched}）" if dispatched else "",
        "response_base": f"（{n(on_time)}/{n(due)}）" if n(due) else "",
        "resolution_base": f"（{n('solved')}/{answered}）" if answered else "",
        "satisfaction_base": (
            f"（满意{n('satisfied')}、基本满意{n('basically_satisfied')}／{answered}）" if answered else ""
        ),
    }


def category_groups(
    city: City, dept: str, categories: Sequence[tuple[str, str]]
) -> list[tuple[str, list[tuple[str, str]]]]:
    """A department's category filter: the categories the responsibility list gives it (to lead or
    to co-handle, with those under them, and the branches above them) first, then the others (a
    joint meeting or the desk may send it any); forty categories in one list hid its own few."""
    listed = {r.category for r in city.responsibilities.rules if r.lead == dept or dept in r.co}
    own = {c for category in listed for c in city.branch(category)}
    own |= {above for c in own for above in city.category_path.get(c, ())}
    groups = [
        ("本单位权责清单内的分类", [c for c in categories if c[0] in own]),
        ("其他分类", [c for c in categories if c[0] not in own]),
    ]
    return [(label, items) for label, items in groups if items]


def meeting_title(meeting: Mapping[str, Any], city: City) -> str:
    """What a meeting is about, as staff say it on the phone (its id is a hash): a hotspot by its
    grid and category (和平里社区第一网格路灯故障热点), another by the ticket that called it."""
    grid = city.grids.get(meeting.get("grid") or "")
    category = meeting.get("category") or ""
    if meeting.get("reason") == "hotspot" and grid and category in city.category_path:
        return f"{grid.grid.name}{city.category_names(category)[-1]}热点"
    tickets = meeting.get("tickets") or []
    if not tickets:
        return str(meeting.get("meeting_id", ""))
    return f"工单{tickets[0]}" + (f"等{len(tickets)}件" if len(tickets) > 1 else "")


def precedent_words(meeting: Mapping[str, Any], city: City, tz: ZoneInfo, now: datetime | None = None) -> str:
    """先例: what a decided meeting's decision does to the appeals that follow it. Its lead takes the
    next confidently routed appeals of its category in its grid for `meeting_precedent_days` after
    the decision (`rules.following_precedent`; the router writes the precedent with the decision,
    `meetings.precedent`), and the meeting's page says so, and until when (past `now`: that it
    ended). "" when it sets none: not decided, no category or grid, or a city that keeps none."""
    days = city.sla.supervision.meeting_precedent_days
    lead = city.department_by_id.get(meeting.get("lead") or "")
    decided_at = parse_time(meeting.get("decided_at")) or parse_time(meeting.get("convened_at"))
    category, grid = meeting.get("category"), meeting.get("grid")
    if meeting.get("status") != "decided" or days <= 0 or not (lead and decided_at and category and grid):
        return ""
    set_by = Precedent(
        category=category, grid=grid, lead=lead.id, meeting_id=meeting["meeting_id"], decided_at=decided_at
    )
    until = set_by.until(days)
    day, n = until.astimezone(tz).strftime("%Y-%m-%d"), f"{days:g}"
    if now is not None and now >= until:
        return f"先例：决定后{n}天内本网格同类诉求直接派给{lead.name}（已于{day}到期）"
    return f"先例：此后{n}天内本网格同类诉求直接派给{lead.name}（至{day}）"


def meeting_row(
    meeting: dict[str, Any], city: City, tz: ZoneInfo, now: datetime | None = None
) -> dict[str, Any]:
    """A joint meeting as the page shows it: its deadline in local time, its category, grid and
    lead by name (the API gives their ids), and the precedent its decision set (`precedent_words`)."""
    lead = city.department_by_id.get(meeting.get("lead") or "")
    grid = city.grids.get(meeting.get("grid") or "")
    category = meeting.get("category")
    return {
        **meeting,
        "title": meeting_title(meeting, city),
        "deadline_local": local(meeting.get("deadline"), tz),
        "lead_name": lead.name if lead else meeting.get("lead") or "",
        "category_label": "/".join(city.category_names(category)) if category in city.category_path else "",
        "grid_name": grid.grid.name if grid else "",
        "precedent": precedent_words(meeting, city, tz, now),
    }


def grid_choices(city: City) -> list[tuple[str, list[tuple[str, str]]]]:
    """The grids for a dropdown, grouped by community (<optgroup label="和平街道/和平里社区">), each
    named once: by its own name when that already says its community (和平里社区第一网格, not
    和平里社区/和平里社区第一网格), else after its community's, so that the closed list, which shows
    the option alone, still says which grid it is."""
    groups: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for gid, info in city.grids.items():
        name, community = info.grid.name, info.community_name
        label = name if community in name else f"{community}/{name}"
        groups.setdefault(info.community_id, (f"{info.street_name}/{community}", []))[1].append((gid, label))
    return list(groups.values())


def grid_chosen_by_desk(ticket: Mapping[str, Any], history: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the ticket's grid is the one the dispatch desk chose (人工选定): as it dispatched it
    (`ticket.assigned`'s `grid_chosen`), or later (事发网格, `ticket.updated` `placed`). Read from
    the history, which the ticket comes with wherever it is read from (Redis, or the record once it
    has left), as the category's 人工选定 is read."""
    grid = (ticket.get("grid") or {}).get("grid")
    placed = (
        h
        for h in history
        if (h.get("topic") == "ticket.assigned" and h.get("grid_chosen"))
        or (h.get("topic") == "ticket.updated" and h.get("action") == "placed")
    )
    return bool(grid) and any(h.get("grid") == grid for h in placed)


def awaits_check(ticket: Mapping[str, Any], worker_grid: str | None) -> bool:
    """现场核查: whether the grid worker of `worker_grid` is to check this ticket's resolution on the
    spot (待核查): a resolution in its grid not checked yet, other than one closed at first contact
    (the worker's own 现场处置, a call answered) that was never reopened."""
    # The ticket's grid: a match (the API's ticket) or its id (a row of the record).
    place = ticket.get("grid")
    grid = place.get("grid") if isinstance(place, Mapping) else place
    return (
        worker_grid is not None
        and grid == worker_grid
        and ticket.get("status") in ("resolved", "surveyed")
        and not ticket.get("verified_at")
        and not (ticket.get("assigned_via") in FIRST_CONTACT and not ticket.get("reopens"))
    )


def placed_done(ticket: Mapping[str, Any]) -> str:
    """The ticket page's line after 事发网格 (`DONE`): the located grid of a disputed place chosen is
    confirmed (经人工核实), not changed; read from the ticket's last placing, as the API answers."""
    placed = [h for h in ticket.get("history", ()) if h.get("action") == "placed"]
    return "place_confirmed" if placed and (placed[-1].get("place") or {}).get("confirmed") else "place"


def patrol_waits(city: City, preview: Mapping[str, Any] | None) -> str:
    """What a patrol report waits for before a department has it, as its preview judged it (the
    classifier the pipeline uses; `review`: the desk holds it): "grid" where the dispatch desk is to
    decide its grid (none found where the place decides the department, or an address naming
    another grid than the worker's: 定位与地址不一致), "category" where the classifier was unsure of
    the category, "" where it goes out by its rule at once, or the preview could not be had."""
    if not preview or not preview.get("review"):
        return ""
    grid = preview.get("grid") or {}
    category = str((preview.get("category") or {}).get("id") or "")
    at, named, method = grid.get("grid"), grid.get("address_grid"), str(grid.get("method") or "none")
    if city.needs_placing(category, at) or city.place_disputed(category, at, named, method):
        return "grid"
    return "category"


def grid_disputed(city: City, ticket: Mapping[str, Any], history: Iterable[Mapping[str, Any]] = ()) -> str:
    """定位与地址不一致：定位在X，地址在Y (`rules.located_apart`), for the ticket's page and its desk
    card, so that the desk picks the right grid in 事发网格 and the department and the grid's worker
    know to look at both places; "" when the two agree (`disputed_match`)."""
    match = disputed_match(ticket, history)
    return located_apart(city, match) if match is not None else ""


def disputed_match(ticket: Mapping[str, Any], history: Iterable[Mapping[str, Any]] = ()) -> GridMatch | None:
    """How the ticket's grid was found when its address names another grid, else None. Read from the
    ticket's grid where it has how it was matched (the working set: the desk's cards), else from its
    last classification in the history (a ticket read back from the record keeps the grid's place
    only). None once a person placed it: the desk's 人工选定 (the page says so), a reviewer's grid."""
    grid = ticket.get("grid") or {}
    if not grid.get("grid"):
        return None
    source = grid
    history = list(history)
    if not grid.get("address_grid"):
        classified = [h for h in history if h.get("topic") in ("appeal.classified", "appeal.review")]
        source = (classified[-1].get("grid") if classified else None) or {}
    if not source.get("address_grid") or source.get("grid") != grid.get("grid"):
        return None
    if grid_chosen_by_desk(ticket, history):
        return None
    try:
        return GridMatch.model_validate(source)
    except ValueError:  # a grid of a shape this console does not know: nothing to say about it
        return None


# --- the dispatch desk's choices -------------------------------------------------------------------


def departments_of(city: City) -> list[dict[str, str]]:
    return [{"id": d.id, "name": d.name} for d in city.departments if d.kind != "dispatch_desk"]


def department_filter(city: City) -> list[tuple[str, str]]:
    """The 承办单位 choices of a filter: every department, the dispatch desk (12345派单中心) too, so
    that its waiting room (待人工派单) can be listed and a link to it (the trend's) shows what it
    filters by. One list for every filter of departments."""
    return [(d.id, d.name) for d in city.departments]


def likely_department(city: City, category: str, grid: GridMatch) -> str:
    """Where the responsibility list sends the category, for the desk to confirm with one click. With
    no grid, the rules that hold anywhere decide, else the fallback owner."""
    if grid.grid is not None:
        return route(city, category, grid, 1.0, 0.0).lead
    rules = matching_rules(city, category, grid)
    return rules[0][1].lead if rules else city.responsibilities.fallback_owner


SUGGESTED_AT_LEAST = 0.05  # a reading less likely than this is no suggestion: one Enter would send it


def grid_match(city: City, grid: str) -> GridMatch:
    """A grid of the city with its community and street, as the rules match places."""
    info = city.grids[grid]
    return GridMatch(grid=grid, community=info.community_id, street=info.street_id)


def suggestions(
    city: City, ticket: dict, grid: str | None = None, also: str | None = None
) -> list[dict[str, Any]]:
    """The classifier's top categories, each with the department the rules would send it to, and
    whether that department already returned the ticket (`returned`: not offered as a one-click
    dispatch, see desk.html). Left out: a reading below `SUGGESTED_AT_LEAST`, and the category a
    department returned the ticket as wrong (诉求分类有误, in `return_reasons` when read). `grid`:
    the grid the desk chose in 事发网格, where the departments are those of that place. `also`: a
    category the desk chose in 其他分类, offered last with its department when none of the others
    is it (`other`: a button, not one of the classifier's readings to pick among)."""
    if grid in city.grids:
        match = grid_match(city, grid)
    else:
        match = GridMatch.model_validate(ticket["grid"]) if ticket.get("grid") else GridMatch(grid=None)
    returned_by = set(ticket.get("returned_by") or ())
    returns = ticket.get("return_reasons") or []
    disputed = ticket.get("category") if returns and returns[-1].get("reason") == "wrong_category" else None
    tops = ticket.get("top_categories") or [
        {"category": ticket.get("category"), "probability": ticket.get("confidence") or 0}
    ]
    readings = [
        top
        for top in tops[:3]
        if top.get("category") in city.category_by_id
        and top.get("category") != disputed
        and (top.get("probability") or 0) >= SUGGESTED_AT_LEAST
    ]
    if also in city.category_by_id and all(top.get("category") != also for top in readings):
        readings.append({"category": also, "probability": None, "other": True})
    out = []
    for top in readings:
        cat = top["category"]
        dept = city.department_by_id.get(likely_department(city, cat, match))
        out.append(
            {
                "category": cat,
                "names": "/".join(city.category_names(cat)),
                "probability": top.get("probability") or 0,
                "department": dept.id if dept and dept.kind != "dispatch_desk" else None,
                "department_name": dept.name if dept and dept.kind != "dispatch_desk" else None,
                "returned": dept is not None and dept.id in returned_by,
                **({"other": True} if top.get("other") else {}),
            }
        )
    return out


def routed_rule(history: Iterable[Mapping[str, Any]], dept_id: str) -> str:
    """The responsibility rule, in words, by which the ticket's last assignment sent it to
    `dept_id` (`ticket.assigned`'s `rule`), or "": the last assignment was to another department,
    or not by a rule (the desk's, a re-route after a return, a referral)."""
    assigned = [h for h in history if h.get("topic") == "ticket.assigned"]
    if not assigned or (assigned[-1].get("department") or {}).get("id") != dept_id:
        return ""
    return str(assigned[-1].get("rule") or "")


def returns_of(history: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Each return (退单) in a ticket's history, oldest first: the department (id and name), the
    reason's name as the event carries it (whatever reasons the workflow lists, no code looked up
    here), the responsibility rule it disputed, if any, its note, and all of it as one sentence
    (`words`). Events carry the return in `returned`; records written before that kept it in
    `data`."""
    out = []
    for h in history:
        if h.get("action") != "returned":
            continue
        dept = h.get("department") or {}
        detail = h.get("returned") or h.get("data") or {}
        entry = {
            "reason": str(detail.get("reason") or ""),
            "department": str(dept.get("id") or h.get("actor") or ""),
            "department_name": str(dept.get("name") or h.get("actor") or ""),
            "reason_name": payload_words(h),
            "disputed_rule": str(detail.get("disputed_rule") or ""),
            "note": str(h.get("note") or ""),
        }
        out.append({**entry, "words": return_words(entry)})
    return out


def return_words(entry: Mapping[str, str]) -> str:
    """区水务局退单：不属于本单位职责（争议规则：…）；说明：…"""
    rule = f"（争议规则：{entry['disputed_rule']}）" if entry.get("disputed_rule") else ""
    note = f"；说明：{entry['note']}" if entry.get("note") else ""
    reason = entry.get("reason_name") or "未说明理由"
    return f"{entry['department_name']}退单：{reason}{rule}{note}"


# --- the grid map --------------------------------------------------------------------------------

MAP_WIDTH = 600
# Volume classes from few to many: light to dark blue. Labels on the darker two are white, so each
# text colour keeps WCAG AA contrast on its fill.
SHADES = ("#eef4fb", "#c6dbef", "#6baed6", "#2171b5", "#08306b")


def map_label(city: City, gid: str) -> list[str]:
    """A grid's name as the map writes it in its cell, a line or two: staff know grids by name, not
    by their codes. A name that starts with its community's (和平里社区第一网格) is split after it,
    so each line fits the cell."""
    info = city.grids[gid]
    name, community = info.grid.name, info.community_name
    if name.startswith(community) and len(name) > len(community):
        return [community, name[len(community) :]]
    return [name]


def most_received(groups: Sequence[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
    """The `n` groups of the trend (`/api/v1/stats/trend`) that received the most appeals in the
    period, most first (by name among equals); those with none in it (counted only in the periods
    it is compared with) are left out."""
    return sorted((g for g in groups if g["count"]), key=lambda g: (-g["count"], g["name"]))[:n]


def calendar_notice(city: City, today: date) -> str:
    """The banner of the dispatch desk and the dashboard while the city's working-day calendar (sla.yaml)
    ends within CALENDAR_WARN_DAYS of `today`, or has ended: deadlines past its end are counted by
    weekends only. "" otherwise (and for a city that lists no holidays at all)."""
    said = city.sla.calendar_running_out(today)
    return f"{said}；此后到期的工作日期限暂按周末计算，未计节假日和调休。" if said else ""


def extension_dates(ticket: Mapping[str, Any], city: City, tz: ZoneInfo) -> dict[str, str]:
    """What the desk weighs an extension request (延期申请) against: the resolution deadline now, the
    one approval would set (the days asked for, in working days from it, as the router counts
    them), and the time the ticket's kind of appeal is given to be resolved. `calendar` says, when
    that new deadline falls after the end of the city's working-day calendar (sla.yaml), that the
    days past its end were counted as the router counts them there: by weekends only, no holiday
    or make-up working day (调休) in them, so the real deadline may differ; else ""."""
    request, due = ticket.get("extension_request") or {}, parse_time(ticket.get("resolve_by"))
    if not request or due is None:
        return {}
    holder = (ticket.get("department") or {}).get("id")
    name = sla_class_for(city, ticket.get("category") or "", bool(ticket.get("urgent")), department=holder)
    cls = city.sla.classes[name]
    given = f"{cls.resolve_days}个工作日" if cls.resolve_days else f"{cls.resolve_hours:g}小时"
    later = add_working_days(due, int(request.get("days") or 0), city.sla, tz)
    ends, calendar = city.sla.calendar_ends, ""
    if ends is not None and later.astimezone(tz).date() > ends:
        calendar = (
            f"延期后的期限超出工作日历（只到{ends.isoformat()}）：此后的工作日暂按周末计算，"
            "未计节假日和调休。"
        )
    dates = {"resolve_by": local(due, tz), "extended_to": local(later, tz), "given": f"{cls.name}，{given}"}
    return {**dates, "calendar": calendar}


def grid_map(city: City, volume: Mapping[str, int]) -> dict[str, Any]:
    """The configured grid polygons as SVG shapes, shaded by the appeals each received."""
    polys = {gid: info.grid.polygon for gid, info in city.grids.items() if info.grid.polygon}
    if not polys:
        return {"width": MAP_WIDTH, "height": 0, "shapes": []}
    xs = [x for poly in polys.values() for x, _ in poly]
    ys = [y for poly in polys.values() for _, y in poly]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    scale = MAP_WIDTH / ((x1 - x0) or 1)
    height = round((y1 - y0) * scale) or 1
    top = max(volume.values(), default=0)
    shapes = []
    for gid, poly in sorted(polys.items()):
        points = [((x - x0) * scale, (y1 - y) * scale) for x, y in poly]  # north up
        n = volume.get(gid, 0)
        shade = 0 if not top or not n else min(len(SHADES) - 1, 1 + int(3 * n / top))
        shapes.append(
            {
                "grid": gid,
                "name": city.grids[gid].grid.name,
                "label": map_label(city, gid),
                "count": n,
                "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in points),
                "fill": SHADES[shade],
                "ink": "#ffffff" if shade >= 3 else "#1a1a1a",
                "cx": round(sum(x for x, _ in points) / len(points), 1),
                "cy": round(sum(y for _, y in points) / len(points), 1),
            }
        )
    return {"width": MAP_WIDTH, "height": height, "shapes": shapes, "shades": SHADES}


CHART_HEIGHT = 120
# A bar is at most as wide as in a fortnight's chart: on the 2nd of the month the month to date was
# two blocks of half the chart each, which read as a broken picture rather than two days.
CHART_WIDEST_DAYS = 14


def daily_bars(days: list[tuple[str, int]], width: int = MAP_WIDTH) -> dict[str, Any]:
    """Volume per day as SVG bars (one per day, oldest left, each in the middle of its day's
    share of the width), for the dashboard."""
    top = max((n for _, n in days), default=0)
    step = width / max(len(days), 1)
    w = max(min(step, width / CHART_WIDEST_DAYS) - 2, 1)
    bars = []
    for i, (day, n) in enumerate(days):
        h = round(CHART_HEIGHT * n / top, 1) if top else 0
        bars.append(
            {
                "day": day,
                "count": n,
                "x": round(i * step + (step - w) / 2, 1),
                "w": round(w, 1),
                "h": h,
                "y": round(CHART_HEIGHT - h, 1),
            }
        )
    return {"width": width, "height": CHART_HEIGHT, "bars": bars, "top": top}


def signed_change(g: Mapping[str, Any]) -> str:
    """A group's change from the period before as a report writes it: +36（+900.0%）, −15（−60.0%）,
    +12（新增）."""
    n, pct = g["change"], g["change_percent"]
    words = "新增" if pct is None else f"{pct:+.1f}%"
    return f"{n:+d}（{words}）".replace("-", "−")


# How the dashboard's trend can be grouped (the API's group_by), in the order the choice is offered.
# Each is also a filter of the ticket list (/console/tickets), so each group links to its tickets.
TREND_GROUPS = {"category": "诉求分类", "street": "街道", "department": "承办单位"}
TREND_CHOICES = {"category": "按分类", "street": "按街道", "department": "按承办单位"}
# The trend counts a ticket under its lead department only; the list filtered by a department also
# has the tickets it co-handles (协办), so the two counts can differ: said beside the lists.
TREND_NOTES = {"department": "按主办单位统计；点开的工单列表还包括该单位协办的工单。"}


def tickets_link(group_by: str, group: str, start: str, end: str, **more: str) -> str | None:
    """The ticket list (/console/tickets) filtered by one group of the dashboard (a department, a
    category, a street or a grid: each is a filter of the list) and the period, as 受理日期; None for
    the group with no id (未知, 未分类, 未派单), which no filter selects. `more`: further filters
    (e.g. answer=3 for the tickets answered 不满意)."""
    if group == "unknown":
        return None
    return "/console/tickets?" + urlencode({group_by: group, "from": start, "to": end, **more})


def figure_lists(city: City, start: str, end: str) -> dict[str, dict[str, str]]:
    """Where each of the dashboard's top cards leads, by the figure's key: the ticket list of the
    period (受理日期, as every link of the dashboard) filtered to what the figure counts (`href`), the
    words that say which list it is (`words`, read as part of the link) and what the list shows
    that the figure does not count, or the other way round (`differs`, said beside the cards). The
    figures count events (a response coming due, a survey answer, a dispatch) and the list filters
    tickets, each once: a rate opens the tickets that kept it down (签收超时, 重办, 不满意), the
    other figures the tickets they count; the score, made of the three rates, has no filter of its
    own and opens every ticket of the period."""
    desk = city.department_by_id[city.responsibilities.dispatch_desk]
    cards: dict[str, tuple[str, dict[str, str], str, str]] = {
        # The responses that kept the rate down (签收: late, or the deadline passed unaccepted), as
        # 满意率 opens the 不满意: the list's 签收 selects what the rate counts, one ticket for
        # however many of its responses came due.
        "response_rate": (
            "响应率",
            {"response": "late"},
            "签收超时的工单",
            "含逾期仍未签收的，按时签收的可在列表的“签收”中改选；响应率按每次应签收计数"
            "（改派后重新计时的再计一次），列表每件工单只列一次",
        ),
        # An answer saying 未解决 (or 不满意) sends the ticket back (重办): those kept the rate down.
        "resolution_rate": (
            "解决率",
            {"reopened": "true"},
            "重办过的工单",
            "答复未解决或不满意的工单会重办，现场核查未解决的也在其中",
        ),
        # 回访评价 takes any answer of the ticket's surveys, as the rate counts each answer.
        "satisfaction_rate": (
            "满意率",
            {"answer": "3"},
            "评价过不满意的工单",
            "满意、基本满意的可在列表的“回访评价”中改选",
        ),
        "score": ("综合得分", {}, "全部工单", "得分由三率加权算出，没有对应的筛选条件"),
        # The answers the rates count (核查退回后作废的 not), one ticket for however many it had.
        "answered": (
            "回访答复",
            {"answered": "true"},
            "已答复回访的工单",
            "回访答复按次计数，重办后再次答复的计两次，列表每件工单只列一次；核查退回后作废的答复不算已答复",
        ),
        # A call answered on the spot is the desk's, its department (rules.answered_on_call).
        "direct_answer_rate": (
            "直接答复率",
            {"department": desk.id},
            f"{desk.name}承办的工单",
            "当场答复办结的都在其中，也有待人工派单的",
        ),
        # What grid workers dealt with on the spot came in as their reports (巡查上报).
        "handled_on_spot": (
            "网格员现场处置",
            {"channel": "patrol"},
            "网格员巡查上报的工单",
            "上报后派单办理的也在其中",
        ),
    }
    return {
        key: {
            "label": label,
            "href": "/console/tickets?" + urlencode({**filters, "from": start, "to": end}),
            "words": words,
            "differs": differs,
        }
        for key, (label, filters, words, differs) in cards.items()
    }


def trend_group(raw: str | None) -> str:
    """The grouping asked for (?trend_by=), the categories for anything else: a link kept from
    before, or typed, still shows a trend."""
    return raw if raw in TREND_GROUPS else "category"


def trend_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The API's trend as the dashboard shows it: the report's sentence, the daily counts as bars
    and as a table (the chart's text alternative), the choice of grouping (each a plain link that
    keeps the period), and the groups that rose and fell most, each linking to its tickets of the
    period; the groups with no id (未分类, 未定位街道, 未派单) have no filter to link with."""
    start, end = body["from"], body["to"]
    periods = body["periods"]
    group_by = trend_group(body.get("group_by"))

    def item(g: Mapping[str, Any]) -> dict[str, Any]:
        link = tickets_link(group_by, g["group"], start, end)
        return {
            "name": g["name"],
            "count": g["count"],
            "previous": g["previous"],
            "change": signed_change(g),
            "link": link,
        }

    def choice(key: str, name: str) -> dict[str, Any]:
        query = {"from": start, "to": end} | ({} if key == "category" else {"trend_by": key})
        return {
            "name": name,
            "link": f"/console/dashboard?{urlencode(query)}#trend",
            "current": key == group_by,
        }

    days = periods["current"]["days"]
    export = "/console/dashboard/trend/export?" + urlencode({"group_by": group_by, "from": start, "to": end})
    return {
        "summary": body["summary"],
        "chart": daily_bars([(d["day"], d["count"]) for d in days]),
        "days": days,
        "previous": periods["previous"],
        "last_year": periods["last_year"],
        "group_by": group_by,
        "group_name": TREND_GROUPS[group_by],
        "choices": [choice(k, n) for k, n in TREND_CHOICES.items()],
        "note": TREND_NOTES.get(group_by, ""),
        "export": {"xlsx": export, "csv": f"{export}&format=csv"},
        "rising": [item(g) for g in trend.rising(body["groups"])],
        "falling": [item(g) for g in trend.falling(body["groups"])],
    }


def count_by(items: Iterable[Mapping[str, Any]], key) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        k = key(item)
        if k:
            out[k] = out.get(k, 0) + 1
    return out


# --- staff access (the desk's 凭证管理) ---------------------------------------------------------


def token_subject(token: Mapping[str, Any], city: City) -> str:
    """Whom a credential acts for, in the list's 对象 column: a staff id, a department's name, a
    grid worker's id and grid; nothing for the desk and the gateway."""
    role = token.get("role")
    if role == "department":
        dept = city.department_by_id.get(token.get("department") or "")
        return dept.name if dept else str(token.get("department") or "")
    if role == "grid_worker":
        info = city.grids.get(token.get("grid") or "")
        grid = info.grid.name if info else str(token.get("grid") or "")
        if info is not None and info.community_name not in grid:
            grid = f"{info.community_name}{grid}"
        return f"工号 {token.get('operator')} · {grid}"
    if role == "operator":
        return f"工号 {token.get('operator')}"
    return "—"


def whom(token: Mapping[str, Any], city: City) -> str:
    """A credential's holder in a sentence: 话务员 0231（张三）."""
    words = subject_words(
        str(token.get("role")), token.get("operator"), token.get("department"), token.get("grid"), city
    )
    return f"{words}（{token['note']}）" if token.get("note") else words


def access_row(token: Mapping[str, Any], city: City, tz: ZoneInfo, own_token_id: str) -> dict[str, Any]:
    """A live credential as the list shows it, with the question its 吊销 button asks first."""
    held_by = whom(token, city)
    return {
        **token,
        "role_name": ROLE_NAMES.get(str(token.get("role")), str(token.get("role"))),
        "subject": token_subject(token, city),
        "created": local(token.get("created_at"), tz) or "—",
        "expires": local(token.get("expires_at"), tz) or "长期有效",
        "last_used": local(token.get("last_used_at"), tz) or "暂无记录",
        "own": token.get("token_id") == own_token_id,
        "held_by": held_by,
        "confirm": f"确定吊销{held_by}的凭证 {token.get('token_id')} 吗？吊销后立即失效，"
        "用它登录的控制台随即退出登录，不能恢复；如仍需访问，须重新签发。",
    }


def actor_words(actor: str, actor_note: str = "") -> str:
    """Who issued or revoked a credential: the desk's token (and its holder), or the shell."""
    kind, _, who = actor.partition(":")
    if kind == "cli":
        return f"命令行 appeals token（系统用户 {who}）"
    name = ROLE_NAMES.get(kind, kind)
    return f"{name}{' ' + actor_note if actor_note else ''}（凭证 {who}）"


AUDIT_ACTIONS = {"issue": "签发", "revoke": "吊销"}


def access_audit_row(entry: Mapping[str, Any], city: City, tz: ZoneInfo) -> dict[str, Any]:
    return {
        **entry,
        "at_local": local(entry.get("at"), tz),
        "action_name": AUDIT_ACTIONS.get(str(entry.get("action")), str(entry.get("action"))),
        "actor_name": actor_words(str(entry.get("actor") or ""), str(entry.get("actor_note") or "")),
        "held_by": whom(entry, city),
        "expires": local(entry.get("expires_at"), tz) or "长期有效",
    }


def place_request(ticket: Mapping[str, Any], city: City) -> dict[str, str]:
    """A grid worker's pending request to correct the grid (申请更正事发网格), as the ticket's page and
    the desk read it: the place asked for by name, the reason, the worker; {} when none waits."""
    asked = ticket.get("place_request") or {}
    if not asked:
        return {}
    grid = str(asked.get("grid") or "")
    return {
        "grid": grid,
        "place": city.place_name(grid) if grid in city.grids else grid,
        "now": city.place_name((ticket.get("grid") or {}).get("grid")),
        "reason": str(asked.get("reason") or ""),
        "by": str(asked.get("by") or ""),
    }
