#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller in one JVM) from Maven Central jars.
# No Docker, no tarball: deploy/kafka/pom.xml copies the jars, this script runs them with java.
#
# Usage: deploy/kafka/kafka.sh <command> [args]
#   fetch [broker|tools|all]   download the jars (only if missing; default: all)
#   start [--foreground]       fetch if needed, format storage if needed, start, wait until ready,
#                              print the bootstrap address (the only line on stdout)
#   stop                       SIGTERM, wait, SIGKILL after the timeout; idempotent
#   status                     exit 0 if running (prints pid and bootstrap), 3 if not
#   topics-cli ARGS...         org.apache.kafka.tools.TopicCommand   (kafka-topics.sh)
#   perf-consumer ARGS...      org.apache.kafka.tools.ConsumerPerformance (kafka-consumer-perf-test.sh)
#   perf-producer ARGS...      org.apache.kafka.tools.ProducerPerformance (kafka-producer-perf-test.sh)
#   run-class CLASS ARGS...    any main class on the tools classpath
#   logs [N]                   tail the broker log
#
# Environment (all optional):
#   SCORESTREAM_KAFKA_DIR               data dir (server.properties, logs, pid); default <repo>/var/kafka
#                                       (./var/kafka when run from an installed package)
#   SCORESTREAM_KAFKA_PORT              PLAINTEXT port, default 9092
#   SCORESTREAM_KAFKA_CONTROLLER_PORT   CONTROLLER port, default PORT+1
#   SCORESTREAM_KAFKA_HEAP_OPTS         default "-Xms512m -Xmx1g"
#   SCORESTREAM_KAFKA_JVM_OPTS          extra broker JVM options (replace the G1 defaults)
#   SCORESTREAM_KAFKA_TOOLS_HEAP_OPTS   default "-Xmx512m"
#   SCORESTREAM_KAFKA_EXTRA_PROPS       extra server properties, key=value per line (or, on one line,
#                                       ';'-separated); appended last, so they override the defaults
#   SCORESTREAM_KAFKA_SCRAM_USERS       SCRAM credentials made when the storage is formatted (first start of a
#                                       data dir), one per line or ';'-separated, as StorageTool's --add-scram
#                                       takes them: SCRAM-SHA-512=[name=alice,password=alice-secret]
#                                       (a SASL_SSL listener itself goes in SCORESTREAM_KAFKA_EXTRA_PROPS; see
#                                       tests/kafka_broker.py secured_props and docs/operations.md)
#   SCORESTREAM_KAFKA_START_TIMEOUT     seconds to wait for readiness, default 60
#   SCORESTREAM_KAFKA_STOP_TIMEOUT      seconds to wait after SIGTERM, default 30
#   SCORESTREAM_KAFKA_VERSION           broker version, default 4.4.0
#   SCORESTREAM_KAFKA_TOOLS_VERSION     kafka-tools version, default 4.3.1 (no 4.4.0 on Maven Central)
#   SCORESTREAM_KAFKA_LIBS_DIR          broker jars, default <repo>/var/kafka/libs
#                                       (~/.cache/scorestream/kafka/libs outside a checkout)
#   SCORESTREAM_KAFKA_TOOLS_LIBS_DIR    tools jars, default <repo>/var/kafka/tools-libs
#   SCORESTREAM_KAFKA_MVN_ARGS          extra mvn arguments (e.g. "-s settings.xml")
#   JAVA_HOME / SCORESTREAM_KAFKA_PYTHON (python used for the readiness probe, default python3)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd -P)"

abspath() {
  # Absolute path without requiring it to exist.
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/$1" ;;
  esac
}

# In a checkout, state and jars live under <repo>/var. When the script runs from an installed wheel
# (deploy/kafka/* is package data, REPO_ROOT is then site-packages), use ./var/kafka for data and
# the user cache for jars instead.
if [[ -f "$REPO_ROOT/pyproject.toml" ]]; then
  DEFAULT_DATA_DIR="$REPO_ROOT/var/kafka"
  DEFAULT_JARS_DIR="$REPO_ROOT/var/kafka"
else
  DEFAULT_DATA_DIR="$PWD/var/kafka"
  DEFAULT_JARS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/scorestream/kafka"
fi

KAFKA_VERSION="${SCORESTREAM_KAFKA_VERSION:-4.4.0}"
TOOLS_VERSION="${SCORESTREAM_KAFKA_TOOLS_VERSION:-4.3.1}"
DATA_DIR="$(abspath "${SCORESTREAM_KAFKA_DIR:-$DEFAULT_DATA_DIR}")"
PORT="${SCORESTREAM_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${SCORESTREAM_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
HOST="127.0.0.1"
LIBS_DIR="$(abspath "${SCORESTREAM_KAFKA_LIBS_DIR:-$DEFAULT_JARS_DIR/libs}")"
TOOLS_LIBS_DIR="$(abspath "${SCORESTREAM_KAFKA_TOOLS_LIBS_DIR:-$DEFAULT_JARS_DIR/tools-libs}")"
LOG4J_CONF="$SCRIPT_DIR/log4j2.properties"
START_TIMEOUT="${SCORESTREAM_KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${SCORESTREAM_KAFKA_STOP_TIMEOUT:-30}"
PYTHON="${SCORESTREAM_KAFKA_PYTHON:-python3}"

SERVER_PROPS="$DATA_DIR/server.properties"
KRAFT_LOG_DIR="$DATA_DIR/kraft-logs"
PID_FILE="$DATA_DIR/kafka.pid"
LOG_FILE="$DATA_DIR/kafka.log"
BOOTSTRAP_FILE="$DATA_DIR/bootstrap"
CLUSTER_ID_FILE="$DATA_DIR/cluster.id"
STAMP_NAME=".scorestream-fetch-complete"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"
else
  JAVA="java"
fi

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for n in "$PORT" "$CONTROLLER_PORT" "$START_TIMEOUT" "$STOP_TIMEOUT"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "not a number: '$n' (check SCORESTREAM_KAFKA_* variables)"
done

# Take an exclusive lock on fd 9 (released when the script exits). No-op without flock(1).
lock() {
  local file="$1"
  mkdir -p "$(dirname "$file")"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$file"
    flock 9
  fi
}

# ----------------------------------------------------------------------------------------- fetch
# fetch_one PROFILE DIR VERSION: copy the profile's jars into DIR unless a finished copy exists.
# Maven writes into DIR.tmp.<pid>, the stamp goes in last, then one rename: an interrupted fetch
# never leaves a DIR that looks complete.
fetch_one() {
  local profile="$1" dir="$2" version="$3"
  local stamp="$dir/$STAMP_NAME"
  local want pom_sum
  pom_sum="$(cksum <"$SCRIPT_DIR/pom.xml" | cut -d' ' -f1)"
  want="profile=$profile version=$version pom=$pom_sum"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  lock "$(dirname "$dir")/.$(basename "$dir").fetch.lock"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exec 9>&-
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch the Kafka jars)"
  local tmp="$dir.tmp.$$"
  rm -rf "$dir".tmp.*
  log "fetching $profile jars ($version) into $dir"
  local -a extra=()
  if [[ -n "${SCORESTREAM_KAFKA_MVN_ARGS:-}" ]]; then
    read -r -a extra <<<"$SCORESTREAM_KAFKA_MVN_ARGS"
  fi
  local var="kafka.version"
  [[ "$profile" == "tools" ]] && var="kafka.tools.version"
  local mvn_log
  mvn_log="$(dirname "$dir")/.$(basename "$dir").fetch.log"
  if ! mvn -B -q -Dstyle.color=never -f "$SCRIPT_DIR/pom.xml" -P "$profile" ${extra[@]+"${extra[@]}"} \
      "-D$var=$version" "-Dkafka.libs.dir=$tmp" dependency:copy-dependencies >"$mvn_log" 2>&1; then
    cat "$mvn_log" >&2
    rm -rf "$tmp"
    die "mvn failed to fetch the $profile jars (output above, also in $mvn_log)"
  fi
  compgen -G "$tmp/*.jar" >/dev/null || { rm -rf "$tmp"; die "mvn produced no jars in $tmp"; }
  printf '%s\n' "$want" >"$tmp/$STAMP_NAME"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  exec 9>&-
}

fetch_broker() { fetch_one broker "$LIBS_DIR" "$KAFKA_VERSION"; }
fetch_tools() { fetch_one tools "$TOOLS_LIBS_DIR" "$TOOLS_VERSION"; }

cmd_fetch() {
  case "${1:-all}" in
    broker) fetch_broker ;;
    tools) fetch_tools ;;
    all) fetch_broker; fetch_tools ;;
    *) die "fetch: expected broker, tools or all, got '$1'" ;;
  esac
}

# ------------------------------------------------------------------------------------- processes
# Is PID a live (not zombie) broker started from this data dir?
is_our_broker() {
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  if [[ -r "/proc/$pid/stat" ]]; then
    local stat state cmdline
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    state="${stat##*) }"
    state="${state%% *}"
    [[ "$state" != "Z" && "$state" != "X" ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  elif kill -0 "$pid" 2>/dev/null; then
    cmdline="$(ps -p "$pid" -o command= 2>/dev/null)" || return 1
  else
    return 1
  fi
  [[ "$cmdline" == *"kafka.Kafka $SERVER_PROPS"* ]]
}

running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE" 2>/dev/null)" || return 1
  is_our_broker "$pid" || return 1
  printf '%s\n' "$pid"
}

# probe HOST PORT: 0 if a Kafka broker answers ApiVersions and a Metadata request listing at least
# one broker. A KRaft broker only enables request processing after it has caught up with the
# metadata log and been unfenced, so an answer means clients can use it. A bound port alone is not
# enough (the socket is bound early and connections sit in the backlog).
probe() {
  if command -v "$PYTHON" >/dev/null 2>&1; then
    "$PYTHON" - "$1" "$2" <<'PY'
import socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])

def call(sock, api_key, version, corr, body=b""):
    client = b"kafka.sh-probe"
    header = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf
    (size,) = struct.unpack(">i", read(4))
    data = read(size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise ValueError("correlation id mismatch")
    return data[4:]

try:
    with socket.create_connection((host, port), timeout=2.0) as s:
        s.settimeout(2.0)
        data = call(s, 18, 0, 1)  # ApiVersions v0: error_code, [api_key, min, max]
        (err, n) = struct.unpack(">hi", data[:6])
        if err != 0:
            sys.exit(1)
        ranges = {}
        for i in range(n):
            k, lo, hi = struct.unpack(">hhh", data[6 + 6 * i: 12 + 6 * i])
            ranges[k] = (lo, hi)
        lo, hi = ranges.get(3, (0, -1))
        v = max(lo, 4)
        if v > min(hi, 8):
            sys.exit(0)  # no non-flexible Metadata version in common: ApiVersions has to do
        body = struct.pack(">i?", 0, False)  # no topics, no auto-creation
        if v >= 8:
            body += struct.pack(">??", False, False)
        data = call(s, 3, v, 2, body)  # Metadata: throttle_time_ms, [brokers] ...
        (_, brokers) = struct.unpack(">ii", data[:8])
        sys.exit(0 if brokers >= 1 else 1)
except (OSError, ValueError, struct.error):
    sys.exit(1)
PY
  else
    # Fallback without python: the port accepts a connection.
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
  fi
}

port_in_use() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# ---------------------------------------------------------------------------------------- server
write_server_properties() {
  mkdir -p "$KRAFT_LOG_DIR"
  local tmp="$SERVER_PROPS.tmp.$$"
  cat >"$tmp" <<EOF
# Written by deploy/kafka/kafka.sh on every start; edit SCORESTREAM_KAFKA_EXTRA_PROPS instead.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KRAFT_LOG_DIR

# One node: every replication factor and min ISR is 1.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

# Local development and tests: no 3 s wait on the first group join, topics on first use.
group.initial.rebalance.delay.ms=0
num.partitions=4
auto.create.topics.enable=true
log.cleaner.backoff.ms=1000
# Fewer internal partitions: __consumer_offsets and the transaction log are created faster
# (the defaults are 50), which shortens the first group join after a cold start.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=8
share.coordinator.state.topic.num.partitions=8
EOF
  if [[ -n "${SCORESTREAM_KAFKA_EXTRA_PROPS:-}" ]]; then
    printf '\n# SCORESTREAM_KAFKA_EXTRA_PROPS\n' >>"$tmp"
    # one per line; a one-line value is ';'-separated (values such as a JAAS config end in ';': put
    # them on lines of their own)
    local sep=';'
    [[ "$SCORESTREAM_KAFKA_EXTRA_PROPS" == *$'\n'* ]] && sep=$'\n'
    printf '%s\n' "$SCORESTREAM_KAFKA_EXTRA_PROPS" | tr "$sep" '\n' \
      | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' | grep -v '^$' >>"$tmp" || true
  fi
  mv "$tmp" "$SERVER_PROPS"
}

format_storage() {
  # meta.properties exists once the log dir is formatted; skip a JVM start on warm restarts.
  if [[ -f "$KRAFT_LOG_DIR/meta.properties" ]]; then
    return 0
  fi
  local cluster_id
  if [[ -s "$CLUSTER_ID_FILE" ]]; then
    cluster_id="$(cat "$CLUSTER_ID_FILE")"
  else
    cluster_id="$(new_cluster_id)"
    printf '%s\n' "$cluster_id" >"$CLUSTER_ID_FILE"
  fi
  log "formatting $KRAFT_LOG_DIR (cluster id $cluster_id)"
  local -a scram=()
  local entry
  while IFS= read -r entry; do
    [[ -n "$entry" ]] && scram+=(--add-scram "$entry")
  done < <(printf '%s\n' "${SCORESTREAM_KAFKA_SCRAM_USERS:-}" | tr ';' '\n' \
    | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
  # the SCRAM entries carry passwords: they go to StorageTool's arguments, never to the log
  java_broker_cp kafka.tools.StorageTool format -t "$cluster_id" -c "$SERVER_PROPS" \
    --ignore-formatted ${scram[@]+"${scram[@]}"} >>"$LOG_FILE" 2>&1 \
    || { tail -n 30 "$LOG_FILE" >&2; die "storage format failed"; }
}

# Same as `StorageTool random-uuid` (Kafka's Uuid.randomUuid: a random UUID, URL-safe base64 without
# padding, never starting with '-'), without paying a JVM start; falls back to the JVM.
new_cluster_id() {
  if command -v "$PYTHON" >/dev/null 2>&1; then
    "$PYTHON" -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"):
        print(s)
        break'
  else
    java_broker_cp kafka.tools.StorageTool random-uuid
  fi
}

java_broker_cp() {
  "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$LOG4J_CONF" -cp "$LIBS_DIR/*" "$@" 9>&-
}

broker_java_args() {
  local heap="${SCORESTREAM_KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"
  # Kafka's own defaults from kafka-run-class.sh.
  local jvm="${SCORESTREAM_KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}"
  local -a a=()
  read -r -a a <<<"$heap $jvm"
  BROKER_ARGS=("${a[@]}" "-Dlog4j2.configurationFile=$LOG4J_CONF" "-Dkafka.logs.dir=$DATA_DIR"
    -cp "$LIBS_DIR/*" kafka.Kafka "$SERVER_PROPS")
}

cmd_start() {
  local foreground=0
  while (($#)); do
    case "$1" in
      --foreground | -f) foreground=1 ;;
      *) die "start: unknown argument '$1'" ;;
    esac
    shift
  done
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Java 17+ needed)"
  fetch_broker
  mkdir -p "$DATA_DIR"
  lock "$DATA_DIR/.kafka.lock"

  local pid
  if pid="$(running_pid)"; then
    local running_bootstrap="$HOST:$PORT"
    [[ -s "$BOOTSTRAP_FILE" ]] && running_bootstrap="$(cat "$BOOTSTRAP_FILE")"
    log "already running (pid $pid) from $DATA_DIR at $running_bootstrap"
    [[ "$running_bootstrap" == "$HOST:$PORT" ]] \
      || log "warning: it listens on $running_bootstrap, not on the requested $HOST:$PORT"
    printf '%s\n' "$running_bootstrap"
    return 0
  fi
  rm -f "$PID_FILE" "$BOOTSTRAP_FILE"
  for p in "$PORT" "$CONTROLLER_PORT"; do
    port_in_use "$p" && die "port $p on $HOST is already in use by another process"
  done

  write_server_properties
  if [[ -f "$LOG_FILE" ]]; then
    mv -f "$LOG_FILE" "$LOG_FILE.1"
  fi
  format_storage
  broker_java_args

  if ((foreground)); then
    printf '%s\n' "$$" >"$PID_FILE"
    printf '%s\n' "$HOST:$PORT" >"$BOOTSTRAP_FILE"
    log "starting in the foreground (pid $$), bootstrap $HOST:$PORT"
    exec 9>&-
    exec "$JAVA" "${BROKER_ARGS[@]}"
  fi

  nohup "$JAVA" "${BROKER_ARGS[@]}" >>"$LOG_FILE" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$PID_FILE"

  local deadline=$((SECONDS + START_TIMEOUT))
  until probe "$HOST" "$PORT"; do
    if ! is_our_broker "$pid"; then
      log "broker exited during startup; last lines of $LOG_FILE:"
      tail -n 50 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "broker not ready after ${START_TIMEOUT}s; last lines of $LOG_FILE:"
      tail -n 50 "$LOG_FILE" >&2 || true
      stop_pid "$pid"
      exit 1
    fi
    sleep 0.2
  done
  printf '%s\n' "$HOST:$PORT" >"$BOOTSTRAP_FILE"
  log "running (pid $pid), data in $DATA_DIR, log $LOG_FILE"
  printf '%s\n' "$HOST:$PORT"
}

stop_pid() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while is_our_broker "$pid"; do
    if ((SECONDS >= deadline)); then
      log "no exit ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL to $pid"
      kill -KILL "$pid" 2>/dev/null || true
      local _
      for _ in {1..50}; do
        is_our_broker "$pid" || break
        sleep 0.1
      done
      break
    fi
    sleep 0.1
  done
  rm -f "$PID_FILE" "$BOOTSTRAP_FILE"
}

cmd_stop() {
  [[ -d "$DATA_DIR" ]] || { log "not running (no $DATA_DIR)"; return 0; }
  lock "$DATA_DIR/.kafka.lock"
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE" "$BOOTSTRAP_FILE"
    log "not running ($DATA_DIR)"
    return 0
  fi
  log "stopping pid $pid"
  stop_pid "$pid"
  if is_our_broker "$pid"; then
    die "pid $pid is still alive"
  fi
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    local b="$HOST:$PORT"
    [[ -s "$BOOTSTRAP_FILE" ]] && b="$(cat "$BOOTSTRAP_FILE")"
    printf 'running pid=%s bootstrap=%s dir=%s\n' "$pid" "$b" "$DATA_DIR"
    return 0
  fi
  printf 'not running dir=%s\n' "$DATA_DIR"
  return 3
}

run_tool() {
  local cls="$1"
  shift
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Java 17+ needed)"
  fetch_tools
  local -a heap=()
  read -r -a heap <<<"${SCORESTREAM_KAFKA_TOOLS_HEAP_OPTS:--Xmx512m}"
  exec "$JAVA" "${heap[@]}" -Djava.awt.headless=true -Dlog4j2.configurationFile="$LOG4J_CONF" \
    -cp "$TOOLS_LIBS_DIR/*" "$cls" "$@"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

main() {
  local cmd="${1:-}"
  (($#)) && shift
  case "$cmd" in
    fetch) cmd_fetch "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start "$@" ;;
    status) cmd_status ;;
    topics-cli) run_tool org.apache.kafka.tools.TopicCommand "$@" ;;
    perf-consumer) run_tool org.apache.kafka.tools.ConsumerPerformance "$@" ;;
    perf-producer) run_tool org.apache.kafka.tools.ProducerPerformance "$@" ;;
    run-class)
      (($#)) || die "run-class: class name expected"
      run_tool "$@"
      ;;
    logs) tail -n "${1:-100}" "$LOG_FILE" ;;
    -h | --help | help) usage ;;
    "") usage; exit 2 ;;
    *) log "unknown command '$cmd'"; usage; exit 2 ;;
  esac
}

main "$@"
