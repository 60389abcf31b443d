#!/usr/bin/env python3
"""The baseline for `make bench`: the same job done the way a user would reach for first, with the
OpenTelemetry Python SDK and its OTLP/HTTP exporter (dev-only packages).

Same source process (one long-lived macmon or nvidia-smi child), same series and attributes, same
resource, same receiver; every sample is exported as it arrives (force_flush), as the exporters do
when they keep up. Parsing reuses the exporters' own pure parsing functions, so the comparison is
about the metrics pipeline, not about JSON or CSV parsing.

    python3 tests/tools/sdk_equivalent.py --source macmon --endpoint http://127.0.0.1:4318 --interval 1
"""
import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def load(name):
    path = os.path.join(ROOT, "exporters", f"{name}-otel-exporter.py")
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Latest:
    """Observable instruments read the latest sample through callbacks."""

    def __init__(self):
        self.values = {}  # metric -> {attribute tuple: value}

    def set(self, metric, attributes, value):
        self.values.setdefault(metric, {})[attributes] = value

    def callback(self, metric):
        def observe(_options: CallbackOptions):
            return [Observation(v, dict(a)) for a, v in self.values.get(metric, {}).items()]
        return observe


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", choices=["macmon", "nvsmi"], required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--binary", required=True)
    args = parser.parse_args()
    mod = load(args.source)
    table = mod.SOURCE_METRICS + mod.Source.extra_metrics()
    resource = Resource.create({"service.name": mod.SERVICE_NAME + "-sdk", "host.name": "bench", "cluster": "bench"})
    exporter = OTLPMetricExporter(endpoint=args.endpoint.rstrip("/") + "/v1/metrics")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("tokens-per-watt-bench")
    latest = Latest()
    for name, unit, kind, text in table:
        if kind == mod.SUM:
            meter.create_observable_counter(name, [latest.callback(name)], unit=unit, description=text)
        else:
            meter.create_observable_gauge(name, [latest.callback(name)], unit=unit, description=text)

    if args.source == "macmon":
        argv = [args.binary, "-i", str(int(args.interval * 1000)), "pipe"]
    else:
        source = mod.Source(argparse.Namespace(interval=args.interval, nvidia_smi=args.binary,
                                               nvidia_smi_timeout="20",
        backend="nvidia-smi", nvml_library="", rapl_root="/nonexistent"))
        argv = source.command(args.interval)
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    running = True

    def stop(_signum, _frame):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    energy, previous = {}, {}
    for line in child.stdout:
        if not running:
            break
        now = time.time()
        if args.source == "macmon":
            readings = mod.readings_from(json.loads(line))
            for name, value in readings.items():
                latest.set(name, (), value)
            window = now - previous.get("t", now - args.interval)
            previous["t"] = now
            for gauge, counter in mod.ENERGY_OF.items():
                if gauge in readings:
                    energy[counter] = energy.get(counter, 0.0) + readings[gauge] * window
                    latest.set(counter, (), energy[counter])
        else:
            cells = [c.strip() for c in line.split(",")]
            row = dict(zip(source.keys, cells))
            if row.get("index") == "0" and previous:
                provider.force_flush()  # one export per round of GPUs, as the exporter sends them
            attrs = (("gpu.index", row["index"]), ("gpu.uuid", row["uuid"]), ("gpu.name", row["name"]),
                     ("gpu.pci.bus_id", row["pci.bus_id"]))
            for metric, key, factor in (("gpu.power.board", "power.draw", 1), ("gpu.power.average",
                                        "power.draw.average", 1), ("gpu.power.instant", "power.draw.instant", 1),
                                        ("gpu.power.limit", "enforced.power.limit", 1),
                                        ("gpu.temp.core", "temperature.gpu", 1),
                                        ("gpu.temp.memory", "temperature.memory", 1),
                                        ("gpu.utilization.gpu", "utilization.gpu", 0.01),
                                        ("gpu.utilization.memory", "utilization.memory", 0.01),
                                        ("gpu.memory.used", "memory.used", 1048576),
                                        ("gpu.memory.total", "memory.total", 1048576),
                                        ("gpu.clock.sm", "clocks.sm", 1e6), ("gpu.clock.memory", "clocks.mem", 1e6),
                                        ("gpu.fan.speed", "fan.speed", 0.01)):
                value = mod.cell_number(row.get(key, ""))
                if value is not None:
                    latest.set(metric, attrs, value * factor)
            watts = mod.cell_number(row.get("power.draw", ""))
            if watts is not None:
                t0 = previous.get(row["uuid"], now - args.interval)
                previous[row["uuid"]] = now
                energy[row["uuid"]] = energy.get(row["uuid"], 0.0) + watts * (now - t0)
                latest.set("gpu.energy", attrs, energy[row["uuid"]])
            continue
        provider.force_flush()
    child.terminate()
    child.wait()
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
