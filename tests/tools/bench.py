#!/usr/bin/env python3
"""make bench: what the exporters cost, side by side with the OpenTelemetry Python SDK.

For each exporter, and for an equivalent built on opentelemetry-sdk + the OTLP/HTTP exporter
(tests/tools/sdk_equivalent.py), in the same run: the same stand-in source at a fast pace, the
same loopback receiver, the same number of samples. Reported as medians over repeated runs:

  cpu_ms_per_sample   user + sys CPU of the exporter process alone (not its source child) from its
                      first accepted export to the last sample, / samples in between (steady state;
                      start-up is reported apart as first_export_s and startup_cpu_ms)
  peak_rss_mb         VmHWM of the exporter process
  bytes_per_sample    request bytes on the wire / samples
  first_export_s      process start -> first request the receiver accepted
  source_starts_after_first_sample   source processes started once data flowed (must be 0)

plus the average CPU of the macmon exporter at the default 5 s interval, in real time.
Results: a table on stdout and bench-results/bench.json.
"""
import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from otlp_receiver import Receiver  # noqa: E402

EXPORTERS = {
    "macmon": dict(script=os.path.join(ROOT, "exporters", "macmon-otel-exporter.py"),
                   fake=os.path.join(HERE, "fake-macmon"), flag="--macmon", series="mac.power.total",
                   log_var="FAKE_MACMON_LOG", env={"FAKE_MACMON_SPEED": "25", "FAKE_MACMON_VERSION": "0.8.2"},
                   samples=2000),  # 80 s a run at 25 samples a second
    "nvsmi": dict(script=os.path.join(ROOT, "exporters", "nvsmi-otel-exporter.py"),
                  fake=os.path.join(HERE, "fake-nvidia-smi"), flag="--nvidia-smi", series="gpu.power.board",
                  log_var="FAKE_NVSMI_LOG", env={"FAKE_NVSMI_SPEED": "25", "FAKE_NVSMI_PROFILE": "r535-v100x8",
                                                 "TPW_RAPL_ROOT": "/nonexistent"},
                  samples=6000),  # rows (one per GPU and round): 30 s a run at 25 rounds of 8 GPUs a second
}


def process_cpu_s(pid):
    """CPU time of the process itself, every thread, children excluded: the sum of each thread's
    /proc/PID/task/TID/schedstat run time (nanoseconds, unlike the 10 ms ticks of /proc/PID/stat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended between listdir and open
    return total / 1e9


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_once(kind, which, samples, tmp):
    spec = EXPORTERS[kind]
    receiver = Receiver(keep=False)
    log = os.path.join(tmp, f"{kind}-{which}-{time.monotonic_ns()}.calls")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    env.update(spec["env"])
    env[spec["log_var"]] = log
    if which == "exporter":
        argv = [sys.executable, spec["script"], spec["flag"], spec["fake"], "--interval", "1",
                "--endpoint", receiver.url, "--log-level", "warning"]
    else:
        argv = [sys.executable, os.path.join(HERE, "sdk_equivalent.py"), "--source", kind, "--binary", spec["fake"],
                "--endpoint", receiver.url, "--interval", "1"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_export = None
    calls_at_first = None
    cpu_at_first = None
    got_at_first = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = receiver.count(spec["series"])
        if got and first_export is None:
            first_export = receiver.arrivals[0] - started
            calls_at_first = count_lines(log)
            cpu_at_first = process_cpu_s(proc.pid)
            got_at_first = got
        if got >= samples:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    cpu = process_cpu_s(proc.pid)
    rss = peak_rss_mb(proc.pid)
    got = receiver.count(spec["series"])
    wire = receiver.wire_bytes
    requests = receiver.request_count
    calls_total = count_lines(log)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    receiver.stop()
    if not got:
        raise SystemExit(f"bench: {which} for {kind} delivered nothing")
    steady = max(1, got - got_at_first)
    return {"cpu_ms_per_sample": 1000 * (cpu - cpu_at_first) / steady, "startup_cpu_ms": 1000 * cpu_at_first,
            "peak_rss_mb": rss, "bytes_per_sample": wire / got,
            "first_export_s": first_export, "samples": got, "requests": requests,
            "source_starts_after_first_sample": calls_total - (calls_at_first or 0)}


def count_lines(path):
    try:
        with open(path) as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def idle_cpu_percent(seconds):
    """The macmon exporter at the default 5 s interval, in real time: CPU share of one core."""
    spec = EXPORTERS["macmon"]
    receiver = Receiver(keep=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    proc = subprocess.Popen([sys.executable, spec["script"], "--macmon", spec["fake"], "--endpoint", receiver.url,
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)  # start-up and the first sample are not steady state
    cpu0, t0 = process_cpu_s(proc.pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = process_cpu_s(proc.pid), time.monotonic()
    proc.terminate()
    proc.wait(20)
    receiver.stop()
    return 100 * (cpu1 - cpu0) / (t1 - t0), receiver.count("mac.power.total")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int,
                        help="samples per run (default: 2000 for macmon, 6000 nvidia rows; thousands, so that "
                             "rare peaks of memory show)")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration; medians are reported")
    parser.add_argument("--idle-seconds", type=int, default=40, help="real-time window for the 5 s interval check")
    parser.add_argument("--only", choices=sorted(EXPORTERS), action="append",
                        help="bench only this exporter (repeatable; default: all)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results", "bench.json"))
    args = parser.parse_args()
    results = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                          f"Python {platform.python_version()}", "runs": args.runs, "exporters": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.only or EXPORTERS:
            runs = {"exporter": [], "sdk": []}
            for _ in range(args.runs):
                for which in ("exporter", "sdk"):  # interleaved: both see the same machine noise
                    runs[which].append(run_once(kind, which, args.samples or EXPORTERS[kind]["samples"], tmp))
            medians = {which: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                       for which, rs in runs.items()}
            medians["ratio"] = {key: medians["exporter"][key] / medians["sdk"][key]
                                for key in ("cpu_ms_per_sample", "startup_cpu_ms", "peak_rss_mb", "bytes_per_sample",
                                            "first_export_s")
                                if medians["sdk"][key]}
            results["exporters"][kind] = medians
    idle, idle_samples = idle_cpu_percent(args.idle_seconds)
    results["macmon_cpu_percent_at_5s_interval"] = idle
    results["macmon_samples_in_idle_window"] = idle_samples
    print_table(results)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"\nwrote {os.path.relpath(args.out, ROOT)}")
    return check_targets(results)


def print_table(results):
    print(f"machine: {results['machine']}; {results['runs']} runs each, medians")
    print(f"{'':8} {'':9} {'samples':>8} {'CPU ms/sample':>14} {'peak RSS MB':>12} {'bytes/sample':>13} "
          f"{'first export s':>15} {'requests':>9} {'source starts':>14}")
    for kind, m in results["exporters"].items():
        for which in ("exporter", "sdk"):
            r = m[which]
            print(f"{kind:8} {which:9} {r['samples']:8.0f} {r['cpu_ms_per_sample']:14.3f} {r['peak_rss_mb']:12.1f} "
                  f"{r['bytes_per_sample']:13.0f} {r['first_export_s']:15.2f} {r['requests']:9.0f} "
                  f"{r['source_starts_after_first_sample']:14.0f}")
        ratio = m["ratio"]
        print(f"{kind:8} {'ratio':9} {'':8} {ratio['cpu_ms_per_sample']:14.2f} {ratio['peak_rss_mb']:12.2f} "
              f"{ratio['bytes_per_sample']:13.2f} {ratio['first_export_s']:15.2f}")
    print(f"macmon exporter at the default 5 s interval: {results['macmon_cpu_percent_at_5s_interval']:.4f} % "
          f"of one core")


def check_targets(results):
    misses = []
    for kind, m in results["exporters"].items():
        if m["ratio"]["cpu_ms_per_sample"] > 0.2:
            misses.append(f"{kind}: CPU per sample is {m['ratio']['cpu_ms_per_sample']:.2f} of the SDK's (target 0.2)")
        if m["ratio"]["peak_rss_mb"] > 2 / 3 or m["exporter"]["peak_rss_mb"] >= 25:
            misses.append(f"{kind}: peak RSS {m['exporter']['peak_rss_mb']:.1f} MB, "
                          f"{m['ratio']['peak_rss_mb']:.2f} of the SDK's (target < 25 MB and 0.67)")
        if m["exporter"]["source_starts_after_first_sample"]:
            misses.append(f"{kind}: source processes started after the first sample")
    if results["macmon_cpu_percent_at_5s_interval"] >= 0.05:
        misses.append(f"average CPU at 5 s is {results['macmon_cpu_percent_at_5s_interval']:.3f} % (target 0.05)")
    for miss in misses:
        print(f"TARGET MISSED: {miss}")
    if not misses:
        print("all targets met")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
