"""Domain counters (FastStream's Prometheus middleware adds the per-message ones) and the /metrics
server each worker runs. One module so that every metric name is defined once."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

APPEALS_RECEIVED = Counter("appeals_received_total", "Appeals accepted by intake, by channel", ["channel"])
APPEALS_REJECTED = Counter(
    "appeals_rejected_total", "Submissions refused by intake, by channel and reason", ["channel", "reason"]
)
APPEALS_CLASSIFIED = Counter(
    "appeals_classified_total", "Appeals tagged by the classifier, by leaf category", ["category"]
)
APPEALS_FOR_REVIEW = Counter("appeals_review_total", "Appeals sent to human review (low confidence)")
TICKETS_ASSIGNED = Counter(
    "tickets_assigned_total", "Tickets assigned, by department and how", ["department", "via"]
)
TICKET_TRANSITIONS = Counter("ticket_transitions_total", "Department workflow transitions", ["action"])
SMS_SENT = Counter("sms_sent_total", "SMS handed to the gateway, by kind", ["kind"])
SURVEYS_ANSWERED = Counter(
    "surveys_answered_total", "Surveys closed, by rating (1,2,3) or how (no_answer, opted_out)", ["rating"]
)
DEAD_LETTERS = Counter("dead_letters_total", "Messages sent to a dead-letter topic", ["topic", "consumer"])
BATCH_SECONDS = Histogram(
    "handler_batch_seconds",
    "Time to handle one consumed batch",
    ["consumer"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def serve_metrics(port: int, *, bind_all: bool = False) -> None:
    """Expose /metrics on `port` (0: not at all) from a background thread; loopback unless
    `bind_all` (in containers, Prometheus scrapes from another host)."""
    if port:
        start_http_server(port, addr="0.0.0.0" if bind_all else "127.0.0.1")
