#!/usr/bin/env python3
"""make demo: the whole pipeline on any machine, no install, no network, under a minute.

For each macmon output format (v0.4.0 to today) it runs the real exporter against the stand-in
macmon, which replays that version's recorded lines at 20x speed, sending to a built-in OTLP/JSON
receiver on 127.0.0.1. It then prints what arrived, as a user would see it in their collector.
Last, the answer itself: tpw-ab runs the same prompts against two stand-in clusters (a Mac and an
NVIDIA node, OpenAI-compatible, each with energy counters rising at known watts) and prints
latency, tokens per joule and $ per 1M tokens side by side.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from energy_standin import EnergyStandin  # noqa: E402
from openai_upstream import Upstream  # noqa: E402
from otlp_receiver import Receiver  # noqa: E402

EXPORTER = os.path.join(ROOT, "exporters", "macmon-otel-exporter.py")
TPW_AB = os.path.join(ROOT, "tpw-ab", "tpw-ab.py")
FAKE = os.path.join(HERE, "fake-macmon")
VERSIONS = ["0.4.0", "0.4.2", "0.6.1", "0.7.0", "0.8.0", "0.8.2", "0.10.0"]
SAMPLES = 3


def run_version(version):
    receiver = Receiver()
    env = dict(os.environ, FAKE_MACMON_VERSION=version, FAKE_MACMON_SPEED="20")
    proc = subprocess.Popen([sys.executable, EXPORTER, "--macmon", FAKE, "--interval", "1",
                             "--endpoint", receiver.url, "--resource", "host.name=demo-mac"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ok = receiver.wait_for(lambda: len(receiver.series("mac.power.total")) >= SAMPLES, timeout=15)
    proc.send_signal(signal.SIGTERM)
    _out, log = proc.communicate(timeout=15)
    receiver.stop()
    return ok and proc.returncode == 0, receiver, log


def show(version, receiver):
    latest = {}
    for p in receiver.points:
        if p.metric.startswith("mac."):
            latest[p.metric] = p
    first = next(iter(latest.values()))
    print(f"\nmacmon {version}: {len(receiver.requests)} requests, "
          f"{len(receiver.series('mac.power.total'))} samples, resource host.name={first.resource['host.name']} "
          f"cluster={first.resource['cluster']}")
    print(f"  {'series':<24} {'host':<10} {'value':>16}  unit")
    for name, p in sorted(latest.items()):
        value = f"{p.value:,.3f}" if isinstance(p.value, float) else f"{p.value:,}"
        print(f"  {name:<24} {p.resource['host.name']:<10} {value:>16}  {p.unit}")
    missing = {"mac.temp.gpu", "mac.power.ram", "mac.power.system", "mac.power.gpu_ram"} - set(latest)
    for name in sorted(missing):
        print(f"  {name:<24} {'':<10} {'(omitted)':>16}  macmon {version} has no reading for it")


def main():
    started = time.monotonic()
    print("tokens-per-watt demo: macmon-otel-exporter -> OTLP/JSON -> receiver on 127.0.0.1")
    failed = []
    for version in VERSIONS:
        ok, receiver, log = run_version(version)
        if not ok or not receiver.points:
            failed.append(version)
            print(f"\nmacmon {version}: FAILED\n{log}")
            continue
        show(version, receiver)
    print(f"\n{len(VERSIONS) - len(failed)} of {len(VERSIONS)} macmon formats delivered "
          f"in {time.monotonic() - started:.1f}s")
    ab_ok = run_ab()
    print(f"\ndemo done in {time.monotonic() - started:.1f}s")
    return 1 if failed or not ab_ok else 0


def run_ab():
    """tpw-ab against two stand-in clusters: the Mac at 100 tokens/s per stream drawing 40 W (SoC)
    and 100 W (whole), the NVIDIA node at 200 tokens/s drawing 300 W (boards) and 400 W (node)."""
    print("\ntpw-ab: the same prompts against a stand-in Mac and a stand-in NVIDIA node")
    mac = Upstream(output_tokens=80, ttft_s=0.05, token_interval_s=0.01)
    nvidia = Upstream(output_tokens=160, ttft_s=0.03, token_interval_s=0.005)
    energy = EnergyStandin()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            done = subprocess.run([sys.executable, TPW_AB, "run", "--target", f"mac={mac.url},mlx-qwen3,mac-exo",
                                   "--target", f"nvidia={nvidia.url},qwen3,nvidia", "--energy-url", energy.url,
                                   "--concurrency", "1,2", "--requests", "2", "--idle-seconds", "1",
                                   "--energy-interval", "0.2", "--history", os.path.join(scratch, "history.sqlite")],
                                  capture_output=True, text=True, timeout=120,
                                  env={k: v for k, v in os.environ.items() if not k.startswith("TPW_AB_")})
    finally:
        for server in (mac, nvidia, energy):
            server.stop()
    print(done.stdout.replace(scratch, "(a scratch folder)") if done.returncode == 0 else done.stderr)
    return done.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
