#!/usr/bin/env python3
"""make demo: the whole pipeline on any machine, no install, no network, under a minute.

For each macmon output format (v0.4.0 to today) it runs the real exporter against the stand-in
macmon, which replays that version's recorded lines at 20x speed, sending to a built-in OTLP/JSON
receiver on 127.0.0.1. It then prints what arrived, as a user would see it in their collector.
"""
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from otlp_receiver import Receiver  # noqa: E402

EXPORTER = os.path.join(ROOT, "exporters", "macmon-otel-exporter.py")
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
