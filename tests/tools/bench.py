#!/usr/bin/env python3
"""make bench: what the exporters cost, side by side with the OpenTelemetry Python SDK.

For each exporter, and for an equivalent built on opentelemetry-sdk + the OTLP/HTTP exporter
(tests/tools/sdk_equivalent.py), in the same run: the same stand-in source at a fast pace, the
same loopback receiver, the same number of samples. Each exporter runs in two forms: as a script
(`python3 nvsmi-otel-exporter.py`, how a copied file runs) and as deployed (`python3 -m
nvsmi_otel_exporter` from the bytecode `make deploy` compiles: CPython keeps a script's parse tree
in memory while it runs, a module's it drops). Reported as medians over repeated runs:

  cpu_ms_per_sample   user + sys CPU of the exporter process alone (not its source child) from its
                      first accepted export to the last sample, / samples in between (steady state;
                      start-up is reported apart as first_export_s and startup_cpu_ms)
  peak_rss_mb         VmHWM of the exporter process
  bytes_per_sample    request bytes on the wire / samples
  first_export_s      process start -> first request the receiver accepted
  source_starts_after_first_sample   source processes started once data flowed (must be 0)

plus, in real time at the default 5 s interval, the CPU of each exporter beside its source child's;
the memory of a buffered row (tracemalloc, in this process); and an outage: the NVIDIA exporter on
8 GPUs at 5 s (the stand-in run 100 times faster) with --spool-dir, the collector gone until the
default hour of rows (5,760) is buffered: resident memory above steady state, bytes written to
disk against the spool's size; and the peak RSS of both forms under every Python 3.9-3.13 found
on PATH or under pyenv (each in a fresh venv). Results: a table on stdout and bench-results/bench.json.
"""
import argparse
import glob
import json
import os
import platform
import shutil
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
                                                 "TPW_RAPL_ROOT": "/nonexistent", "TPW_NVIDIA_BACKEND": "nvidia-smi"},
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


def deployed_copy(kind, tmp, python):
    """The exporter as `make deploy` installs it (deploy/remote-install.sh, install_bytecode): the
    file, its importable link and the checked-hash bytecode `python` compiled. (folder, module)"""
    script = EXPORTERS[kind]["script"]
    folder = os.path.join(tmp, f"deployed-{kind}")
    name = os.path.basename(script)
    module = name[:-len(".py")].replace("-", "_")
    if not os.path.exists(os.path.join(folder, name)):
        os.makedirs(folder, exist_ok=True)
        shutil.copy(script, os.path.join(folder, name))
        os.symlink(name, os.path.join(folder, module + ".py"))
    subprocess.run([python, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash",
                    os.path.join(folder, module + ".py")], check=True)
    return folder, module


def run_once(kind, which, samples, tmp, python=sys.executable):
    """One run of `which`: exporter (as a script), deployed (python -m, from bytecode) or sdk."""
    spec = EXPORTERS[kind]
    receiver = Receiver(keep=False)
    log = os.path.join(tmp, f"{kind}-{which}-{time.monotonic_ns()}.calls")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    env.update(spec["env"])
    env[spec["log_var"]] = log
    flags = [spec["flag"], spec["fake"], "--interval", "1", "--endpoint", receiver.url, "--log-level", "warning"]
    cwd = None
    if which == "exporter":
        argv = [python, spec["script"], *flags]
    elif which == "deployed":
        cwd, module = deployed_copy(kind, tmp, python)
        argv = [python, "-m", module, *flags]
    else:
        argv = [python, os.path.join(HERE, "sdk_equivalent.py"), "--source", kind, "--binary", spec["fake"],
                "--endpoint", receiver.url, "--interval", "1"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
    if proc.poll() is not None:
        raise SystemExit(f"bench: the {which} for {kind} ended early (exit {proc.returncode}): "
                         f"{proc.stderr.read()[-1500:]}")
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


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def idle_cpu_percent(kind, seconds):
    """An exporter at the default 5 s interval, in real time: its CPU share of one core, and its
    source child's (the stand-in's, a Python script: real macmon and nvidia-smi differ)."""
    spec = EXPORTERS[kind]
    receiver = Receiver(keep=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    env.update({k: v for k, v in spec["env"].items() if not k.endswith("_SPEED")})
    proc = subprocess.Popen([sys.executable, spec["script"], spec["flag"], spec["fake"], "--endpoint", receiver.url,
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)  # start-up and the first sample are not steady state
    child = (children_of(proc.pid) or [None])[0]
    cpu0, child0, t0 = process_cpu_s(proc.pid), process_cpu_s(child) if child else 0.0, time.monotonic()
    time.sleep(seconds)
    cpu1, child1, t1 = process_cpu_s(proc.pid), process_cpu_s(child) if child else 0.0, time.monotonic()
    proc.terminate()
    proc.wait(20)
    receiver.stop()
    return {"exporter_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
            "source_cpu_percent": 100 * (child1 - child0) / (t1 - t0),
            "real_source_cpu_percent": real_source_cpu_percent(kind),
            "samples": receiver.count(spec["series"])}


def buffered_row_bytes(kind, rows=5760):
    """Memory a buffered row costs: `rows` samples parsed from the stand-in's own output, built
    the way the exporter builds them, measured with tracemalloc (the layouts they share included)."""
    import argparse
    import importlib.util
    import tracemalloc
    spec = EXPORTERS[kind]
    loader = importlib.util.spec_from_file_location(f"bench_{kind}", spec["script"])
    mod = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mod)
    env = dict(os.environ, **{k: v for k, v in spec["env"].items() if not k.endswith("_SPEED")})
    if kind == "macmon":
        source = mod.Source(argparse.Namespace(interval=5.0, macmon=spec["fake"]))
        lines = open(os.path.join(ROOT, "tests", "fixtures", "macmon", "v0.8.2.jsonl")).read().splitlines()
    else:
        os.environ.update({k: v for k, v in env.items() if k.startswith("FAKE_")})
        source = mod.Source(argparse.Namespace(interval=5.0, nvidia_smi=spec["fake"], nvidia_smi_timeout="20",
                                               backend="nvidia-smi", nvml_library="", rapl_root="/nonexistent"))
        argv = source.command(5.0)
        lines = subprocess.run(argv[:3], env=env, capture_output=True, text=True, timeout=30).stdout.splitlines()
    table = mod.MetricTable(mod.SOURCE_METRICS + source.extra_metrics() + mod.SELF_METRICS)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = []
    for i in range(rows):
        time_ns, readings = source.parse_line(lines[i % len(lines)], 1_700_000_000_000_000_000 + i * 5 * 10 ** 9)
        kept.append(mod.make_sample(time_ns, readings, table)[0])
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"rows": rows, "bytes_per_row": used / rows, "readings_per_row": len(kept[-1].values)}


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def written_bytes(pid):
    with open(f"/proc/{pid}/io") as fh:
        return int(next(line for line in fh if line.startswith("wchar:")).split()[1])


def outage(seconds, tmp):
    """The NVIDIA exporter on 8 GPUs at 5 s (stand-in 100x faster: an hour of rows in 36 s), spool
    on, collector gone: memory above steady state and what the spool wrote."""
    spec = EXPORTERS["nvsmi"]
    receiver = Receiver(keep=False)
    spool = os.path.join(tmp, "outage-spool")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    env.update(spec["env"])
    env["FAKE_NVSMI_SPEED"] = "100"
    proc = subprocess.Popen([sys.executable, spec["script"], spec["flag"], spec["fake"], "--interval", "5",
                             "--endpoint", receiver.url, "--spool-dir", spool, "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and receiver.count(spec["series"]) < 8 * 20:
        time.sleep(0.05)
    time.sleep(2)
    steady_kb = status_kb(proc.pid, "VmRSS")
    written0 = written_bytes(proc.pid)
    receiver.stop()
    time.sleep(seconds)
    rss_kb = status_kb(proc.pid, "VmRSS")
    written = written_bytes(proc.pid) - written0
    spool_file = os.path.join(spool, "nvsmi-otel-exporter.spool")
    spool_bytes = os.path.getsize(spool_file) if os.path.exists(spool_file) else 0
    proc.terminate()
    proc.wait(30)
    return {"seconds": seconds, "steady_rss_mb": steady_kb / 1024, "outage_rss_mb": rss_kb / 1024,
            "growth_mb": (rss_kb - steady_kb) / 1024, "spool_mb": spool_bytes / 2 ** 20,
            "written_mb": written / 2 ** 20}


def backend_cost(backend, interval, seconds, tmp, library):
    """The NVIDIA exporter on 8 GPUs in real time with one backend: CPU per round of the exporter
    and its source child together, and their peak RSS added up."""
    spec = EXPORTERS["nvsmi"]
    receiver = Receiver(keep=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    env.update({"FAKE_NVSMI_PROFILE": "r535-v100x8", "FAKE_NVML_PROFILE": library[1],
                "TPW_RAPL_ROOT": "/nonexistent"})
    proc = subprocess.Popen([sys.executable, spec["script"], "--backend", backend, "--nvml-library", library[0],
                             "--nvidia-smi", spec["fake"], "--interval", str(interval), "--endpoint", receiver.url,
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and receiver.count(spec["series"]) < 8 * 10:
        time.sleep(0.05)
    time.sleep(2)

    def totals():
        pids = [proc.pid] + children_of(proc.pid)
        return sum(process_cpu_s(pid) for pid in pids), receiver.count(spec["series"]) / 8

    cpu0, rounds0 = totals()
    time.sleep(seconds)
    cpu1, rounds1 = totals()
    rss = sum(peak_rss_mb(pid) for pid in [proc.pid] + children_of(proc.pid))
    children = len(children_of(proc.pid))
    proc.terminate()
    proc.wait(30)
    receiver.stop()
    rounds = max(1.0, rounds1 - rounds0)
    return {"backend": backend, "interval_s": interval, "rounds": rounds,
            "cpu_ms_per_round": 1000 * (cpu1 - cpu0) / rounds, "cpu_percent": 100 * (cpu1 - cpu0) / seconds,
            "peak_rss_mb": rss, "child_processes": children}


def clean_python(minor, tmp):
    """python3.N from PATH or pyenv, as a fresh venv of it: what a clean install of that version
    loads at start-up, not whatever .pth hooks this machine's copy has. None when not found."""
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = [shutil.which(f"python{minor}")] + sorted(glob.glob(f"{pyenv}/versions/{minor}.*/bin/python{minor}"))
    for python in filter(None, candidates):
        venv = os.path.join(tmp, f"venv-{minor}")
        # a pyenv shim for a version not selected here fails, as does a python without venv
        made = subprocess.run([python, "-m", "venv", "--without-pip", venv], capture_output=True, text=True)
        if made.returncode == 0:
            return os.path.join(venv, "bin", "python")
    return None


def peak_rss_by_python(minors, tmp, samples=None):
    """Peak RSS of both forms of each exporter under every python3.N found: the interpreter's own
    size and its parser's differ from version to version. {version: {kind: {form: MB}}}"""
    out = {}
    for minor in minors:
        python = clean_python(minor, tmp)
        if python is None:
            out[minor] = "not found"
            continue
        folder = os.path.join(tmp, f"by-python-{minor}")
        os.makedirs(folder, exist_ok=True)
        version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        out[version] = {kind: {which: run_once(kind, which, samples or EXPORTERS[kind]["samples"] // 8, folder,
                                               python)["peak_rss_mb"]
                               for which in ("exporter", "deployed")} for kind in EXPORTERS}
    return out


def backends(seconds, idle_seconds, runs, tmp):
    """NVML (the C stand-in library) against the nvidia-smi child (the Python stand-in), 8 GPUs."""
    import nvml_standin
    if nvml_standin.compiler() is None:
        return {"skipped": "no C compiler for the stand-in NVML library"}
    library = (nvml_standin.build(os.path.join(tmp, "nvml")), os.path.join(tmp, "nvml", "v100x8.profile"))
    nvml_standin.write_profile(library[1], "r535-v100x8")
    out = {}
    for backend, interval in (("nvidia-smi", 0.1), ("nvml", 0.1), ("nvml", 0.05), ("nvidia-smi", 5.0), ("nvml", 5.0)):
        window = seconds if interval < 1 else idle_seconds
        measured = [backend_cost(backend, interval, window, tmp, library) for _ in range(runs if interval < 1 else 1)]
        out[f"{backend}@{interval:g}s"] = {key: statistics.median(m[key] for m in measured)
                                          for key in measured[0] if key != "backend"}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int,
                        help="samples per run (default: 2000 for macmon, 6000 nvidia rows; thousands, so that "
                             "rare peaks of memory show)")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration; medians are reported")
    parser.add_argument("--idle-seconds", type=int, default=40, help="real-time window for the 5 s interval check")
    parser.add_argument("--outage-seconds", type=int, default=40,
                        help="how long the collector is gone in the outage run (40: the default hour of rows)")
    parser.add_argument("--backend-seconds", type=int, default=15,
                        help="real-time window of each NVML / nvidia-smi run (--idle-seconds at the 5 s interval)")
    parser.add_argument("--only", choices=sorted(EXPORTERS), action="append",
                        help="bench only this exporter (repeatable; default: all)")
    parser.add_argument("--pythons", default="3.9 3.10 3.11 3.12 3.13",
                        help="the python3.N to measure peak RSS under, those found on PATH or under pyenv "
                             "(default: %(default)s; empty: none)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results", "bench.json"))
    args = parser.parse_args()
    results = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                          f"Python {platform.python_version()}", "runs": args.runs, "exporters": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.only or EXPORTERS:
            runs = {"exporter": [], "deployed": [], "sdk": []}
            for _ in range(args.runs):
                for which in runs:  # interleaved: all see the same machine noise
                    runs[which].append(run_once(kind, which, args.samples or EXPORTERS[kind]["samples"], tmp))
            medians = {which: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                       for which, rs in runs.items()}
            medians["ratio"] = {key: medians["exporter"][key] / medians["sdk"][key]
                                for key in ("cpu_ms_per_sample", "startup_cpu_ms", "peak_rss_mb", "bytes_per_sample",
                                            "first_export_s")
                                if medians["sdk"][key]}
            results["exporters"][kind] = medians
        results["at_5s_interval"] = {kind: idle_cpu_percent(kind, args.idle_seconds) for kind in args.only or EXPORTERS}
        results["buffered_row"] = {kind: buffered_row_bytes(kind) for kind in args.only or EXPORTERS}
        results["outage"] = outage(args.outage_seconds, tmp)
        if "nvsmi" in (args.only or EXPORTERS):
            results["nvidia_backends"] = backends(args.backend_seconds, args.idle_seconds, args.runs, tmp)
        results["peak_rss_by_python"] = peak_rss_by_python(args.pythons.split(), tmp, args.samples)
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
        for which, label in (("exporter", "script"), ("deployed", "deployed"), ("sdk", "sdk")):
            r = m[which]
            print(f"{kind:8} {label:9} {r['samples']:8.0f} {r['cpu_ms_per_sample']:14.3f} {r['peak_rss_mb']:12.1f} "
                  f"{r['bytes_per_sample']:13.0f} {r['first_export_s']:15.2f} {r['requests']:9.0f} "
                  f"{r['source_starts_after_first_sample']:14.0f}")
        ratio = m["ratio"]
        print(f"{kind:8} {'ratio':9} {'':8} {ratio['cpu_ms_per_sample']:14.2f} {ratio['peak_rss_mb']:12.2f} "
              f"{ratio['bytes_per_sample']:13.2f} {ratio['first_export_s']:15.2f}")
    for kind, idle in results["at_5s_interval"].items():
        print(f"{kind} at the default 5 s interval: exporter {idle['exporter_cpu_percent']:.4f} % of one core, "
              f"its stand-in source {idle['source_cpu_percent']:.4f} %, the real source "
              f"{idle['real_source_cpu_percent']:.4f} %")
    for kind, row in results["buffered_row"].items():
        print(f"{kind}: a buffered row costs {row['bytes_per_row']:.0f} bytes ({row['readings_per_row']} readings)")
    for name, b in results.get("nvidia_backends", {}).items():
        if isinstance(b, dict):
            print(f"8 GPUs, {name:16}: {b['cpu_ms_per_round']:7.3f} ms CPU per round "
                  f"({b['cpu_percent']:.3f} % of a core), peak RSS {b['peak_rss_mb']:.1f} MB, "
                  f"{b['child_processes']:.0f} child process(es)")
    for version, kinds in results["peak_rss_by_python"].items():
        if isinstance(kinds, dict):
            print(f"Python {version:7}: peak RSS " + ", ".join(
                f"{kind} {forms['exporter']:.1f} MB as a script, {forms['deployed']:.1f} MB deployed"
                for kind, forms in kinds.items()))
    o = results["outage"]
    print(f"outage ({o['seconds']} s, 8 GPUs at 5 s, spool on): RSS {o['steady_rss_mb']:.1f} -> "
          f"{o['outage_rss_mb']:.1f} MB (+{o['growth_mb']:.1f}); spool {o['spool_mb']:.1f} MB, "
          f"{o['written_mb']:.1f} MB written")


# What the real sources cost at the default 5 s interval, % of one core. The stand-ins are Python
# scripts that sleep between lines and cost far less than the tools they imitate, so the target
# "the exporter below its source" is judged against the real tools:
#   macmon: its maintainer gives 1-1.5 % of a core at its 1 s interval, for the work of one sample
#     (https://github.com/vladkens/macmon/issues/3); at 5 s that is 0.2 % (the lower figure, / 5).
#   nvidia-smi: measured on a real H200 at 5 s, one GPU (the lower of the two runs kept in
#     tests/fixtures/nvidia-smi/captures/linux-x86_64__nvidia-h200__580.159.04/cost.json); with 8
#     GPUs it only costs more, so the target is stricter than the machine the bench models.
H200_COST = os.path.join(ROOT, "tests", "fixtures", "nvidia-smi", "captures",
                         "linux-x86_64__nvidia-h200__580.159.04", "cost.json")


def real_source_cpu_percent(kind):
    if kind == "macmon":
        return 1.0 / 5
    with open(H200_COST) as fh:
        runs = [run for run in json.load(fh).values() if isinstance(run, dict)]
    return min(run["nvidia_smi_child_cpu_percent"] for run in runs)


def check_targets(results):
    """The targets of docs/cost.md: CPU per sample at most 1/4 of the SDK's at 25 samples a second,
    below the source's own CPU at the default interval, peak RSS at most 20 MB as deployed, an hour of outage
    at most 10 MB above steady state, and the spool writing at most twice what it holds."""
    misses = []
    for kind, m in results["exporters"].items():
        if m["ratio"]["cpu_ms_per_sample"] > 0.25:
            misses.append(f"{kind}: CPU per sample is {m['ratio']['cpu_ms_per_sample']:.2f} of the SDK's (target 0.25)")
        # Memory is judged as the exporter runs for good, deployed; the copied-file form is reported
        # beside it (docs/cost.md: the script's parse tree stays resident, 6-8 MB of the difference).
        if m["deployed"]["peak_rss_mb"] > 20:
            misses.append(f"{kind}: peak RSS as deployed {m['deployed']['peak_rss_mb']:.1f} MB (target 20 MB)")
        if m["exporter"]["peak_rss_mb"] > 20:
            print(f"note: {kind} run as a script peaks at {m['exporter']['peak_rss_mb']:.1f} MB (not judged: "
                  f"the script's parse tree stays in memory; deployed, it does not)")
        if m["exporter"]["source_starts_after_first_sample"]:
            misses.append(f"{kind}: source processes started after the first sample")
    for kind, idle in results["at_5s_interval"].items():
        if idle["exporter_cpu_percent"] >= idle["real_source_cpu_percent"]:
            misses.append(f"{kind} at 5 s: the exporter used {idle['exporter_cpu_percent']:.4f} % of a core, the "
                          f"real source {idle['real_source_cpu_percent']:.4f} % (target: less than the source)")
    o = results["outage"]
    if o["growth_mb"] > 10:
        misses.append(f"outage: {o['growth_mb']:.1f} MB above steady state (target 10 MB)")
    if o["spool_mb"] and o["written_mb"] > 2 * o["spool_mb"]:
        misses.append(f"outage: the spool wrote {o['written_mb']:.1f} MB to hold {o['spool_mb']:.1f} MB (target 2x)")
    for miss in misses:
        print(f"TARGET MISSED: {miss}")
    if not misses:
        print("all targets met")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
