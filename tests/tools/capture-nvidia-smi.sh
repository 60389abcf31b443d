#!/usr/bin/env bash
# Capture what a real nvidia-smi does for the nvidia exporter, on a machine with an NVIDIA GPU.
#
#   bash tests/tools/capture-nvidia-smi.sh OUT_DIR [SECONDS_AT_5S]
#
# Writes into OUT_DIR:
#   capture.txt     sections in the layout of shared/captures (a `#` rule, `# <phase> :: <what>`,
#                   `# $ <command>`, a rule, the raw output), so tests/tools/fake-nvidia-smi can serve
#                   it (FAKE_NVSMI_CAPTURE): version, -L, --help-query-gpu, the exporter's own query
#                   with header and units, an invalid field, an invalid GPU id;
#   loop.json       the exporter's -lms loop read through a pipe: when each line arrived, and how the
#                   child ends on SIGTERM (exit status, seconds to exit);
#   argv.log        every command line the exporter ran (through a logging shim);
#   check.txt, once.json, run.log, receiver.txt   the exporter's --check, --once --console output,
#                   a short run at 1 s against the loopback receiver, and what the receiver decoded;
#   cost.json       exporter and nvidia-smi child CPU at the default 5 s interval, in real time;
#   signals.json    how an -lms loop ends on SIGTERM / SIGINT sent at a random point of its sleep:
#                   exit status, seconds to exit, rows printed after the signal; and how long the
#                   exporter itself takes to stop on SIGTERM at the default interval;
#   load :: ...     (in capture.txt, only where PyTorch is installed) the exporter's query while the
#                   GPU runs matrix multiplications.
# Environment: STEPS picks steps (tool exporter query loop signals load; default all), RUN_SECONDS
# is the length of the exporter's run at 1 s (default 20).
# Every step records its exit status and goes on: a failing step is a finding, not a reason to stop.
set -euo pipefail

say() { printf 'capture: %s\n' "$*" >&2; }
err() { say "error: $*"; exit 1; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || err "need '$1' (on PATH)"; }

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EXPORTER="$ROOT/exporters/nvsmi-otel-exporter.py"

# One section of capture.txt: title, then the command, its output and its exit status.
section() {
    local title=$1; shift
    local rc=0 output
    output=$("$@" 2>&1) || rc=$?
    {
        printf '%s\n# %s\n# $ %s\n%s\n' "$RULE" "$title" "$*" "$RULE"
        printf '%s\n' "$output"
        printf '# exit status: %s\n\n' "$rc"
    } >>"$OUT/capture.txt"
}

write_shim() {
    # The exporter runs nvidia-smi through this, so argv.log shows exactly what it asks for.
    cat >"$OUT/shim/nvidia-smi" <<EOF
#!/usr/bin/env bash
printf '%s\n' "\$*" >>"$OUT/argv.log"
exec "$REAL" "\$@"
EOF
    chmod +x "$OUT/shim/nvidia-smi"
}

capture_tool() {
    section "capabilities :: version" "$REAL" --version
    section "capabilities :: list (-L)" "$REAL" -L
    section "capabilities :: help-query-gpu" "$REAL" --help-query-gpu
    section "errors :: invalid field" "$REAL" --query-gpu=index,device_minor --format=csv
    section "errors :: invalid GPU id" "$REAL" -i 99 --query-gpu=index --format=csv
}

capture_exporter_query() {
    # The field list the exporter chose on this driver, asked for once with header and units.
    local fields
    fields=$(sed -n 's/.*--query-gpu=\([^ ]*\) --format=csv,noheader,nounits -lms.*/\1/p' "$OUT/argv.log" | head -n 1)
    [ -n "$fields" ] || { say "no -lms query in argv.log"; return 0; }
    printf '%s\n' "$fields" >"$OUT/fields.txt"
    section "idle :: query-gpu (csv, what the exporter parses)" "$REAL" "--query-gpu=$fields" --format=csv
    section "idle :: query-gpu (csv, noheader, nounits)" "$REAL" "--query-gpu=$fields" --format=csv,noheader,nounits
}

run_exporter() {
    local rc=0
    python3 "$EXPORTER" --nvidia-smi "$OUT/shim/nvidia-smi" --check >"$OUT/check.txt" 2>&1 || rc=$?
    echo "exit status: $rc" >>"$OUT/check.txt"
    rc=0
    python3 "$EXPORTER" --nvidia-smi "$OUT/shim/nvidia-smi" --once --console >"$OUT/once.json" 2>"$OUT/once.log" || rc=$?
    echo "exit status: $rc" >>"$OUT/once.log"

    python3 "$HERE/otlp_receiver.py" --port 43180 >"$OUT/receiver.txt" 2>&1 &
    local receiver=$!
    sleep 1
    python3 "$EXPORTER" --nvidia-smi "$OUT/shim/nvidia-smi" --interval 1 --endpoint http://127.0.0.1:43180 \
        --log-level debug >"$OUT/run.log" 2>&1 &
    local exporter=$!
    sleep "$RUN_SECONDS"
    kill -TERM "$exporter"
    rc=0
    wait "$exporter" || rc=$?
    echo "exit status after SIGTERM: $rc" >>"$OUT/run.log"
    kill "$receiver" 2>/dev/null || true
    wait "$receiver" 2>/dev/null || true
}

measure_signals() {
    python3 - "$OUT" "$REAL" "$EXPORTER" "$HERE" <<'PY'
import json, os, random, select, signal, subprocess, sys, time
out, real, exporter, here = sys.argv[1:5]
fields = "index,power.draw,temperature.gpu"
results = []

def read_until_eof(proc, deadline):
    rows = 0
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return rows, True
            rows += chunk.count(b"\n")
    return rows, False

for sig, loop_ms, group in ((signal.SIGTERM, 5000, True), (signal.SIGTERM, 5000, False), (signal.SIGTERM, 1000, True),
                            (signal.SIGINT, 5000, True), (signal.SIGTERM, 200, True)):
    proc = subprocess.Popen([real, "--query-gpu=" + fields, "--format=csv,noheader,nounits", "-lms", str(loop_ms)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    first = b""
    while b"\n" not in first and select.select([proc.stdout], [], [], 30)[0]:
        first += os.read(proc.stdout.fileno(), 65536)
    delay = random.uniform(0.3, loop_ms / 1000.0 - 0.1)
    time.sleep(delay)
    while select.select([proc.stdout], [], [], 0)[0] and os.read(proc.stdout.fileno(), 65536):
        pass  # rows printed before the signal do not count as after it
    sent = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, sig)
    rows_after, eof = read_until_eof(proc, sent + 12)
    try:
        code = proc.wait(max(0.1, sent + 12 - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill(); code = "still running 12 s after the signal; killed"
    results.append({"signal": signal.Signals(sig).name, "to": "group" if group else "pid", "loop_ms": loop_ms,
                    "sent_after_first_row_s": round(delay, 3), "exit": code,
                    "seconds_to_exit": round(time.monotonic() - sent, 3), "rows_after_signal": rows_after,
                    "first_row": first.decode(errors="replace").splitlines()[0] if first else ""})

# the exporter at the default 5 s interval: how long a SIGTERM takes to end it (and its child)
receiver = subprocess.Popen([sys.executable, os.path.join(here, "otlp_receiver.py"), "--port", "43182"],
                            stdout=subprocess.DEVNULL)
time.sleep(1)
proc = subprocess.Popen([sys.executable, exporter, "--nvidia-smi", real, "--endpoint", "http://127.0.0.1:43182",
                         "--log-level", "debug"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
time.sleep(8 + random.uniform(0, 5))
sent = time.monotonic()
proc.terminate()
log, _ = proc.communicate(timeout=30)
exporter_stop = {"exit": proc.returncode, "seconds_to_exit": round(time.monotonic() - sent, 3),
                 "log_tail": log.decode(errors="replace").splitlines()[-15:]}
receiver.terminate(); receiver.wait(10)
json.dump({"loops": results, "exporter_stop": exporter_stop}, open(os.path.join(out, "signals.json"), "w"), indent=1)
PY
}

capture_load() {
    # Only where PyTorch is installed: matrix multiplications for ~15 s while the query runs.
    python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || { say "no PyTorch with CUDA: no load phase"; return 0; }
    local fields
    fields=$(cat "$OUT/fields.txt" 2>/dev/null) || { say "no fields.txt (run the exporter and query steps): no load phase"; return 0; }
    python3 -c "
import time, torch
a = torch.randn(8192, 8192, device='cuda', dtype=torch.float16)
end = time.time() + 18
while time.time() < end:
    b = a @ a
torch.cuda.synchronize()
" &
    local load=$!
    sleep 10
    section "load :: query-gpu (csv, what the exporter parses)" "$REAL" "--query-gpu=$fields" --format=csv
    section "load :: query-gpu (csv, noheader, nounits)" "$REAL" "--query-gpu=$fields" --format=csv,noheader,nounits
    wait "$load" || say "load ended with $?"
}

measure_loop_and_cost() {
    python3 - "$OUT" "$REAL" "$EXPORTER" "$IDLE_SECONDS" "$HERE" <<'PY'
import json, os, select, signal, subprocess, sys, time
out, real, exporter, idle_seconds, here = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
fields = open(os.path.join(out, "fields.txt")).read().strip()

# 1. The -lms loop through a pipe: does each round arrive as it is made (flushed), at what pace?
child = subprocess.Popen([real, "--query-gpu=" + fields, "--format=csv,noheader,nounits", "-lms", "500"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
started, arrivals, buf = time.monotonic(), [], b""
while time.monotonic() - started < 6:
    ready, _, _ = select.select([child.stdout], [], [], 0.2)
    if ready:
        chunk = os.read(child.stdout.fileno(), 65536)
        if not chunk:
            break
        arrivals.append([round(time.monotonic() - started, 4), chunk.count(b"\n"), len(chunk)])
        buf += chunk
term_at = time.monotonic()
child.send_signal(signal.SIGTERM)
try:
    code = child.wait(10)
except subprocess.TimeoutExpired:
    child.kill()
    code = "did not exit within 10 s of SIGTERM; killed"
loop = {"argv": child.args, "reads": arrivals, "exit_after_sigterm": code,
        "seconds_to_exit": round(time.monotonic() - term_at, 3),
        "stderr": child.stderr.read().decode(errors="replace"), "first_lines": buf.decode(errors="replace").splitlines()[:8]}
json.dump(loop, open(os.path.join(out, "loop.json"), "w"), indent=1)

# 2. Cost at the default 5 s interval, in real time: the exporter and its nvidia-smi child apart.
def cpu_s(pid):
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9

def children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            found += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
    return found

receiver = subprocess.Popen([sys.executable, os.path.join(here, "otlp_receiver.py"), "--port", "43181"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1)
proc = subprocess.Popen([sys.executable, exporter, "--nvidia-smi", real, "--endpoint", "http://127.0.0.1:43181",
                         "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(12)
kids = children(proc.pid)
e0, k0, t0 = cpu_s(proc.pid), sum(cpu_s(k) for k in kids), time.monotonic()
time.sleep(idle_seconds)
e1, k1, t1 = cpu_s(proc.pid), sum(cpu_s(k) for k in kids), time.monotonic()
hwm = [line.split()[1] for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmHWM")][0]
proc.terminate(); proc.wait(20); receiver.terminate(); receiver.wait(10)
cost = {"window_s": round(t1 - t0, 1), "exporter_cpu_percent": round(100 * (e1 - e0) / (t1 - t0), 4),
        "nvidia_smi_child_cpu_percent": round(100 * (k1 - k0) / (t1 - t0), 4), "children": kids,
        "exporter_peak_rss_kb": int(hwm), "python": sys.version.split()[0]}
json.dump(cost, open(os.path.join(out, "cost.json"), "w"), indent=1)
PY
}

step() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

main() {
    OUT=${1:?usage: capture-nvidia-smi.sh OUT_DIR [SECONDS_AT_5S]}
    IDLE_SECONDS=${2:-60}
    RUN_SECONDS=${RUN_SECONDS:-20}
    STEPS=${STEPS:-tool exporter query loop signals load}
    RULE=$(printf '#%.0s' $(seq 80))
    need_cmd nvidia-smi
    need_cmd python3
    REAL=$(command -v nvidia-smi)
    mkdir -p "$OUT/shim"
    : >"$OUT/capture.txt"
    : >"$OUT/argv.log"
    { uname -srm; python3 --version; date -u +%Y-%m-%dT%H:%M:%SZ; } >"$OUT/host.txt" 2>&1
    write_shim
    step tool && { say "nvidia-smi itself"; capture_tool; }
    step exporter && { say "the exporter (check, once, ${RUN_SECONDS}s at 1 s)"; run_exporter; }
    step query && { say "the exporter's query"; capture_exporter_query; }
    step loop && { say "the loop through a pipe, and ${IDLE_SECONDS}s at the default interval"; measure_loop_and_cost || say "measure failed: $?"; }
    step signals && { say "how the loop and the exporter end on a signal"; measure_signals || say "signals failed: $?"; }
    step load && { say "the query under load"; capture_load; }
    say "done: $OUT"
}

main "$@"
