#!/usr/bin/env bash
# Starts or stops the processes of `make up`: the faust worker, the web sidecar and replays of real data.
#   scripts/pipeline.sh start|stop|status
# Logs go to var/log/, pids to var/run/. Settings come from the environment (LLAMA_*), see .env.example.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
RUN="$ROOT/var/run"
LOG="$ROOT/var/log"
# The demo replays the Terra/LUNA collapse (every source, 30 minutes of history per second: LUNA's
# minute bars are then ~120 ticks/s, well within one worker) and a day of Uniswap v3 logs beside it.
REPLAY_ARGS="${LLAMA_REPLAY_ARGS:-demo --since 2022-05-05 --until 2022-05-20 --speed 1800 --loop}"
CHAIN_REPLAY_ARGS="${LLAMA_CHAIN_REPLAY_ARGS:-univ3-logs --speed 600 --loop}"

say() { printf '[pipeline] %s\n' "$*"; }
alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

launch() {  # launch NAME COMMAND...
  local name="$1"; shift
  if alive "$name"; then say "$name already running (pid $(cat "$RUN/$name.pid"))"; return 0; fi
  (cd "$ROOT" && exec setsid "$@" >>"$LOG/$name.log" 2>&1) &
  echo $! > "$RUN/$name.pid"
  say "$name started (pid $!), log: var/log/$name.log"
}

stop_one() {
  if alive "$1"; then
    kill -TERM -- "-$(cat "$RUN/$1.pid")" 2>/dev/null || kill -TERM "$(cat "$RUN/$1.pid")"
    for _ in $(seq 1 60); do alive "$1" || break; sleep 0.5; done
    alive "$1" && kill -KILL -- "-$(cat "$RUN/$1.pid")" 2>/dev/null || true
    say "$1 stopped"
  fi
  rm -f "$RUN/$1.pid"
}

start() {
  mkdir -p "$RUN" "$LOG"
  launch worker "$PY" -m faust -A pipeline.app worker -l info
  for _ in $(seq 1 120); do grep -q "\[^Worker\]: Ready" "$LOG/worker.log" 2>/dev/null && break; sleep 0.5; done
  # Protocol metadata (slug, category, chains) is a compacted topic: publishing it once is enough.
  "$PY" -m pipeline.replay protocol-meta >>"$LOG/replay.log" 2>&1
  launch web "$PY" -m web
  # shellcheck disable=SC2086
  launch replay "$PY" -m pipeline.replay $REPLAY_ARGS
  # shellcheck disable=SC2086
  launch replay-chain "$PY" -m pipeline.replay $CHAIN_REPLAY_ARGS
}

stop() { stop_one replay-chain; stop_one replay; stop_one web; stop_one worker; }

status() {
  for name in worker web replay replay-chain; do
    if alive "$name"; then say "$name: running (pid $(cat "$RUN/$name.pid"))"; else say "$name: stopped"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
