"""One validated settings class, read from ``SCORESTREAM_*`` environment variables.

Every variable is listed in the configuration table of docs/configuration.md; ``tests/test_docs.py``
keeps the two in step.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Literal

from limits import RateLimitItem, parse_many
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.api_keys import KeyEntry, parse_entries
from scorestream.delivery import DEFAULT_SCHEDULE_S

CHANNELS = ("web", "email", "store")  # the source channels, in the order `key:*` lists them


def rate_limit(spec: str) -> RateLimitItem | None:
    """``100/second`` (``limits`` notation: `N/second|minute|hour|day`, or `N per 10 seconds`) -> the
    limit; ``0`` or empty: None (no limit). ValueError on anything else."""
    spec = spec.strip()
    if spec in ("", "0"):
        return None
    try:
        items = parse_many(spec)
    except ValueError:
        items = []
    if len(items) != 1 or items[0].amount < 1:
        raise ValueError(f"a rate limit is like `100/second` or `5000/minute`, or 0 for none (got {spec!r})")
    return items[0]


class Settings(BaseSettings):
    # an error never repeats the input: it may be a key, or a URL with a password
    model_config = SettingsConfigDict(env_prefix="SCORESTREAM_", extra="ignore", hide_input_in_errors=True)

    env: Literal["development", "production"] = Field(
        default="development",
        description="`production`: the API refuses to start without API keys, JSON logs, no `/docs`, webhooks "
        "only to public HTTPS addresses.",
    )
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    # --- Kafka security (kafka_io.clients: every client of every process; docs/operations.md "Secured Kafka")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client reaches the brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL "
        "(SASL over TLS: what managed clusters require).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism (with a SASL protocol): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name (with a SASL protocol).")
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        description="SASL password (with a SASL protocol); or give SCORESTREAM_KAFKA_SASL_PASSWORD_FILE. Never logged.",
    )
    kafka_sasl_password_file: Path | None = Field(
        default=None,
        description="A file holding the SASL password (a mounted Kubernetes secret; one trailing newline is "
        "dropped), read once at start; instead of SCORESTREAM_KAFKA_SASL_PASSWORD.",
    )
    kafka_ssl_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA certificates that signed the brokers' certificates (with SSL or SASL_SSL). "
        "Default: the system's trusted CAs.",
    )
    kafka_ssl_cert_file: Path | None = Field(
        default=None,
        description="PEM file of this client's certificate (chain) for mutual TLS; its key in it or in "
        "SCORESTREAM_KAFKA_SSL_KEY_FILE.",
    )
    kafka_ssl_key_file: Path | None = Field(
        default=None, description="PEM file of the client certificate's private key (mutual TLS)."
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted client key (SCORESTREAM_KAFKA_SSL_KEY_FILE)."
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True,
        description="Check that a broker's certificate names the host the client connected to. Turn off only for "
        "brokers reached through addresses their certificates do not name.",
    )
    _kafka_password_from_file: SecretStr | None = PrivateAttr(default=None)
    kafka_startup_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a process waits at start for the Kafka cluster to answer (an unreachable broker is "
        "retried meanwhile; a refused login or an untrusted certificate fails at once), then exits with status 3.",
    )
    topic_web: str = Field(default="events.web", description="Source topic for website events.")
    topic_email: str = Field(default="events.email", description="Source topic for email events.")
    topic_store: str = Field(default="events.store", description="Source topic for offline-store events.")
    topic_crm: str = Field(
        default="events.crm",
        description="Source topic of the API's own events (manual score adjustments; no write key may send to it).",
    )
    topic_deadletter: str = Field(default="events.deadletter", description="Dead-letter topic for rejected input.")
    topic_triggers: str = Field(
        default="triggers", description="Topic of trigger events (stage changes, thresholds, timers), JSON."
    )
    app_id: str = Field(
        default="scorestream",
        description="Faust app id: consumer group and prefix of internal topics (`<app_id>.contacts`, "
        "`<app_id>-contacts-changelog`, ...).",
    )
    namespace: str | None = Field(
        default=None,
        description="The model namespace a worker runs (its group, tables and topics: `<namespace>.contacts`, "
        "`<namespace>-contacts-changelog`, ...). Default: the active namespace of the models registry "
        "(`<app_id>.models`), which is `app_id` until a `scorestream promote`.",
    )
    backfill: bool = Field(
        default=False,
        description="Set by the models registry for a namespace filled from the ClickHouse archive "
        "(`scorestream shadow --source archive`): its worker also reads `<namespace>.backfill.{web,email,store,crm}`. "
        "Not set by hand.",
    )
    source_retention_ms: int = Field(
        default=90 * 86_400_000,
        ge=-1,
        description="Retention of the source topics scorestream creates, applied to existing ones too by "
        "`scorestream topics` (default 90 days; -1: for ever). A shadow model needing older history reads it "
        "from the archive (`scorestream shadow --source archive`).",
    )
    # --- retention (docs/operations.md "Retention"; 0: keep for ever). Topics: set by `scorestream topics`
    # on new and existing topics (kafka_io/topics.py); archive tables: ClickHouse TTLs the sink applies at
    # start (analytics/privacy.py apply_retention).
    retention_deadletter_days: int = Field(
        default=30, ge=0, description="Retention of the dead-letter topics (original bytes of rejected input)."
    )
    retention_triggers_days: int = Field(
        default=30, ge=0, description="Retention of the triggers topics (public and the namespace's private one)."
    )
    retention_internal_days: int = Field(
        default=7,
        ge=0,
        description="Retention of the worker's internal topics (`<ns>.identity`, `<ns>.contacts`, `<ns>.accounts`).",
    )
    retention_deliveries_days: int = Field(
        default=14, ge=0, description="Retention of the webhook deliveries topic (compacted and deleted)."
    )
    retention_commands_days: int = Field(default=7, ge=0, description="Retention of the webhook commands topic.")
    retention_compaction_lag_days: int = Field(
        default=7,
        ge=0,
        description="Longest a superseded record (a contact's earlier state, an erased person's records behind "
        "their tombstone) stays in a compacted topic holding personal data (`max.compaction.lag.ms`).",
    )
    retention_archive_events_days: int = Field(
        default=760, ge=0, description="Archive TTL of accepted events (`events`), by event time (25 months)."
    )
    retention_archive_rejected_days: int = Field(
        default=30,
        ge=0,
        description="Archive TTL of rejected events (`events` with status rejected) and of `sink_rejects`.",
    )
    retention_archive_ledger_days: int = Field(
        default=760, ge=0, description="Archive TTL of `score_ledger` and `account_changes` (25 months)."
    )
    retention_archive_triggers_days: int = Field(
        default=760, ge=0, description="Archive TTL of `triggers` and `stage_transitions` (25 months)."
    )
    retention_archive_deliveries_days: int = Field(
        default=90, ge=0, description="Archive TTL of `webhook_deliveries`, by last update."
    )
    partitions: int = Field(default=4, ge=1, description="Partitions of the topics scorestream creates.")
    replication_factor: int = Field(default=1, ge=1, description="Replication factor of the topics it creates.")
    api_host: str = Field(default="127.0.0.1", description="API bind address.")
    api_port: int = Field(default=8000, ge=1, le=65535, description="API port.")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys accepted as `Authorization: Bearer <key>`, each `key` (every scope), "
        "`key:scopes[:name]` or `sha256:<64 hex>[:scopes[:name]]` (the key stored as its SHA-256; `scorestream keys "
        "new` prints one); scopes `read`, `write`, `admin` joined by `+` (admin includes write, write includes "
        "read), `*` all. See [API keys](api.md#authentication).",
    )
    api_docs: bool | None = Field(
        default=None,
        description="Serve `/docs`, `/redoc` and `/openapi.json`. Default: on in development, off when "
        "`SCORESTREAM_ENV=production`.",
    )
    console_secret: SecretStr | None = Field(
        default=None,
        description="The key that signs the console's session cookies and CSRF tokens (32+ random bytes, e.g. "
        "`openssl rand -hex 32`); every API process behind one address needs the same. Default: one made on "
        "first use in `<data_dir>/console-secret` (shared by the API processes of one host).",
    )
    console_session_hours: float = Field(
        default=12, gt=0, le=24 * 30, description="How long a console sign-in lasts before it asks for the key again."
    )
    console_secure_cookie: bool | None = Field(
        default=None,
        description="Mark the console's session cookie `Secure` (sent over HTTPS only). Default: on unless "
        "`SCORESTREAM_ENV=development`.",
    )
    rate_limit_read: str = Field(
        default="2000/second",
        description="Requests per API key to the `read` routes, per API process (`limits` notation: `100/second`, "
        "`5000/minute`; `0` or empty: no limit). `POST /v1/contacts:batchGet` costs one per id.",
    )
    rate_limit_write: str = Field(
        default="1000/second", description="Requests per API key to the `write` routes, per API process (as above)."
    )
    rate_limit_admin: str = Field(
        default="100/second", description="Requests per API key to the `admin` routes, per API process (as above)."
    )
    rate_limit_unauthenticated: str = Field(
        default="0",
        description="Requests without a valid API key (401s) per client address, per API process (as above); beyond, "
        "429 instead of 401. Default 0: off (behind a proxy every client shares its address).",
    )
    api_processes: int = Field(
        default=1,
        ge=1,
        description="API processes serving the API port (`scorestream api --processes N`). They share one view "
        "store per model namespace on the host: one follows the topics and writes it, the others read it.",
    )
    api_cache_mb: int = Field(
        default=64,
        ge=8,
        description="RocksDB block cache of an API process's view store (per model namespace), in MiB: what "
        "bounds its memory, whatever the number of contacts.",
    )
    api_catch_up_ms: float = Field(
        default=5.0,
        gt=0,
        description="How often an API process that reads its host's view store (not the one writing it) catches "
        "up with the writer's new writes, in ms (the delay they add; about 20 us of CPU each when idle).",
    )
    api_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest request body any API route reads, in bytes; beyond it 413 `payload_too_large` before "
        "more is read (the collector's routes keep Segment's own limits: 500 KB a batch, 32 KB a message).",
    )
    reports_max_concurrent: int = Field(
        default=2,
        ge=1,
        description="Archive queries (reports, the sync list, a contact's history) one API process runs at once, "
        "each on a ClickHouse client and thread of its own, apart from the sink's; beyond it 503 `busy` with "
        "`Retry-After`.",
    )
    data_dir: Path = Field(default=Path("var"), description="Where local state lives (RocksDB tables, broker data).")
    model: Path | None = Field(default=None, description="Scoring model YAML file; default: the bundled model.")
    batch_max: int = Field(
        default=5000, ge=1, description="Most records a worker fetches, and applies as one batch, per poll."
    )
    fetch_max_wait_ms: int = Field(
        default=20,
        ge=1,
        le=5000,
        description="Longest a worker's fetch waits on the broker for new records (latency vs. requests).",
    )
    producer_linger_ms: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="How long the worker's producer waits to fill a batch before sending it (internal topics, "
        "changelogs, triggers): each internal hop adds up to this much latency. 0: at once; records queued while "
        "a request is in flight still go together (one request in flight per broker).",
    )
    commit_interval_s: float = Field(default=1.0, gt=0, description="Seconds between offset commits.")
    session_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Kafka consumer session timeout: how soon a dead worker's partitions move to another.",
    )
    rocksdb_cache_mb: int = Field(default=64, ge=8, description="RocksDB block cache per table partition, in MiB.")
    restore_tables: bool = Field(
        default=True,
        description="When a rebalance assigns a worker table partitions (actives and standbys), bulk-load them "
        "from their changelogs into its RocksDB before Faust's recovery (fast start and failover; each worker "
        "holds its share). false: Faust's own recovery only (about 10k records/s).",
    )
    standby_replicas: int = Field(
        default=0,
        ge=0,
        description="Standby replicas of each table partition (Faust's `table_standby_replicas`): other workers "
        "keep them up to date from the changelog, so a failover replays only the last moments; each standby "
        "costs a worker the disk and reads of that partition. 0: a partition that moves is restored by its new "
        "owner.",
    )
    released_keep_s: float = Field(
        default=600.0,
        ge=0,
        description="How long a worker keeps on disk a table partition no longer assigned to it (reassigned "
        "within it, only what was written meanwhile is replayed); then the partition's database is deleted.",
    )
    worker_index: int | None = Field(
        default=None,
        ge=0,
        description="This worker's slot on its host: its tables live in `<data_dir>/worker/<index>` "
        "(`<data_dir>/worker-<namespace>/<index>` for a shadow namespace), locked while it runs. Default: the "
        "lowest slot no running worker of the namespace holds. `scorestream run` leaves it unset.",
    )
    state_cache_entries: int = Field(
        default=10_000,
        ge=0,
        description="Decoded contact states the worker keeps between batches besides those not written yet.",
    )
    state_flush_ms: int = Field(
        default=100,
        ge=0,
        description="Longest a changed contact state stays only in the worker's memory: the contacts stage writes "
        "its changed states (RocksDB and changelog) at most this often, and before every offset commit; a contact "
        "changed by many batches meanwhile is written once. At most the commit interval. 0: after every batch.",
    )
    state_flush_max_dirty: int = Field(
        default=10_000,
        ge=1,
        description="Most changed contact states the worker holds unwritten: beyond, they are written at once.",
    )
    identity_fast_path: bool = Field(
        default=True,
        description="Ingest sends an event whose anonymous id is already linked, and that the identity stage would "
        "only forward, straight to the contacts topic (a local replica of the identity links; a missing link costs "
        "the identity hop, never correctness). false: every such event crosses the identity stage.",
    )
    identity_replica_entries: int = Field(
        default=100_000,
        ge=0,
        description="Identity links the worker's replica keeps for the fast path (least recently used out; about "
        "430 bytes each).",
    )
    population_interval_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds between population refreshes: each worker publishes its partitions' customer "
        "summaries and the owner of contacts partition 0 recomputes the RFM quintile boundaries and refits CLV.",
    )
    population_sample_size: int = Field(
        default=5000,
        ge=1,
        description="Customers in the CLV fitting sample (the lowest hashes of contact ids; each partition "
        "publishes at most this many).",
    )
    population_min_fit_customers: int = Field(
        default=100,
        ge=1,
        description="Fewest customers in the sample for a CLV fit; until then (or when a fit fails) the previous "
        "fit stays.",
    )
    timer_interval_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "The longest a contact whose timer or decay-driven transition is due waits for its tick"
            " (the worker's clock beats ten times per interval, ticking the contacts due by then)."
        ),
    )
    view_interval_ms: int = Field(
        default=30,
        ge=0,
        description="Contact views (`<app>.views`, what the API reads): a contact whose view was not sent in the "
        "last this many milliseconds is sent at once; a busier one at most this often (its latest state). 0: every fold.",
    )
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_SCHEDULE_S),
        description="Seconds between a webhook delivery's attempts, comma-separated (after the first attempt; "
        "each drawn within +-10%). Default: the Standard Webhooks example, 5 s up to 24 h, ten attempts in all.",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60, description="Timeout of one webhook request.")
    webhook_max_response_bytes: int = Field(
        default=64 * 1024, ge=0, description="Most bytes of a subscriber's answer read (the rest is dropped)."
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook URLs on loopback, private, link-local or metadata addresses, and plain HTTP "
        "(local development and tests only).",
    )
    webhook_concurrency: int = Field(
        default=16, ge=1, description="Most requests in flight to one subscription (per dispatcher process)."
    )
    webhook_queue_limit: int = Field(
        default=5000,
        ge=1,
        description="Most pending deliveries of one subscription from one partition a dispatcher holds in memory; "
        "beyond, they wait on the deliveries topic and are read back as the queue drains.",
    )
    webhook_disable_after_s: float = Field(
        default=5 * 86400.0,
        gt=0,
        description="A subscription failing every attempt for this long is disabled (and the event recorded).",
    )
    webhook_secret_overlap_s: int = Field(
        default=86400, ge=0, description="After a secret rotation, how long the old secret keeps signing too."
    )
    regulation_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a privacy regulation waits for the workers' next erasure report (none for this long: "
        "a worker is down), and then for the API to forget the person, before that store fails (the regulation is "
        "carried out again a minute later, and when an API process starts).",
    )
    write_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Write keys of the HTTP collector, comma-separated, each `key`, `key:channel`, "
        "`key:channel+channel...` or `key:*` (channels `web`, `email`, `store`): the channels the key may send "
        "to, the first one also the channel of its messages without `context.channel`; `*` is all three (default "
        "`web`); a bare `key` is `key:web`. A message whose `context.channel` is not one of its key's is refused "
        "(`channel_not_allowed`).",
    )
    collector_max_in_flight: int = Field(
        default=20_000,
        ge=1,
        description="Messages the collector may have waiting for Kafka's acknowledgement; beyond, it answers "
        "429 with Retry-After.",
    )
    clickhouse_url: SecretStr | None = Field(
        default=None,
        description="Where the analytics archive lives: `http(s)://user:password@host:8123/database` (a ClickHouse "
        "server; the database must exist), or `chdb:///path` (embedded chDB). Default: embedded chDB in "
        "`<data_dir>/clickhouse`.",
    )
    sink_batch_rows: int = Field(
        default=50_000, ge=1, description="Most rows the analytics sink buffers for one table before inserting them."
    )
    sink_batch_s: float = Field(
        default=1.0, gt=0, description="Longest the analytics sink holds a row before inserting it (seconds)."
    )
    sink_in_api: bool | None = Field(
        default=None,
        description="Run the analytics sink inside the API process. Default: yes with embedded chDB (one process may "
        "open a chDB directory, and the API owns it), no with a server URL (run `scorestream sink`).",
    )
    metrics_enabled: bool = Field(
        default=True,
        description="Serve Prometheus metrics: `GET /metrics` on the API port, and `/metrics` on a side port of "
        "every worker, dispatcher and sink process.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Bind address of the side metrics port of a worker, dispatcher or sink (containers: `0.0.0.0`).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Side metrics port of a worker, dispatcher or sink (0: none). Default: 9300 plus the worker's "
        "slot for a worker, 9290 for the dispatcher, 9291 for the sink; a worker always adds its slot.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set, the API's `GET /metrics` needs `Authorization: Bearer <token>` (the side ports of "
        "the other processes are not behind it: bind them to a private address).",
    )
    log_level: str = Field(
        default="INFO",
        description="Log level of every process (aiokafka, faust and mode: INFO at the lowest); access lines are INFO.",
    )
    log_format: Literal["text", "json"] | None = Field(
        default=None,
        description="Log lines: `json` (one JSON object per line: time, level, logger, message, request id or Kafka "
        "coordinates, role, pid) or `text` (readable console lines). Default: json when `SCORESTREAM_ENV=production`, "
        "else text.",
    )
    access_log: bool = Field(
        default=True,
        description="One `scorestream.access` log line per API request (method, path with secret query values "
        "redacted, status, duration, request id, client).",
    )

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(s) for s in value.split(",") if s.strip()]
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule_positive(cls, value: list[float]) -> list[float]:
        if any(s < 0 for s in value):
            raise ValueError("retry delays are seconds >= 0")
        return value

    @field_validator("api_keys", "write_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _flush_within_commit(self) -> Settings:
        if self.state_flush_ms > self.commit_interval_s * 1000:
            raise ValueError(
                "SCORESTREAM_STATE_FLUSH_MS must be at most SCORESTREAM_COMMIT_INTERVAL_S (in ms): every offset "
                "commit writes the changed states first"
            )
        return self

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        """SASL protocols need a mechanism, a user and a password; SSL files exist; nothing is set that the
        protocol would ignore. The password file is read here (once, at start). Messages name the variable,
        never a secret."""
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        if self.kafka_sasl_password is not None and self.kafka_sasl_password_file is not None:
            raise ValueError("set SCORESTREAM_KAFKA_SASL_PASSWORD or SCORESTREAM_KAFKA_SASL_PASSWORD_FILE, not both")
        given = {
            "SCORESTREAM_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "SCORESTREAM_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "SCORESTREAM_KAFKA_SASL_PASSWORD": self.kafka_sasl_password or self.kafka_sasl_password_file,
        }
        if sasl and (missing := [name for name, value in given.items() if not value]):
            raise ValueError(f"SCORESTREAM_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
        if not sasl and (stray := [name for name, value in given.items() if value]):
            raise ValueError(f"{', '.join(stray)} set but SCORESTREAM_KAFKA_SECURITY_PROTOCOL={protocol} uses no SASL")
        files = {
            "SCORESTREAM_KAFKA_SSL_CA_FILE": self.kafka_ssl_ca_file,
            "SCORESTREAM_KAFKA_SSL_CERT_FILE": self.kafka_ssl_cert_file,
            "SCORESTREAM_KAFKA_SSL_KEY_FILE": self.kafka_ssl_key_file,
        }
        tls = protocol in ("SSL", "SASL_SSL")
        if not tls and (stray := [name for name, value in files.items() if value]):
            raise ValueError(f"{', '.join(stray)} set but SCORESTREAM_KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS")
        if self.kafka_ssl_key_file is not None and self.kafka_ssl_cert_file is None:
            raise ValueError("SCORESTREAM_KAFKA_SSL_KEY_FILE needs SCORESTREAM_KAFKA_SSL_CERT_FILE")
        files["SCORESTREAM_KAFKA_SASL_PASSWORD_FILE"] = self.kafka_sasl_password_file
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        if self.kafka_sasl_password_file is not None:
            try:
                text = self.kafka_sasl_password_file.read_text()
            except OSError as exc:
                raise ValueError(f"SCORESTREAM_KAFKA_SASL_PASSWORD_FILE: cannot read {exc.filename}") from None
            password = text.removesuffix("\n").removesuffix("\r")
            if not password:
                raise ValueError("SCORESTREAM_KAFKA_SASL_PASSWORD_FILE is empty")
            self._kafka_password_from_file = SecretStr(password)
        return self

    @model_validator(mode="after")
    def _kafka_tls_files_load(self) -> Settings:
        """The CA and the client certificate and key load (PEM, the key's password right): refused at
        start naming the variable, not at the first connection."""
        if self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.kafka_ssl_ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.kafka_ssl_ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"SCORESTREAM_KAFKA_SSL_CA_FILE: no PEM CA certificate loads from it ({exc})"
                ) from None
        if self.kafka_ssl_cert_file is not None:
            key_password = self.kafka_ssl_key_password
            try:  # never OpenSSL's prompt on the terminal for an encrypted key without a password
                context.load_cert_chain(
                    self.kafka_ssl_cert_file,
                    self.kafka_ssl_key_file,
                    key_password.get_secret_value() if key_password else lambda: "",
                )
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    "SCORESTREAM_KAFKA_SSL_CERT_FILE, SCORESTREAM_KAFKA_SSL_KEY_FILE: the client certificate and its key "
                    "do not load (PEM files, the key matching the certificate, SCORESTREAM_KAFKA_SSL_KEY_PASSWORD for an "
                    f"encrypted key) ({exc})"
                ) from None
        return self

    def production_without_keys(self) -> bool:
        """Whether the API would serve production without any API key (``scorestream api`` and
        ``run`` refuse to start then; the other processes take no key and need none)."""
        return self.env == "production" and not self.api_keys

    @property
    def kafka_password(self) -> SecretStr | None:
        """The SASL password: SCORESTREAM_KAFKA_SASL_PASSWORD, or the content of its file (read at start)."""
        return self.kafka_sasl_password or self._kafka_password_from_file

    @model_validator(mode="after")
    def _keys_limits_and_production(self) -> Settings:
        self.api_key_entries()  # refuses a malformed entry, a short key, a key or name listed twice
        self.rate_limits()  # refuses a malformed limit
        if self.env == "production" and self.webhook_allow_private:
            raise ValueError(
                "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE=true is refused when SCORESTREAM_ENV=production: it lets webhooks "
                "reach loopback, private and cloud-metadata addresses over plain HTTP (development and tests only)"
            )
        self.write_key_channels()  # refuses a malformed entry
        return self

    @property
    def source_topics(self) -> dict[str, str]:
        """Source topic -> channel name (with the namespace's backfill topics when it has them)."""
        topics = {self.topic_web: "web", self.topic_email: "email", self.topic_store: "store", self.topic_crm: "crm"}
        if self.backfill:
            topics.update({topic: channel for channel, topic in self.backfill_topics.items()})
        return topics

    @property
    def backfill_topics(self) -> dict[str, str]:
        """Channel -> the topic the archive's events of that channel are copied to for this namespace."""
        return {channel: f"{self.ns}.backfill.{channel}" for channel in ("web", "email", "store", "crm")}

    @property
    def identity_topic(self) -> str:
        return f"{self.ns}.identity"

    @property
    def contacts_topic(self) -> str:
        return f"{self.ns}.contacts"

    @property
    def accounts_topic(self) -> str:
        return f"{self.ns}.accounts"

    @property
    def population_topic(self) -> str:
        return f"{self.ns}.population"

    @property
    def views_topic(self) -> str:
        """Contact views (``schemas/view.py``), compacted, keyed and partitioned like the contacts topic."""
        return f"{self.ns}.views"

    @property
    def status_topic(self) -> str:
        return f"{self.ns}.workers"

    @property
    def webhooks_topic(self) -> str:
        return f"{self.app_id}.webhooks"

    @property
    def deliveries_topic(self) -> str:
        return f"{self.app_id}.webhook-deliveries"

    @property
    def commands_topic(self) -> str:
        return f"{self.app_id}.webhook-commands"

    @property
    def regulations_topic(self) -> str:
        """Regulations (``schemas/regulations.py``), keyed by regulation id (compacted; shared by
        every namespace of the app)."""
        return f"{self.app_id}.regulations"

    @property
    def privacy_topic(self) -> str:
        """The privacy list (``scorestream.privacy``): subject key -> restriction (compacted)."""
        return f"{self.app_id}.privacy"

    @property
    def regulation_progress_topic(self) -> str:
        """What the worker stages report of a regulation's erasures (compacted; the regulation's
        records are tombstoned once it is done)."""
        return f"{self.app_id}.regulation-progress"

    def api_key_entries(self) -> list[KeyEntry]:
        """The API keys with their scopes and names (:mod:`schemas.api_keys`); ValueError names a
        malformed entry's fault without its key."""
        return parse_entries([k.get_secret_value() for k in self.api_keys])

    def rate_limits(self) -> dict[str, RateLimitItem | None]:
        """Scope -> its per-key rate limit (None: no limit)."""
        return {
            "read": rate_limit(self.rate_limit_read),
            "write": rate_limit(self.rate_limit_write),
            "admin": rate_limit(self.rate_limit_admin),
            "unauthenticated": rate_limit(self.rate_limit_unauthenticated),
        }

    def write_key_channels(self) -> dict[str, tuple[str, ...]]:
        """Write key -> the channels it may send to, the default channel of its messages first.

        ``key`` is ``key:web``; ``key:store`` may send to store only; ``key:web+email`` to both
        (web by default); ``key:*`` to every channel (web by default). ValueError names a
        malformed entry without its key."""
        out: dict[str, tuple[str, ...]] = {}
        for entry in self.write_keys:
            key, _, spec = entry.get_secret_value().partition(":")
            if spec == "*":
                channels: tuple[str, ...] = CHANNELS
            else:
                channels = tuple(dict.fromkeys((spec or "web").split("+")))
            if not key or not channels or any(c not in CHANNELS for c in channels):
                raise ValueError(
                    "a write key is `key`, `key:channel`, `key:channel+channel...` or `key:*` with channels web, "
                    f"email or store (got channels {spec!r})"
                )
            out[key] = channels
        return out

    def changelog_topic(self, table: str) -> str:
        return f"{self.ns}-{table}-changelog"

    @property
    def ns(self) -> str:
        """The model namespace of the worker topics and tables above (``namespace`` or ``app_id``)."""
        return self.namespace or self.app_id

    @property
    def models_topic(self) -> str:
        """The models registry (``schemas/registry.py``): namespaces and promotions."""
        return f"{self.app_id}.models"

    @property
    def private_triggers_topic(self) -> str:
        """Where this namespace's triggers go while another namespace is responsible for them."""
        return f"{self.ns}.triggers"

    @property
    def private_deadletter_topic(self) -> str:
        """Where this namespace's dead letters go while another namespace is responsible for them."""
        return f"{self.ns}.deadletter"

    @property
    def api_store_dir(self) -> Path:
        """The API's view store of this namespace on this host (shared by its API processes)."""
        return self.data_dir / "api" / self.ns

    @property
    def workers_dir(self) -> Path:
        """The local tables of this namespace's workers on this host: a directory per worker slot."""
        return self.data_dir / ("worker" if self.ns == self.app_id else f"worker-{self.ns}")

    @property
    def worker_dir(self) -> Path:
        """This worker's local tables (RocksDB): ``workers_dir/<worker_index>`` (slot 0 when unset)."""
        return self.workers_dir / str(self.worker_index or 0)

    def in_namespace(self, namespace: str) -> Settings:
        """These settings for another model namespace."""
        return self.model_copy(update={"namespace": namespace})
