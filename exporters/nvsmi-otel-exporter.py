#!/usr/bin/env python3
"""nvsmi-otel-exporter: NVIDIA GPU power, temperature and load as OTLP/JSON metrics.

Runs one long-lived `nvidia-smi --query-gpu=... --format=csv,noheader,nounits -lms <ms>` child,
turns each row (one per GPU) into data points (gpu.power.*, gpu.energy, gpu.temp.*, ...) and
sends them to an OpenTelemetry Collector over OTLP/HTTP with JSON encoding. Where Linux RAPL is
readable it adds host CPU power (host.power.cpu, host.energy.cpu), so an NVIDIA node compares
fairly with a Mac whose mac.power.total includes the CPU.

One file, Python standard library only, Python 3.9+:

    scp nvsmi-otel-exporter.py gpu-box:
    python3 nvsmi-otel-exporter.py --endpoint http://ai-stack.local:4318

Works from old drivers (R390, Maxwell) to current ones (R610): at every start it asks
`nvidia-smi --help-query-gpu` which fields this driver offers and queries only those, because one
unknown field makes nvidia-smi fail the whole query. A reading the GPU cannot give ([N/A],
[Not Supported], ...) is left out, never sent as 0.

Data flows one way: nvidia-smi child -> parse a row -> build OTLP data points -> buffer -> send.
Run with --help for every flag, its environment variable and its default.
"""
from __future__ import annotations

import argparse
import errno
import glob
import json
import logging
import os
import platform
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import deque

__version__ = "0.1.0"

SERVICE_NAME = "nvsmi-otel-exporter"
SCOPE_NAME = "tokens-per-watt/nvidia-smi"
DEFAULT_CLUSTER = "nvidia"
SOURCE_NAME = "nvidia-smi"

GAUGE, SUM = "gauge", "sum"

# The series users' dashboards and alerts depend on: name, unit, kind, description.
# Every GPU data point carries gpu.index, gpu.uuid, gpu.name and gpu.pci.bus_id.
SOURCE_METRICS = [
    ("gpu.power.board", "W", GAUGE, "Board power (nvidia-smi power.draw: 1 s average on Ampere+, else instant)"),
    ("gpu.power.average", "W", GAUGE, "Board power averaged over 1 s (power.draw.average, R535+)"),
    ("gpu.power.instant", "W", GAUGE, "Instantaneous board power (power.draw.instant, R535+)"),
    ("gpu.power.module", "W", GAUGE, "Whole-module power, e.g. Grace+GPU (module.power.draw.average)"),
    ("gpu.power.limit", "W", GAUGE, "Enforced power limit (enforced.power.limit)"),
    ("gpu.energy", "J", SUM, "Board energy: gpu.power.board integrated over the real time between rows"),
    ("gpu.temp.core", "Cel", GAUGE, "GPU core temperature (temperature.gpu)"),
    ("gpu.temp.memory", "Cel", GAUGE, "HBM temperature (temperature.memory)"),
    ("gpu.utilization.gpu", "1", GAUGE, "Time a kernel was running, 0-1 (utilization.gpu / 100)"),
    ("gpu.utilization.memory", "1", GAUGE, "Time memory was read or written, 0-1 (utilization.memory / 100)"),
    ("gpu.memory.used", "By", GAUGE, "Framebuffer memory in use (memory.used MiB x 1048576)"),
    ("gpu.memory.total", "By", GAUGE, "Framebuffer memory size (memory.total MiB x 1048576)"),
    ("gpu.clock.sm", "Hz", GAUGE, "SM clock (clocks.sm MHz x 1e6)"),
    ("gpu.clock.memory", "Hz", GAUGE, "Memory clock (clocks.mem MHz x 1e6)"),
    ("gpu.fan.speed", "1", GAUGE, "Intended fan speed, 0-1 (fan.speed / 100; may exceed 1)"),
    ("gpu.pstate", "1", GAUGE, "Performance state: P0 -> 0 ... P15 -> 15"),
    ("gpu.throttle.power", "1", GAUGE, "1 while a power-cap or power-brake clock event is active, else 0"),
    ("gpu.throttle.thermal", "1", GAUGE, "1 while a thermal slowdown clock event is active, else 0"),
]

RAPL_METRICS = [
    ("host.energy.cpu", "J", SUM, "CPU energy from Linux RAPL, per zone (attribute rapl.zone)"),
    ("host.power.cpu", "W", GAUGE, "CPU power from Linux RAPL over the last interval, per zone (rapl.zone)"),
]


# ===== BEGIN SHARED CORE: identical in every exporter; edit once, run `make sync` =====
# Everything from here to END SHARED CORE is the same text in macmon-otel-exporter.py and
# nvsmi-otel-exporter.py (tests/test_shared_core.py compares them). The exporter-specific code
# above and below defines SERVICE_NAME, SCOPE_NAME, DEFAULT_CLUSTER, SOURCE_NAME,
# SOURCE_METRICS and the Source class used by main().

# Exit codes: documented in --help and docs/exporters.md.
EXIT_OK = 0
EXIT_INTERNAL = 1       # a bug: please report it with the log
EXIT_USAGE = 2          # bad flag, bad value, bad endpoint URL
EXIT_NO_SOURCE = 3      # macmon / nvidia-smi not found
EXIT_SOURCE_USAGE = 4   # the source rejected its arguments (exit 2): a configuration error
EXIT_EXPORT_FAILED = 5  # --once / --check: the collector did not accept the data
EXIT_ENV_FILE = 6       # --env-file missing, unreadable, malformed or readable by others

LOG = logging.getLogger(SERVICE_NAME)

# Reasons a data point can be dropped; each is a value of the `reason` attribute.
DROP_REASONS = ("buffer_full", "rejected", "too_large", "shutdown", "spool_full")

SELF_METRICS = [
    ("exporter.samples.read", "{sample}", SUM, "Samples parsed from the source since the exporter started"),
    ("exporter.datapoints.sent", "{datapoint}", SUM, "Data points the collector accepted"),
    ("exporter.datapoints.dropped", "{datapoint}", SUM, "Data points given up on, by reason"),
    ("exporter.datapoints.resent", "{datapoint}", SUM,
     "Data points sent again after a request whose answer never came (the collector may hold them twice)"),
    ("exporter.buffer.samples", "{sample}", GAUGE, "Samples waiting to be sent"),
    ("exporter.source.restarts", "{restart}", SUM, "Times the source process was restarted"),
    ("exporter.source.lines_skipped", "{line}", SUM, "Source lines skipped as unparsable"),
    ("exporter.send.errors", "{error}", SUM, "Failed export requests, by error type"),
]


class ConfigError(Exception):
    """A mistake the user can fix; carries the exit code and a one-line message."""

    def __init__(self, message, code=EXIT_USAGE):
        super().__init__(message)
        self.code = code


class SourceUsageError(Exception):
    """The source exited 2: it does not accept the arguments we gave it."""


# ---------------------------------------------------------------- configuration

def env_get(name, default=None):
    """An empty variable means the same as an unset one (OTel SDK configuration rule)."""
    value = os.environ.get(name, "")
    return value if value != "" else default


def load_env_file(path):
    """KEY=VALUE lines into os.environ, without overriding what the environment already sets."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror}; create it or fix --env-file", EXIT_ENV_FILE)
    if st.st_mode & 0o077:
        raise ConfigError(f"env file {path} is readable by others (mode {st.st_mode & 0o777:o}); "
                          f"run: chmod 600 {path}", EXIT_ENV_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read env file {path}: {exc}", EXIT_ENV_FILE)
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ConfigError(f"env file {path} line {number}: expected KEY=VALUE", EXIT_ENV_FILE)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        os.environ.setdefault(key, value)


def parse_key_values(text, what):
    """W3C-baggage style `k1=v1,k2=v2` with percent-encoded values (OTEL_* headers, resources)."""
    pairs = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # Never echo the item: it may be a token (`Authorization: Bearer ...`, or the part of
            # a token after a comma).
            raise ConfigError(f"{what}: item {len(pairs) + 1} is not key=value (a header is written "
                              f"Name=value, e.g. Authorization=Bearer%20<token>; a comma in a value is %2C)")
        pairs[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return pairs


def metrics_url(args):
    """OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is used as-is; a base endpoint gets v1/metrics appended."""
    if args.metrics_endpoint:
        url = args.metrics_endpoint
    else:  # the signal path goes after the base path, before any query string (?tenant=lab)
        base = urllib.parse.urlsplit(args.endpoint)
        url = urllib.parse.urlunsplit(base._replace(path=base.path.rstrip("/") + "/v1/metrics"))
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ConfigError("the endpoint holds credentials (user:password@); they would show in logs: put them in "
                          "OTEL_EXPORTER_OTLP_HEADERS as Authorization=Basic%20<base64> instead")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint {url!r} is not an http:// or https:// URL; "
                          f"use e.g. --endpoint http://127.0.0.1:4318")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"endpoint {url!r} has a bad port number")
    return url


def interval_value(text):
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.1 and 3600 seconds")
    return seconds


def positive_int(text):
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


SHARED_SETTINGS = [
    # flag, environment variable, default, help
    ("--endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318",
     "collector base URL; /v1/metrics is appended"),
    ("--metrics-endpoint", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", None,
     "full metrics URL, used as-is (wins over --endpoint)"),
    ("--headers", "OTEL_EXPORTER_OTLP_HEADERS", None,
     "extra HTTP headers, k1=v1,k2=v2, values percent-encoded (never logged)"),
    ("--metrics-headers", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", None,
     "like --headers, for metrics only; wins on the same key"),
    ("--timeout", "OTEL_EXPORTER_OTLP_TIMEOUT", "10000", "export request timeout in milliseconds"),
    ("--compression", "OTEL_EXPORTER_OTLP_COMPRESSION", "none", "none or gzip"),
    ("--certificate", "OTEL_EXPORTER_OTLP_CERTIFICATE", None,
     "PEM CA bundle to verify the collector's TLS certificate (TLS is always verified)"),
    ("--exporter", "OTEL_METRICS_EXPORTER", "otlp", "otlp (send), console (print instead) or none"),
    ("--interval", "TPW_INTERVAL", "5", "seconds between samples, 0.1 to 3600"),
    ("--cluster", "TPW_CLUSTER", DEFAULT_CLUSTER, "value of the `cluster` resource attribute"),
    ("--environment", "TPW_ENVIRONMENT", None,
     "deployment.environment.name (and the older deployment.environment)"),
    ("--buffer-max", "TPW_BUFFER_MAX", None,
     "samples kept while the collector is away; default one hour of samples"),
    ("--spool-dir", "TPW_SPOOL_DIR", None, "keep unsent samples in this folder across restarts"),
    ("--spool-max-bytes", "TPW_SPOOL_MAX_BYTES", "52428800", "size bound of the spool file"),
    ("--batch-max", "TPW_BATCH_MAX", "500",
     "most samples in one export request (fewer where its body would pass 64 KiB)"),
    ("--self-report-interval", "TPW_SELF_REPORT_INTERVAL", "10",
     "seconds between the exporter.* series (sent with a sample, never more often than samples)"),
    ("--log-level", "TPW_LOG_LEVEL", "info", "debug, info, warning or error"),
]


def help_formatter(prog):
    """argparse's formatter, given the terminal width: left to learn it, argparse imports shutil, and
    shutil imports bz2, lzma and zlib (0.6 MB resident for the life of the exporter)."""
    try:
        width = int(os.environ.get("COLUMNS") or os.get_terminal_size(sys.__stdout__.fileno()).columns)
    except (AttributeError, ValueError, OSError):  # not a terminal, or no stdout at all (launchd)
        width = 80
    return argparse.RawDescriptionHelpFormatter(prog, width=max(width - 2, 40))


def build_parser(source_settings, description):
    """argparse with every default taken from its environment variable, shown in --help."""
    parser = argparse.ArgumentParser(
        prog=SERVICE_NAME, description=description,
        formatter_class=help_formatter,
        epilog=exit_codes_help())
    for flag, env, default, text in source_settings + SHARED_SETTINGS:
        dest = flag[2:].replace("-", "_")
        shown = "none" if default is None else default
        kwargs = {"dest": dest, "default": env_get(env, default),
                  "help": f"{text} [env {env}; default {shown}]"}
        if flag in ("--interval", "--self-report-interval"):
            kwargs["type"] = interval_value
        elif flag in ("--buffer-max", "--batch-max", "--spool-max-bytes"):
            kwargs["type"] = positive_int
        if kwargs["default"] is not None and "type" in kwargs:
            try:
                kwargs["default"] = kwargs["type"](kwargs["default"])
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{env}={os.environ.get(env)!r}: {exc}")
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--resource", action="append", default=[], metavar="KEY=VALUE",
                        help="add or override a resource attribute; repeatable "
                             "[env OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME]")
    parser.add_argument("--env-file", default=env_get("TPW_ENV_FILE"), metavar="PATH",
                        help="read KEY=VALUE lines (mode 0600) before anything else; keeps tokens out "
                             "of plists and command lines [env TPW_ENV_FILE; default none]")
    parser.add_argument("--console", action="store_true",
                        help="print each sample readably instead of sending (same as --exporter console)")
    parser.add_argument("--once", action="store_true",
                        help="take one sample, send it, exit 0 only if the collector accepted it")
    parser.add_argument("--check", action="store_true", help="diagnose this host and the collector, then exit")
    parser.add_argument("--list-metrics", action="store_true", help="print the metric table as JSON and exit")
    parser.add_argument("--version", action="version", version=f"{SERVICE_NAME} {__version__}")
    return parser


def exit_codes_help():
    return ("exit codes:\n"
            f"  {EXIT_OK}  stopped cleanly (SIGTERM/SIGINT), or --once/--check succeeded\n"
            f"  {EXIT_INTERNAL}  internal error (a bug; report it with the log)\n"
            f"  {EXIT_USAGE}  bad flag, value or endpoint URL\n"
            f"  {EXIT_NO_SOURCE}  {SOURCE_NAME} not found (the message lists every place looked)\n"
            f"  {EXIT_SOURCE_USAGE}  {SOURCE_NAME} rejected its arguments (exit 2): configuration error\n"
            f"  {EXIT_EXPORT_FAILED}  --once/--check: the collector did not accept the data\n"
            f"  {EXIT_ENV_FILE}  --env-file missing, malformed or readable by others\n")


def finish_config(args):
    """Derive the values the run needs from parsed flags; raise ConfigError on anything wrong."""
    args.exporter = "console" if args.console else (args.exporter or "otlp").strip().lower()
    if args.exporter == "logging":
        args.exporter = "console"
    if args.exporter not in ("otlp", "console", "none"):
        raise ConfigError(f"--exporter/OTEL_METRICS_EXPORTER {args.exporter!r}: use otlp, console or none")
    args.compression = (args.compression or "none").strip().lower()
    if args.compression not in ("none", "gzip"):
        raise ConfigError(f"--compression {args.compression!r}: use none or gzip")
    try:
        args.timeout_s = int(args.timeout) / 1000.0
    except ValueError:
        raise ConfigError(f"--timeout/OTEL_EXPORTER_OTLP_TIMEOUT {args.timeout!r}: milliseconds, e.g. 10000")
    if args.timeout_s <= 0:
        args.timeout_s = 3600.0  # 0 means "no limit"; an hour stands in for it
    args.url = metrics_url(args)
    args.http_headers = {}
    for text, what in ((args.headers, "--headers"), (args.metrics_headers, "--metrics-headers")):
        if text:
            args.http_headers.update(parse_key_values(text, what))
    for name, value in args.http_headers.items():
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or re.search(r"[\r\n\x00]", value):
            raise ConfigError(f"header {name!r} is not a valid HTTP header name/value (no spaces, no line breaks)")
    if args.certificate and not os.path.isfile(args.certificate):
        raise ConfigError(f"--certificate {args.certificate}: no such file")
    if args.certificate:
        import ssl  # only when a certificate is given
        try:
            ssl.create_default_context(cafile=args.certificate)
        except (ssl.SSLError, ValueError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise ConfigError(f"--certificate {args.certificate}: not a PEM CA bundle ({why}); "
                              f"give the collector's CA certificate in PEM form")
    level = (args.log_level or "info").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level {args.log_level!r}: use debug, info, warning or error")
    args.log_level = level
    args.resource_attributes = resource_attributes(args)
    return args


# ---------------------------------------------------------------- resource

def machine_id():
    """A stable per-machine identity for service.instance.id (never sent as such)."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as fh:
                value = fh.read().strip()
            if value:
                return value
        except OSError:
            pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["/usr/sbin/ioreg", "-rd1", "-c", "IOPlatformExpertDevice"],
                                 capture_output=True, text=True, timeout=5).stdout
            found = re.search(r'"IOPlatformUUID" = "([^"]+)"', out)
            if found:
                return found.group(1)
        except (OSError, subprocess.SubprocessError):
            pass
    return socket.gethostname()


def host_arch():
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "i386": "x86", "i686": "x86", "armv7l": "arm32", "ppc64le": "ppc64", "s390x": "s390x"}.get(machine, machine)


def resource_attributes(args):
    """Defaults < OTEL_RESOURCE_ATTRIBUTES < --resource < OTEL_SERVICE_NAME (spec precedence)."""
    attrs = {
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        "host.name": socket.gethostname(),
        "host.arch": host_arch(),
        "os.type": platform.system().lower(),
        "cluster": args.cluster or DEFAULT_CLUSTER,
    }
    env_attrs = env_get("OTEL_RESOURCE_ATTRIBUTES")
    if env_attrs:
        try:
            attrs.update(parse_key_values(env_attrs, "OTEL_RESOURCE_ATTRIBUTES"))
        except ConfigError as exc:
            LOG.warning("ignoring OTEL_RESOURCE_ATTRIBUTES: %s", exc)
    for item in args.resource:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--resource {item!r}: use KEY=VALUE")
        attrs[key] = value
    if env_get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = env_get("OTEL_SERVICE_NAME")
    environment = args.environment or attrs.get("deployment.environment.name") or attrs.get("deployment.environment")
    if environment:
        # .name is the current convention; the deprecated key stays because existing dashboards filter on it.
        attrs["deployment.environment.name"] = environment
        attrs["deployment.environment"] = environment
    attrs.setdefault("service.instance.id",
                     name_based_uuid(INSTANCE_NAMESPACE, f"{machine_id()}/{attrs['service.name']}"))
    return attrs


INSTANCE_NAMESPACE = "4d63009a-8d0f-11ee-aad7-4c796ed8e320"


def name_based_uuid(namespace, name):
    """uuid.uuid5(UUID(namespace), name), without the uuid module: it loads hashlib, and hashlib loads
    OpenSSL's libcrypto, 3.7 MB resident for one hash at start-up. CPython's own SHA-1 does it."""
    try:
        from _sha1 import sha1
    except ImportError:  # an interpreter built without its own hashes
        from hashlib import sha1
    digest = bytearray(sha1(bytes.fromhex(namespace.replace("-", "")) + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# ---------------------------------------------------------------- OTLP/JSON encoding

def json_str(text):
    return json.dumps(text, ensure_ascii=False)


ATTRIBUTE_CACHE = {}  # the same few attribute sets (one per GPU, per zone) come back every sample


def encode_attributes(pairs):
    """[(key, value), ...] -> the OTLP KeyValue list as JSON text."""
    pairs = tuple(pairs)
    cached = ATTRIBUTE_CACHE.get(pairs)
    if cached is not None:
        return cached
    items = []
    for key, value in pairs:
        if isinstance(value, bool):
            encoded = '{"boolValue":%s}' % ("true" if value else "false")
        elif isinstance(value, int):
            encoded = '{"intValue":"%d"}' % value
        elif isinstance(value, float):
            encoded = '{"doubleValue":%r}' % value
        else:
            encoded = '{"stringValue":%s}' % json_str(str(value))
        items.append('{"key":%s,"value":%s}' % (json_str(key), encoded))
    text = "[" + ",".join(items) + "]"
    if len(ATTRIBUTE_CACHE) < 1024:
        ATTRIBUTE_CACHE[pairs] = text
    return text


def point_head(time_ns, attributes=(), start_ns=0):
    """A NumberDataPoint up to its value (attributes, start, time): the points of one sample share it.
    64-bit integers go as JSON strings."""
    head = '{"attributes":%s,' % encode_attributes(attributes) if attributes else "{"
    if start_ns:
        head += '"startTimeUnixNano":"%d",' % start_ns
    return head + '"timeUnixNano":"%d",' % time_ns


def encode_value(head, value):
    """A point_head completed with its value: asInt for an int (not a bool), else asDouble."""
    if type(value) is int:
        return '%s"asInt":"%d"}' % (head, value)
    return '%s"asDouble":%r}' % (head, float(value))


def encode_point(time_ns, value, attributes=(), start_ns=0):
    """One NumberDataPoint as JSON text; the value is always present."""
    return encode_value(point_head(time_ns, attributes, start_ns), value)


SOURCE_GAUGES = [name for name, _unit, kind, _text in SOURCE_METRICS if kind == GAUGE]


def encode_gauges(time_ns, readings, attributes=()):
    """{metric name: value} of one sample -> [(metric name, data point JSON text), ...] in table
    order. The hot path of every sample: the shared part of the points is formatted once."""
    head = point_head(time_ns, attributes)
    return [(name, encode_value(head, readings[name])) for name in SOURCE_GAUGES if name in readings]


class MetricTable:
    """Name -> (unit, kind, description) for every series this exporter can send."""

    def __init__(self, rows):
        self.rows = list(rows)
        self.by_name = {name: (unit, kind, text) for name, unit, kind, text in self.rows}
        self.headers = {name: self.encode_header(name) for name in self.by_name}

    def as_json(self):
        return [{"name": n, "unit": u, "type": "sum" if k == SUM else "gauge",
                 "monotonic": k == SUM, "description": t} for n, u, k, t in self.rows]

    def encode_header(self, name):
        """The Metric object up to its dataPoints list, as JSON text (made once per metric)."""
        unit, kind, text = self.by_name[name]
        head = '{"name":%s,"description":%s,"unit":%s,' % (json_str(name), json_str(text), json_str(unit))
        if kind == SUM:
            return head + '"sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":['
        return head + '"gauge":{"dataPoints":['


def build_request(table, resource_json, samples):
    """Many samples -> one ExportMetricsServiceRequest (JSON text), series grouped by metric name
    (in the order they first appear: the order of metrics in a request carries no meaning)."""
    grouped = {}
    for sample in samples:
        for name, point in sample.points:
            points = grouped.get(name)
            if points is None:
                grouped[name] = [point]
            else:
                points.append(point)
    headers = table.headers
    metrics = ",".join([headers[name] + ",".join(points) + "]}}" for name, points in grouped.items()])
    return REQUEST_TEMPLATE % (resource_json, metrics)


REQUEST_TEMPLATE = ('{"resourceMetrics":[{"resource":{"attributes":%s},"scopeMetrics":[{"scope":{"name":'
                    + json_str(SCOPE_NAME) + ',"version":' + json_str(__version__) + '},"metrics":[%s]}]}]}')


class Sample:
    """One reading of the source: its time and its data points, already encoded as JSON text."""

    __slots__ = ("time_ns", "points", "unanswered")

    def __init__(self, time_ns, points):
        self.time_ns = time_ns
        self.points = points  # [(metric name, data point JSON text), ...]
        # Requests that carried this sample, went out whole and got no answer: the collector may
        # have stored each, so each is a possible duplicate once the sample is delivered.
        self.unanswered = 0


class EnergyCounter:
    """Power integrated over back-to-back sample windows: a monotonic cumulative Sum in joules."""

    def __init__(self, start_ns):
        self.start_ns = start_ns
        self.joules = 0.0

    def add(self, watts, seconds):
        if watts >= 0 and seconds > 0:
            self.joules += watts * seconds
        return self.joules


def window_seconds(previous_ns, time_ns, interval):
    """The real time a sample covers; an implausible gap (sleep, stall) counts as one interval."""
    if previous_ns is None:
        return interval
    seconds = (time_ns - previous_ns) / 1e9
    if 0.5 * interval <= seconds <= 2.0 * interval:
        return seconds
    return interval


def finite(value):
    """A real number: not a bool, not NaN, not infinite (inf - inf and nan - nan are NaN)."""
    return type(value) in (int, float) and value - value == 0


# ---------------------------------------------------------------- counters about ourselves

class Stats:
    """What the exporter did, for its own metrics and its log lines. Guarded by one lock."""

    def __init__(self, start_ns):
        self.lock = threading.Lock()
        self.start_ns = start_ns
        self.samples_read = 0
        self.samples_delivered = 0
        self.samples_dropped = {}
        self.points_sent = 0
        self.samples_resent = 0
        self.points_resent = 0
        self.dropped_unanswered = 0
        self.points_dropped = {reason: 0 for reason in DROP_REASONS}
        self.source_restarts = 0
        self.lines_skipped = 0
        self.send_errors = {}

    def dropped(self, reason, samples):
        with self.lock:
            self.samples_dropped[reason] = self.samples_dropped.get(reason, 0) + len(samples)
            self.points_dropped[reason] = self.points_dropped.get(reason, 0) + sum(len(s.points) for s in samples)
            # given up on, but a request that carried them went out and got no answer: they may be there
            self.dropped_unanswered += sum(s.unanswered for s in samples)

    def delivered(self, samples):
        resent = [s for s in samples if s.unanswered]
        with self.lock:
            self.samples_delivered += len(samples)
            self.points_sent += sum(len(s.points) for s in samples)
            self.samples_resent += sum(s.unanswered for s in resent)
            self.points_resent += sum(len(s.points) * s.unanswered for s in resent)

    def send_error(self, kind):
        with self.lock:
            self.send_errors[kind] = self.send_errors.get(kind, 0) + 1

    def points(self, time_ns, buffered):
        """The exporter.* data points to add to a sample taken at time_ns."""
        start = self.start_ns
        with self.lock:
            out = [
                ("exporter.samples.read", encode_point(time_ns, self.samples_read, (), start)),
                ("exporter.datapoints.sent", encode_point(time_ns, self.points_sent, (), start)),
                ("exporter.datapoints.resent", encode_point(time_ns, self.points_resent, (), start)),
                ("exporter.buffer.samples", encode_point(time_ns, buffered)),
                ("exporter.source.restarts", encode_point(time_ns, self.source_restarts, (), start)),
                ("exporter.source.lines_skipped", encode_point(time_ns, self.lines_skipped, (), start)),
            ]
            out += [("exporter.datapoints.dropped", encode_point(time_ns, n, (("reason", r),), start))
                    for r, n in sorted(self.points_dropped.items())]
            out += [("exporter.send.errors", encode_point(time_ns, n, (("error.type", k),), start))
                    for k, n in sorted(self.send_errors.items())]
        return out

    def summary(self):
        with self.lock:
            dropped = sum(self.samples_dropped.values())
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(self.samples_dropped.items()) if v) or "none"
            if self.dropped_unanswered:
                detail += f"; possibly delivered {self.dropped_unanswered}"
            return (f"samples read {self.samples_read}, delivered {self.samples_delivered} "
                    f"(resent {self.samples_resent}), dropped {dropped} ({detail}), "
                    f"lines skipped {self.lines_skipped}, "
                    f"source restarts {self.source_restarts}")


# ---------------------------------------------------------------- buffer and spool

class SampleBuffer:
    """Unsent samples, oldest first, bounded. The sender takes a batch from the front ("in flight")
    and either commits it (delivered or given up on) or releases it for a retry.

    A sender with nothing to do sleeps on a doorbell (a C-level queue) that add() rings once:
    cheaper per sample than a threading.Condition, whose wait and notify run in Python.

    A sender that is idle on a healthy connection "parks": then the sampling thread sends what it
    has read itself, right before it waits for the source again (Sender.send_inline), and hands
    anything unusual back. In the steady state that saves a thread hand-off per sample."""

    def __init__(self, max_samples, stats):
        self.max_samples = max_samples
        self.stats = stats
        self.samples = deque()
        self.in_flight = 0
        self.lock = threading.Lock()
        self.doorbell = queue.SimpleQueue()
        self.sender_waiting = False
        self.parked = False
        self.handed = None  # (batch, stage, outcome) the sampling thread gave back to the sender
        self.closing = False  # the sender is stopping: take() no longer waits for samples
        self.overflowing = False
        self.overflow_dropped = 0

    def __len__(self):
        with self.lock:
            return len(self.samples)

    def add(self, sample):
        with self.lock:
            self.samples.append(sample)
            while len(self.samples) > self.max_samples and len(self.samples) > self.in_flight:
                # Drop the oldest sample that is not in flight, so a batch being sent stays intact.
                oldest = self.samples[self.in_flight]
                del self.samples[self.in_flight]
                self.stats.dropped("buffer_full", [oldest])
                self.overflow_dropped += 1
                if not self.overflowing:
                    self.overflowing = True
                    LOG.warning("buffer full (%d samples): dropping the oldest samples until the collector "
                                "catches up; raise --buffer-max to keep more", self.max_samples)
            ring, self.sender_waiting = self.sender_waiting, False
        if ring:
            self.doorbell.put(None)

    def wake(self):
        """End a take() or a parked wait for good: the sender is stopping. Without `closing` a
        parked sender would spend the one ring leaving its park and then sleep in take()."""
        with self.lock:
            self.parked = False
            self.closing = True
        self.doorbell.put(None)

    def park(self):
        """The sender is idle on a healthy connection: from now on the sampling thread sends."""
        with self.lock:
            self.parked = not self.samples
            return self.parked

    def wait_while_parked(self, wait_s):
        """The parked sender's sleep. Returns what the sampling thread handed back, or None."""
        while True:
            with self.lock:
                if not self.parked:
                    handed, self.handed = self.handed, None
                    return handed
            self.sleep_on_doorbell(wait_s)

    def take_parked(self, count):
        """For the sampling thread while the sender is parked: up to `count` samples, in flight."""
        with self.lock:
            if not self.parked or self.in_flight:
                return []
            return self.front_in_flight(count)

    def hand_over(self, batch, stage, outcome):
        """The sampling thread gives a batch back to the sender (see Sender.finish)."""
        with self.lock:
            self.parked = False
            self.handed = (batch, stage, outcome)
        self.doorbell.put(None)

    def take(self, count, wait_s):
        """Mark up to `count` samples from the front as in flight; wait up to wait_s for one."""
        with self.lock:
            wait = self.sender_waiting = not self.samples and not self.closing
        if wait:
            self.sleep_on_doorbell(wait_s)
        with self.lock:
            self.sender_waiting = False
            return self.front_in_flight(count)

    def front_in_flight(self, count):
        """Up to `count` samples from the front, marked in flight (the caller holds the lock)."""
        self.in_flight = min(count, len(self.samples))
        return [self.samples[i] for i in range(self.in_flight)]

    def sleep_on_doorbell(self, wait_s):
        try:
            self.doorbell.get(timeout=wait_s)
        except queue.Empty:
            pass

    def commit(self, count):
        with self.lock:
            for _ in range(min(count, self.in_flight)):
                self.samples.popleft()
            self.in_flight = 0
            if not self.samples:
                self.overflowing = False

    def release(self):
        with self.lock:
            self.in_flight = 0

    def snapshot(self):
        with self.lock:
            return list(self.samples)

    def prepend(self, samples):
        """Samples recovered from the spool go first: they are older than anything read since."""
        with self.lock:
            self.samples.extendleft(reversed(samples))
            while len(self.samples) > self.max_samples:
                self.stats.dropped("buffer_full", [self.samples.popleft()])


class Spool:
    """Unsent samples on disk across restarts: one JSON document, replaced atomically."""

    FORMAT = 1

    def __init__(self, directory, max_bytes, stats):
        self.directory = directory
        self.path = os.path.join(directory, f"{SERVICE_NAME}.spool.json")
        self.max_bytes = max_bytes
        self.stats = stats

    def load(self):
        try:
            with open(self.path, encoding="utf-8") as fh:
                document = json.load(fh)
            if document.get("format") != self.FORMAT:
                raise ValueError(f"unknown spool format {document.get('format')!r}")
            samples = [Sample(int(t), [(str(n), str(p)) for n, p in points]) for t, points in document["samples"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = f"{self.path}.corrupt-{int(time.time())}"
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = "(could not move it)"
            LOG.warning("spool %s is unreadable (%s); moved aside to %s, starting empty", self.path, exc, aside)
            return []
        LOG.info("spool: %d unsent samples from the last run will be sent first", len(samples))
        return samples

    def save(self, samples):
        """Write the samples, dropping the oldest while the file would exceed its size bound."""
        os.makedirs(self.directory, exist_ok=True)
        encoded = [json.dumps([s.time_ns, s.points], separators=(",", ":")) for s in samples]
        overhead = 64
        total = overhead + sum(len(e.encode("utf-8")) + 1 for e in encoded)
        first = 0
        while total > self.max_bytes and first < len(encoded):
            total -= len(encoded[first].encode("utf-8")) + 1
            first += 1
        if first:
            self.stats.dropped("spool_full", samples[:first])
            LOG.warning("spool: %d oldest samples do not fit in %d bytes and were dropped", first, self.max_bytes)
        if first == len(encoded):
            self.clear()
            return 0
        text = '{"format":%d,"samples":[\n%s\n]}\n' % (self.FORMAT, ",\n".join(encoded[first:]))
        temporary = f"{self.path}.tmp-{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)
        return len(encoded) - first

    def clear(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------- sending

RETRYABLE_STATUS = (429, 502, 503, 504)
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
INLINE_MAX_BYTES = 256 * 1024  # a larger body (one outsized sample) goes through the sender thread
# A batch is cut to about this much JSON. A backlog (a collector outage, a slow answer) then goes
# out in many small requests instead of a few of up to --batch-max samples: building one request
# holds about four copies of its body, and those peaks would set the exporter's resident memory.
REQUEST_TARGET_BYTES = 64 * 1024
CONTENT_LENGTH = re.compile(rb"\n[Cc]ontent-[Ll]ength:[ \t]*(\d+)")
HEAD_END = re.compile(rb"\r?\n\r?\n")  # the blank line after the headers
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0
RETRY_AFTER_MAX_S = 300.0
DELIVERY_NOTE_S = 3600.0


class Outcome:
    """What became of one export request."""

    def __init__(self, kind, detail="", retry_after=None, rejected=0, status=None):
        self.kind = kind            # "ok", "partial", "retry", "reject", "too_large"
        self.detail = detail
        self.retry_after = retry_after
        self.rejected = rejected
        self.status = status
        self.unanswered = False     # a retry after the request went out whole: it may have been stored


def parse_retry_after(value):
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime  # only when a collector sends an HTTP date
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def response_message(body):
    """The collector's google.rpc.Status message, or the start of whatever it sent: on one line,
    control characters escaped, at most 300 characters (it goes into our log lines, which
    `make status` reads: it must never forge one)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
        if isinstance(document, dict) and document.get("message"):
            text = str(document["message"])
    except ValueError:
        pass
    return json.dumps(text[:300], ensure_ascii=False)[1:-1]


EMPTY_SUCCESS = (b"", b"{}", b'{"partialSuccess":{}}')  # the usual answers: no need to parse them


def classify_response(status, headers, body):
    """Map an HTTP answer (headers with lower-case names) to an Outcome by the OTLP rules:
    retry only 429/502/503/504."""
    if status == 200:
        partial = {}
        try:
            compact = body.replace(b" ", b"").strip()
            document = {} if compact in EMPTY_SUCCESS else json.loads(body.decode("utf-8", "replace"))
            partial = (document.get("partialSuccess") or {}) if isinstance(document, dict) else {}
        except ValueError:
            partial = {}
        rejected = 0
        try:
            rejected = int(partial.get("rejectedDataPoints") or 0) if isinstance(partial, dict) else 0
        except (TypeError, ValueError):
            rejected = 0
        message = str(partial.get("errorMessage") or "") if isinstance(partial, dict) else ""
        if rejected or message:
            return Outcome("partial", message, rejected=rejected, status=200)
        return Outcome("ok", status=200)
    if 200 < status < 300:
        return Outcome("ok", status=status)
    if status in RETRYABLE_STATUS:
        return Outcome("retry", f"HTTP {status}", parse_retry_after(headers.get("retry-after")), status=status)
    if status == 413:
        return Outcome("too_large", "HTTP 413 request too large", status=413)
    return Outcome("reject", f"HTTP {status}: {response_message(body)}", status=status)


class BadResponse(OSError):
    """The collector answered something that is not HTTP/1.x."""


class OtlpHttpClient:
    """POSTs OTLP/JSON bodies over one kept-alive HTTP/1.1 connection, reconnecting when it breaks.

    A small client on a plain socket rather than http.client: it sends one request shape and reads
    one response shape, usually with a single recv(); http.client parses headers with the email
    package. ssl is loaded only for an https:// collector."""

    def __init__(self, url, headers, timeout_s, compression, cafile):
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        # getaddrinfo() runs a str host through the idna codec, which loads unicodedata: 0.7 MB
        # resident for good, even for 127.0.0.1. An ASCII host goes as bytes and needs no codec.
        self.lookup_host = self.host.encode("ascii") if self.host.isascii() else self.host
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = self.host if ":" not in self.host else f"[{self.host}]"
        if parts.port:
            host_header += f":{parts.port}"
        self.timeout_s = timeout_s
        self.gzip = compression == "gzip"
        fields = {"Host": host_header, "User-Agent": f"{SERVICE_NAME}/{__version__}",
                  "Content-Type": "application/json", "Accept": "application/json"}
        if self.gzip:
            fields["Content-Encoding"] = "gzip"
        fields.update(headers)
        self.head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        self.context = None
        if self.https:
            import ssl
            self.context = ssl.create_default_context(cafile=cafile)
        self.sock = None
        self.sock_timeout = None
        self.pending = b""  # received bytes not yet parsed
        self.request_out = False  # the last request went out whole: a failure now may follow its storing

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self.pending = b""

    def request(self, body):
        """The bytes of one POST: head and (compressed) body."""
        data = body.encode("utf-8")
        if self.gzip:
            import gzip
            data = gzip.compress(data, compresslevel=6)
        return (self.head + f"Content-Length: {len(data)}\r\n\r\n").encode("latin-1") + data

    def post(self, body, timeout_s=None):
        """Returns an Outcome; network failures become retryable outcomes, never exceptions."""
        data = self.request(body)
        timeout = min(self.timeout_s, timeout_s) if timeout_s else self.timeout_s
        reused = self.sock is not None
        outcome = self.attempt(data, timeout)
        if reused and outcome.status in ("connection_reset", "broken_pipe"):
            # The collector closed an idle kept-alive connection; that is not an outage. If the
            # request had gone out whole, it may still have been stored: the answer says so.
            unanswered = outcome.unanswered
            outcome = self.attempt(data, timeout)
            outcome.unanswered = outcome.unanswered or unanswered
        return outcome

    def connect(self, timeout):
        sock = socket.create_connection((self.lookup_host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock
        self.sock_timeout = timeout
        self.pending = b""

    def can_send_inline(self):
        """A plain-HTTP connection is open (send_inline needs a socket it can use without blocking)."""
        return self.sock is not None and self.context is None

    def post_inline(self, body, wait_s):
        """For the sampling thread: send on the open connection without blocking, then wait at
        most wait_s for the whole answer. Returns (stage, Outcome or None), stage being "answered",
        "sent" (the answer is still to come: finish_response) or "unsent" (nothing went out)."""
        self.request_out = False
        if not self.can_send_inline():
            return "unsent", None
        data = self.request(body)
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except OSError:
            sent = -1
        if sent != len(data):
            self.close()  # none or part of the request went out: the sender starts over
            return "unsent", None
        self.request_out = True
        deadline = time.monotonic() + wait_s
        while not self.answer_complete():
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return "sent", None
            try:
                more = self.receive()
            except OSError:
                more = False
            if not more:
                break  # the connection ended or failed: answer() says how
        return "answered", self.guarded(self.answer)

    def finish_response(self, timeout_s=None):
        """Read the answer to a request post_inline sent (blocking, up to the timeout)."""
        timeout = min(self.timeout_s, timeout_s) if timeout_s else self.timeout_s
        if self.sock is None:
            outcome = Outcome("retry", "connection closed before the answer", status="connection_reset")
            outcome.unanswered = True
            return outcome
        return self.guarded(lambda: self.answer(timeout))

    def answer_complete(self):
        """Whether self.pending holds a whole answer that has a Content-Length or no body."""
        end = HEAD_END.search(self.pending, 0, MAX_HEAD_BYTES + 4)
        if not end:
            return False
        head = self.pending[:end.start()]
        length = CONTENT_LENGTH.search(head)
        if length:
            return len(self.pending) - end.end() >= int(length.group(1))
        return head[9:12] in (b"204", b"304")  # chunked or read-to-close answers: finish_response

    def set_timeout(self, timeout):
        if timeout != self.sock_timeout:  # settimeout() is a system call: only when it changes
            self.sock.settimeout(timeout)
            self.sock_timeout = timeout

    def attempt(self, data, timeout):
        return self.guarded(lambda: self.exchange(data, timeout))

    def exchange(self, data, timeout):
        self.request_out = False
        if self.sock is None:
            self.connect(timeout)
        else:
            self.set_timeout(timeout)
        self.sock.sendall(data)
        self.request_out = True
        return self.answer()

    def answer(self, timeout=None):
        if timeout is not None:
            self.set_timeout(timeout)
        status, headers, body = self.read_response()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return classify_response(status, headers, body)

    def guarded(self, step):
        """Run one network step; failures become retryable Outcomes and close the connection.
        A failure after the request went out whole is marked unanswered: the collector may have
        stored it, so the retry is at least once, and counted (exporter.datapoints.resent)."""
        try:
            return step()
        except socket.timeout:
            outcome = Outcome("retry", "timeout", status="timeout")
        except OSError as exc:
            if type(exc).__name__.startswith("SSL"):
                outcome = Outcome("retry", f"TLS error: {getattr(exc, 'reason', None) or exc}", status="tls")
            else:
                outcome = Outcome("retry", describe_network_error(exc), status=network_error_type(exc))
        except ValueError as exc:  # a length or chunk size that is not a number
            outcome = Outcome("retry", f"malformed HTTP response from the collector ({exc})", status="bad_response")
        outcome.unanswered = self.request_out
        self.close()
        return outcome

    def receive(self):
        """More bytes of the response onto self.pending; False at the end of the connection."""
        chunk = self.sock.recv(65536)
        self.pending += chunk
        return bool(chunk)

    def read_response(self):
        """(status, {lower-case header: value}, body) of one HTTP/1.x response."""
        lines = self.read_head().split(b"\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
            raise BadResponse(f"not an HTTP response: {lines[0][:60]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, headers, self.read_chunked()
        if "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0:
                raise ValueError(f"Content-Length {length}")
            body = self.read_exactly(min(length, MAX_RESPONSE_BYTES))
            if length > MAX_RESPONSE_BYTES:
                self.close()  # the rest is not worth reading; the connection cannot be reused
            return status, headers, body
        while len(self.pending) <= MAX_RESPONSE_BYTES and self.receive():
            pass  # no length: the body ends when the connection does
        body = self.pending[:MAX_RESPONSE_BYTES]
        self.close()
        return status, headers, body

    def read_head(self):
        """The status line and headers, up to the blank line that ends them."""
        while True:
            end = HEAD_END.search(self.pending, 0, MAX_HEAD_BYTES + 4)
            if end:
                head, self.pending = self.pending[:end.start()], self.pending[end.end():]
                return head
            if len(self.pending) >= MAX_HEAD_BYTES + 4:
                raise BadResponse(f"response headers longer than {MAX_HEAD_BYTES} bytes")
            if not self.receive():
                if not self.pending:
                    raise ConnectionResetError(errno.ECONNRESET, "the collector closed the connection")
                # Closed before the end of the head (`HTTP/1.1 50`): no answer came, so this is a
                # connection lost before an answer, retried, never a status to act on.
                raise ConnectionResetError(errno.ECONNRESET, "the collector closed the connection mid-answer")

    def read_exactly(self, size):
        """size bytes, or fewer when the connection ends first."""
        while len(self.pending) < size and self.receive():
            pass
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def read_line(self):
        while b"\n" not in self.pending:
            if len(self.pending) > MAX_HEAD_BYTES:
                raise BadResponse("a chunk header line is too long")
            if not self.receive():
                break
        line, _, self.pending = self.pending.partition(b"\n")
        return line

    def read_chunked(self):
        body = b""
        while len(body) <= MAX_RESPONSE_BYTES:
            size = int(self.read_line().split(b";")[0].strip() or b"0", 16)
            if size <= 0:
                while self.read_line().strip():
                    pass  # trailers
                return body
            body += self.read_exactly(size)
            self.read_line()  # the CRLF after the chunk
        self.close()
        return body[:MAX_RESPONSE_BYTES]


def network_error_type(exc):
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    if isinstance(exc, ConnectionResetError):
        return "connection_reset"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if getattr(exc, "errno", None) == errno.EHOSTUNREACH:
        return "host_unreachable"
    return "network"


def describe_network_error(exc):
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the collector's host name ({exc.strerror or exc})"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class Sender(threading.Thread):
    """Drains the buffer to the collector, oldest first, never blocking the sampling loop."""

    def __init__(self, client, buffer, stats, table, resource_json, batch_max, inline_wait_s=0.2):
        super().__init__(name="sender", daemon=True)
        self.client = client
        self.buffer = buffer
        self.stats = stats
        self.table = table
        self.resource_json = resource_json
        self.batch_max = batch_max
        self.sample_bytes = 2048  # JSON per sample, learnt from each request built (see batch_size)
        self.inline_wait_s = inline_wait_s  # how long send_inline may hold up the sampling thread
        self.stopping = threading.Event()
        self.deadline = None  # monotonic time after which a stopping sender gives up
        self.outage_since = None
        self.outage_late = 0
        self.last_reminder = 0.0
        self.backoff = BACKOFF_FIRST_S
        self.last_note = None
        self.delivered_since_note = 0

    def run(self):
        while True:
            try:
                if not self.run_once():
                    return
            except Exception:  # a bug must not silently stop delivery: log it, keep the samples, go on
                LOG.exception("sender: unexpected error (please report it); retrying in 5 s")
                self.buffer.release()
                self.stopping.wait(5)

    def run_once(self):
        """Send one batch (or wait for one). False when the sender should end."""
        if self.stopping.is_set() and (not len(self.buffer) or time.monotonic() >= self.deadline):
            return False
        handed = self.buffer.wait_while_parked(60.0)
        if handed is not None:
            done, outcome = self.finish(*handed)
        else:
            batch = self.buffer.take(self.batch_size(), 60.0)  # add() and stop() wake it sooner
            if not batch:
                return True
            done, outcome = self.deliver(batch)
        self.buffer.commit(done)
        if outcome.kind == "retry":
            self.wait_before_retry(outcome)
            return True
        self.backoff = BACKOFF_FIRST_S
        if self.outage_since is not None and not len(self.buffer):
            self.end_outage()
        if self.outage_since is None and not self.stopping.is_set() and self.client.can_send_inline():
            if self.buffer.park():
                LOG.debug("sender parked: the sampling thread sends while the collector answers promptly")
        return True

    def send_inline(self):
        """Run by the sampling thread before it waits for the source: while the sender is parked,
        send the buffered samples here, without a thread hand-off. The send never blocks and the
        wait for the answer is short (inline_wait_s); anything else (no connection, a slow or
        unusual answer, an error) goes back to the sender thread, which handles it as usual."""
        for _ in range(8):  # a bounded loop: normally one round
            batch = self.buffer.take_parked(self.batch_size())
            if not batch:
                return
            try:
                body = self.build(batch)
                stage, outcome = "unsent", None
                if len(body) <= INLINE_MAX_BYTES:
                    stage, outcome = self.client.post_inline(body, self.inline_wait_s)
                if stage != "answered" or outcome.kind not in ("ok", "partial", "reject"):
                    self.buffer.hand_over(batch, stage, outcome)
                    return
                self.account(batch, outcome)
                self.buffer.commit(len(batch))
            except Exception:  # a bug must not stop sampling: the sender thread takes over
                LOG.exception("inline send: unexpected error (please report it)")
                self.client.close()
                self.buffer.hand_over(batch, "unsent", None)
                return

    def batch_size(self):
        """--batch-max samples, or fewer where that would make a body over REQUEST_TARGET_BYTES."""
        return max(1, min(self.batch_max, REQUEST_TARGET_BYTES // self.sample_bytes))

    def build(self, batch):
        """The request for a batch; its size per sample sets the next batch_size()."""
        body = build_request(self.table, self.resource_json, batch)
        self.sample_bytes = max(1, len(body) // len(batch))
        return body

    def finish(self, batch, stage, outcome):
        """Complete what send_inline handed back: read the rest of the answer ("sent"), send
        again ("unsent", or a kept-alive connection the collector had closed), or act on it."""
        if stage == "sent":
            outcome = self.client.finish_response(self.remaining())
        if outcome is not None and outcome.unanswered:
            for sample in batch:
                sample.unanswered += 1
        if outcome is None or outcome.status in ("connection_reset", "broken_pipe"):
            return self.deliver(batch)
        return self.deliver(batch, outcome)

    def remaining(self):
        if self.deadline is None:
            return None
        return max(0.05, self.deadline - time.monotonic())

    def deliver(self, batch, outcome=None):
        """Send one batch, halving it while it is too large. Returns (how many samples from the
        front are finished with, delivered or given up on; the last Outcome). With an outcome,
        the batch was sent already (by send_inline) and this is the collector's answer."""
        if outcome is None:
            body = self.build(batch)
            if len(body) > MAX_REQUEST_BYTES and len(batch) > 1:
                outcome = Outcome("too_large", "over the request size cap")
            else:
                outcome = self.client.post(body, self.remaining())
        if outcome.kind == "too_large":
            if len(batch) == 1:
                LOG.error("collector refuses even a single sample as too large (%s); dropping it", outcome.detail)
                self.stats.dropped("too_large", batch)
                return 1, Outcome("reject")
            half = len(batch) // 2
            done, first = self.deliver(batch[:half])
            if done < half:
                return done, first
            done, second = self.deliver(batch[half:])
            return half + done, second
        self.account(batch, outcome)
        return (0 if outcome.kind == "retry" else len(batch)), outcome

    def account(self, batch, outcome):
        if outcome.kind == "retry":
            if outcome.unanswered:
                for sample in batch:
                    sample.unanswered += 1
            self.stats.send_error(str(outcome.status))
            self.note_outage(outcome)
            return
        if outcome.kind == "reject":
            self.stats.send_error(str(outcome.status))
            LOG.error("collector rejected %d samples, not retrying (%s)", len(batch), outcome.detail)
            self.stats.dropped("rejected", batch)
            return
        if outcome.kind == "partial":
            LOG.warning("collector accepted the request but rejected %d data points: %s",
                        outcome.rejected, outcome.detail or "(no message)")
            with self.stats.lock:
                self.stats.points_dropped["rejected"] += outcome.rejected
        if outcome.unanswered:  # delivered, after an attempt in the same post that got no answer
            for sample in batch:
                sample.unanswered += 1
        self.stats.delivered(batch)
        if self.outage_since is not None:
            self.outage_late += len(batch)
        self.note_delivery(len(batch))

    def note_delivery(self, samples):
        """A line when the first export is accepted, then one an hour: `make status` reads them."""
        self.delivered_since_note += samples
        now = time.monotonic()
        if self.last_note is None or now - self.last_note >= DELIVERY_NOTE_S:
            if self.last_note is None:
                LOG.info("first export accepted by %s", self.client.url)
            else:
                LOG.info("delivered %d samples in the last %s; last export accepted at %s",
                         self.delivered_since_note, format_duration(now - self.last_note),
                         time.strftime("%H:%M:%SZ", time.gmtime()))
            self.last_note = now
            self.delivered_since_note = 0

    def note_outage(self, outcome):
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            self.last_reminder = now
            self.outage_late = 0
            self.buffer.overflow_dropped = 0
            LOG.warning("cannot deliver to %s: %s; buffering samples (up to %d) and retrying",
                        self.client.url, outcome.detail, self.buffer.max_samples)
        elif now - self.last_reminder >= 60:
            self.last_reminder = now
            LOG.warning("collector still unavailable after %s (%s); %d samples buffered",
                        format_duration(now - self.outage_since), outcome.detail, len(self.buffer))

    def end_outage(self):
        took = format_duration(time.monotonic() - self.outage_since)
        LOG.info("collector is back after %s: delivered %d samples late, dropped %d while the buffer was full",
                 took, self.outage_late, self.buffer.overflow_dropped)
        self.outage_since = None
        self.buffer.overflow_dropped = 0

    def wait_before_retry(self, outcome):
        # The greater of the backoff and the collector's Retry-After, as the OTel SDKs do: a
        # `Retry-After: 0` (or a date in the past) must not turn a retry loop into a flood.
        delay = self.backoff * (0.8 + 0.4 * jitter())
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, RETRY_AFTER_MAX_S))
        if self.stopping.is_set():
            time.sleep(min(delay, self.remaining()))
        else:
            self.stopping.wait(delay)

    def stop(self, flush_s):
        """Flush what remains for at most flush_s seconds, then return."""
        self.deadline = time.monotonic() + flush_s
        self.stopping.set()
        self.buffer.wake()
        self.join(flush_s + 0.5)


def jitter():
    """A number in [0, 1) to spread retries (without the random module: 0.25 MB resident)."""
    return int.from_bytes(os.urandom(4), "big") / 2 ** 32


def which(name):
    """shutil.which(name) without shutil, which imports bz2, lzma and zlib (0.6 MB resident)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or os.curdir, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def format_duration(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ---------------------------------------------------------------- the source process

ERROR_LINE = re.compile(r"^(error|failed|unable|field )|has failed|couldn't|not a valid field", re.IGNORECASE)
STARTUP_GRACE_S = 10.0  # the first line needs start-up time (macmon scans SMC keys) plus one interval
MAX_LINE_BYTES = 1 << 20


class SourceProcess:
    """One long-lived child (macmon / nvidia-smi). Its stdout and stderr are read in the sampling
    thread with select(): no reader threads, no hand-offs, nothing to wake while it is quiet."""

    def __init__(self, argv):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.out_fd = self.proc.stdout.fileno()
        self.err_fd = self.proc.stderr.fileno()
        self.partial = {self.out_fd: b"", self.err_fd: b""}
        self.open_fds = [self.out_fd, self.err_fd]
        self.stderr_tail = deque(maxlen=20)
        self.stdout_tail = deque(maxlen=5)

    def read(self, timeout, wake_fd):
        """Wait up to timeout for output. Returns (stdout lines as (read ns, text), ended, woken)."""
        try:
            ready, _, _ = select.select(self.open_fds + [wake_fd], [], [], timeout)
        except InterruptedError:
            return [], False, False
        woken = wake_fd in ready
        lines = []
        for fd in ready:
            if fd == wake_fd:
                continue
            chunk = os.read(fd, 65536)
            now_ns = time.time_ns()
            if not chunk:
                self.open_fds.remove(fd)
                chunk = b"\n" if self.partial[fd] else b""  # a last line without its newline
            pieces = (self.partial[fd] + chunk).split(b"\n")
            self.partial[fd] = pieces.pop()
            if len(self.partial[fd]) > MAX_LINE_BYTES:
                self.partial[fd] = b""  # runaway output with no newline: drop it
            for raw in pieces:
                text = raw.decode("utf-8", "replace").rstrip("\r")
                if fd == self.out_fd:
                    lines.append((now_ns, text))
                    self.stdout_tail.append(text)
                else:
                    self.stderr_tail.append(text)
        return lines, self.out_fd not in self.open_fds, woken

    def stop(self):
        """SIGTERM, then SIGKILL: never leave an orphaned macmon or nvidia-smi behind."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    self.proc.kill()
                try:
                    self.proc.wait(2)
                except subprocess.TimeoutExpired:
                    LOG.error("%s (pid %d) did not die after SIGKILL (stuck in the kernel?)",
                              SOURCE_NAME, self.proc.pid)
        for fd in list(self.open_fds):
            try:  # stderr may still hold the reason it died
                chunk = os.read(fd, 65536) if select.select([fd], [], [], 0)[0] else b""
                if fd == self.err_fd:
                    self.stderr_tail.extend((self.partial[fd] + chunk).decode("utf-8", "replace").splitlines())
            except OSError:
                pass
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode

    def exit_description(self):
        code = self.proc.poll()
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        # clap ends with usage hints, nvidia-smi writes its errors to stdout: pick the line that
        # says what went wrong, from stderr first.
        stderr = [line.strip() for line in self.stderr_tail if line.strip()]
        stdout = [line.strip() for line in self.stdout_tail if line.strip()]
        errors = [line for line in stderr + stdout if ERROR_LINE.search(line)]
        message = (errors or stderr or [""])[-1]
        return f"exit {code}" + (f": {message}" if message else "")


class Supervisor:
    """Keeps one source child alive: restart with capped backoff, kill when silent, stop on exit 2."""

    def __init__(self, source, interval, stats, stopping, max_starts=None, before_wait=None):
        self.source = source
        self.before_wait = before_wait  # called before each wait for output (Sender.send_inline)
        self.max_starts = max_starts  # --once and --check give up instead of retrying forever
        self.starts = 0
        self.interval = interval
        self.stats = stats
        self.stopping = stopping
        self.child = None
        self.backoff = 1.0
        self.started_once = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def lines(self):
        """Yields (read time ns, line) for every stdout line, across restarts, until stopping."""
        while not self.stopping.is_set():
            if self.max_starts is not None and self.starts >= self.max_starts:
                return
            self.starts += 1
            self.start()
            if self.child is None:
                continue
            got_line = False
            silence_s = 3 * self.interval + STARTUP_GRACE_S
            while not self.stopping.is_set():
                if self.before_wait is not None:
                    self.before_wait()
                wait_s = max(0.01, silence_s - (time.monotonic() - self.last_line))
                lines, ended, woken = self.child.read(wait_s, self.wake_r)
                if woken:
                    os.read(self.wake_r, 64)
                for read_ns, line in lines:
                    self.last_line = time.monotonic()
                    if not got_line:
                        got_line = True
                        silence_s = 3 * self.interval
                    yield read_ns, line
                    if self.stopping.is_set():
                        break
                if ended:
                    break
                if not lines and not woken and time.monotonic() - self.last_line > silence_s:
                    LOG.warning("%s printed nothing for %.1fs; restarting it", SOURCE_NAME, silence_s)
                    break
            self.finish_child(got_line)

    def start(self):
        self.source.reset()
        argv = None
        try:
            argv = self.source.command(self.interval)
            self.child = SourceProcess(argv)
        except OSError as exc:
            self.child = None
            LOG.error("cannot start %s (%s): %s", SOURCE_NAME, argv[0] if argv else "?", exc)
            self.pause()
            return
        if self.started_once:
            with self.stats.lock:
                self.stats.source_restarts += 1
        self.started_once = True
        self.last_line = time.monotonic()
        LOG.info("started %s (pid %d): %s", SOURCE_NAME, self.child.proc.pid, " ".join(argv))

    def finish_child(self, got_line):
        self.child.stop()
        if self.stopping.is_set():
            return
        code = self.child.proc.returncode
        description = self.child.exit_description()
        if code == 2:
            raise SourceUsageError(f"{SOURCE_NAME} rejected its arguments ({description}); "
                                   f"command was: {' '.join(self.child.argv)}")
        if got_line:
            self.backoff = 1.0
        LOG.warning("%s stopped (%s); restarting in %.0fs", SOURCE_NAME, description, self.backoff)
        self.pause()

    def pause(self):
        self.stopping.wait(self.backoff)
        self.backoff = min(self.backoff * 2, 30.0)

    def wake(self):
        """Interrupt the wait for output (the stop event is already set). Safe in a signal handler."""
        try:
            os.write(self.wake_w, b"!")
        except OSError:
            pass

    def close(self):
        # The wake pipe stays open: a late signal handler must never write into a reused fd.
        if self.child is not None:
            self.child.stop()




# ---------------------------------------------------------------- running

def setup_logging(level):
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    LOG.handlers[:] = [handler]
    LOG.setLevel(level)
    LOG.propagate = False


def print_console(table, sample, out=None):
    """A readable rendering of one sample: what would be sent."""
    out = out or sys.stdout
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sample.time_ns / 1e9))
    lines = []
    for name, point in sample.points:
        document = json.loads(point)
        value = document.get("asDouble", document.get("asInt"))
        attrs = " ".join(f"{a['key']}={list(a['value'].values())[0]}" for a in document.get("attributes", []))
        unit = table.by_name[name][0]
        lines.append(f"{stamp}Z  {name:<34} {value!s:>22} {unit:<10} {attrs}\n")
    try:
        out.write("".join(lines))
        out.flush()
    except BrokenPipeError:  # `--console | head -1`: the reader is gone; stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        except (OSError, ValueError):
            pass
        raise KeyboardInterrupt


class Exporter:
    """Wires the pieces: supervisor -> source parser -> samples -> buffer -> sender."""

    def __init__(self, args, source):
        if args.buffer_max is None:  # one hour of samples
            args.buffer_max = max(1, int(3600 / args.interval)) * source.rows_per_interval()
        args.batch_max = min(args.batch_max, args.buffer_max)
        self.args = args
        self.source = source
        self.table = MetricTable(SOURCE_METRICS + source.extra_metrics() + SELF_METRICS)
        self.stats = Stats(time.time_ns())
        self.buffer = SampleBuffer(args.buffer_max, self.stats)
        self.stopping = threading.Event()
        self.resource_json = encode_attributes(sorted(args.resource_attributes.items()))
        self.spool = Spool(args.spool_dir, args.spool_max_bytes, self.stats) if args.spool_dir else None
        self.client = None
        self.sender = None
        self.supervisor = None
        self.next_self_report = 0.0

    def stop(self):
        """From a signal handler: stop sampling now, then flush (see shutdown)."""
        self.stopping.set()
        if self.supervisor is not None:
            self.supervisor.wake()

    def make_client(self):
        a = self.args
        return OtlpHttpClient(a.url, a.http_headers, a.timeout_s, a.compression, a.certificate)

    def sample_from(self, read_ns, line):
        """Parse one source line into a Sample, or None when the line carries no data."""
        try:
            parsed = self.source.parse_line(line, read_ns)
        except ValueError as exc:
            with self.stats.lock:
                self.stats.lines_skipped += 1
            LOG.debug("skipped a %s line (%s): %.120s", SOURCE_NAME, exc, line)
            return None
        if parsed is None:
            return None
        time_ns, points = parsed
        with self.stats.lock:
            self.stats.samples_read += 1
        now = time.monotonic()
        if self.source.starts_round() and now >= self.next_self_report:
            # The exporter's own series: with the first sample, then at most every
            # --self-report-interval (never once per GPU row): counters need no more, and sending
            # them with every sample would cost as much as the data.
            self.next_self_report = now + self.args.self_report_interval
            points = points + self.stats.points(time_ns, len(self.buffer))
        return Sample(time_ns, points)

    def run(self):
        if self.args.exporter == "otlp":
            self.client = self.make_client()
            self.sender = Sender(self.client, self.buffer, self.stats, self.table, self.resource_json,
                                 self.args.batch_max, inline_wait_s=min(0.2, self.args.interval / 2))
            if self.spool:
                self.buffer.prepend(self.spool.load())
            self.sender.start()
        supervisor = self.supervisor = Supervisor(self.source, self.args.interval, self.stats, self.stopping,
                                                  before_wait=self.sender.send_inline if self.sender else None)
        LOG.info("%s %s: sampling every %gs, %s", SERVICE_NAME, __version__, self.args.interval,
                 f"sending to {self.args.url}" if self.client else f"exporter {self.args.exporter}")
        last_spool = time.monotonic()
        try:
            for read_ns, line in supervisor.lines():
                sample = self.sample_from(read_ns, line)
                if sample is None:
                    continue
                if self.args.exporter == "console":
                    print_console(self.table, sample)
                elif self.args.exporter == "otlp":
                    self.buffer.add(sample)
                    if self.spool and time.monotonic() - last_spool > 30 and self.sender.outage_since:
                        self.spool.save(self.buffer.snapshot())
                        last_spool = time.monotonic()
        finally:
            supervisor.close()
        return self.shutdown()

    def shutdown(self):
        if self.sender is not None:
            self.sender.stop(5.0)
            remaining = self.buffer.snapshot()
            if self.spool:
                if remaining:
                    kept = self.spool.save(remaining)
                    LOG.info("spool: wrote %d unsent samples to %s", kept, self.spool.path)
                else:
                    self.spool.clear()
            elif remaining:
                self.stats.dropped("shutdown", remaining)
                LOG.warning("%d samples were not delivered before exit (use --spool-dir to keep them)",
                            len(remaining))
            self.client.close()
        LOG.info("stopped: %s", self.stats.summary())
        return EXIT_OK


def first_round(exporter, supervisor):
    """The samples of one whole source round, for --once and --check: every GPU row of one
    nvidia-smi round (and RAPL, which comes with the round's first row), one line for macmon."""
    samples = []
    expected = None
    for read_ns, line in supervisor.lines():
        sample = exporter.sample_from(read_ns, line)
        if sample is None:
            continue
        if samples and exporter.source.starts_round():
            break  # the next round began: this round had fewer rows than the source announced
        samples.append(sample)
        if expected is None:
            expected = exporter.source.rows_per_interval()
        if len(samples) >= expected:
            break
    return samples


def read_first_round(exporter, interval, max_starts):
    """Start the source, take one whole round, stop the source. [] when it gave nothing usable."""
    stopping = threading.Event()
    supervisor = Supervisor(exporter.source, interval, exporter.stats, stopping, max_starts=max_starts)
    try:
        return first_round(exporter, supervisor)
    finally:
        stopping.set()
        supervisor.close()


def post_samples(exporter, samples):
    """One request with these samples, on a connection of its own. Returns the Outcome."""
    client = exporter.make_client()
    try:
        return client.post(build_request(exporter.table, exporter.resource_json, samples))
    finally:
        client.close()


def count_points(samples):
    return sum(len(sample.points) for sample in samples)


def run_once(args, source):
    """One round of the source, one send: exit 0 only if the collector accepted it."""
    exporter = Exporter(args, source)
    samples = read_first_round(exporter, args.interval, max_starts=3)
    if not samples:
        LOG.error("no sample from %s", SOURCE_NAME)
        return EXIT_EXPORT_FAILED
    if args.exporter != "otlp":
        if args.exporter == "console":
            for sample in samples:
                print_console(exporter.table, sample)
        return EXIT_OK
    outcome = post_samples(exporter, samples)
    if outcome.kind in ("ok", "partial"):
        LOG.info("sent %d sample%s (%d data points) to %s%s", len(samples), "" if len(samples) == 1 else "s",
                 count_points(samples), args.url,
                 f"; {outcome.rejected} rejected: {outcome.detail}" if outcome.kind == "partial" else "")
        return EXIT_OK if outcome.kind == "ok" else EXIT_EXPORT_FAILED
    LOG.error("the collector at %s did not accept the samples: %s", args.url, outcome.detail)
    return EXIT_EXPORT_FAILED


# ---------------------------------------------------------------- --check

def on_link_private(address, ifconfig_text):
    """True when a private address lies in a subnet of one of this Mac's interfaces (ifconfig output)."""
    import ipaddress
    try:
        target = ipaddress.ip_address(address)
    except ValueError:
        return False
    if not target.is_private or target.is_loopback:
        return False
    for found in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+) netmask (0x[0-9a-fA-F]+)", ifconfig_text):
        mask = int(found.group(2), 16)
        network = ipaddress.ip_network(f"{found.group(1)}/{bin(mask).count('1')}", strict=False)
        if target in network and not ipaddress.ip_address(found.group(1)).is_loopback:
            return True
    return False


LOCAL_NETWORK_HINT = ("macOS Local Network privacy is blocking this process from reaching {addr} on the local "
                      "subnet (macOS 15+ blocks LaunchAgents silently). Fix: run the exporter as a LaunchDaemon "
                      "(mode daemon in deploy/hosts), or send to a collector on 127.0.0.1 that forwards.")


class CheckReport:
    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.failed = False

    def ok(self, what, detail=""):
        self.out.write(f"  OK    {what}{': ' + detail if detail else ''}\n")

    def warn(self, what, detail=""):
        self.out.write(f"  WARN  {what}{': ' + detail if detail else ''}\n")

    def fail(self, what, detail=""):
        self.failed = True
        self.out.write(f"  FAIL  {what}{': ' + detail if detail else ''}\n")


def check_collector(args, report):
    parts = urllib.parse.urlsplit(args.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        report.ok("endpoint resolves", f"{parts.hostname} -> {', '.join(addresses)}")
    except socket.gaierror as exc:
        report.fail("endpoint resolves", f"{parts.hostname}: {exc.strerror}; check the host name in --endpoint")
        return None
    # Every address in turn, as the sender's connect does (`localhost` is ::1 first on macOS).
    failures = []
    for address in addresses:
        try:
            with socket.create_connection((address, port), timeout=args.timeout_s):
                pass
        except OSError as exc:
            failures.append((address, exc))
            continue
        tried = f" (nothing on {', '.join(a for a, _e in failures)})" if failures else ""
        report.ok("TCP connect", f"{address}:{port}{tried}")
        return address
    address, exc = failures[0]
    if exc.errno == errno.EHOSTUNREACH and sys.platform == "darwin":
        try:
            ifconfig = subprocess.run(["/sbin/ifconfig"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            ifconfig = ""
        if on_link_private(address, ifconfig):
            report.fail("TCP connect", LOCAL_NETWORK_HINT.format(addr=address))
            return None
    tried = ", ".join(f"{a}:{port}: {e.strerror or e}" for a, e in failures)
    report.fail("TCP connect", f"{tried}; is the collector running and listening on that address?")
    return None


def run_check(args, source):
    report = CheckReport()
    print(f"{SERVICE_NAME} {__version__} --check")
    sample_ok = source.check(report, args)
    exporter = Exporter(args, source)
    samples = []
    if sample_ok:
        try:
            samples = read_first_round(exporter, min(args.interval, 1.0), max_starts=2)
        except SourceUsageError as exc:
            report.fail("one sample", str(exc))
        if samples:
            report.ok("one sample parsed", f"{len(samples)} row{'' if len(samples) == 1 else 's'}, "
                                           f"{count_points(samples)} data points")
        else:
            report.fail("one sample parsed", f"{SOURCE_NAME} gave no usable line")
    if args.exporter == "otlp" and check_collector(args, report):
        if not samples:
            samples = [Sample(time.time_ns(), exporter.stats.points(time.time_ns(), 0))]
        outcome = post_samples(exporter, samples)
        if outcome.kind == "ok":
            report.ok("collector accepted a POST", args.url)
        else:
            report.fail("collector accepted a POST", f"{args.url}: {outcome.detail or outcome.kind}")
    print("result: " + ("problems found" if report.failed else "all checks passed"))
    return EXIT_EXPORT_FAILED if report.failed else EXIT_OK


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    setup_logging("INFO")
    try:
        env_file = env_get("TPW_ENV_FILE")
        for i, arg in enumerate(argv):
            if arg == "--env-file" and i + 1 < len(argv):
                env_file = argv[i + 1]
            elif arg.startswith("--env-file="):
                env_file = arg.split("=", 1)[1]
        if env_file:
            load_env_file(env_file)
        parser = build_parser(Source.SETTINGS, Source.DESCRIPTION)
        args = parser.parse_args(argv)
        if args.list_metrics:
            table = MetricTable(SOURCE_METRICS + Source.extra_metrics() + SELF_METRICS)
            print(json.dumps(table.as_json(), indent=2))
            return EXIT_OK
        args = finish_config(args)
        setup_logging(args.log_level)
        source = Source(args)
        if args.check:
            return run_check(args, source)
        source.locate()
        if args.once:
            return run_once(args, source)
        exporter = Exporter(args, source)

        def on_signal(signum, _frame):
            LOG.info("received %s: stopping", signal.Signals(signum).name)
            exporter.stop()

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a closed terminal stops cleanly too
            signal.signal(signum, on_signal)
        return exporter.run()
    except ConfigError as exc:
        sys.stderr.write(f"{SERVICE_NAME}: {exc}\n")
        return exc.code
    except SourceUsageError as exc:
        LOG.error("%s; this is a configuration error, not retrying", exc)
        return EXIT_SOURCE_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


# ===== END SHARED CORE =====


# ---------------------------------------------------------------- nvidia-smi: where it lives

def find_nvidia_smi(explicit):
    looked = []
    for label, path in (("--nvidia-smi", explicit), ("$NVIDIA_SMI", env_get("NVIDIA_SMI"))):
        if path:
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
            raise ConfigError(f"{label} points at {path}, which is not an executable file", EXIT_NO_SOURCE)
    on_path = which("nvidia-smi")
    if on_path:
        return on_path
    looked.append("PATH")
    for path in ("/usr/bin/nvidia-smi", "/usr/local/bin/nvidia-smi"):
        looked.append(path)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ConfigError("nvidia-smi not found; looked in: " + ", ".join(looked) +
                      ". Install the NVIDIA driver or pass --nvidia-smi PATH", EXIT_NO_SOURCE)




class SourceStartError(OSError):
    """nvidia-smi could not tell us its fields; the supervisor backs off and tries again."""


def run_nvidia_smi(path, args, timeout):
    """One short nvidia-smi call with a hard timeout. Returns (exit code, stdout)."""
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise SourceStartError(f"`nvidia-smi {' '.join(args)}` did not answer within {timeout:.0f}s")
    return done.returncode, done.stdout + done.stderr


def offered_fields(help_text):
    """Every field name and alias listed by --help-query-gpu (`"name" or "alias"` lines)."""
    names = set()
    for line in help_text.splitlines():
        if line.startswith('"'):
            names.update(re.findall(r'"([^"]+)"', line))
    return names


# What we ask for: (our key, the names nvidia-smi knows it by, newest first).
WANTED_FIELDS = [
    ("index", ("index",)),
    ("uuid", ("uuid", "gpu_uuid")),
    ("name", ("name", "gpu_name")),
    ("pci.bus_id", ("pci.bus_id", "gpu_bus_id")),
    ("power.draw", ("power.draw",)),
    ("power.draw.average", ("power.draw.average", "gpu.power.draw.average")),
    ("power.draw.instant", ("power.draw.instant", "gpu.power.draw.instant")),
    ("module.power.draw.average", ("module.power.draw.average",)),
    ("enforced.power.limit", ("enforced.power.limit", "gpu.power.current_limit")),
    ("temperature.gpu", ("temperature.gpu",)),
    ("temperature.memory", ("temperature.memory",)),
    ("utilization.gpu", ("utilization.gpu",)),
    ("utilization.memory", ("utilization.memory",)),
    ("memory.used", ("memory.used",)),
    ("memory.total", ("memory.total",)),
    ("clocks.sm", ("clocks.sm", "clocks.current.sm")),
    ("clocks.mem", ("clocks.mem", "clocks.current.memory")),
    ("fan.speed", ("fan.speed",)),
    ("pstate", ("pstate",)),
    ("clock_events", ("clocks_event_reasons.active", "clocks_throttle_reasons.active")),
]
IDENTITY = ("index", "uuid", "name", "pci.bus_id")

# "No value" spellings; any other bracketed text is treated the same way.
ABSENT = {"", "n/a", "[n/a]", "[not supported]", "[unknown error]", "[insufficient permissions]",
          "[requested functionality has been deprecated]", "[function not found]", "[gpu is lost]", "err!"}

# NVML clock event reason bits (nvml.h nvmlClocksEventReason*)
SW_POWER_CAP, HW_SLOWDOWN, SW_THERMAL, HW_THERMAL, HW_POWER_BRAKE = 0x4, 0x8, 0x20, 0x40, 0x80


def choose_fields(offered):
    """(our keys, the names to query) for the fields this driver offers, in WANTED_FIELDS order."""
    keys, names = [], []
    for key, aliases in WANTED_FIELDS:
        for name in aliases:
            if name in offered:
                keys.append(key)
                names.append(name)
                break
    return keys, names


def cell_number(text):
    """A CSV cell as a float, or None for every spelling of "no value"."""
    text = text.strip()
    if text.lower() in ABSENT or text.startswith("["):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if finite(value) else None


def pstate_number(text):
    found = re.fullmatch(r"P(\d{1,2})", text.strip())
    return int(found.group(1)) if found else None


class RaplReader:
    """Linux RAPL energy counters (/sys/class/powercap/intel-rapl:*), wrap-safe, as J and W per zone."""

    def __init__(self, root):
        self.root = root
        self.zones = {}     # path -> zone name
        self.previous = {}  # path -> (energy_uj, time_ns)
        self.total_j = {}
        self.max_uj = {}
        self.start_ns = None
        self.disabled = None
        self.discover()

    def discover(self):
        paths = sorted(glob.glob(os.path.join(self.root, "intel-rapl:*")))
        if not paths:
            self.disabled = f"no RAPL zones under {self.root} (not an Intel/AMD host, or powercap not loaded)"
            return
        names = {}
        for path in paths:
            name = self.read_text(os.path.join(path, "name")) or os.path.basename(path)
            names[os.path.basename(path)] = name
        for path in paths:
            base = os.path.basename(path)
            parent = base.rsplit(":", 1)[0]
            zone = names[base] if base.count(":") == 1 else f"{names.get(parent, parent)}/{names[base]}"
            self.zones[path] = zone
            self.max_uj[path] = int(self.read_text(os.path.join(path, "max_energy_range_uj")) or 0)
        for path in self.zones:
            try:
                with open(os.path.join(path, "energy_uj")) as fh:
                    fh.read()
            except PermissionError:
                self.disabled = (f"RAPL is not readable ({path}/energy_uj: permission denied; root-only since "
                                 f"Linux 5.10): host.power.cpu is left out. Run as root to include CPU power")
                return
            except OSError as exc:
                self.disabled = f"RAPL is not readable ({path}/energy_uj: {exc.strerror})"
                return

    @staticmethod
    def read_text(path):
        try:
            with open(path) as fh:
                return fh.read().strip()
        except OSError:
            return None

    def points(self, time_ns):
        """host.energy.cpu and host.power.cpu points for every zone, from one read of the counters."""
        if self.disabled:
            return []
        if self.start_ns is None:
            self.start_ns = time_ns
        out = []
        for path, zone in self.zones.items():
            text = self.read_text(os.path.join(path, "energy_uj"))
            if text is None or not text.isdigit():
                continue
            energy_uj = int(text)
            previous = self.previous.get(path)
            self.previous[path] = (energy_uj, time_ns)
            if previous is None:
                self.total_j[path] = 0.0
                continue
            delta_uj = energy_uj - previous[0]
            if delta_uj < 0:  # the counter wrapped at max_energy_range_uj
                delta_uj += self.max_uj[path] if self.max_uj[path] else 0
            if delta_uj < 0:
                continue
            seconds = (time_ns - previous[1]) / 1e9
            self.total_j[path] += delta_uj / 1e6
            attributes = (("rapl.zone", zone),)
            out.append(("host.energy.cpu", encode_point(time_ns, self.total_j[path], attributes, self.start_ns)))
            if seconds > 0:
                out.append(("host.power.cpu", encode_point(time_ns, delta_uj / 1e6 / seconds, attributes)))
        return out


class Source:
    """nvidia-smi as the source of samples: its fields, its command line, and its rows."""

    DESCRIPTION = ("Send NVIDIA GPU power, temperature and load from nvidia-smi (and host CPU power from "
                   "Linux RAPL) to an OpenTelemetry Collector as OTLP/HTTP JSON metrics.")
    SETTINGS = [
        ("--nvidia-smi", "NVIDIA_SMI", None, "nvidia-smi binary; else PATH, /usr/bin, /usr/local/bin"),
        ("--rapl-root", "TPW_RAPL_ROOT", "/sys/class/powercap", "where the RAPL powercap tree is"),
        ("--nvidia-smi-timeout", "TPW_NVIDIA_SMI_TIMEOUT", "20",
         "seconds to wait for one-off calls (--help-query-gpu takes seconds on big boxes; a hung driver "
         "must not hang the exporter)"),
    ]

    def __init__(self, args):
        self.args = args
        try:
            self.timeout = float(args.nvidia_smi_timeout)
        except ValueError:
            raise ConfigError(f"--nvidia-smi-timeout {args.nvidia_smi_timeout!r}: a number of seconds")
        self.path = None
        self.keys = []
        self.missing = []
        self.energy = {}
        self.previous = {}
        self.rapl = None
        self.rapl_announced = False
        self.xid_logged = 0.0
        self.lowest_index = None
        self.round_start = True
        self.gpu_count = None

    @staticmethod
    def extra_metrics():
        return RAPL_METRICS

    def locate(self):
        self.path = find_nvidia_smi(self.args.nvidia_smi)

    def command(self, interval):
        """Ask this driver which fields it offers, then stream only those."""
        if self.path is None:
            self.locate()
        code, text = run_nvidia_smi(self.path, ["--help-query-gpu"], self.timeout)
        offered = offered_fields(text) if code == 0 else set()
        if not offered:
            first = next((line for line in text.splitlines() if line.strip()), "no output")
            raise SourceStartError(f"`nvidia-smi --help-query-gpu` failed (exit {code}): {first.strip()}")
        self.keys, names = choose_fields(offered)
        self.missing = [key for key, _aliases in WANTED_FIELDS if key not in self.keys]
        if any(key not in self.keys for key in IDENTITY):
            raise SourceStartError("this nvidia-smi offers no index/uuid/name/pci.bus_id fields")
        if self.missing:
            LOG.info("this driver does not offer: %s (those series are left out)", ", ".join(self.missing))
        if self.rapl is None:
            # Read the counters once now, so the first round's row already has a window to give
            # CPU power over (--once sends that round alone).
            self.rapl = RaplReader(self.args.rapl_root)
            self.rapl.points(time.time_ns())
        return [self.path, "--query-gpu=" + ",".join(names), "--format=csv,noheader,nounits",
                "-lms", str(max(100, int(round(interval * 1000))))]

    def reset(self):
        """A new nvidia-smi process starts new energy series (new start time)."""
        self.energy = {}
        self.previous = {}

    def parse_line(self, line, read_ns):
        if not line.strip():
            return None
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(self.keys) or not cells[0].isdigit():
            if "xid" in line.lower() or "ecc" in line.lower():
                self.log_event(line)
                return None
            raise ValueError(f"expected {len(self.keys)} columns, got {len(cells)}")
        row = dict(zip(self.keys, cells))
        if not row["uuid"].startswith(("GPU-", "MIG-")):
            raise ValueError(f"bad GPU UUID {row['uuid']!r}")
        return read_ns, self.points(read_ns, row) + self.host_points(read_ns, row)

    def log_event(self, line):
        """Xid/ECC messages interleave with rows; they matter to an operator, so log them (rate-limited)."""
        now = time.monotonic()
        if now - self.xid_logged > 60:
            self.xid_logged = now
            LOG.warning("nvidia-smi reported: %s", line.strip()[:200])

    def points(self, time_ns, row):
        attributes = (("gpu.index", row["index"]), ("gpu.uuid", row["uuid"]), ("gpu.name", row["name"]),
                      ("gpu.pci.bus_id", row["pci.bus_id"]))
        readings = {}

        def scaled(metric, key, factor=1.0, as_int=False, percent=False):
            value = cell_number(row.get(key, ""))
            if value is not None and value >= 0:  # a negative power, temperature or size is no reading
                if percent:
                    readings[metric] = value / 100.0
                else:
                    readings[metric] = int(round(value * factor)) if as_int else value * factor

        scaled("gpu.power.board", "power.draw")
        scaled("gpu.power.average", "power.draw.average")
        scaled("gpu.power.instant", "power.draw.instant")
        scaled("gpu.power.module", "module.power.draw.average")
        scaled("gpu.power.limit", "enforced.power.limit")
        scaled("gpu.temp.core", "temperature.gpu")
        scaled("gpu.temp.memory", "temperature.memory")
        scaled("gpu.utilization.gpu", "utilization.gpu", percent=True)
        scaled("gpu.utilization.memory", "utilization.memory", percent=True)
        scaled("gpu.memory.used", "memory.used", 1048576, as_int=True)
        scaled("gpu.memory.total", "memory.total", 1048576, as_int=True)
        scaled("gpu.clock.sm", "clocks.sm", 1e6, as_int=True)
        scaled("gpu.clock.memory", "clocks.mem", 1e6, as_int=True)
        scaled("gpu.fan.speed", "fan.speed", percent=True)
        pstate = pstate_number(row.get("pstate", ""))
        if pstate is not None:
            readings["gpu.pstate"] = pstate
        events = row.get("clock_events", "").strip()
        if re.fullmatch(r"0x[0-9a-fA-F]+", events):
            mask = int(events, 16)
            readings["gpu.throttle.power"] = 1 if mask & (SW_POWER_CAP | HW_POWER_BRAKE) else 0
            readings["gpu.throttle.thermal"] = 1 if mask & (SW_THERMAL | HW_THERMAL) else 0
        points = encode_gauges(time_ns, readings, attributes)
        energy = self.energy_point(time_ns, row["uuid"], readings.get("gpu.power.board"), attributes)
        return points + energy

    def energy_point(self, time_ns, gpu, watts, attributes):
        """Trapezoids between consecutive rows of the same GPU; a row without power breaks the chain."""
        previous = self.previous.get(gpu)
        self.previous[gpu] = (time_ns, watts) if watts is not None else None
        if watts is None:
            return []
        counter = self.energy.get(gpu)
        if counter is None:
            # The series starts at this row; its first point comes with the next row.
            self.energy[gpu] = EnergyCounter(time_ns)
            return []
        if previous is not None:
            seconds = window_seconds(previous[0], time_ns, self.args.interval)
            counter.add((previous[1] + watts) / 2.0, seconds)
        return [("gpu.energy", encode_point(time_ns, counter.joules, attributes, counter.start_ns))]

    def starts_round(self):
        """True when the last row parsed was the first of a round (the lowest GPU index)."""
        return self.round_start

    def host_points(self, time_ns, row):
        """RAPL is read once per nvidia-smi round: on the row of the lowest GPU index."""
        index = int(row["index"])
        if self.lowest_index is None or index < self.lowest_index:
            self.lowest_index = index
        self.round_start = index == self.lowest_index
        if not self.round_start:
            return []
        if self.rapl is None:
            self.rapl = RaplReader(self.args.rapl_root)
        if self.rapl.disabled and not self.rapl_announced:
            self.rapl_announced = True
            LOG.info("%s", self.rapl.disabled)
        return self.rapl.points(time_ns)

    def rows_per_interval(self):
        """One sample per GPU row: the buffer's default hour is this many samples per interval."""
        if self.gpu_count is None:
            self.gpu_count = 1
            try:
                code, text = run_nvidia_smi(self.path, ["-L"], self.timeout)
                if code == 0:
                    self.gpu_count = max(1, sum(1 for line in text.splitlines() if line.startswith("GPU ")))
            except SourceStartError as exc:
                LOG.warning("%s", exc)
        return self.gpu_count

    def check(self, report, args):
        try:
            self.locate()
        except ConfigError as exc:
            report.fail("nvidia-smi found", str(exc))
            return False
        report.ok("nvidia-smi found", self.path)
        try:
            code, text = run_nvidia_smi(self.path, ["--query-gpu=driver_version,persistence_mode,name",
                                                    "--format=csv,noheader"], self.timeout)
            if code != 0:
                report.fail("driver answers", f"exit {code}: {text.strip().splitlines()[0] if text.strip() else ''}")
                return False
            rows = [line for line in text.splitlines() if line.strip()]
            report.ok("driver version", rows[0].split(",")[0].strip() if rows else "unknown")
            report.ok("GPUs seen", f"{len(rows)}: " + "; ".join(r.split(",")[2].strip() for r in rows if
                                                             r.count(",") >= 2))
            off = [i for i, r in enumerate(rows) if ", Disabled," in r + ","]
            if off:
                report.warn("persistence mode", f"off on GPU {off}: each nvidia-smi start re-initialises the GPU; "
                                                "enable it with `nvidia-smi -pm 1` or nvidia-persistenced")
            else:
                report.ok("persistence mode", "on")
            self.command(args.interval)
        except SourceStartError as exc:
            report.fail("driver answers", str(exc))
            return False
        if self.missing:
            report.warn("fields this driver lacks", ", ".join(self.missing))
        else:
            report.ok("fields", "every wanted field is offered")
        rapl = RaplReader(args.rapl_root)
        if rapl.disabled:
            report.warn("RAPL (host CPU power)", rapl.disabled)
        else:
            report.ok("RAPL (host CPU power)", ", ".join(rapl.zones.values()))
        return True


if __name__ == "__main__":
    sys.exit(main())
