"""Settings, read from the environment (and a `.env` file) once per process.

Every service reads the same `Settings`; `deploy/` passes these names as environment variables, and a
test checks that it passes no name that is not here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_CALLER_ID_SALT = "appeals-demo-salt"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # External servers. Unset means "embedded": `appeals up` starts Tansu and Redis itself and sets them.
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Tansu (the embedded broker) has no idempotent producer; Apache Kafka does: switch it on there.
    kafka_enable_idempotence: bool = False
    # Partitions of the topics this project creates: the most consumers a group can use. One suits
    # the embedded default, which runs one process of each worker: the embedded Tansu does work for
    # every batch a producer stores (one per partition a request touches) and lists a partition's
    # stored batches at every fetch that finds new ones. At 1,000 appeals/s one partition took a
    # third off the broker's CPU and more than halved the p99 against four (docs/performance.md).
    # `deploy/` sets more, for its replicas; `appeals bench --replicas N` takes at least N.
    kafka_topic_partitions: int = Field(1, ge=1)
    # How the producers compress their batches (Kafka's codecs; "none" sends them as they are).
    # lz4: the events are JSON with Chinese text, whose batches it shrinks two to five times (the
    # bigger the batch, the more) for a few microseconds an event. The embedded broker keeps every
    # batch in memory and faulted a page in for every 4 KB it took: with lz4 its faults fell from
    # about 265,000 to 70,000 in a flood of 20,000 appeals and its CPU per appeal by half (the
    # bytes on every hop fall on Apache Kafka too). Every process that reads decompresses.
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    kafka_replication_factor: int = Field(1, ge=1)
    # How long the broker keeps an event (set on the topics this project creates). Events carry the
    # appeal's text and the caller's hash, so this bounds how long erased data stays on the broker.
    # The stores are the source of truth: a consumer away for longer than this misses events, and
    # the record would then lack them; a week covers a long weekend's outage with room to spare.
    kafka_retention_hours: float = Field(168, gt=0)
    # How long the broker may hold a fetch of the two consumers on the caller's path (the
    # classifier's and the router's; see shared.bus). The embedded Tansu holds a fetch for the whole
    # wait even when a message arrives, so there it is a hop's latency. Apache Kafka answers as soon
    # as a record is there: set it to 500 there, and those consumers stop asking 50 times a second.
    kafka_callers_path_fetch_wait_ms: int = Field(20, ge=1, le=5000)
    # How long a batch of those two consumers spans at least (from the start of the one before):
    # under load they wait for more rather than take each fetch as it comes. At 1,000 appeals/s the
    # batches grew from about a dozen appeals, the classifier's CPU per appeal fell by a fifth and
    # the broker's by a tenth, and the p99 fell from 0.75-1.7 s to 0.36-0.53 s. 100 rather than 50:
    # at 700 and 1,000 appeals/s every process together took 4 to 16% less CPU an appeal (the
    # classifier about 40 µs less, the broker 10 to 30), where the two cores have none to spare;
    # at 100/s the p99 rose from about 100 to 165 ms, inside its 250 ms target (a batch waits up
    # to this long at each of the two hops). 0: no wait.
    kafka_callers_path_linger_ms: int = Field(100, ge=0, le=1000)
    # The most records a batch of those two consumers takes. Below their capacity a batch holds
    # what came during the linger, far fewer. Behind (a queue after a pause: Redis rewriting its
    # file, a slow minute) every batch is full, and each costs its round trips, the waits for
    # Redis's fsyncs, the produce and the offset commit whatever its size, so the most decides how
    # fast a queue clears. In the demo city's two-minute flood at 2,000/s, alternated in one hour:
    # with 500 the queue grew to 10 to 16 s (1,747 to 1,807 appeals/s), with 2,000 it reached 3.9
    # to 7.6 s (1,885 to 1,966/s). A WATCH of a batch's tickets costs Redis the square of their
    # number (about 15 ms for 2,000): not larger.
    kafka_callers_path_max_records: int = Field(2000, ge=1, le=10000)
    # How long the API's producer waits for more appeals to share a produce request (aiokafka's
    # linger) before the broker is asked: the caller's answer waits for the broker, so this is up
    # to that much later. At 1,000 appeals/s with 2 ms, most requests carried one to five appeals,
    # and a request costs the embedded broker about as much as a dozen appeals in one: at 10 the
    # broker took about 40 µs less per appeal. At 30 it takes about 17 µs less again at 2,000/s,
    # and its cost no longer climbs over a long flood: Tansu keeps every batch a partition was
    # given and goes through them all at each fetch that finds new records, so a third as many
    # batches of appeals is a third of that work (the operator's answer: p99 21 -> 40 ms at
    # 100/s). Apache Kafka indexes its log: deploy/ sets 10. Workers publish whole batches (2 ms).
    kafka_api_linger_ms: int = Field(30, ge=0, le=1000)
    # How long a batch of the records worker spans (shared.bus.next_batch). A ticket's row is
    # rewritten at every stage, with all its indexes; the stages of a ticket that land in one batch
    # are one write. Under load, batches of what a fetch brought (a few kilobytes) held one stage of
    # each ticket; spanning a second, received, classified and assigned mostly come together, and
    # at 600 appeals/s PostgreSQL and the worker took about 250 µs less per appeal. The record (lists,
    # search, reports) is then up to about a second behind Redis; 0 takes each fetch as it comes.
    records_linger_ms: int = Field(1000, ge=0, le=10000)
    # How long the records worker may hold back the row of a ticket that waits for its assignment
    # (received, classified), its events stored at once: the row is then written once, with the
    # assignment's, where in a flood the stages come seconds apart and each was a write of the row
    # with every index. The record's lists show such a ticket up to this much later. 0: never.
    records_hold_seconds: float = Field(10, ge=0, le=300)
    # How many steps lower than the rest the launcher (`appeals up`, `appeals bench`) runs the
    # workers off the caller's path: the notifier and the records worker. Everything shares one
    # machine's cores there, and when a flood takes more than the cores have, the classification and
    # the assignment go first and the SMS and the record catch up after it. Without it the scheduler
    # shared the cores out evenly and the router, behind by then, got a third of a core where it
    # needed half; at 10 they still took enough for the router to fall behind in a slow hour. 0: the
    # same priority as the rest. In `deploy/` each process has the cores its orchestrator gives it.
    off_path_nice: int = Field(19, ge=0, le=19)
    # How many steps higher than the other workers the launcher runs what every stage waits on (the
    # embedded Redis and broker) and the stage where a flood queues (the router: each of its batches
    # waits on Redis several times: its precedents, the tickets under WATCH, the clusters' counts,
    # the meetings it claims, the write). In a flood at the usual priority Redis waited for a core
    # 40% of the time and the router 34%, and the router fell behind while the classifier kept up.
    # Raising takes root's privilege (CAP_SYS_NICE); without it they run at the usual priority.
    # 0: the same priority as the rest. No effect in `deploy/`, as above.
    waited_on_raise: int = Field(10, ge=0, le=20)
    # How long the broker waits for a consumer's heartbeat (sent every third of it) before it counts
    # the consumer gone and gives its partitions to the rest of its group. A worker killed outright
    # holds its partitions that long, and on the embedded Tansu a worker started again waits about as
    # long to join: Tansu keeps the dead member as its group's leader until its session has run out
    # (and any join there takes about half of it). Apache Kafka accepts 6000 to 1800000 by default
    # (its group.min/max.session.timeout.ms).
    kafka_session_timeout_ms: int = Field(10_000, ge=1000, le=1_800_000)

    # PostgreSQL, the lasting record of every ticket (services/records). Empty: `appeals up` starts
    # an embedded server and sets it.
    database_url: str = ""
    metrics_port_records: int = 9105
    records_export_max_rows: int = Field(100_000, ge=1)  # one export; past it, narrow the filters
    redis_keep_closed_days: float = Field(30, gt=0)  # a closed ticket then leaves Redis (PostgreSQL keeps it)
    personal_data_keep_days: int = Field(5 * 365, ge=1)  # after closing; then masked in the record
    retention_scan_seconds: float = Field(3600, gt=0)  # how often the records worker runs retention

    city_config_dir: Path | None = None  # None: the demo city shipped with the project
    data_dir: Path = Path("var")  # trained models and other local state
    timezone: str = "Asia/Shanghai"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Each worker serves Prometheus metrics on its own port; 0 turns it off (tests).
    metrics_port_intake: int = 9101
    metrics_port_classifier: int = 9102
    metrics_port_router: int = 9103
    metrics_port_notifier: int = 9104
    metrics_port_meetings: int = 9106  # the router's meetings worker (services/router/app.py)
    metrics_bind_all: bool = False  # containers: let Prometheus scrape from another host

    # The key of the caller ids (keyed hashes of phones). A secret in production, kept out of the
    # data it protects, so that ids cannot be reversed by hashing every possible phone number;
    # shared.privacy.check_salt refuses to start a production process with a public one.
    caller_id_salt: str = DEMO_CALLER_ID_SALT
    # API tokens minted by `appeals token` stop working after this many days (0: never).
    token_ttl_days: int = Field(90, ge=0)
    # "production": refuse unsafe settings at start (a public caller-id salt), whatever the servers.
    appeals_env: Literal["development", "production"] = "development"

    # Below this confidence an appeal goes to human review / the dispatch desk instead of auto-routing.
    review_confidence_threshold: float = Field(0.5, ge=0, le=1)
    # How often a classifier worker checks the model registry (Redis) for a newly approved model.
    model_check_seconds: float = Field(5.0, gt=0)
    timer_scan_seconds: float = Field(5.0, gt=0)
    # How often a worker checks the broker (its topics there, its consumer groups joined) and Redis:
    # how soon /readyz follows them, and how soon a broker that came back empty has its topics again
    # and what the lost topics held is driven on from the store. Each round connects to the broker.
    health_check_seconds: float = Field(5.0, gt=0)
    # false: a router replica that only runs the deadline timers and the outbox relay (no consumers).
    router_consume: bool = True
    log_level: str = "INFO"

    # Notifier (SMS to residents). QUIET_HOURS "HH:MM-HH:MM" local time, or "none".
    quiet_hours: str = "21:00-08:00"
    sms_daily_cap: int = Field(5, ge=1)  # messages per phone per local day (urgent ones exempt)
    survey_reminder_hours: float = Field(24, gt=0)  # one reminder if still unanswered by then
    survey_window_hours: float = Field(48, gt=0)  # then the survey closes as "no answer"
    # Still unanswered by then, an operator phones the resident (电话回访). Unset: when the reminder
    # goes out, so a resident is called once the SMS had both its chances.
    survey_callback_hours: float | None = Field(None, gt=0)
    notifications_file: Path | None = None  # message templates; None: services/notifier/notifications.yaml
    sms_gateway: Literal["outbox", "http"] = "outbox"
    sms_gateway_url: str = ""  # the provider's send endpoint (SMS_GATEWAY=http)
    sms_gateway_token: str = ""
    sms_gateway_attempts: int = Field(5, ge=1)
    # The three rates (三率): weight of 基本满意 in the satisfaction rate; score weights for
    # response, resolution, satisfaction.
    satisfaction_basic_weight: float = Field(0.9, ge=0, le=1)
    score_weights: str = "0.1,0.5,0.4"

    # Intake channels. WeChat: the Token set in the official account's server config.
    wechat_token: str = ""  # empty: the WeChat endpoint answers 503 (not configured)
    wechat_max_clock_skew_seconds: int = Field(300, ge=10)  # older signed timestamps are replays
    # Safe / compatible mode (encrypted pushes): the console's EncodingAESKey and the account's AppID.
    wechat_encoding_aes_key: str = ""
    wechat_app_id: str = ""
    # Messages to WeChat users who left no phone (the result, the survey): `outbox` (a Redis list,
    # the embedded mode) or `api` (WeChat's customer-service messages, with WECHAT_APP_ID and the
    # account's AppSecret, which fetch the access token).
    wechat_gateway: Literal["outbox", "api"] = "outbox"
    wechat_app_secret: str = ""
    wechat_api_base: str = "https://api.weixin.qq.com"
    # Past WeChat's 48 hours (errcode 45015) a notice goes as this template message (模板消息, a
    # service account's template chosen in WeChat's console); empty: it is recorded undelivered and
    # kept until the resident writes to the account again (services.notifier.window).
    wechat_template_id: str = ""
    # The template's field for each role (services.notifier.wechat_template): `role=field` pairs,
    # comma-separated; roles left out keep these, a role given no field is not sent. Checked when
    # the notifier starts.
    wechat_template_fields: str = "first=first,ticket_no=keyword1,kind=keyword2,time=keyword3,remark=remark"
    # The console's public /console/lookup: the page the template message opens, and the link the
    # answer to 查询 in the chat carries; empty: none.
    wechat_template_url: str = ""
    # How many days a signed link to a ticket opens (shared.lookup_link): a link forwarded or left
    # in a chat stops showing the ticket then; the resident sends 查询 for a fresh one.
    lookup_link_days: int = Field(30, gt=0)
    # Where a WeChat image message's picture may be fetched from (its PicUrl): WeChat's own media
    # hosts only, so a push cannot make the server fetch any address it names.
    wechat_media_hosts: str = "mmbiz.qpic.cn,mmbiz.qlogo.cn"
    open311_api_keys: str = ""  # comma-separated keys accepted by POST /open311/v2/requests.json
    # Channels whose tickets the public Open311 GET lists (status, category, street only); a hotline
    # call or a WeChat chat was given in confidence.
    open311_public_channels: str = "open311"
    # Open311's media_url is fetched when a request comes in (services/intake/media_fetch.py), from
    # globally reachable addresses only. Hosts named here (comma-separated names or addresses, as
    # the URL gives them) may also resolve to internal ones: a city's media server on its intranet.
    open311_media_allowed_hosts: str = ""
    # Resolving its host, connecting and each read wait at most this long; the whole fetch,
    # redirects included, three times as long.
    open311_media_timeout_seconds: float = Field(5, gt=0, le=30)
    rate_limit_per_caller_per_hour: int = Field(30, ge=0)  # 0 turns the limit off
    rate_limit_per_ip_per_minute: int = Field(600, ge=0)
    # Work one request may cause (README, Security): bodies are refused over these sizes before they
    # are read; an upload is parsed off the event loop within a row, column and time budget.
    max_body_bytes: int = Field(256 * 1024, ge=1024)  # JSON and everything not listed below
    max_form_bytes: int = Field(64 * 1024, ge=1024)  # Open311's form: a text and a place
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)  # a suggestion-box CSV or XLSX
    upload_max_rows: int = Field(20_000, ge=1)
    upload_max_columns: int = Field(50, ge=5)
    upload_parse_seconds: float = Field(60, gt=0)

    # Photos (shared.photos, shared.photo_store). Empty URL: files under DATA_DIR/photos; else
    # "s3://BUCKET" (an S3-compatible store; the endpoint and keys below, or the usual AWS_*
    # variables when they are empty).
    photo_store_url: str = ""
    photo_s3_endpoint: str = ""  # e.g. http://minio:9000; empty: the cloud's own
    photo_s3_region: str = "us-east-1"
    photo_s3_access_key: str = ""
    photo_s3_secret_key: str = ""
    photo_max_bytes: int = Field(15 * 1024 * 1024, ge=1024)  # one photo as uploaded (a phone's is 3-8 MB)
    photo_unattached_hours: float = Field(48, gt=0)  # an upload no ticket took is then deleted

    @property
    def open311_keys(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.open311_api_keys.split(",") if k.strip())

    @property
    def public_channels(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.open311_public_channels.split(",") if c.strip())

    @property
    def callback_hours(self) -> float:
        """When an unanswered survey is due for a phone call (SURVEY_CALLBACK_HOURS, else the reminder's)."""
        return (
            self.survey_reminder_hours if self.survey_callback_hours is None else self.survey_callback_hours
        )

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
