#!/usr/bin/env bash
# One meeting room under `loadgen sfu`: PARTICIPANTS (default 100) all publish Opus with
# levels and simulcast VP8 (150/500/1500 kbit/s), each receives last-N 25 videos, for
# DURATION seconds (default 60). Prints the SFU's CPU use (share of all cores, from
# /proc/PID/stat over the steady part), packets/s received by the participants (what the
# SFU forwarded), per-subscriber loss and freezes, and the UDP datagrams the kernel
# dropped for full receive buffers during the run (/proc/net/snmp RcvbufErrors: loopback
# only here, so these are the SFU's and the participants' sockets). Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PARTICIPANTS:-100}
D=${DURATION:-60}
FPS=${FPS:-30}
RATE=${JOIN_RATE:-5}
cargo build --release -p edge -p loadgen >/dev/null
dir=$(mktemp -d)
trap 'kill $edge_pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/edge.toml" <<TOML
data_dir = "$dir/data"
log = "warn"
[sip]
domain = "bench.test"
udp = ["127.0.0.1:0"]
[admin]
listen = ["127.0.0.1:0"]
[sfu]
enabled = true
max_participants = $P
last_n = 25
TOML
./target/release/edge run --config "$dir/edge.toml" > "$dir/edge.log" 2>&1 &
edge_pid=$!
for _ in $(seq 50); do grep -q 'listening admin' "$dir/edge.log" && break; sleep 0.2; done
http=$(awk '/listening admin/ {print $4}' "$dir/edge.log")
ticks=$(getconf CLK_TCK)
cores=$(nproc)
cpu() {
  if [ ! -e "/proc/$edge_pid/stat" ]; then echo "the edge exited:" >&2; tail -20 "$dir/edge.log" >&2; exit 1; fi
  awk '{print $14 + $15}' "/proc/$edge_pid/stat"
}
./target/release/loadgen sfu --http "$http" --room bench --participants "$P" --duration-s "$D" --fps "$FPS" \
  --join-rate "$RATE" --report-json "$dir/report.json" --quiet > "$dir/loadgen.out" 2>&1 &
lg=$!
drops() { awk '/^Udp:/ { n++; if (n == 1) for (i = 1; i <= NF; i++) col[$i] = i; else print $col["RcvbufErrors"] }' /proc/net/snmp; }
d0=$(drops)
# Steady part: after every join (P / RATE s) plus 5 s, for half the run.
warm=$(( P / RATE + 5 ))
win=$(( D / 2 ))
sleep "$warm"
lgcpu() { awk '{print $14 + $15}' "/proc/$lg/stat" 2>/dev/null || echo 0; }
tmo() { curl -s "http://$http/metrics" | awk '/^edge_sfu_session_timeouts_total/ {print $2}'; }
c0=$(cpu); l0=$(lgcpu); t0=$(date +%s.%N); m0=$(tmo)
sleep "$win"
c1=$(cpu); l1=$(lgcpu); t1=$(date +%s.%N); m1=$(tmo)
wait $lg || true
d1=$(drops)
cat "$dir/loadgen.out"
echo "UDP receive-buffer drops during the run: $(( d1 - d0 ))"
python3 -c "import sys; print(f'str0m session timeouts: {(float(sys.argv[2] or 0) - float(sys.argv[1] or 0)) / (float(sys.argv[4]) - float(sys.argv[3])) / float(sys.argv[5]):.0f} per participant-second')" "$m0" "$m1" "$t0" "$t1" "$P"
# Load-based last-N cuts (`Sfu::handle_load`): the caps in order, "-" when none.
cuts=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/edge.log" | grep "SFU load: videos per subscriber" | grep -o 'videos=[0-9]*' | cut -d= -f2 | tr '\n' ' ' || true)
echo "SFU load cuts (videos per subscriber, in order): ${cuts:--}"
python3 - "$dir/report.json" "$c0" "$c1" "$t0" "$t1" "$ticks" "$cores" "$l0" "$l1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c0, c1, t0, t1, ticks, cores = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
cpu = (c1 - c0) / ticks / (t1 - t0)
lgc = (float(sys.argv[9]) - float(sys.argv[8])) / ticks / (t1 - t0)
pp = r["per_participant"]
loss = sorted(p["loss_pct"] for p in pp)
frz = sorted(p["freezes"] for p in pp)
vids = sorted(p["video_tracks"] for p in pp)
print(f"SFU CPU: {cpu*100:.0f}% of one core = {cpu/cores*100:.0f}% of {cores} cores (steady window {t1-t0:.0f} s); loadgen on the same machine: {lgc*100:.0f}% of one core")
print(f"packets/s received by participants: {r['packets_in_per_s']:.0f} (= {r['packets_in_per_s']/max(cpu,1e-9):.0f} per SFU core-second)")
print(f"joined {r['joined']}/{r['participants']}; join ms p50 {r['join_ms_p50']:.0f} p90 {r['join_ms_p90']:.0f} max {r['join_ms_max']:.0f}")
print(f"per-subscriber loss %: median {loss[len(loss)//2]:.2f} max {loss[-1]:.2f}; freezes: median {frz[len(frz)//2]} max {frz[-1]} total {sum(frz)}")
print(f"videos received per subscriber: min {vids[0]} median {vids[len(vids)//2]} max {vids[-1]}; video in {r['video_kbps_in_mean']:.0f} kbit/s mean")
print(f"video slot switches: {r['video_switches_total']}; longest wait for the new video {r['switch_ms_max']:.0f} ms")
PY
