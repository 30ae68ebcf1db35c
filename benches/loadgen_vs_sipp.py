#!/usr/bin/env python3
"""Side-by-side: the load tool pair (caller + answerer) driving calls through the same
Kamailio 5.6 (../shared/bench/kamailio-proxy.cfg, one worker, pinned to CPU 0):
sipp uac + sipp uas versus loadgen call + loadgen answer, both tools pinned to CPU 1.

Prints for each tool pair
  (a) its own CPU time per call (user+system of both processes, from rusage) at a fixed
      rate both sustain through Kamailio, and the calls per CPU-second that implies;
  (b) the highest rate of a ladder with <= 0.1% failed calls and >= 95% of the offered
      rate achieved (Kamailio's single worker caps this for both);
then the ratios loadgen/sipp. Bounded in calls and time; loopback only.

Usage: benches/loadgen_vs_sipp.py [RATE] [CALLS]   (defaults 1000 calls/s, 20000 calls)
"""
import csv, json, os, resource, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
CALLS = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
LADDER = [int(x) for x in os.environ.get("LADDER", "1000 1500 2000 3000").split()]
STEP = int(os.environ.get("STEP_SECS", "10"))
KAM_CFG = os.environ.get("KAM_CFG", os.path.join(ROOT, "..", "shared", "bench", "kamailio-proxy.cfg"))
LG = os.path.join(ROOT, "target", "release", "loadgen")
SC = os.path.join(ROOT, "tests", "scenarios")
WORK = tempfile.mkdtemp()


def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_pair(tool, rate, calls):
    """Runs one caller/answerer pair to completion; returns (ok, failed, secs, cpu_s)."""
    d = tempfile.mkdtemp(dir=WORK)
    c0 = cpu_children()
    limit = calls / rate + 60
    if tool == "sipp":
        uas = subprocess.Popen(["taskset", "-c", "1", "sipp", "-sf", f"{SC}/uas_load.xml", "-i", "127.0.0.1", "-p", "5090", "-m", str(calls), "-nostdin", "-timeout", f"{int(limit)}s"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = time.time()
        uac = subprocess.run(["taskset", "-c", "1", "sipp", "-sf", f"{SC}/uac_call.xml", "127.0.0.1:5060", "-i", "127.0.0.1", "-p", "5070", "-r", str(rate), "-m", str(calls), "-l", "4000", "-nostdin", "-timeout", f"{int(limit)}s", "-trace_stat", "-stf", "s.csv", "-fd", "1"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=limit + 30)
        secs = time.time() - t0
        try:
            uas.wait(timeout=15)
        except subprocess.TimeoutExpired:
            uas.kill(); uas.wait()
        rows = list(csv.reader(open(f"{d}/s.csv"), delimiter=";"))
        h, last = rows[0], rows[-1]
        ok, failed = int(last[h.index("SuccessfulCall(C)")]), int(last[h.index("FailedCall(C)")])
        start = float(last[h.index("StartTime")].split()[-1]); now = float(last[h.index("CurrentTime")].split()[-1])
        secs = now - start
    else:
        uas = subprocess.Popen(["taskset", "-c", "1", LG, "answer", "--listen", "127.0.0.1:5090", "--calls", str(calls), "--duration-s", str(int(limit)), "--quiet"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        subprocess.run(["taskset", "-c", "1", LG, "call", "--target", "sip:127.0.0.1:5060", "--rate", str(rate), "--calls", str(calls), "--quiet", "--report-json", "r.json", "--max-time-s", str(int(limit))], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=limit + 30)
        try:
            uas.wait(timeout=15)
        except subprocess.TimeoutExpired:
            uas.send_signal(signal.SIGINT); uas.wait()
        r = json.load(open(f"{d}/r.json"))
        ok, failed = r["calls_succeeded"], r["calls_failed"]
        secs = (r["calls_attempted"] - 1) / r["offered_rate"] if r["offered_rate"] else r["duration_s"]
    return ok, failed, secs, cpu_children() - c0


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "loadgen", "--bin", "loadgen"], cwd=ROOT, check=True)
    kam = subprocess.Popen(["taskset", "-c", "0", "kamailio", "-f", KAM_CFG, "-P", f"{WORK}/k.pid", "-m", "256", "-M", "16", "-w", WORK, "-DD", "-E"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    res = {}
    try:
        for tool in ["sipp", "loadgen"]:
            run_pair(tool, 200, 400)  # warm-up
            ok, failed, secs, cpu = run_pair(tool, RATE, CALLS)
            per = cpu / max(ok, 1) * 1000
            print(f"{tool}: fixed {RATE} calls/s: {ok} ok, {failed} failed in {secs:.1f} s ({ok / max(secs, 1e-3):.0f}/s); tool CPU {cpu:.2f} s => {per:.4f} ms per call, {1000 / per:.0f} calls per CPU-second", flush=True)
            best = 0
            for r in LADDER:
                ok, failed, secs, cpu = run_pair(tool, r, r * STEP)
                achieved = ok / max(secs, 1e-3)
                passed = failed <= 0.001 * (ok + failed) and achieved >= 0.95 * r
                print(f"{tool}: ladder {r}/s: {ok} ok, {failed} failed, {achieved:.0f}/s achieved, tool CPU {cpu:.2f} s", flush=True)
                if not passed:
                    break
                best = r
            print(f"{tool}: highest rate through Kamailio with <= 0.1% failed: {best}/s", flush=True)
            res[tool] = (per, best)
    finally:
        kam.terminate(); kam.wait()
    print()
    print(f"calls per CPU-second, loadgen/sipp: {res['sipp'][0] / res['loadgen'][0]:.2f}  (goal >= 3)")
    print(f"highest rate through Kamailio, loadgen/sipp: {res['loadgen'][1] / max(res['sipp'][1], 1):.2f}  (Kamailio's one worker is the limit for both)")


if __name__ == "__main__":
    main()
