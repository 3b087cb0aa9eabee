"""Domain counters (FastStream's Prometheus middleware adds the per-message ones) and the HTTP server
each worker runs: /metrics, /healthz (liveness) and /readyz (readiness). One module so that every
metric name is defined once."""

from __future__ import annotations

import json
import threading
import time
from http.server import ThreadingHTTPServer

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

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
# WeChat notices past WeChat's 48 hours, kept until the resident writes again
# (services.notifier.window), and what became of them when they did: sent, held (quiet hours, the
# daily cap), retrying, failed, undelivered (refused again), or dropped (moot by then).
WECHAT_KEPT = Counter(
    "wechat_kept_total", "WeChat notices kept for their resident past the 48 hours, by kind", ["kind"]
)
WECHAT_ON_RETURN = Counter(
    "wechat_on_return_total",
    "Kept WeChat notices handled when their resident wrote again, by kind and outcome",
    ["kind", "outcome"],
)
# `via`: the channel an answer came by (sms, wechat, phone for the operator's callback, lookup for the
# resident's lookup page; none for a survey closed without one): a handful of values, so the series
# stay a few dozen at most (`services.notifier.surveys.answered_via`).
SURVEYS_ANSWERED = Counter(
    "surveys_answered_total",
    "Surveys closed, by rating (1,2,3; void: answered after a check voided it) or how (no_answer,"
    " opted_out, erased), and the channel the answer came by",
    ["rating", "via"],
)
DEAD_LETTERS = Counter("dead_letters_total", "Messages sent to a dead-letter topic", ["topic", "consumer"])
BATCH_SECONDS = Histogram(
    "handler_batch_seconds",
    "Time to handle one consumed batch",
    ["consumer"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# While the broker is away the Kafka client reports every failed attempt; the log shows one line per
# kind of failure per interval (shared.runtime), and these count them all.
KAFKA_CLIENT_ERRORS = Counter(
    "kafka_client_errors_total", "Warnings and errors of the Kafka client, logged or held back"
)
LOG_LINES_HELD_BACK = Counter(
    "log_lines_held_back_total", "Repeated log lines not written (one per kind per interval is)"
)
TOPICS_RECREATED = Counter(
    "topics_recreated_total", "Topics found missing on the broker (restarted empty) and created again"
)
READY = Gauge("process_ready", "1 when /readyz answers ready (consumer groups joined, Redis reachable)")


class Health:
    """Liveness and readiness of one process. The event loop writes it (a heartbeat, and each check's
    verdict); the HTTP server's thread only reads it."""

    def __init__(self, *, stale_after_seconds: float = 60) -> None:
        self.stale_after = stale_after_seconds
        self._beat = time.monotonic()
        self._problems: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def beat(self) -> None:
        self._beat = time.monotonic()

    def set(self, check: str, problem: str | None) -> None:
        """Record one check's outcome: None when fine, else what is wrong."""
        with self._lock:
            self._problems[check] = problem
            READY.set(1 if not any(self._problems.values()) else 0)

    def alive(self) -> tuple[bool, dict[str, object]]:
        """Alive while the event loop keeps beating: a stuck loop is worth a restart, a lost broker is not."""
        age = time.monotonic() - self._beat
        return age < self.stale_after, {"event_loop_beat_seconds_ago": round(age, 1)}

    def ready(self) -> tuple[bool, dict[str, object]]:
        with self._lock:
            problems = dict(self._problems)
        live, _ = self.alive()
        ok = live and bool(problems) and not any(problems.values())
        return ok, {name: problem or "ok" for name, problem in problems.items()} or {"checks": "not run yet"}


def _handler(health: Health | None) -> type[MetricsHandler]:
    class Handler(MetricsHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/healthz", "/readyz") and health is not None:
                ok, detail = health.alive() if path == "/healthz" else health.ready()
                body = json.dumps({"status": "ok" if ok else "unavailable", **detail}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if path != "/metrics":
                self.send_error(404)
                return
            super().do_GET()

    return Handler


def serve_metrics(port: int, *, bind_all: bool = False, health: Health | None = None) -> None:
    """Serve /metrics (and /healthz, /readyz with `health`) on `port` (0: not at all) from a background
    thread; loopback unless `bind_all` (in containers, Prometheus and the kubelet come from outside)."""
    if not port:
        return
    server = ThreadingHTTPServer(("0.0.0.0" if bind_all else "127.0.0.1", port), _handler(health))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
