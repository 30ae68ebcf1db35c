#!/usr/bin/env bash
# Side-by-side: the same sipp uac -> proxy -> uas load through the edge and through
# Kamailio 5.6 (../shared/bench/kamailio-proxy.cfg), each proxy pinned to CPU 0 with one
# worker, sipp on CPU 1. Prints for each proxy
#   (a) CPU time per call (utime+stime of every thread/process of the proxy, from /proc)
#       at a fixed rate both sustain without failures, and
#   (b) the highest rate (of a fixed ladder) with at most 0.1% failed calls,
# then the ratios edge/Kamailio. Every run is bounded in calls and time; loopback only.
#
# Usage: benches/proxy_vs_kamailio.sh [RATE] [CALLS]   (defaults: 1000 calls/s, 20000 calls)
# EDGE_ANCHOR=true anchors the media of every call in the edge (default false: Kamailio here
# relays signalling only, so the like-for-like comparison is without a media relay);
# ONLY=edge skips Kamailio.
# Needs: sipp, kamailio (WITH_BENCH_PEERS=1 scripts/setup.sh installs both), taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RATE=${1:-1000}
CALLS=${2:-20000}
LADDER=${LADDER:-"1000 1500 2000 3000 4000 5000 6000"}
STEP_SECS=${STEP_SECS:-10}
KAM_CFG=${KAM_CFG:-$ROOT/../shared/bench/kamailio-proxy.cfg}
WITH_BENCH_PEERS=1 bash scripts/setup.sh
cargo build --release -q -p edge --bin edge
EDGE=$ROOT/target/release/edge
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
TICK=$(getconf CLK_TCK)

# CPU seconds (utime+stime) of a process and all its descendants.
cpu_of() {
  local root=$1 total=0 pids
  pids=$(ps -e -o pid=,ppid= | awk -v r="$root" '{p[$1]=$2} END {for (k in p) {x=k; while (x != "" && x != 0) { if (x == r) { print k; break } x = p[x] }}}')
  for p in $pids; do
    if [ -r /proc/$p/stat ]; then
      total=$(( total + $(awk '{print $14 + $15}' /proc/$p/stat) ))
    fi
  done
  echo "$total"
}

# Runs uac at RATE for COUNT calls against 127.0.0.1:5060; prints "successful failed seconds".
run_load() {
  local rate=$1 count=$2 tag=$3
  local dir=$WORK/$tag; mkdir -p "$dir"; cd "$dir"
  taskset -c 1 sipp -sf "$ROOT/tests/scenarios/uas_load.xml" -i 127.0.0.1 -p 5090 -m "$count" -nostdin -bg >/dev/null 2>&1 || true
  sleep 0.5
  timeout $(( count / rate + 60 )) taskset -c 1 sipp -sf "$ROOT/tests/scenarios/uac_call.xml" 127.0.0.1:5060 -i 127.0.0.1 -p 5070 \
    -r "$rate" -m "$count" -l 4000 -nostdin -timeout "$(( count / rate + 40 ))s" -trace_stat -stf stats.csv -fd 1 >/dev/null 2>&1 || true
  pkill -f "sipp -sf $ROOT/tests/scenarios/uas_load.xml" 2>/dev/null || true
  sleep 0.3
  python3 - "$dir/stats.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=';'))
h = rows[0]; last = rows[-1]
start = float(last[h.index('StartTime')].split()[-1])
now = float(last[h.index('CurrentTime')].split()[-1])
print(last[h.index('SuccessfulCall(C)')], last[h.index('FailedCall(C)')], f"{now - start:.2f}")
PY
  cd "$ROOT"
}

start_edge() {
  cat > "$WORK/edge.toml" <<TOML
data_dir = "$WORK/edge-data"
log = "warn"
[sip]
domain = "edge.bench"
udp = ["127.0.0.1:5060"]
tcp = []
tls = []
ws = []
wss = []
workers = 1
[admin]
listen = []
[media]
anchor = ${EDGE_ANCHOR:-false}
[[upstream]]
uri = "sip:127.0.0.1:5090"
TOML
  taskset -c 0 "$EDGE" run --config "$WORK/edge.toml" > "$WORK/edge.out" 2> "$WORK/edge.err" &
  PROXY_PID=$!
  sleep 1
}

start_kamailio() {
  mkdir -p "$WORK/kam"
  taskset -c 0 kamailio -f "$KAM_CFG" -P "$WORK/kam/kam.pid" -m 256 -M 16 -w "$WORK/kam" -DD -E > "$WORK/kam.log" 2>&1 &
  PROXY_PID=$!
  sleep 2
}

measure() {
  local name=$1
  "start_$name"
  # Warm-up, then (a): fixed rate.
  run_load 200 400 "$name-warm" >/dev/null
  local c0; c0=$(cpu_of "$PROXY_PID")
  read -r ok failed secs < <(run_load "$RATE" "$CALLS" "$name-fixed")
  local c1; c1=$(cpu_of "$PROXY_PID")
  local cpu_ms_per_call
  cpu_ms_per_call=$(python3 -c "print(f'{($c1-$c0)/$TICK*1000/max($ok,1):.4f}')")
  echo "$name: fixed rate $RATE calls/s ($(python3 -c "print(round($ok/max($secs,0.01)))") achieved): $ok successful, $failed failed; CPU $(python3 -c "print(($c1-$c0)/$TICK)") s => $cpu_ms_per_call ms per call"
  eval "${name}_CPU=$cpu_ms_per_call"
  # (b): highest rate of the ladder with <= 0.1% failures.
  local best=0 best_achieved=0
  for r in $LADDER; do
    read -r ok failed secs < <(run_load "$r" $(( r * STEP_SECS )) "$name-ladder-$r")
    local achieved; achieved=$(python3 -c "print(round($ok/max($secs,0.01)))")
    # Pass: at most 0.1% failed and the offered rate really reached (95%: sipp's own limit shows here).
    local pass; pass=$(python3 -c "t=$ok+$failed; print(1 if t>0 and $failed <= 0.001*t and $achieved >= 0.95*$r else 0)")
    echo "$name: ladder $r calls/s: $ok successful, $failed failed in $secs s ($achieved calls/s achieved)"
    [ "$pass" = 1 ] || break
    best=$r; best_achieved=$achieved
  done
  echo "$name: highest rate with <= 0.1% failed calls: $best calls/s offered, $best_achieved achieved (ladder: $LADDER)"
  eval "${name}_MAX=$best"
  kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true
  sleep 1
}

measure edge
[ "${ONLY:-}" = edge ] && exit 0
measure kamailio
echo
echo "ratio CPU per call edge/kamailio: $(python3 -c "print(f'{$edge_CPU/$kamailio_CPU:.3f}')")  (bar <= 1.0, goal <= 0.5)"
echo "ratio max rate edge/kamailio:     $(python3 -c "print(f'{$edge_MAX/max($kamailio_MAX,1):.3f}')")"
