#!/usr/bin/env python3
"""The NVIDIA exporter's two backends side by side on a real GPU machine, over the same minutes.

    python3 tests/tools/compare_backends.py OUT_DIR [--seconds 120] [--interval 1] [--load]

Runs the exporter twice at once against one loopback receiver: `--backend nvml` and
`--backend nvidia-smi`, each with its own `cluster` so their series stay apart. With --load (and
PyTorch installed) the GPUs run matrix multiplications for the middle of the window. Writes
OUT_DIR/backends.json:
  energy   per GPU: joules over the window from the GPU's counter (NVML, gpu.energy.source=counter)
           and from integrated power (nvidia-smi), and their difference in percent
  cost     per backend: CPU seconds of the exporter and its children over the window, % of one
           core, peak RSS of the exporter plus its children
and OUT_DIR/backends.log with both exporters' logs. Standard library only (PyTorch is optional).
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from bench import children_of, peak_rss_mb, process_cpu_s  # noqa: E402
from otlp_receiver import Receiver  # noqa: E402

EXPORTER = os.path.join(ROOT, "exporters", "nvsmi-otel-exporter.py")
LOAD = """
import sys, time, torch
end = time.time() + float(sys.argv[1])
gpus = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
mats = [torch.randn(8192, 8192, device=d) for d in gpus]
while time.time() < end:
    for m in mats:
        m @ m
    torch.cuda.synchronize()
"""


def start(backend, receiver, interval):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OTEL_") and k not in ("TPW_NVIDIA_BACKEND", "TPW_CLUSTER", "TPW_INTERVAL")}
    return subprocess.Popen([sys.executable, EXPORTER, "--backend", backend, "--cluster", backend,
                             "--interval", str(interval), "--endpoint", receiver.url], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def tree_cpu(proc):
    return sum(process_cpu_s(pid) for pid in [proc.pid] + children_of(proc.pid))


def window_joules(points, t0, t1):
    """Per GPU uuid: the energy series' rise between the last point at or before t0 and the last
    point at or before t1 (one series per GPU; a series restart inside the window is reported)."""
    out = {}
    for uuid in {p.attributes["gpu.uuid"] for p in points}:
        mine = sorted((p for p in points if p.attributes["gpu.uuid"] == uuid), key=lambda p: p.time_ns)
        before = [p for p in mine if p.time_ns <= t0]
        until = [p for p in mine if p.time_ns <= t1]
        if not before or not until:
            continue
        first, last = before[-1], until[-1]
        out[uuid] = {"joules": last.value - first.value if first.start_ns == last.start_ns else None,
                     "seconds": (last.time_ns - first.time_ns) / 1e9, "index": last.attributes["gpu.index"],
                     "source": last.attributes.get("gpu.energy.source")}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--load", action="store_true", help="run matrix multiplications (needs PyTorch)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    receiver = Receiver()
    procs = {backend: start(backend, receiver, args.interval) for backend in ("nvml", "nvidia-smi")}
    time.sleep(max(5.0, 3 * args.interval))  # both started and sending
    for backend, proc in procs.items():
        if proc.poll() is not None:
            raise SystemExit(f"the exporter with --backend {backend} ended (exit {proc.returncode}): "
                             f"{proc.stderr.read()[-2000:]}")
    load = None
    if args.load:
        load = subprocess.Popen([sys.executable, "-c", LOAD, str(args.seconds * 0.6)])
    t0 = time.time_ns()
    cpu0 = {b: tree_cpu(p) for b, p in procs.items()}
    time.sleep(args.seconds)
    t1 = time.time_ns()
    cpu1 = {b: tree_cpu(p) for b, p in procs.items()}
    rss = {b: sum(peak_rss_mb(pid) for pid in [p.pid] + children_of(p.pid)) for b, p in procs.items()}
    children = {b: len(children_of(p.pid)) for b, p in procs.items()}
    time.sleep(2 * args.interval)  # the last points of the window arrive
    logs = {}
    for backend, proc in procs.items():
        proc.terminate()
        logs[backend] = proc.communicate(timeout=30)[1]
    if load is not None:
        load.wait(timeout=args.seconds)
    receiver.stop()
    energy = {b: window_joules([p for p in receiver.series("gpu.energy") if p.resource.get("cluster") == b], t0, t1)
              for b in procs}
    per_gpu = {}
    for uuid, counter in energy["nvml"].items():
        integrated = energy["nvidia-smi"].get(uuid, {})
        a, b = counter.get("joules"), integrated.get("joules")
        per_gpu[counter["index"]] = {"counter_j": a, "integrated_j": b, "source_nvml": counter["source"],
                                     "difference_percent": 100 * (b - a) / a if a and b is not None else None}
    seconds = (t1 - t0) / 1e9
    results = {"seconds": seconds, "interval_s": args.interval, "load": args.load, "energy": per_gpu,
               "cost": {b: {"cpu_s": cpu1[b] - cpu0[b], "cpu_percent": 100 * (cpu1[b] - cpu0[b]) / seconds,
                            "peak_rss_mb": rss[b], "child_processes": children[b]} for b in procs}}
    with open(os.path.join(args.out, "backends.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    with open(os.path.join(args.out, "backends.log"), "w") as fh:
        for backend, text in logs.items():
            fh.write(f"# --backend {backend}\n{text}\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
