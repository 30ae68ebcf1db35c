#!/usr/bin/env bash
# relay_vs_rtpengine.sh [CALLS...]: CPU per forwarded RTP packet, the edge's relay vs
# rtpengine 10.5 (userspace forwarding), at the same loads, with the same generator.
#   Both relays run pinned to core 0, the generator (rtpgen, benches/rtpengine/rtpgen.c) on
#   core 1: 2 G.711 streams per call (50 packets/s each way, 172 bytes), WARMUP s of traffic,
#   then a SECS s window; CPU = utime+stime (schedstat) of the relay process.
#   rtpengine is driven by its ng protocol (benches/rtpengine/run.sh, the calibration
#   harness); the edge by SIP (benches/rtpengine/edgectl.py: INVITE/200/ACK through the
#   edge, relay ports read from the rewritten SDP), with one worker thread.
# Prints one SUMMARY line per relay and load, then a table with the ratio edge/rtpengine.
# Environment: SECS (20), WARMUP (5), ROUNDS (1), WORK (/tmp/relaybench), EDGE_BIN, SKIP_BUILD=1,
# ONLY=edge|rtpengine (one relay; the table then needs rows of both from earlier runs).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CALLS=("$@"); [ ${#CALLS[@]} -gt 0 ] || CALLS=(100 250 500 1000)
SECS=${SECS:-20}; WARMUP=${WARMUP:-5}; ROUNDS=${ROUNDS:-1}
WORK=${WORK:-/tmp/relaybench}
mkdir -p "$WORK"
command -v rtpengine >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rtpengine-daemon >/dev/null; }
command -v gcc >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/edge}
if [ -z "${SKIP_BUILD:-}" ]; then (cd "$ROOT" && cargo build --release -p edge --bin edge >/dev/null 2>&1); fi
RTPGEN="$WORK/rtpgen"
[ -x "$RTPGEN" ] && [ "$RTPGEN" -nt "$HERE/rtpengine/rtpgen.c" ] || gcc -O2 -Wall -o "$RTPGEN" "$HERE/rtpengine/rtpgen.c"
ulimit -n "$(ulimit -Hn)"

run_edge() { # CALLS -> prints key=value lines of rtpgen + SUMMARY
  local calls=$1 out="$WORK/edge-c$1-$(date +%H%M%S)"
  mkdir -p "$out"
  cat >"$out/edge.toml" <<TOML
data_dir = "$out/data"
log = "warn"
[sip]
domain = "bench.test"
udp = ["127.0.0.1:25060"]
tcp = []
tls = []
ws = []
wss = []
workers = 1
[admin]
listen = []
[media]
port_min = 30000
port_max = 39999
inactivity_secs = 600
[[upstream]]
uri = "sip:127.0.0.1:25090"
TOML
  taskset -c 0 "$EDGE_BIN" run --config "$out/edge.toml" >"$out/edge.out" 2>"$out/edge.log" &
  local pid=$!
  trap "kill $pid 2>/dev/null || true" RETURN
  for _ in $(seq 50); do grep -q "edge: domain" "$out/edge.out" 2>/dev/null && break; sleep 0.1; done
  taskset -c 1 python3 "$HERE/rtpengine/edgectl.py" setup --edge 127.0.0.1:25060 --uas 127.0.0.1:25090 \
    --calls "$calls" --base 20000 --out "$out/ports.txt" --tag "c$calls-$$" >/dev/null
  taskset -c 1 "$RTPGEN" -z -q -f "$out/ports.txt" -w 0 -d 5 -r 0 -p "$pid" >"$out/idle.txt"
  taskset -c 1 "$RTPGEN" -f "$out/ports.txt" -w "$WARMUP" -d "$SECS" -p "$pid" >"$out/gen.txt"
  taskset -c 1 python3 "$HERE/rtpengine/edgectl.py" bye --edge 127.0.0.1:25060 --uas 127.0.0.1:25090 --ports "$out/ports.txt" >/dev/null || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local idle; idle=$(awk -F= '$1=="relay_sched_cpu_pct"{print $2}' "$out/idle.txt")
  g() { awk -F= -v k="$1" '$1==k{print $2}' "$out/gen.txt"; }
  printf 'SUMMARY relay=edge calls=%s fwd_pps=%s relay_cpu_pct=%s us_per_pkt=%s loss_pct=%s idle_cpu_pct=%s lat_p50/p99_us=%s/%s out=%s\n' \
    "$calls" "$(g forwarded_pps)" "$(g relay_sched_cpu_pct)" "$(g relay_sched_us_per_pkt)" "$(g loss_window_pct)" "$idle" \
    "$(g latency_p50_us)" "$(g latency_p99_us)" "$out"
}

run_rtpengine() {
  RTPE_WORK="$WORK/rtpe" RTPE_WARMUP="$WARMUP" bash "$HERE/rtpengine/run.sh" "$1" "$SECS" | grep '^SUMMARY' \
    | sed 's/^SUMMARY /SUMMARY relay=rtpengine /; s/us_per_pkt=\([0-9.]*\) (schedstat \([0-9.]*\), marginal [0-9.na]*)/us_per_pkt=\2/'
}

RESULTS="$WORK/summary.txt"; : >"$RESULTS"
for r in $(seq "$ROUNDS"); do
  for c in "${CALLS[@]}"; do
    [ "${ONLY:-}" = edge ] || run_rtpengine "$c" | tee -a "$RESULTS"
    [ "${ONLY:-}" = rtpengine ] || run_edge "$c" | tee -a "$RESULTS"
  done
done
echo
echo "| calls | pkt/s | rtpengine µs/pkt | edge µs/pkt | edge/rtpengine | rtpengine loss % | edge loss % |"
echo "|---|---|---|---|---|---|---|"
python3 - "$RESULTS" <<'PY'
import re, sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    kv = dict(re.findall(r"(\w+)=([^ ]+)", line))
    rows.setdefault((int(kv["calls"]), kv["relay"]), []).append(kv)
for calls in sorted({c for c, _ in rows}):
    e, r = rows.get((calls, "edge"), []), rows.get((calls, "rtpengine"), [])
    if not e or not r: continue
    med = lambda xs, k: st.median(float(x[k]) for x in xs)
    eu, ru = med(e, "us_per_pkt"), med(r, "us_per_pkt")
    print("| %d | %.0f | %.2f | %.2f | %.2f | %.4f | %.4f |" % (calls, med(e, "fwd_pps"), ru, eu, eu / ru, med(r, "loss_pct"), med(e, "loss_pct")))
PY
