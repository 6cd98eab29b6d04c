#!/usr/bin/env bash
# Installs what is missing and starts Kafka (KRaft, jars from Maven Central), Redis and PostgreSQL.
#   scripts/services.sh up|down|status
# Idempotent: `up` on running services only checks their health. Everything Kafka and Redis write
# lives under var/ (git-ignored); PostgreSQL is Debian's cluster, with a project role and database.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="$ROOT/var"
KAFKA_PORT="${LLAMA_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${LLAMA_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${LLAMA_KAFKA_HEAP:-1g}"
REDIS_PORT="${LLAMA_REDIS_PORT:-6379}"
PG_PORT="${LLAMA_PG_PORT:-5432}"
PG_USER="${LLAMA_PG_USER:-llama}"
PG_PASSWORD="${LLAMA_PG_PASSWORD:-llama}"
PG_DB="${LLAMA_PG_DB:-llamastream}"
KAFKA_DIR="$VAR/kafka"
KAFKA_LIB="$KAFKA_DIR/lib"
RUN="$VAR/run"

say() { printf '[services] %s\n' "$*"; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) to run: $*"; fi
}

APT_UPDATED=""
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} from Debian packages"
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

wait_for() {  # wait_for NAME SECONDS COMMAND...
  local name="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && die "$name not healthy after ${seconds}s"
    sleep 0.5
  done
  say "$name is up"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------- Kafka
kafka_jars() {
  if [ -f "$KAFKA_LIB/.complete" ] && cmp -s "$ROOT/scripts/kafka/pom.xml" "$KAFKA_LIB/.pom"; then return 0; fi
  command -v mvn >/dev/null || apt_install maven
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  say "resolving the Kafka broker jars from Maven Central (scripts/kafka/pom.xml)"
  rm -rf "$KAFKA_LIB"; mkdir -p "$KAFKA_LIB"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$KAFKA_LIB" -DincludeScope=runtime
  cp "$ROOT/scripts/kafka/pom.xml" "$KAFKA_LIB/.pom"
  touch "$KAFKA_LIB/.complete"
}

kafka_config() {
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  sed -e "s#@DATA@#$KAFKA_DIR/data#" -e "s#@PORT@#$KAFKA_PORT#g" -e "s#@CONTROLLER_PORT@#$KAFKA_CONTROLLER_PORT#g" \
    "$ROOT/scripts/kafka/server.properties" > "$KAFKA_DIR/server.properties"
}

KAFKA_JAVA=(java "-Xmx$KAFKA_HEAP" -Xms256m -XX:+UseG1GC
  "-Dlog4j.configuration=file:$ROOT/scripts/kafka/log4j.properties" "-Dkafka.logs.dir=$KAFKA_DIR/logs"
  -cp "$KAFKA_LIB/*")

kafka_healthy() {
  python3 -c "
import asyncio
from aiokafka.admin import AIOKafkaAdminClient
async def main():
    admin = AIOKafkaAdminClient(bootstrap_servers='127.0.0.1:$KAFKA_PORT', request_timeout_ms=3000)
    await admin.start(); await admin.list_topics(); await admin.close()
asyncio.run(main())"
}

kafka_up() {
  if pid_alive "$RUN/kafka.pid"; then say "kafka already running"
  elif port_open "$KAFKA_PORT"; then
    kafka_healthy >/dev/null 2>&1 || die "port $KAFKA_PORT is taken by something that is not Kafka; set LLAMA_KAFKA_PORT"
    say "a Kafka broker started elsewhere answers on port $KAFKA_PORT: using it"
  else
    kafka_jars
    kafka_config
    if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
      local cluster_id
      cluster_id="$(python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
      "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" >/dev/null
    fi
    nohup "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_DIR/server.properties" > "$KAFKA_DIR/logs/server.out" 2>&1 &
    echo $! > "$RUN/kafka.pid"
  fi
  wait_for kafka 90 kafka_healthy
}

# ---------------------------------------------------------------- Redis
redis_up() {
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$VAR/redis"
  if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then say "redis already running"; return 0; fi
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$VAR/redis" --daemonize yes \
    --pidfile "$RUN/redis.pid" --logfile "$VAR/redis/redis.log" --appendonly yes --save ""
  wait_for redis 30 bash -c "redis-cli -p $REDIS_PORT ping | grep -q PONG"
}

# ---------------------------------------------------------------- PostgreSQL
pg_cluster() { pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1" "$2}'; }

postgres_up() {
  command -v pg_lsclusters >/dev/null && [ -n "$(pg_cluster)" ] || apt_install postgresql
  local version name
  read -r version name <<<"$(pg_cluster)"
  [ -n "$version" ] || die "no PostgreSQL cluster found after installing postgresql"
  if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    as_root pg_ctlcluster "$version" "$name" start -- -o "-p $PG_PORT" 2>/dev/null \
      || as_root pg_ctlcluster "$version" "$name" start
  fi
  wait_for postgresql 60 pg_isready -q -h 127.0.0.1 -p "$PG_PORT"
  local psql=(as_root su postgres -c)
  "${psql[@]}" "psql -p $PG_PORT -tAc \"SELECT 1 FROM pg_roles WHERE rolname='$PG_USER'\"" | grep -q 1 \
    || "${psql[@]}" "psql -p $PG_PORT -qc \"CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD' CREATEDB\""
  "${psql[@]}" "psql -p $PG_PORT -tAc \"SELECT 1 FROM pg_database WHERE datname='$PG_DB'\"" | grep -q 1 \
    || "${psql[@]}" "psql -p $PG_PORT -qc \"CREATE DATABASE $PG_DB OWNER $PG_USER\""
  say "postgresql database $PG_DB ready for role $PG_USER"
}

# ---------------------------------------------------------------- commands
up() {
  mkdir -p "$RUN"
  redis_up
  postgres_up
  kafka_up
  say "ready: kafka 127.0.0.1:$KAFKA_PORT, redis 127.0.0.1:$REDIS_PORT, postgresql 127.0.0.1:$PG_PORT/$PG_DB"
}

down() {
  if pid_alive "$RUN/kafka.pid"; then
    kill "$(cat "$RUN/kafka.pid")"
    for _ in $(seq 1 60); do pid_alive "$RUN/kafka.pid" || break; sleep 0.5; done
    pid_alive "$RUN/kafka.pid" && kill -9 "$(cat "$RUN/kafka.pid")"
    say "kafka stopped"
  fi
  rm -f "$RUN/kafka.pid"
  # Only what this checkout started (its pid files): a broker or Redis found running is left alone.
  if pid_alive "$RUN/redis.pid"; then
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$RUN/redis.pid")"
    say "redis stopped"
  fi
  # PostgreSQL is the machine's cluster: left running, as other projects may use it.
}

status() {
  if pid_alive "$RUN/kafka.pid"; then say "kafka: running (pid $(cat "$RUN/kafka.pid"))"
  elif port_open "$KAFKA_PORT"; then say "kafka: running on port $KAFKA_PORT (not started by this checkout)"
  else say "kafka: stopped"; fi
  redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && say "redis: running" || say "redis: stopped"
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null && say "postgresql: running" || say "postgresql: stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
