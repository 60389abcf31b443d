#!/usr/bin/env python3
"""nvsmi-otel-exporter: NVIDIA GPU power, temperature and load as OTLP/JSON metrics.

Reads every GPU once per interval, either from the driver's own library (NVML, libnvidia-ml.so.1,
through ctypes: the GPU's energy counter where it has one, no child process) or from one
long-lived `nvidia-smi --query-gpu=... --format=csv,noheader,nounits -lms <ms>` child, turns each
GPU's row into readings (gpu.power.*, gpu.energy, gpu.temp.*, ...) and sends them to an
OpenTelemetry Collector over OTLP/HTTP with JSON encoding. Where Linux RAPL is readable it adds
host CPU power (host.power.cpu, host.energy.cpu), so an NVIDIA node compares fairly with a Mac
whose mac.power.total includes the CPU.

One file, Python standard library only, Python 3.9+:

    scp nvsmi-otel-exporter.py gpu-box:
    python3 nvsmi-otel-exporter.py --endpoint http://ai-stack.local:4318

Works from old drivers (R390, Maxwell) to current ones (R610): with nvidia-smi it asks
`--help-query-gpu` at every start which fields this driver offers and queries only those, because
one unknown field makes nvidia-smi fail the whole query; with NVML a call this driver lacks is
skipped. A reading the GPU cannot give ([N/A], NOT_SUPPORTED, ...) is left out, never sent as 0.

Read top to bottom: what this exporter sends and where each backend reads it (FIELDS), how
nvidia-smi is found and asked, how a cell becomes a reading, RAPL, NVML, the Source class that
makes readings of either backend's rows, then the shared core that buffers and sends (the same
text in every exporter). Run with --help for every flag, its environment variable and its default.
"""
from __future__ import annotations

import argparse
import errno
import glob
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from _queue import Empty, SimpleQueue  # queue.py would load 0.3 MB more for these two
from collections import deque

__version__ = "0.1.0"

SERVICE_NAME = "nvsmi-otel-exporter"
SCOPE_NAME = "tokens-per-watt/nvidia-smi"
DEFAULT_CLUSTER = "nvidia"
SOURCE_NAME = "nvidia-smi"

GAUGE, SUM = "gauge", "sum"


# ---------------------------------------------------------------- what is sent, from where

# One row per series; adding a series is adding a row. Columns: metric name, unit, our key for the
# field, the names nvidia-smi knows it by (newest first: the first this driver offers is queried),
# the NVML call that reads it (call, its argument, the divisor to nvidia-smi's unit), how to read
# the value (a function below, the same for both backends), description. Every GPU reading carries
# gpu.index, gpu.uuid, gpu.name and gpu.pci.bus_id. The metric table, the nvidia-smi query, the
# NVML reads and the parser come from here. NVML "field" calls are nvmlDeviceGetFieldValues ids
# (nvml.h NVML_FI_DEV_*), with a scope where it is not the GPU's own (1: the whole module).
FIELDS = [
    ("gpu.power.board", "W", "power.draw", ("power.draw",), ("nvmlDeviceGetPowerUsage", None, 1000), "number",
     "Board power (power.draw / nvmlDeviceGetPowerUsage: 1 s average on Ampere+, else instant)"),
    ("gpu.power.average", "W", "power.draw.average", ("power.draw.average", "gpu.power.draw.average"),
     ("field", 185, 1000), "number", "Board power averaged over 1 s (power.draw.average, R535+)"),
    ("gpu.power.instant", "W", "power.draw.instant", ("power.draw.instant", "gpu.power.draw.instant"),
     ("field", 186, 1000), "number", "Instantaneous board power (power.draw.instant, R535+)"),
    ("gpu.power.module", "W", "module.power.draw.average", ("module.power.draw.average",),
     ("field", (185, 1), 1000), "number", "Whole-module power, e.g. Grace+GPU (module.power.draw.average)"),
    ("gpu.power.limit", "W", "enforced.power.limit", ("enforced.power.limit", "gpu.power.current_limit"),
     ("nvmlDeviceGetEnforcedPowerLimit", None, 1000), "number", "Enforced power limit (enforced.power.limit)"),
    ("gpu.temp.core", "Cel", "temperature.gpu", ("temperature.gpu",), ("nvmlDeviceGetTemperature", 0, 1),
     "number", "GPU core temperature (temperature.gpu)"),
    ("gpu.temp.memory", "Cel", "temperature.memory", ("temperature.memory",), ("field", 82, 1), "number",
     "HBM temperature (temperature.memory)"),
    ("gpu.utilization.gpu", "1", "utilization.gpu", ("utilization.gpu",),
     ("nvmlDeviceGetUtilizationRates", "gpu", 1), "percent", "Time a kernel was running, 0-1 (utilization.gpu / 100)"),
    ("gpu.utilization.memory", "1", "utilization.memory", ("utilization.memory",),
     ("nvmlDeviceGetUtilizationRates", "memory", 1), "percent",
     "Time memory was read or written, 0-1 (utilization.memory / 100)"),
    ("gpu.memory.used", "By", "memory.used", ("memory.used",), ("nvmlDeviceGetMemoryInfo", "used", 1048576),
     "mebibytes", "Framebuffer memory in use (memory.used MiB x 1048576)"),
    ("gpu.memory.total", "By", "memory.total", ("memory.total",), ("nvmlDeviceGetMemoryInfo", "total", 1048576),
     "mebibytes", "Framebuffer memory size (memory.total MiB x 1048576)"),
    ("gpu.clock.sm", "Hz", "clocks.sm", ("clocks.sm", "clocks.current.sm"), ("nvmlDeviceGetClockInfo", 1, 1),
     "megahertz", "SM clock (clocks.sm MHz x 1e6)"),
    ("gpu.clock.memory", "Hz", "clocks.mem", ("clocks.mem", "clocks.current.memory"), ("nvmlDeviceGetClockInfo", 2, 1),
     "megahertz", "Memory clock (clocks.mem MHz x 1e6)"),
    ("gpu.fan.speed", "1", "fan.speed", ("fan.speed",), ("nvmlDeviceGetFanSpeed", None, 1), "percent",
     "Intended fan speed, 0-1 (fan.speed / 100; may exceed 1)"),
    ("gpu.pstate", "1", "pstate", ("pstate",), ("nvmlDeviceGetPerformanceState", None, 1), "pstate",
     "Performance state: P0 -> 0 ... P15 -> 15"),
    ("gpu.throttle.power", "1", "clock_events", ("clocks_event_reasons.active", "clocks_throttle_reasons.active"),
     ("nvmlDeviceGetCurrentClocksEventReasons", None, 1), "power_events",
     "1 while a power-cap or power-brake clock event is active, else 0"),
    ("gpu.throttle.thermal", "1", "clock_events", ("clocks_event_reasons.active", "clocks_throttle_reasons.active"),
     ("nvmlDeviceGetCurrentClocksEventReasons", None, 1), "thermal_events",
     "1 while a thermal slowdown clock event is active, else 0"),
]
# Who each row is about: asked for first, in this order, on every driver.
IDENTITY_FIELDS = [("index", ("index",)), ("uuid", ("uuid", "gpu_uuid")), ("name", ("name", "gpu_name")),
                   ("pci.bus_id", ("pci.bus_id", "gpu_bus_id"))]
IDENTITY = tuple(key for key, _names in IDENTITY_FIELDS)
# gpu.energy: the GPU's own counter (NVML, Volta and later: nvmlDeviceGetTotalEnergyConsumption, mJ)
# where it has one, else gpu.power.board integrated; the attribute gpu.energy.source says which.
ENERGY = ("gpu.energy", "gpu.power.board",
          "Board energy since the series start: the GPU's energy counter (gpu.energy.source=counter), "
          "or gpu.power.board integrated over the real time between rows (gpu.energy.source=integrated)")

SOURCE_METRICS = ([(name, unit, GAUGE, text) for name, unit, _key, _names, _nvml, _how, text in FIELDS]
                  + [(ENERGY[0], "J", SUM, ENERGY[2])])
# What we ask nvidia-smi for: (our key, the names nvidia-smi knows it by), each key once.
WANTED_FIELDS = IDENTITY_FIELDS + list({key: (key, names) for _n, _u, key, names, _v, _h, _t in FIELDS}.values())

RAPL_METRICS = [
    ("host.energy.cpu", "J", SUM, "CPU energy from Linux RAPL, per zone (attribute rapl.zone)"),
    ("host.power.cpu", "W", GAUGE, "CPU power from Linux RAPL over the last interval, per zone (rapl.zone)"),
]


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


# ---------------------------------------------------------------- nvidia-smi: one row -> readings

# "No value" spellings; any other bracketed text is treated the same way.
ABSENT = {"", "n/a", "[n/a]", "[not supported]", "[unknown error]", "[insufficient permissions]",
          "[requested functionality has been deprecated]", "[function not found]", "[gpu is lost]", "err!"}

# NVML clock event reason bits (nvml.h nvmlClocksEventReason*)
SW_POWER_CAP, HW_SLOWDOWN, SW_THERMAL, HW_THERMAL, HW_POWER_BRAKE = 0x4, 0x8, 0x20, 0x40, 0x80


def cell_number(text):
    """A CSV cell (or an NVML number) as a float, or None for every spelling of "no value"."""
    if not isinstance(text, str):
        return float(text) if finite(text) else None
    text = text.strip()
    if text.lower() in ABSENT or text.startswith("["):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if finite(value) else None


# How to read a value (the sixth column of FIELDS): an nvidia-smi cell's text, or an NVML number
# already in nvidia-smi's unit -> value, or None when the GPU has no reading. A negative power,
# temperature, size or clock is no reading either.

def number(text):
    value = cell_number(text)
    return value if value is not None and value >= 0 else None


def percent(text):
    value = number(text)
    return None if value is None else value / 100.0


def mebibytes(text):
    value = number(text)
    return None if value is None else int(round(value * 1048576))


def megahertz(text):
    value = number(text)
    return None if value is None else int(round(value * 1e6))


def pstate(text):
    if not isinstance(text, str):  # NVML: 0-15, 32 for "unknown"
        return int(text) if 0 <= text <= 15 else None
    found = re.fullmatch(r"P(\d{1,2})", text.strip())
    return int(found.group(1)) if found else None


def event_mask(text):
    if not isinstance(text, str):
        return int(text)
    text = text.strip()
    return int(text, 16) if re.fullmatch(r"0x[0-9a-fA-F]+", text) else None


def power_events(text):
    mask = event_mask(text)
    return None if mask is None else (1 if mask & (SW_POWER_CAP | HW_POWER_BRAKE) else 0)


def thermal_events(text):
    mask = event_mask(text)
    return None if mask is None else (1 if mask & (SW_THERMAL | HW_THERMAL) else 0)


READERS = {"number": number, "percent": percent, "mebibytes": mebibytes, "megahertz": megahertz,
           "pstate": pstate, "power_events": power_events, "thermal_events": thermal_events}
FIELD_READERS = [(name, key, READERS[how]) for name, _unit, key, _names, _nvml, how, _text in FIELDS]
# Lines nvidia-smi prints between rows that an operator must see (Xid, ECC, a GPU that is lost).
EVENT_LINE = re.compile(r"xid|ecc|gpu is lost|unable to determine the device handle", re.IGNORECASE)


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

    def readings(self, time_ns):
        """host.energy.cpu and host.power.cpu readings for every zone, from one read of the counters."""
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
            out.append(("host.energy.cpu", self.total_j[path], attributes, self.start_ns))
            if seconds > 0:
                out.append(("host.power.cpu", delta_uj / 1e6 / seconds, attributes, 0))
        return out


# ---------------------------------------------------------------- NVML: the driver's library

# nvmlReturn_t codes (nvml.h) that this exporter acts on
NVML_SUCCESS, NVML_ERROR_UNINITIALIZED, NVML_ERROR_NOT_SUPPORTED = 0, 1, 3
NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_GPU_IS_LOST = 9, 13, 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
# Answers meaning the library as a whole is gone (driver unloaded): the reader ends and restarts.
NVML_GONE = (NVML_ERROR_UNINITIALIZED, NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_LIB_RM_VERSION_MISMATCH)
# Answers meaning "this GPU has no such reading, ever": the series is left out and not asked for
# again (INVALID_ARGUMENT 2, NOT_SUPPORTED 3, NO_PERMISSION 4, FUNCTION_NOT_FOUND 13). Any other
# failure leaves the reading out of this round only.
NVML_NO_READING = (2, NVML_ERROR_NOT_SUPPORTED, 4, NVML_ERROR_FUNCTION_NOT_FOUND)
NVML_FIELD_NAMES = {82: "NVML_FI_DEV_MEMORY_TEMP", 185: "NVML_FI_DEV_POWER_AVERAGE", 186: "NVML_FI_DEV_POWER_INSTANT"}
NVML_PSTATE_UNKNOWN = 32
# The clock event reasons call was renamed in R535; older drivers know only the old name.
NVML_RENAMED = {"nvmlDeviceGetCurrentClocksEventReasons": ("nvmlDeviceGetCurrentClocksEventReasons",
                                                          "nvmlDeviceGetCurrentClocksThrottleReasons"),
                "nvmlDeviceGetPciInfo": ("nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetPciInfo_v2", "nvmlDeviceGetPciInfo"),
                "nvmlDeviceGetCount": ("nvmlDeviceGetCount_v2", "nvmlDeviceGetCount"),
                "nvmlDeviceGetHandleByIndex": ("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex")}
# The FIELDS rows NVML reads: (metric, call, argument, divisor, reader)
NVML_READS = [(name, nvml[0], nvml[1], nvml[2], READERS[how]) for name, _u, _k, _n, nvml, how, _t in FIELDS]


class NvmlError(OSError):
    """An NVML call failed; .code is its nvmlReturn_t."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class Nvml:
    """libnvidia-ml through ctypes (loaded only for this backend). A symbol this driver lacks
    answers NVML_ERROR_FUNCTION_NOT_FOUND, as the official bindings do, so old drivers degrade."""

    def __init__(self, path):
        import ctypes
        self.ct = ctypes
        self.path = path
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as exc:
            raise NvmlError(f"cannot load {path} ({one_line(str(exc), 160)})", 12)
        self.functions = {}
        self.busy = {}  # thread id -> (call, GPU index, since monotonic) while that thread is inside a call

    def function(self, name):
        if name not in self.functions:
            function = getattr(self.lib, name, None)
            if function is not None:
                function.restype = self.ct.c_int
            self.functions[name] = function
        return self.functions[name]

    def call(self, name, *args):
        """One NVML call by its (possibly renamed) name: its nvmlReturn_t."""
        for actual in NVML_RENAMED.get(name, (name,)):
            function = self.function(actual)
            if function is not None:
                return function(*args)
        return NVML_ERROR_FUNCTION_NOT_FOUND

    def error(self, code):
        function = self.function("nvmlErrorString")
        text = ""
        if function is not None:
            function.restype = self.ct.c_char_p
            text = (function(code) or b"").decode("utf-8", "replace")
        return f"{text or 'error'} (NVML {code})"

    def init(self):
        code = self.call("nvmlInitWithFlags", 0)
        if code == NVML_ERROR_FUNCTION_NOT_FOUND:
            code = self.call("nvmlInit_v2")
        if code == NVML_ERROR_FUNCTION_NOT_FOUND:
            code = self.call("nvmlInit")
        if code != NVML_SUCCESS:
            raise NvmlError(f"NVML did not initialise: {self.error(code)}", code)

    def shutdown(self):
        self.call("nvmlShutdown")

    def text(self, name, *args):
        """A string-returning call (buffer, length), or None."""
        buffer = self.ct.create_string_buffer(96)
        code = self.call(name, *args, buffer, 96)
        return buffer.value.decode("utf-8", "replace") if code == NVML_SUCCESS else None

    def driver_version(self):
        return self.text("nvmlSystemGetDriverVersion")

    def handles(self):
        """[(index, handle or the nvmlReturn_t that GPU answered)] for every GPU NVML counts."""
        count = self.ct.c_uint(0)
        code = self.call("nvmlDeviceGetCount", self.ct.byref(count))
        if code != NVML_SUCCESS:
            raise NvmlError(f"nvmlDeviceGetCount: {self.error(code)}", code)
        out = []
        for index in range(count.value):
            handle = self.ct.c_void_p()
            code = self.call("nvmlDeviceGetHandleByIndex", index, self.ct.byref(handle))
            out.append((index, handle if code == NVML_SUCCESS else code))
        return out


class NvmlFieldValue:
    """nvmlFieldValue_t (nvml.h, 40 bytes), made as a ctypes Structure on first use."""

    struct = None

    @classmethod
    def array(cls, ct, wanted):
        if cls.struct is None:
            class Value(ct.Union):
                _fields_ = [("d", ct.c_double), ("ui", ct.c_uint), ("ul", ct.c_ulong), ("ull", ct.c_ulonglong),
                            ("sll", ct.c_longlong), ("si", ct.c_int), ("us", ct.c_ushort)]

            class FieldValue(ct.Structure):
                _fields_ = [("fieldId", ct.c_uint), ("scopeId", ct.c_uint), ("timestamp", ct.c_longlong),
                            ("latencyUsec", ct.c_longlong), ("valueType", ct.c_uint), ("nvmlReturn", ct.c_uint),
                            ("value", Value)]
            cls.struct = FieldValue
        values = (cls.struct * len(wanted))()
        for slot, (field_id, scope) in zip(values, wanted):
            slot.fieldId, slot.scopeId = field_id, scope
        return values

    @staticmethod
    def number(slot):
        """The value by its valueType (0 double, 1 uint, 2 ulong, 3 ulonglong, 4 longlong, 5 int, 6 ushort)."""
        kind = slot.valueType
        return getattr(slot.value, ("d", "ui", "ul", "ull", "sll", "si", "us")[kind]) if kind <= 6 else None


class GpuLost(Exception):
    """NVML_ERROR_GPU_IS_LOST from one GPU: its series stop, the other GPUs go on."""


class NvmlGpu:
    """One GPU as NVML sees it: who it is, and its readings of one round."""

    def __init__(self, nvml, index, handle):
        self.nvml = nvml
        self.index = index
        self.handle = handle
        self.uuid = nvml.text("nvmlDeviceGetUUID", handle) or f"GPU-index-{index}"
        self.name = nvml.text("nvmlDeviceGetName", handle) or "NVIDIA GPU"
        self.bus_id = self.pci_bus_id()
        self.attributes = (("gpu.index", str(index)), ("gpu.uuid", self.uuid), ("gpu.name", self.name),
                           ("gpu.pci.bus_id", self.bus_id))
        self.unsupported = set()  # (call, argument): this GPU answered "no such reading"
        self.fields = [(field if isinstance(field, tuple) else (field, 0)) for _m, call, field, _f, _r in NVML_READS
                       if call == "field"]
        self.has_counter = self.energy_mj() is not None
        self.mig = self.mig_mode()

    def pci_bus_id(self):
        ct = self.nvml.ct

        class PciInfo(ct.Structure):  # nvmlPciInfo_t
            _fields_ = [("busIdLegacy", ct.c_char * 16), ("domain", ct.c_uint), ("bus", ct.c_uint),
                        ("device", ct.c_uint), ("pciDeviceId", ct.c_uint), ("pciSubSystemId", ct.c_uint),
                        ("busId", ct.c_char * 32)]
        info = PciInfo()
        if self.nvml.call("nvmlDeviceGetPciInfo", self.handle, ct.byref(info)) != NVML_SUCCESS:
            return "unknown"
        return info.busId.decode("ascii", "replace") or f"{info.domain:08X}:{info.bus:02X}:{info.device:02X}.0"

    def mig_mode(self):
        current, pending = self.nvml.ct.c_uint(0), self.nvml.ct.c_uint(0)
        code = self.nvml.call("nvmlDeviceGetMigMode", self.handle, self.nvml.ct.byref(current),
                              self.nvml.ct.byref(pending))
        return code == NVML_SUCCESS and current.value == 1

    def timed_call(self, call, *args):
        """A call on this GPU, marked as running so that a call that never returns can be named."""
        me = threading.get_ident()
        self.nvml.busy[me] = (call, self.index, time.monotonic())
        try:
            return self.nvml.call(call, self.handle, *args)
        finally:
            self.nvml.busy.pop(me, None)

    def checked(self, call, code):
        """True on success; raises on a lost GPU or a gone library; False for no reading."""
        if code == NVML_SUCCESS:
            return True
        if code == NVML_ERROR_GPU_IS_LOST:
            raise GpuLost(self.nvml.error(code))
        if code in NVML_GONE:
            raise NvmlError(f"{call}: {self.nvml.error(code)}", code)
        return False

    def scalar(self, call, ctype, *args):
        """A call answering one number through its last argument, or None."""
        key = (call, args)
        if key in self.unsupported:
            return None
        value = ctype()
        code = self.timed_call(call, *args, self.nvml.ct.byref(value))
        if self.checked(call, code):
            return value.value
        if code in NVML_NO_READING:
            self.unsupported.add(key)
        return None

    STRUCTS = {"nvmlDeviceGetUtilizationRates": ("c_uint", ("gpu", "memory")),  # nvmlUtilization_t
               "nvmlDeviceGetMemoryInfo": ("c_ulonglong", ("total", "free", "used"))}  # nvmlMemory_t
    struct_types = {}

    def structure(self, call):
        """A call answering a struct (STRUCTS): {member: number}, or {} without a reading."""
        if (call, ()) in self.unsupported:
            return {}
        ct = self.nvml.ct
        kind, fields = self.STRUCTS[call]
        if call not in self.struct_types:
            members = [(field, getattr(ct, kind)) for field in fields]
            self.struct_types[call] = type(call, (ct.Structure,), {"_fields_": members})
        value = self.struct_types[call]()
        code = self.timed_call(call, ct.byref(value))
        if self.checked(call, code):
            return {name: getattr(value, name) for name in fields}
        if code in NVML_NO_READING:
            self.unsupported.add((call, ()))
        return {}

    def field_values(self):
        """Every "field" row of FIELDS in one nvmlDeviceGetFieldValues call: {(id, scope): number}."""
        wanted = [field for field in self.fields if ("field", field) not in self.unsupported]
        if not wanted or ("nvmlDeviceGetFieldValues", ()) in self.unsupported:
            return {}
        values = NvmlFieldValue.array(self.nvml.ct, wanted)
        code = self.timed_call("nvmlDeviceGetFieldValues", len(wanted), values)
        if not self.checked("nvmlDeviceGetFieldValues", code):
            if code in NVML_NO_READING:
                self.unsupported.add(("nvmlDeviceGetFieldValues", ()))
            return {}
        out = {}
        for field, slot in zip(wanted, values):  # each element has its own answer
            if slot.nvmlReturn == NVML_SUCCESS:
                out[field] = NvmlFieldValue.number(slot)
            elif slot.nvmlReturn in NVML_NO_READING:
                self.unsupported.add(("field", field))
        return out

    def energy_mj(self):
        return self.scalar("nvmlDeviceGetTotalEnergyConsumption", self.nvml.ct.c_ulonglong)

    def values(self):
        """{metric: value in our unit} for the readings this GPU gives now; raises GpuLost."""
        ct = self.nvml.ct
        answers = {}
        fields = self.field_values()
        out = {}
        for metric, call, argument, divisor, read in NVML_READS:
            if call == "field":
                raw = fields.get(argument if isinstance(argument, tuple) else (argument, 0))
            elif call in self.STRUCTS:
                if call not in answers:
                    answers[call] = self.structure(call)
                raw = answers[call].get(argument)
            else:
                key = (call, argument)
                if key not in answers:
                    ctype = (ct.c_ulonglong if "Reasons" in call else ct.c_int if "PerformanceState" in call
                             else ct.c_uint)
                    answers[key] = self.scalar(call, ctype, *(() if argument is None else (argument,)))
                raw = answers[key]
            if raw is None or (call == "nvmlDeviceGetPerformanceState" and raw == NVML_PSTATE_UNKNOWN):
                continue
            value = read(raw / divisor if divisor != 1 else raw)
            if value is not None:
                out[metric] = value
        return out


class NvmlRow:
    """What the NVML reader hands the sampling thread for one GPU: its readings of one round."""

    __slots__ = ("index", "uuid", "attributes", "values", "energy_mj")

    def __init__(self, gpu, values, energy_mj):
        self.index = gpu.index
        self.uuid = gpu.uuid
        self.attributes = gpu.attributes
        self.values = values
        self.energy_mj = energy_mj

    def __str__(self):
        return f"NVML row of GPU {self.index}"


class NvmlReader:
    """The NVML backend's reader, read by the supervisor like a child's stdout: a thread reads
    every GPU once per interval and hands the rows over through a pipe. A driver call that never
    returns then stalls only this thread: the supervisor sees the silence and ends this reader (the
    thread is left in its call), and the next one leaves that GPU out until the call returns."""

    pid = None
    returncode = None

    def __init__(self, source, nvml, interval, left_out):
        self.source = source
        self.nvml = nvml
        self.interval = interval
        self.left_out = left_out  # (GPU index, the reader stuck on it) or None
        self.argv = ["NVML", nvml.path]
        self.rows = deque()
        self.ended_because = None
        self.stopping = threading.Event()
        self.ready, self.signal = os.pipe()
        os.set_blocking(self.signal, False)
        self.gpus = []
        self.lost = {}  # GPU index -> its name in messages, while it is lost
        self.next_reinit = None
        self.reinit_backoff = 1.0
        self.thread = threading.Thread(target=self.run, name="nvml-reader", daemon=True)
        self.thread.start()

    def description(self):
        return f"(in this process): {self.nvml.path}, every {self.interval:g}s"

    def read(self, timeout, wake_fd):
        """Like SourceProcess.read: (rows as (read ns, NvmlRow), ended, woken)."""
        try:
            ready, _, _ = select.select([self.ready, wake_fd], [], [], timeout)
        except InterruptedError:
            return [], False, False
        if self.ready in ready:
            os.read(self.ready, 4096)
        rows = []
        while self.rows:
            rows.append(self.rows.popleft())
        ended = not rows and not self.thread.is_alive()
        return rows, ended, wake_fd in ready

    def terminate(self):
        self.stopping.set()
        self.thread.join(1.0)
        if not self.thread.is_alive() and self.ready is not None:
            # A thread stuck in a call keeps its pipe: it may still write to it when the call returns.
            os.close(self.ready)
            os.close(self.signal)
            self.ready = self.signal = None
        return None

    def stuck_in(self):
        """(call, GPU index, seconds) while the thread is inside a call, else None."""
        busy = self.nvml.busy.get(self.thread.ident)
        if busy is None or not self.thread.is_alive():
            return None
        return busy[0], busy[1], time.monotonic() - busy[2]

    def exit_description(self):
        stuck = self.stuck_in()
        if stuck:
            return f"{stuck[0]} on GPU {stuck[1]} has not returned for {stuck[2]:.0f}s"
        return self.ended_because or "stopped"

    def run(self):
        try:
            self.nvml.init()
        except NvmlError as exc:
            self.ended_because = str(exc)
            self.wake()
            return
        try:
            self.enumerate()
            next_round = time.monotonic()
            while not self.stopping.is_set():
                self.read_round()
                self.wake()
                next_round += self.interval
                now = time.monotonic()
                if next_round < now:  # a slow round: skip the ticks it missed, keep the phase
                    next_round += (now - next_round) // self.interval * self.interval + self.interval
                self.stopping.wait(next_round - now)
                self.retry_lost()
        except NvmlError as exc:
            self.ended_because = f"the driver went away: {exc}"
        except Exception as exc:  # a bug must not leave the exporter silently without GPU data
            self.ended_because = f"NVML reader failed: {exc!r}"
            LOG.exception("NVML reader failed")
        finally:
            self.nvml.shutdown()
            self.wake()

    def wake(self):
        try:
            os.write(self.signal, b".")
        except OSError:
            pass  # the pipe is full (the sampling thread is behind) or gone: the rows wait in the deque

    def enumerate(self):
        self.gpus = []
        for index, handle in self.nvml.handles():
            if self.left_out and self.left_out[0] == index:
                continue
            if isinstance(handle, int):
                self.gpu_lost(index, f"GPU {index}", self.nvml.error(handle))
                continue
            try:
                gpu = NvmlGpu(self.nvml, index, handle)
            except GpuLost as exc:  # lost between the handle and its first readings
                self.gpu_lost(index, f"GPU {index}", str(exc))
                continue
            self.gpus.append(gpu)
            self.source.announce(gpu)
            if index in self.lost:
                LOG.info("GPU %d (%s) answers again", index, gpu.bus_id)
                del self.lost[index]

    def read_round(self):
        if self.left_out and not self.left_out[1].thread.is_alive():
            LOG.info("NVML's call on GPU %d returned: that GPU is read again", self.left_out[0])
            self.left_out = None
            self.enumerate()
        for gpu in list(self.gpus):
            if self.stopping.is_set():
                return
            try:
                values = gpu.values()
                energy = gpu.energy_mj() if gpu.has_counter else None
            except GpuLost as exc:
                self.gpus.remove(gpu)
                self.gpu_lost(gpu.index, f"GPU {gpu.index} ({gpu.bus_id})", str(exc))
                continue
            self.rows.append((time.time_ns(), NvmlRow(gpu, values, energy)))

    def gpu_lost(self, index, who, why):
        if index not in self.lost:
            LOG.warning("%s is lost (%s): its series stop, the other GPUs go on; NVML is re-initialised "
                        "with backoff to find it again (a lost GPU usually needs a reboot)", who, why)
            self.lost[index] = who
            self.reinit_backoff = 1.0
            self.next_reinit = time.monotonic() + self.reinit_backoff

    def retry_lost(self):
        """While a GPU is lost: shut NVML down and initialise it again, 1 s doubling to 5 minutes."""
        if not self.lost or time.monotonic() < self.next_reinit or self.stopping.is_set():
            return
        self.reinit_backoff = min(self.reinit_backoff * 2, 300.0)
        self.next_reinit = time.monotonic() + self.reinit_backoff
        self.nvml.shutdown()
        self.nvml.init()
        self.enumerate()


# ---------------------------------------------------------------- the Source contract
# What the shared core below asks of a source (every exporter's Source class keeps it):
#   Source(args)               made once from the parsed flags; DESCRIPTION and SETTINGS
#                              ([(flag, environment variable, default, help), ...]) make its --help
#   extra_metrics()            series beyond SOURCE_METRICS that it may send
#   locate()                   find the binary, or raise ConfigError(message, EXIT_NO_SOURCE)
#   command(interval)          the long-lived child's argv. Raising OSError means "cannot start it
#                              now": the supervisor logs it, waits (1 s doubling to 30 s), tries again
#   reset()                    a new child starts: its energy series start again (new start time)
#   parse_line(line, read_ns)  None (a line without data) or (time ns, readings), a reading being
#                              (metric, value, attributes, start ns or 0 for a gauge). Raising
#                              ValueError skips the line: counted, and warned about once a minute
#   starts_round()             whether the line just parsed began a round (one line for macmon, the
#                              lowest GPU's row for nvidia-smi): the exporter's own series go there
#   rows_per_interval()        lines per interval: sizes the buffer's default hour
#   check(report, args)        --check's checks of the source; False when no sample can be taken
#   name                       what the log calls the source ("macmon", "nvidia-smi", "NVML")
#   origins()                  {metric: where the source reads it}, shown by --list-metrics
# command() may instead return an object read like the child (a source read in this process):
#   read(timeout, wake_fd) -> (lines, ended, woken), terminate(), exit_description(),
#   description(), pid (None), returncode, argv; its "lines" may be any object parse_line takes.

class Source:
    """The NVIDIA GPUs as the source of samples: the backend (NVML or nvidia-smi), and its rows."""

    DESCRIPTION = ("Send NVIDIA GPU power, temperature and load from NVML or nvidia-smi (and host CPU power "
                   "from Linux RAPL) to an OpenTelemetry Collector as OTLP/HTTP JSON metrics.")
    SETTINGS = [
        ("--backend", "TPW_NVIDIA_BACKEND", "auto",
         "auto (NVML when the library loads and initialises, else nvidia-smi), nvml or nvidia-smi"),
        ("--nvml-library", "TPW_NVML_LIBRARY", "libnvidia-ml.so.1",
         "the NVML library: a path, or a name the dynamic loader finds (LD_LIBRARY_PATH)"),
        ("--nvidia-smi", "NVIDIA_SMI", None, "nvidia-smi binary; else PATH, /usr/bin, /usr/local/bin"),
        ("--rapl-root", "TPW_RAPL_ROOT", "/sys/class/powercap", "where the RAPL powercap tree is"),
        ("--nvidia-smi-timeout", "TPW_NVIDIA_SMI_TIMEOUT", "20",
         "seconds to wait for one-off calls (--help-query-gpu takes seconds on big boxes; a hung driver "
         "must not hang the exporter)"),
    ]
    BACKENDS = ("auto", "nvml", "nvidia-smi")

    def __init__(self, args):
        self.args = args
        if args.backend not in self.BACKENDS:
            raise ConfigError(f"--backend {args.backend!r}: choose auto, nvml or nvidia-smi")
        try:
            self.timeout = float(args.nvidia_smi_timeout)
        except ValueError:
            raise ConfigError(f"--nvidia-smi-timeout {args.nvidia_smi_timeout!r}: a number of seconds")
        self.name = "nvidia-smi" if args.backend == "nvidia-smi" else "NVML"
        self.nvml = None
        self.reader = None        # the NVML reader now running
        self.announced = {}       # GPU uuid -> the start line said about it
        self.counters = {}        # GPU uuid -> [counter mJ at the series start, start ns, last mJ]
        self.path = None
        self.keys = []
        self.missing = []
        self.energy = {}
        self.previous = {}
        self.rapl = None
        self.rapl_announced = False
        self.events_said = {}  # event text -> when it was last logged
        self.previous_index = None
        self.round_start = True
        self.gpu_count = None

    @staticmethod
    def extra_metrics():
        return RAPL_METRICS

    @staticmethod
    def origins():
        out = {}
        for name, _unit, _key, names, (call, argument, _factor), _how, _text in FIELDS:
            if call == "field":
                field, scope = argument if isinstance(argument, tuple) else (argument, 0)
                call = f"nvmlDeviceGetFieldValues {NVML_FIELD_NAMES[field]}" + (" (module scope)" if scope else "")
            out[name] = {"nvidia-smi": names[0], "nvml": call}
        out[ENERGY[0]] = {"nvidia-smi": "power.draw, integrated",
                          "nvml": "nvmlDeviceGetTotalEnergyConsumption (Volta+), else nvmlDeviceGetPowerUsage "
                                  "integrated"}
        return out

    # ---- which backend

    def locate(self):
        """Choose the backend: NVML when it loads and initialises (unless --backend nvidia-smi)."""
        if self.args.backend != "nvidia-smi":
            try:
                self.open_nvml()
                self.name = "NVML"
                return
            except NvmlError as exc:
                if self.args.backend == "nvml":
                    raise ConfigError(f"--backend nvml: {exc}. Install the NVIDIA driver, pass --nvml-library "
                                      f"PATH, or use --backend nvidia-smi", EXIT_NO_SOURCE)
                LOG.info("NVML is not usable (%s): reading nvidia-smi instead", exc)
        self.name = "nvidia-smi"
        if self.args.interval < 0.1:
            raise ConfigError(f"--interval {self.args.interval:g}: nvidia-smi samples at most every 0.1 s; "
                              f"below that needs NVML (--backend nvml)")
        self.path = find_nvidia_smi(self.args.nvidia_smi)

    def open_nvml(self):
        """Load and initialise NVML once, to choose the backend and count the GPUs."""
        if self.nvml is None:
            nvml = Nvml(self.args.nvml_library)
            nvml.init()
            try:
                self.gpu_count = max(1, len(nvml.handles()))
                version = nvml.driver_version()
            finally:
                nvml.shutdown()
            self.nvml = nvml
            LOG.info("reading the GPUs through NVML (%s, driver %s)", nvml.path, version or "unknown")

    def command(self, interval):
        if self.nvml is None and self.path is None:
            self.locate()
        if self.nvml is not None:
            return self.start_nvml_reader(interval)
        return self.nvidia_smi_command(interval)

    def start_nvml_reader(self, interval):
        """A new reader; one stuck in a driver call leaves its GPU out of the next."""
        left_out = None
        stuck = self.reader.stuck_in() if self.reader is not None else None
        if stuck:
            call, index, seconds = stuck
            if index is None:
                raise SourceStartError(f"NVML is still inside {call} after {seconds:.0f}s")
            LOG.warning("GPU %d is left out while NVML's %s on it has not returned (%.0fs)", index, call, seconds)
            left_out = (index, self.reader)
        elif self.reader is not None and self.reader.left_out and self.reader.left_out[1].thread.is_alive():
            left_out = self.reader.left_out
        self.start_rapl()
        self.reader = NvmlReader(self, self.nvml, interval, left_out)
        return self.reader

    def announce(self, gpu):
        """One line per GPU at start (and when its energy method changes): how its energy is measured."""
        method = "counter" if gpu.has_counter else "integrated"
        if self.announced.get(gpu.uuid) != method:
            self.announced[gpu.uuid] = method
            how = ("from the GPU's energy counter" if gpu.has_counter else
                   "integrated from its power (no energy counter: before Volta, or an older driver)")
            LOG.info("GPU %d (%s, %s)%s: energy %s", gpu.index, gpu.name, gpu.bus_id,
                     ", MIG on: one energy series for the whole GPU" if gpu.mig else "", how)

    def nvidia_smi_command(self, interval):
        """Ask this driver which fields it offers, then stream only those."""
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
        self.start_rapl()
        return [self.path, "--query-gpu=" + ",".join(names), "--format=csv,noheader,nounits",
                "-lms", str(max(100, int(round(interval * 1000))))]

    def start_rapl(self):
        if self.rapl is None:
            # Read the counters once now, so the first round's row already has a window to give
            # CPU power over (--once sends that round alone).
            self.rapl = RaplReader(self.args.rapl_root)
            self.rapl.readings(time.time_ns())

    def reset(self):
        """A new nvidia-smi process or NVML reader starts new integrated energy series (new start
        time); a counter's series goes on, since the counter itself did not stop."""
        self.energy = {}
        self.previous = {}

    # ---- rows -> readings

    def parse_line(self, line, read_ns):
        if isinstance(line, NvmlRow):
            readings = self.gpu_readings(read_ns, line.uuid, line.attributes, line.values, line.energy_mj)
            return read_ns, readings + self.host_readings(read_ns, line.index)
        if not line.strip():
            return None
        if EVENT_LINE.search(line) and not line[:1].isdigit():
            self.log_event(line.strip())
            return None
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(self.keys) or not cells[0].isdigit():
            gpu = f"GPU {cells[0]}'s row: " if cells[0].isdigit() else ""
            raise ValueError(f"{gpu}expected {len(self.keys)} columns, got {len(cells)}")
        row = dict(zip(self.keys, cells))
        if not row["uuid"].startswith(("GPU-", "MIG-")):
            raise ValueError(f"GPU {row['index']}'s row: bad GPU UUID {row['uuid']!r}")
        if "[gpu is lost]" in line.lower():
            self.log_event(f"GPU {row['index']} ({row['pci.bus_id']}) is lost: its series stop until it is "
                           f"back (usually after a reboot)")
        return read_ns, (self.gpu_readings(read_ns, row["uuid"], self.row_attributes(row), self.row_values(row))
                         + self.host_readings(read_ns, int(row["index"])))

    @staticmethod
    def row_attributes(row):
        return (("gpu.index", row["index"]), ("gpu.uuid", row["uuid"]), ("gpu.name", row["name"]),
                ("gpu.pci.bus_id", row["pci.bus_id"]))

    @staticmethod
    def row_values(row):
        """{metric: value} from an nvidia-smi row's cells."""
        values = {}
        for name, key, read in FIELD_READERS:
            text = row.get(key)
            value = None if text is None else read(text)
            if value is not None:
                values[name] = value
        return values

    def log_event(self, text):
        """Xid, ECC and lost-GPU messages matter to an operator: each logged, at most once a minute."""
        now = time.monotonic()
        if now - self.events_said.get(text, -3600.0) > 60:
            if len(self.events_said) > 256:
                self.events_said.clear()
            self.events_said[text] = now
            LOG.warning("nvidia-smi reported: %s", one_line(text, 200))

    def gpu_readings(self, time_ns, gpu, attributes, values, counter_mj=None):
        readings = [(name, value, attributes, 0) for name, value in values.items()]
        if counter_mj is not None:
            return readings + self.counter_energy(time_ns, gpu, counter_mj, attributes)
        return readings + self.integrated_energy(time_ns, gpu, values.get(ENERGY[1]), attributes)

    def counter_energy(self, time_ns, gpu, millijoules, attributes):
        """The GPU's counter since this series began. A counter that goes back (the driver was
        reloaded) starts a new series; a MIG GPU is one device here, so its energy is counted once."""
        series = self.counters.get(gpu)
        if series is None or millijoules < series[2]:
            if series is not None:
                LOG.warning("GPU %s: the energy counter went back (%d -> %d mJ; driver reloaded?): "
                            "a new gpu.energy series starts", dict(attributes)["gpu.index"], series[2], millijoules)
            self.counters[gpu] = [millijoules, time_ns, millijoules]
            return []
        series[2] = millijoules
        return [(ENERGY[0], (millijoules - series[0]) / 1000.0, attributes + (("gpu.energy.source", "counter"),),
                 series[1])]

    def integrated_energy(self, time_ns, gpu, watts, attributes):
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
        return [(ENERGY[0], counter.joules, attributes + (("gpu.energy.source", "integrated"),), counter.start_ns)]

    def starts_round(self):
        """True when the last row parsed began a round."""
        return self.round_start

    def host_readings(self, time_ns, index):
        """RAPL is read once per round, with its first row. A round begins where the GPU index stops
        rising, so that a round without GPU 0 (lost, or its row malformed) still has one."""
        self.round_start = self.previous_index is None or index <= self.previous_index
        self.previous_index = index
        if not self.round_start:
            return []
        if self.rapl is None:
            self.rapl = RaplReader(self.args.rapl_root)
        if self.rapl.disabled and not self.rapl_announced:
            self.rapl_announced = True
            LOG.info("%s", self.rapl.disabled)
        return self.rapl.readings(time_ns)

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

    # ---- --check

    def check(self, report, args):
        if args.backend != "nvidia-smi":
            try:
                self.open_nvml()
                self.name = "NVML"
                return self.check_nvml(report)
            except NvmlError as exc:
                if args.backend == "nvml":
                    report.fail("NVML (--backend nvml)", f"{exc}; install the NVIDIA driver, pass --nvml-library "
                                                         f"PATH, or use --backend nvidia-smi")
                    return False
                report.warn("NVML", f"not usable ({exc}): using nvidia-smi")
        self.name = "nvidia-smi"
        report.ok("backend", "nvidia-smi")
        return self.check_nvidia_smi(report, args)

    def check_nvml(self, report):
        nvml = self.nvml
        nvml.init()
        try:
            report.ok("backend", f"NVML ({nvml.path}, driver {nvml.driver_version() or 'unknown'})")
            gpus = []
            for index, handle in nvml.handles():
                if isinstance(handle, int):
                    report.fail(f"GPU {index}", nvml.error(handle))
                    continue
                gpus.append(NvmlGpu(nvml, index, handle))
            report.ok("GPUs seen", f"{len(gpus)}: " + "; ".join(gpu.name for gpu in gpus))
            for gpu in gpus:
                values = gpu.values()
                lacks = [name for name, *_rest in NVML_READS if name not in values]
                energy = "counter" if gpu.has_counter else "integrated power (no energy counter)"
                detail = f"energy: {energy}; " + (f"no {', '.join(lacks)}" if lacks else "every field")
                report.ok(f"GPU {gpu.index} fields", detail)
        except (NvmlError, GpuLost) as exc:
            report.fail("NVML answers", str(exc))
            return False
        finally:
            nvml.shutdown()
        self.check_rapl(report)
        return bool(gpus)

    def check_nvidia_smi(self, report, args):
        try:
            self.path = find_nvidia_smi(self.args.nvidia_smi)
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
            self.nvidia_smi_command(args.interval)
        except SourceStartError as exc:
            report.fail("driver answers", str(exc))
            return False
        if self.missing:
            report.warn("fields this driver lacks", ", ".join(self.missing))
        else:
            report.ok("fields", "every wanted field is offered")
        self.check_rapl(report)
        return True

    def check_rapl(self, report):
        rapl = RaplReader(self.args.rapl_root)
        if rapl.disabled:
            report.warn("RAPL (host CPU power)", rapl.disabled)
        else:
            report.ok("RAPL (host CPU power)", ", ".join(rapl.zones.values()))


# ===== BEGIN SHARED CORE: identical in every exporter; edit once, run `make sync` =====
# Everything from here to END SHARED CORE is the same text in macmon-otel-exporter.py and
# nvsmi-otel-exporter.py (tests/test_shared_core.py holds both to the last synced copy). It needs
# from the part above: SERVICE_NAME, SCOPE_NAME, DEFAULT_CLUSTER, SOURCE_NAME, SOURCE_METRICS and
# the Source class, whose contract is written above it.
#
# The data flows one way:
#   Supervisor (the source child's lines) -> Source.parse_line -> readings -> Sample -> SampleBuffer
#   -> Sender thread -> encode_request (OTLP/JSON, only here) -> OtlpHttpClient -> the collector.
# The Spool keeps the buffer's unsent samples on disk during an outage and at exit.

# Exit codes: documented in --help and docs/exporters.md.
EXIT_OK = 0
EXIT_INTERNAL = 1       # a bug: please report it with the log
EXIT_USAGE = 2          # bad flag, bad value, bad endpoint URL
EXIT_NO_SOURCE = 3      # macmon / nvidia-smi not found
EXIT_SOURCE_USAGE = 4   # the source rejected its arguments (exit 2): a configuration error
EXIT_EXPORT_FAILED = 5  # --once / --check: the collector did not accept the data
EXIT_ENV_FILE = 6       # --env-file missing, unreadable, malformed or readable by others
EXIT_SPOOL_IN_USE = 7   # another exporter holds --spool-dir

class Log:
    """The exporter's log: one line per event on stderr, `<UTC time>Z LEVEL message`, the format
    `make status` reads. A few lines rather than the logging module, which keeps 0.7 MB more
    resident (traceback, tokenize, weakref, ...) for the life of the exporter."""

    LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}

    def __init__(self):
        self.level = 20
        self.lock = threading.Lock()
        self.listeners = []  # callables(level name, message): the tests listen here

    def set_level(self, name):
        self.level = self.LEVELS[name]

    def write(self, level, name, message, args):
        if level < self.level:
            return
        text = message % args if args else message
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {name} {text}\n"
        with self.lock:
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):
                pass  # no stderr left (a closed terminal): the exporter goes on
        for listener in self.listeners:
            listener(name, text)

    def debug(self, message, *args):
        self.write(10, "DEBUG", message, args)

    def info(self, message, *args):
        self.write(20, "INFO", message, args)

    def warning(self, message, *args):
        self.write(30, "WARNING", message, args)

    def error(self, message, *args):
        self.write(40, "ERROR", message, args)

    def exception(self, message, *args):
        import traceback  # only for a bug
        self.write(40, "ERROR", message + "\n" + traceback.format_exc().rstrip(), args)


LOG = Log()

# Reasons a data point can be dropped; each is a value of the `reason` attribute.
DROP_REASONS = ("buffer_full", "rejected", "too_large", "shutdown", "spool_full", "out_of_range", "unencodable")

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


MIN_INTERVAL_S = 0.05  # the source may ask for more (macmon and nvidia-smi: 0.1 s)


def interval_value(text):
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    if not MIN_INTERVAL_S <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"must be between {MIN_INTERVAL_S:g} and 3600 seconds")
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
    ("--interval", "TPW_INTERVAL", "5", "seconds between samples, 0.05 to 3600 (macmon and nvidia-smi: from 0.1)"),
    ("--cluster", "TPW_CLUSTER", DEFAULT_CLUSTER, "value of the `cluster` resource attribute"),
    ("--environment", "TPW_ENVIRONMENT", None,
     "deployment.environment.name (and the older deployment.environment)"),
    ("--buffer-max", "TPW_BUFFER_MAX", None,
     "samples kept while the collector is away; default one hour of samples"),
    ("--spool-dir", "TPW_SPOOL_DIR", None, "keep unsent samples in this folder across restarts"),
    ("--spool-max-bytes", "TPW_SPOOL_MAX_BYTES", "52428800", "size bound of the spool file"),
    ("--spool-every", "TPW_SPOOL_EVERY", "10",
     "seconds between spool writes during an outage: the most a crash or SIGKILL can lose"),
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
        if flag in ("--interval", "--self-report-interval", "--spool-every"):
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
            f"  {EXIT_ENV_FILE}  --env-file missing, malformed or readable by others\n"
            f"  {EXIT_SPOOL_IN_USE}  another exporter holds --spool-dir\n")


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
    machine = os.uname().machine.lower()  # os.uname: the platform module is 0.3 MB
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "i386": "x86", "i686": "x86", "armv7l": "arm32", "ppc64le": "ppc64", "s390x": "s390x"}.get(machine, machine)


def resource_attributes(args):
    """Defaults < OTEL_RESOURCE_ATTRIBUTES < --resource < OTEL_SERVICE_NAME (spec precedence)."""
    attrs = {
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        "host.name": socket.gethostname(),
        "host.arch": host_arch(),
        "os.type": os.uname().sysname.lower(),
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



# ---------------------------------------------------------------- readings and samples
#
# A reading is (metric name, value, attributes, start time ns): attributes a tuple of (key, value)
# pairs, start 0 for a gauge. A Sample holds the readings of one source line: its time, a layout
# (the readings' name, attributes and start, shared by every sample of the same shape) and the
# values. Samples hold numbers, never JSON: encoding happens once, when a request is built.

MAX_INT64 = 2 ** 63 - 1
# What a reading of each unit can plausibly be; anything past it (1e308 W, an overflowed counter)
# is left out and counted, so that no value can break a request (OTLP has no Infinity, an asInt
# is an int64). Units not listed are bounded by int64.
UNIT_LIMITS = {"W": 1e6, "J": 1e18, "Cel": 1e3, "1": 1e6, "Hz": 1e12, "By": float(MAX_INT64)}
MAX_WATTS = UNIT_LIMITS["W"]
MAX_CLOCK_SKEW_NS = 86400 * 10 ** 9  # a sample stamped more than a day from its read time is a bad line


def reject_constant(name):
    raise ValueError(f"non-finite number {name}")


STRICT_JSON = json.JSONDecoder(parse_constant=reject_constant)  # NaN and Infinity are not numbers here


def finite(value):
    """A real number: not a bool, not NaN, not infinite (inf - inf and nan - nan are NaN)."""
    return type(value) in (int, float) and value - value == 0


class MetricTable:
    """Name -> (unit, kind, description) for every series this exporter can send."""

    def __init__(self, rows):
        self.rows = list(rows)
        self.by_name = {name: (unit, kind, text) for name, unit, kind, text in self.rows}
        self.limits = {name: UNIT_LIMITS.get(unit, float(MAX_INT64)) for name, unit, _k, _t in self.rows}
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


LAYOUTS = {}  # every distinct sample shape, once: the buffer's samples share them


class Sample:
    """The readings of one source line (see above), waiting to be sent."""

    __slots__ = ("time_ns", "layout", "values", "resource", "seq", "unanswered", "own")

    def __init__(self, time_ns, layout, values, resource=None):
        self.time_ns = time_ns
        self.layout = layout      # ((metric name, attributes, start ns), ...)
        self.values = values      # (number, ...) in layout order
        self.resource = resource  # encoded resource attributes; None: this run's
        self.seq = 0              # set by the buffer: the order samples were read in
        # Requests that carried this sample, went out whole and got no answer: the collector may
        # have stored each, so each is a possible duplicate once the sample is delivered.
        self.unanswered = 0
        self.own = False  # only the exporter's own series (no source line parsed): not a sample read

    def readings(self):
        return [(name, value, attributes, start) for (name, attributes, start), value in zip(self.layout, self.values)]


def make_sample(time_ns, readings, table, resource=None):
    """readings -> (Sample or None when nothing is left, readings left out as implausible)."""
    keys, values = [], []
    limits = table.limits
    for name, value, attributes, start in readings:
        # Plausible: a known series, a finite number (finite(), inlined: this runs for every
        # reading of every sample) within what its unit can be (and int64 for an int).
        limit = limits.get(name)
        if limit is not None and type(value) in (int, float) and value - value == 0 and -limit <= value <= limit:
            keys.append((name, attributes, start))
            values.append(value)
    if not values:
        return None, len(readings)
    layout = tuple(keys)
    shared = LAYOUTS.get(layout)
    if shared is None:
        if len(LAYOUTS) >= 4096:  # shapes that come and go (GPUs, restarts) must not pile up
            LAYOUTS.clear()
        shared = LAYOUTS[layout] = layout
    return Sample(time_ns, shared, tuple(values), resource), len(readings) - len(values)


class EnergyCounter:
    """Power integrated over back-to-back sample windows: a monotonic cumulative Sum in joules."""

    def __init__(self, start_ns):
        self.start_ns = start_ns
        self.joules = 0.0

    def add(self, watts, seconds):
        # An implausible power is not integrated: one absurd reading must not poison the series.
        if 0 <= watts <= MAX_WATTS and 0 < seconds:
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


def point_head(time_ns, attributes, start_ns):
    """A NumberDataPoint up to its value; the readings of one sample with the same attributes
    share it. 64-bit integers go as JSON strings."""
    head = '{"attributes":%s,' % encode_attributes(attributes) if attributes else "{"
    if start_ns:
        head += '"startTimeUnixNano":"%d",' % start_ns
    return head + '"timeUnixNano":"%d",' % time_ns


REQUEST_HEAD = '{"resourceMetrics":['
SCOPE_METRICS = ('{"resource":{"attributes":%s},"scopeMetrics":[{"scope":{"name":' + json_str(SCOPE_NAME)
                 + ',"version":' + json_str(__version__) + '},"metrics":[%s]}]}')


def encode_request(table, resource_json, samples):
    """Samples -> one ExportMetricsServiceRequest as JSON text, and the count of readings left out
    because this version has no such metric (a spool from another version). Points are grouped
    by resource, then by metric (in the order they first appear, which carries no meaning)."""
    headers = table.headers
    by_resource = {}
    unknown = 0
    for sample in samples:
        grouped = by_resource.get(sample.resource or resource_json)
        if grouped is None:
            grouped = by_resource[sample.resource or resource_json] = {}
        time_ns = sample.time_ns
        heads = {}
        for (name, attributes, start), value in zip(sample.layout, sample.values):
            if name not in headers:
                unknown += 1
                continue
            head = heads.get((attributes, start))
            if head is None:
                head = heads[(attributes, start)] = point_head(time_ns, attributes, start)
            # The point_head completed with its value: asInt for an int (not a bool), else asDouble.
            if type(value) is int:
                point = '%s"asInt":"%d"}' % (head, value)
            else:
                point = '%s"asDouble":%r}' % (head, float(value))
            points = grouped.get(name)
            if points is None:
                grouped[name] = [point]
            else:
                points.append(point)
    parts = []
    for resource, grouped in by_resource.items():
        metrics = ",".join([headers[name] + ",".join(points) + "]}}" for name, points in grouped.items()])
        parts.append(SCOPE_METRICS % (resource, metrics))
    return REQUEST_HEAD + ",".join(parts) + "]}", unknown


# ---------------------------------------------------------------- counters about ourselves

class Stats:
    """What the exporter did, for its own series and its log lines. Its lock guards every counter;
    the other parts only call its methods."""

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

    def sample_read(self):
        with self.lock:
            self.samples_read += 1

    def line_skipped(self):
        with self.lock:
            self.lines_skipped += 1

    def source_restarted(self):
        with self.lock:
            self.source_restarts += 1

    def points_left_out(self, reason, count):
        """Data points dropped one by one (a partial rejection, an implausible reading)."""
        if count:
            with self.lock:
                self.points_dropped[reason] = self.points_dropped.get(reason, 0) + count

    def dropped(self, reason, samples):
        read = sum(1 for s in samples if not s.own)
        with self.lock:
            self.samples_dropped[reason] = self.samples_dropped.get(reason, 0) + read
            self.points_dropped[reason] = self.points_dropped.get(reason, 0) + sum(len(s.values) for s in samples)
            # given up on, but a request that carried them went out and got no answer: they may be there
            self.dropped_unanswered += sum(s.unanswered for s in samples if not s.own)

    def delivered(self, samples):
        read = points = resent = points_resent = 0
        for sample in samples:  # one pass: this runs for every request
            points += len(sample.values)
            if not sample.own:
                read += 1
            if sample.unanswered:
                points_resent += len(sample.values) * sample.unanswered
                if not sample.own:
                    resent += sample.unanswered
        with self.lock:
            self.samples_delivered += read
            self.points_sent += points
            self.samples_resent += resent
            self.points_resent += points_resent

    def send_error(self, error_type):
        with self.lock:
            self.send_errors[error_type] = self.send_errors.get(error_type, 0) + 1

    def readings(self, buffered):
        """The exporter.* readings, as of now."""
        start = self.start_ns
        with self.lock:
            out = [
                ("exporter.samples.read", self.samples_read, (), start),
                ("exporter.datapoints.sent", self.points_sent, (), start),
                ("exporter.datapoints.resent", self.points_resent, (), start),
                ("exporter.buffer.samples", buffered, (), 0),
                ("exporter.source.restarts", self.source_restarts, (), start),
                ("exporter.source.lines_skipped", self.lines_skipped, (), start),
            ]
            out += [("exporter.datapoints.dropped", n, (("reason", r),), start)
                    for r, n in sorted(self.points_dropped.items())]
            out += [("exporter.send.errors", n, (("error.type", k),), start)
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


# ---------------------------------------------------------------- the buffer

class SampleBuffer:
    """Unsent samples, oldest first, bounded. The sender takes a batch from the front ("in flight")
    and either commits it (delivered or given up on) or releases it for a retry. Every sample gets
    a sequence number as it comes in: the spool tells by it what is on disk and what is finished.

    A sender with nothing to do sleeps on a doorbell (a C-level queue) that add() rings once:
    cheaper per sample than a threading.Condition, whose wait and notify run in Python."""

    def __init__(self, max_samples, stats):
        self.max_samples = max_samples
        self.stats = stats
        self.samples = deque()
        self.in_flight = 0
        self.next_seq = 1
        self.lock = threading.Lock()
        self.doorbell = SimpleQueue()
        self.sender_waiting = False
        self.closing = False  # the sender is stopping: take() no longer waits for samples
        self.overflowing = False
        self.overflow_dropped = 0

    def __len__(self):
        with self.lock:
            return len(self.samples)

    def add(self, sample):
        with self.lock:
            sample.seq = self.next_seq
            self.next_seq += 1
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

    def prepend(self, samples):
        """Samples recovered from the spool go first: they are older than anything read since. They
        keep their numbers; new samples are numbered after them."""
        with self.lock:
            self.samples.extendleft(reversed(samples))
            if samples:
                self.next_seq = max(self.next_seq, max(s.seq for s in samples) + 1)
            while len(self.samples) > self.max_samples:
                self.stats.dropped("buffer_full", [self.samples.popleft()])

    def wake(self):
        """End a take() for good: the sender is stopping."""
        with self.lock:
            self.closing = True
        self.doorbell.put(None)

    def take(self, count, wait_s):
        """Mark up to `count` samples from the front as in flight; wait up to wait_s for one."""
        with self.lock:
            wait = self.sender_waiting = not self.samples and not self.closing
        if wait:
            try:
                self.doorbell.get(timeout=wait_s)
            except Empty:
                pass
        with self.lock:
            self.sender_waiting = False
            self.in_flight = min(count, len(self.samples))
            return [self.samples[i] for i in range(self.in_flight)]

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

    def newer_than(self, seq):
        """The samples numbered after seq (those not yet on disk), oldest first."""
        with self.lock:
            if not self.samples or self.samples[-1].seq <= seq:
                return []
            newer = []
            for sample in reversed(self.samples):
                if sample.seq <= seq:
                    break
                newer.append(sample)
            return newer[::-1]

    def finished_through(self):
        """Every sample numbered up to this one is finished with (delivered or given up on)."""
        with self.lock:
            return (self.samples[0].seq if self.samples else self.next_seq) - 1

    def take_overflow_count(self):
        """Samples dropped as the buffer overflowed since the last call."""
        with self.lock:
            count, self.overflow_dropped = self.overflow_dropped, 0
            return count


# ---------------------------------------------------------------- the spool

class Spool:
    """Unsent samples on disk, so that a restart or a crash during an outage loses (almost) nothing.

    One append-only file of JSON lines in --spool-dir, mode 0600:
      {"format":2,"resource":{...}}                          the resource of the samples below it
      [seq, time_ns, [[metric, value, [[key, value], ...], start_ns], ...]]   one sample
      {"done":seq}                                           samples up to seq are finished with
    During an outage, every --spool-every seconds, the samples not yet on disk and a done mark are
    appended: the file is never rewritten as a whole on a timer. Once every sample on disk is
    finished the file is removed; at exit the unsent samples are written. A file that would pass
    --spool-max-bytes is rewritten with the newest unsent samples only (half the bound, to leave
    room to append), and at exit the oldest that do not fit are dropped (counted once: spool_full).

    A folder that cannot be used (read-only, full, a file) is a warning, said once: the exporter
    keeps its samples in memory. A lock file keeps a second exporter out of the same folder."""

    FORMAT = 2

    def __init__(self, directory, max_bytes, stats, table, resource):
        self.directory = directory
        self.path = os.path.join(directory, f"{SERVICE_NAME}.spool")
        self.lock_path = os.path.join(directory, f"{SERVICE_NAME}.lock")
        self.max_bytes = max_bytes
        self.stats = stats
        self.table = table
        self.resource = resource  # {key: value} of this run
        self.resource_json = encode_attributes(sorted(resource.items()))
        self.lock_fd = None
        self.usable = False
        self.problem = None      # the last error said, so that it is said once
        self.on_disk_through = 0  # samples numbered up to this one are in the file
        self.done_through = 0     # the last done mark written
        self.size = 0
        self.resource_written = False

    # ---- start-up

    def open(self):
        """Take the folder and return the samples a previous run left. Raises ConfigError when
        another exporter holds the folder; any other problem is a warning and an empty spool."""
        if not self.take_folder():
            return []
        self.move_aside_older_format()
        samples = self.load()
        if samples:
            self.on_disk_through = max(s.seq for s in samples)
            self.done_through = samples[0].seq - 1
            try:
                self.size = os.stat(self.path).st_size
            except OSError:
                self.size = 0
        return samples

    def take_folder(self):
        """Make the folder and hold its lock (held until the process ends). False: a warning said."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self.lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            self.fail(f"cannot use the spool folder {self.directory}: {exc.strerror or exc}")
            return False
        import fcntl
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.lock_fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self.lock_fd)
            self.lock_fd = None
            raise ConfigError(f"another exporter (pid {holder}) uses the spool folder {self.directory}; "
                              f"give each exporter its own --spool-dir", EXIT_SPOOL_IN_USE)
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)
        self.usable = True
        return True

    def move_aside_older_format(self):
        older = os.path.join(self.directory, f"{SERVICE_NAME}.spool.json")
        if os.path.exists(older):
            aside = f"{older}.older-version-{int(time.time())}"
            try:
                os.replace(older, aside)
            except OSError:
                aside = "(could not move it)"
            LOG.warning("spool %s is from an older version of this exporter and is not read; moved aside to %s",
                        older, aside)

    def load(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            aside = self.move_aside()
            LOG.warning("spool %s is unreadable (%s); moved aside to %s, starting empty", self.path, exc, aside)
            return []
        samples, done, bad, unknown = self.parse(lines)
        if lines and bad == len(lines):
            aside = self.move_aside()
            LOG.warning("spool %s is unreadable (no line of it parses); moved aside to %s, starting empty",
                        self.path, aside)
            return []
        if bad:
            LOG.warning("spool %s: %d unreadable lines skipped (a crash during a write leaves one)", self.path, bad)
        if unknown:
            LOG.warning("spool %s: %d readings this version cannot send were dropped", self.path, unknown)
            self.stats.points_left_out("unencodable", unknown)
        samples = [s for s in samples if s.seq > done]
        if not samples:
            self.remove()
            return []
        LOG.info("spool: %d unsent samples from the last run will be sent first", len(samples))
        return samples

    def parse(self, lines):
        """(samples, done mark, unreadable lines, unknown readings) of the spool's lines."""
        samples, done, bad, unknown = [], 0, 0, 0
        resource = None
        for line in lines:
            try:
                record = STRICT_JSON.decode(line)
                if isinstance(record, dict):
                    if "done" in record:
                        done = max(done, int(record["done"]))
                    elif record.get("format") == self.FORMAT and isinstance(record.get("resource"), dict):
                        attrs = sorted((str(k), str(v)) for k, v in record["resource"].items())
                        encoded = encode_attributes(attrs)
                        resource = None if encoded == self.resource_json else encoded
                    else:
                        raise ValueError("unknown record")
                    continue
                seq, time_ns, readings = record
                known = []
                for name, value, attributes, start in readings:
                    pairs = tuple((str(k), str(v)) for k, v in attributes)
                    if name in self.table.by_name:
                        known.append((name, value, pairs, int(start)))
                    else:
                        unknown += 1
                sample, implausible = make_sample(int(time_ns), known, self.table, resource)
                unknown += implausible
                if sample is not None:
                    sample.seq = int(seq)
                    sample.own = all(name.startswith("exporter.") for name, _a, _s in sample.layout)
                    samples.append(sample)
            except (ValueError, TypeError, KeyError, RecursionError):
                bad += 1
        return samples, done, bad, unknown

    # ---- while running

    def sync(self, buffer, outage):
        """Called every --spool-every seconds by the sampling thread: during an outage append what is new,
        always append how far the buffer got, and remove the file once all of it is finished."""
        if not self.usable and not self.retry_open():
            return
        try:
            if outage:
                newer = buffer.newer_than(self.on_disk_through)
                if newer:
                    self.append_samples(newer, buffer)
            if self.on_disk_through:
                finished = buffer.finished_through()
                if finished >= self.on_disk_through:
                    self.remove()
                elif finished > self.done_through:
                    self.append(('{"done":%d}\n' % finished).encode())
                    self.done_through = finished
            self.recovered()
        except OSError as exc:
            self.fail(f"cannot write the spool {self.path}: {exc.strerror or exc}")

    def append_samples(self, samples, buffer):
        lines = [self.encode_sample(s) for s in samples]
        if not self.resource_written:
            lines.insert(0, self.encode_resource())
        data = "".join(lines).encode("utf-8")
        if self.size + len(data) > self.max_bytes:
            self.rewrite(buffer.snapshot(), self.max_bytes // 2, count_drops=False)
            return
        self.append(data)
        self.resource_written = True
        self.on_disk_through = samples[-1].seq

    def append(self, data):
        """Add bytes to the file; a write that fails is undone, so no half line stays behind."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            before = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):  # a full disk can take part of it
                    raise OSError(errno.ENOSPC, "No space left on device")
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, before)
                except OSError:
                    pass
                raise
            self.size = before + len(data)
        finally:
            os.close(fd)

    # ---- at exit

    def write_all(self, samples):
        """The unsent samples at exit; returns how many were written."""
        if not self.usable and not self.retry_open():
            self.stats.dropped("shutdown", samples)
            return 0
        try:
            if not samples:
                self.remove()
                return 0
            return self.rewrite(samples, self.max_bytes, count_drops=True)
        except OSError as exc:
            self.fail(f"cannot write the spool {self.path}: {exc.strerror or exc}")
            self.stats.dropped("shutdown", samples)
            return 0

    def rewrite(self, samples, bound, count_drops):
        """Replace the file with the newest samples that fit in `bound` bytes (through a temporary
        file with an unpredictable name, never following a planted link)."""
        head = self.encode_resource().encode("utf-8")
        encoded = [self.encode_sample(s).encode("utf-8") for s in samples]
        total = len(head) + sum(len(e) for e in encoded)
        first = 0
        while total > bound and first < len(encoded):
            total -= len(encoded[first])
            first += 1
        if first and count_drops:
            self.stats.dropped("spool_full", samples[:first])
            LOG.warning("spool: %d oldest samples do not fit in %d bytes and were dropped", first, self.max_bytes)
        if first == len(encoded):
            self.remove()
            return 0
        temporary = os.path.join(self.directory, f".{SERVICE_NAME}.{os.urandom(6).hex()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(head + b"".join(encoded[first:]))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, self.path)
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        self.size = total
        self.resource_written = True
        self.on_disk_through = samples[-1].seq
        self.done_through = samples[first].seq - 1
        return len(encoded) - first

    def close(self):
        """Let the folder go (the lock), at exit."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
            self.usable = False

    # ---- helpers

    def encode_resource(self):
        return json.dumps({"format": self.FORMAT, "resource": self.resource}, separators=(",", ":")) + "\n"

    @staticmethod
    def encode_sample(sample):
        readings = [[name, value, attributes, start] for name, value, attributes, start in sample.readings()]
        return json.dumps([sample.seq, sample.time_ns, readings], separators=(",", ":")) + "\n"

    def remove(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.size = 0
        self.on_disk_through = self.done_through = 0
        self.resource_written = False

    def move_aside(self):
        aside = f"{self.path}.corrupt-{int(time.time())}"
        try:
            os.replace(self.path, aside)
        except OSError:
            aside = "(could not move it)"
        return aside

    def retry_open(self):
        """After a folder that could not be used at start: try it again, each time the spool is
        wanted. A file found there now was not read at start: it is moved aside, never replayed late."""
        if self.usable:
            return True
        try:
            if not self.take_folder():
                return False
        except ConfigError as exc:
            self.fail(str(exc))
            return False
        if os.path.exists(self.path):
            LOG.warning("spool %s was not readable at start; moved aside to %s", self.path, self.move_aside())
        self.recovered()
        return True

    def fail(self, problem):
        """Say a problem once (and again only when it changes)."""
        if problem != self.problem:
            self.problem = problem
            LOG.warning("%s; unsent samples are kept in memory only (up to --buffer-max). Fix the folder's "
                        "permissions or free space, or choose another --spool-dir", problem)

    def recovered(self):
        if self.problem is not None:
            self.problem = None
            LOG.info("spool %s is writable again", self.path)

# ---------------------------------------------------------------- sending

RETRYABLE_STATUS = (429, 502, 503, 504)
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
# A batch is cut to about this much JSON. A backlog (a collector outage, a slow answer) then goes
# out in many small requests instead of a few of up to --batch-max samples: building one request
# holds about four copies of its body, and those peaks would set the exporter's resident memory.
REQUEST_TARGET_BYTES = 64 * 1024
HEAD_END = re.compile(rb"\r?\n\r?\n")  # the blank line after the headers
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0
RETRY_AFTER_MAX_S = 300.0
DELIVERY_NOTE_S = 3600.0


class Outcome:
    """What became of one export request. `http_status` is the collector's answer (None when none
    came); `error_type` names a failure for exporter.send.errors (the status, or what broke)."""

    def __init__(self, kind, detail="", retry_after=None, rejected=0, http_status=None, error_type=None):
        self.kind = kind            # "ok", "partial", "retry", "reject", "too_large"
        self.detail = detail
        self.retry_after = retry_after
        self.rejected = rejected
        self.http_status = http_status
        self.error_type = error_type or (str(http_status) if http_status else None)
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


def one_line(text, limit=300):
    """Text from outside (a collector's answer) made safe for our log: one line, control characters
    escaped, bounded. It goes into lines that `make status` reads: it must never forge one."""
    return json.dumps(text[:limit], ensure_ascii=False)[1:-1]


def response_message(body):
    """The collector's google.rpc.Status message, or the start of whatever it sent."""
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
        if isinstance(document, dict) and document.get("message"):
            text = str(document["message"])
    except ValueError:
        pass
    return one_line(text)


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
        except (ValueError, RecursionError):
            partial = {}
        rejected = 0
        try:
            rejected = int(partial.get("rejectedDataPoints") or 0) if isinstance(partial, dict) else 0
        except (TypeError, ValueError):
            rejected = 0
        message = str(partial.get("errorMessage") or "") if isinstance(partial, dict) else ""
        if rejected or message:
            return Outcome("partial", one_line(message), rejected=max(0, rejected), http_status=200)
        return Outcome("ok", http_status=200)
    if 200 < status < 300:
        return Outcome("ok", http_status=status)
    if status in RETRYABLE_STATUS:
        return Outcome("retry", f"HTTP {status}", parse_retry_after(headers.get("retry-after")), http_status=status)
    if status == 413:
        return Outcome("too_large", "HTTP 413 request too large", http_status=413)
    return Outcome("reject", f"HTTP {status}: {response_message(body)}", http_status=status)


class BadResponse(OSError):
    """The collector answered something that is not HTTP/1.x."""


def proxy_for(url):
    """The proxy URL to reach `url` through, as urllib and the OpenTelemetry SDKs choose it
    (HTTP_PROXY / HTTPS_PROXY / NO_PROXY, lower case first), or None to go direct."""
    if not any(key.lower() in ("http_proxy", "https_proxy", "all_proxy") for key in os.environ):
        return None  # the common case, without importing urllib.request (1.5 MB resident)
    import urllib.request
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


def proxy_parts(proxy):
    """A proxy setting split into its parts; `host:port` without a scheme means http, as in urllib."""
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def without_credentials(proxy):
    """A proxy URL fit for a log line."""
    parts = proxy_parts(proxy)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


TIMEOUT_SLACK_S = 0.05
LAST_READ_S = 0.001  # past the deadline, how long the one last read waits for bytes already on their way


class OtlpHttpClient:
    """POSTs OTLP/JSON bodies over one kept-alive HTTP/1.1 connection, reconnecting when it breaks.

    A small client on a plain socket rather than http.client: it sends one request shape and reads
    one response shape, usually with a single recv(); http.client parses headers with the email
    package. ssl is loaded only for an https:// collector. --timeout bounds each request as a
    whole (connect, send, answer), however slowly the collector trickles bytes."""

    def __init__(self, url, headers, timeout_s, compression, cafile):
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
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
        self.proxy = proxy_for(url)
        self.connect_to = (self.host, self.port)
        self.tunnel = None  # the CONNECT request for an https collector behind a proxy
        if self.proxy:
            self.route_through_proxy(host_header, fields)
            if not self.https:
                path = url  # a plain-HTTP proxy takes the absolute URL
        fields.update(headers)
        self.head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        host = self.connect_to[0]
        # getaddrinfo() runs a str host through the idna codec, which loads unicodedata: 0.7 MB
        # resident for good, even for 127.0.0.1. An ASCII host goes as bytes and needs no codec.
        self.lookup_host = host.encode("ascii") if host.isascii() else host
        self.context = None
        if self.https:
            import ssl
            self.context = ssl.create_default_context(cafile=cafile)
        self.sock = None
        self.sock_timeout = None
        self.deadline = None
        self.pending = b""  # received bytes not yet parsed
        self.request_out = False  # the last request went out whole: a failure now may follow its storing
        self.last_read = False  # the one read a request may still make once past its deadline

    def route_through_proxy(self, host_header, fields):
        proxy = proxy_parts(self.proxy)
        self.connect_to = (proxy.hostname, proxy.port or 8080)
        auth = {}
        if proxy.username is not None:
            import base64
            user = urllib.parse.unquote(proxy.username)
            password = urllib.parse.unquote(proxy.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            auth["Proxy-Authorization"] = f"Basic {token}"
        if self.https:
            self.tunnel = (f"CONNECT {host_header} HTTP/1.1\r\nHost: {host_header}\r\n"
                           + "".join(f"{k}: {v}\r\n" for k, v in auth.items()) + "\r\n").encode("latin-1")
        else:
            fields.update(auth)

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
        if self.sock is not None and self.went_stale():
            self.close()
        reused = self.sock is not None
        outcome = self.attempt(data, timeout)
        if reused and outcome.error_type in ("connection_reset", "broken_pipe"):
            # The collector closed an idle kept-alive connection; that is not an outage. If the
            # request had gone out whole, it may still have been stored: the answer says so.
            unanswered = outcome.unanswered
            outcome = self.attempt(data, timeout)
            outcome.unanswered = outcome.unanswered or unanswered
        return outcome

    def went_stale(self):
        """An idle kept-alive connection the collector closed, or wrote to (a 408 meant for no
        request): never reused, or that answer would be read as the next request's."""
        try:
            return bool(self.pending) or bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def connect(self):
        sock = socket.create_connection((self.lookup_host, self.connect_to[1]), timeout=self.time_left())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.sock_timeout = None
        self.pending = b""
        if self.tunnel:
            self.open_tunnel()
        if self.context is not None:
            self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)
            self.sock_timeout = None

    def open_tunnel(self):
        """CONNECT through the proxy to the collector; the TLS session then runs inside the tunnel."""
        self.set_timeout()
        self.sock.sendall(self.tunnel)
        status, _headers, _body = self.read_response(tunnel=True)
        if status != 200:
            raise BadResponse(f"the proxy {without_credentials(self.proxy)} refused to open a tunnel "
                              f"to the collector (HTTP {status})")
        if self.pending:
            raise BadResponse("the proxy sent bytes before the tunnel was open")

    def time_left(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        return left

    def set_timeout(self):
        """Bound the next socket wait by the request's deadline. Each settimeout() is a system call,
        so within one request the socket keeps its timeout while that ends at most TIMEOUT_SLACK_S
        past the deadline. A timeout shorter than the time left (a new request on a kept-alive
        connection) is always replaced: it would give up before the deadline."""
        left = self.time_left()
        timeout = self.sock_timeout
        if timeout is None or timeout < left or timeout - left > TIMEOUT_SLACK_S:
            self.sock.settimeout(left)
            self.sock_timeout = left

    def attempt(self, data, timeout):
        self.deadline = time.monotonic() + timeout
        self.last_read = True
        return self.guarded(lambda: self.exchange(data))

    def exchange(self, data):
        self.request_out = False
        if self.sock is None:
            self.connect()
        self.set_timeout()
        self.sock.sendall(data)
        self.request_out = True
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
            outcome = Outcome("retry", "timeout", error_type="timeout")
        except OSError as exc:
            if type(exc).__name__.startswith("SSL"):
                outcome = Outcome("retry", f"TLS error: {getattr(exc, 'reason', None) or exc}", error_type="tls")
            else:
                outcome = Outcome("retry", describe_network_error(exc), error_type=network_error_type(exc))
        except ValueError as exc:  # a length or chunk size that is not a number
            outcome = Outcome("retry", f"malformed HTTP response from the collector ({one_line(str(exc), 80)})",
                              error_type="bad_response")
        outcome.unanswered = self.request_out
        self.close()
        return outcome

    def receive(self):
        """More bytes of the response onto self.pending; False at the end of the connection. Each
        wait is bounded by what is left of the request's time, not a fresh timeout per recv().
        Past the deadline, one last read takes what has already arrived: when this process was not
        run in time (a loaded host), an answer that came in time is read, not thrown away, which
        would send the request again and have the collector store it twice."""
        if self.last_read and time.monotonic() >= self.deadline:
            self.last_read = False
            self.sock.settimeout(LAST_READ_S)
            self.sock_timeout = LAST_READ_S
        else:
            self.set_timeout()
        chunk = self.sock.recv(65536)
        self.pending += chunk
        return bool(chunk)

    def read_response(self, tunnel=False):
        """(status, {lower-case header: value}, body) of one HTTP/1.x response. Interim answers
        (100 Continue, 103 Early Hints) are read past, up to the final one."""
        while True:
            status, headers = self.read_status_and_headers()
            if not 100 <= status < 200 or status == 101:
                break
        if tunnel or status in (204, 304) or 100 <= status < 200:
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

    def read_status_and_headers(self):
        lines = self.read_head().split(b"\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
            raise BadResponse(f"not an HTTP response: {lines[0][:60]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

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
    if isinstance(exc, BadResponse):
        return "bad_response"
    return "network"


def describe_network_error(exc):
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the collector's host name ({exc.strerror or exc})"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {one_line(text, 200)}"


class Sender(threading.Thread):
    """The one thread that sends: drains the buffer to the collector, oldest first, so that the
    sampling thread never waits on the network."""

    def __init__(self, client, buffer, stats, table, resource_json, batch_max):
        super().__init__(name="sender", daemon=True)
        self.client = client
        self.buffer = buffer
        self.stats = stats
        self.table = table
        self.resource_json = resource_json
        self.batch_max = batch_max
        self.sample_bytes = 2048  # JSON per sample, learnt from each request built (see batch_size)
        self.stopping = threading.Event()
        self.deadline = None  # monotonic time after which a stopping sender gives up
        self.outage_since = None
        self.outage_late = 0
        self.last_reminder = 0.0
        self.backoff = BACKOFF_FIRST_S
        self.last_note = None
        self.delivered_since_note = 0
        self.unknown_said = False

    def run(self):
        while True:
            try:
                if not self.send_next():
                    return
            except Exception:  # a bug must not silently stop delivery: log it, keep the samples, go on
                LOG.exception("sender: unexpected error (please report it); retrying in 5 s")
                self.buffer.release()
                self.stopping.wait(5)

    def send_next(self):
        """Send one batch (or wait for one). False when the sender should end."""
        if self.stopping.is_set() and (not len(self.buffer) or time.monotonic() >= self.deadline):
            return False
        batch = self.buffer.take(self.batch_size(), 60.0)  # add() and finish() wake it sooner
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
        return True

    def batch_size(self):
        """--batch-max samples, or fewer where that would make a body over REQUEST_TARGET_BYTES."""
        return max(1, min(self.batch_max, REQUEST_TARGET_BYTES // self.sample_bytes))

    def encode(self, batch):
        """The request for a batch; its size per sample sets the next batch_size()."""
        body, unknown = encode_request(self.table, self.resource_json, batch)
        if unknown:  # a bug or a spool from another version; counted, never retried
            self.stats.points_left_out("unencodable", unknown)
            if not self.unknown_said:
                self.unknown_said = True
                LOG.warning("left out %d readings of series this exporter does not know (counted as "
                            "exporter.datapoints.dropped reason=unencodable)", unknown)
        self.sample_bytes = max(1, len(body) // len(batch))
        return body

    def remaining(self):
        if self.deadline is None:
            return None
        return max(0.05, self.deadline - time.monotonic())

    def deliver(self, batch):
        """Send one batch, halving it while it is too large. Returns (how many samples from the
        front are finished with, delivered or given up on; the last Outcome)."""
        body = self.encode(batch)
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
        if outcome.unanswered:  # an attempt went out whole and got no answer: each is a possible copy
            for sample in batch:
                sample.unanswered += 1
        if outcome.kind == "retry":
            self.stats.send_error(outcome.error_type)
            self.note_outage(outcome)
            return
        if outcome.kind == "reject":
            self.stats.send_error(outcome.error_type)
            LOG.error("collector rejected %d samples, not retrying (%s)", len(batch), outcome.detail)
            self.stats.dropped("rejected", batch)
            return
        if outcome.kind == "partial":
            LOG.warning("collector accepted the request but rejected %d data points: %s",
                        outcome.rejected, outcome.detail or "(no message)")
            self.stats.points_left_out("rejected", outcome.rejected)
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
            self.buffer.take_overflow_count()
            LOG.warning("cannot deliver to %s: %s; buffering samples (up to %d) and retrying",
                        self.client.url, outcome.detail, self.buffer.max_samples)
        elif now - self.last_reminder >= 60:
            self.last_reminder = now
            LOG.warning("collector still unavailable after %s (%s); %d samples buffered",
                        format_duration(now - self.outage_since), outcome.detail, len(self.buffer))

    def end_outage(self):
        took = format_duration(time.monotonic() - self.outage_since)
        LOG.info("collector is back after %s: delivered %d samples late, dropped %d while the buffer was full",
                 took, self.outage_late, self.buffer.take_overflow_count())
        self.outage_since = None

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

    def finish(self, flush_s):
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
MIN_SILENCE_S = 2.0     # a source is silent after 3 intervals, never less than this (hiccups at 0.05 s)
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

    @property
    def pid(self):
        return self.proc.pid

    @property
    def returncode(self):
        return self.proc.returncode

    def description(self):
        return f"(pid {self.proc.pid}): {' '.join(self.argv)}"

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

    def terminate(self):
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


class ChildRecord:
    """A note of the running child (in $TMPDIR), so that a child left behind by an exporter that was
    SIGKILLed is ended when the next one starts. Such a child also dies at its next line (its
    stdout pipe is gone), but at a long --interval that could be minutes."""

    def __init__(self):
        folder = os.environ.get("TMPDIR") or "/tmp"
        self.prefix = os.path.join(folder, f"{SERVICE_NAME}-{os.getuid()}-")
        self.path = f"{self.prefix}{os.getpid()}.child"

    def write(self, pid, program):
        try:
            with open(self.path, "w") as fh:
                fh.write(f"{pid} {program}\n")
        except OSError:
            pass  # only a courtesy to the next start

    def remove(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def end_leftovers(self):
        """End the children of exporters that are gone: still a session leader running the same
        program, its parent no longer an exporter (adopted by init or a subreaper)."""
        import glob
        for path in glob.glob(f"{glob.escape(self.prefix)}*.child"):
            try:
                owner = int(path[len(self.prefix):-len(".child")])
                with open(path) as fh:
                    pid_text, _, program = fh.read().strip().partition(" ")
                pid = int(pid_text)
                if owner == os.getpid() or process_alive(owner):
                    continue
                os.unlink(path)
                ps = subprocess.run(["ps", "-ww", "-o", "ppid=,pgid=,command=", "-p", str(pid)], capture_output=True,
                                    text=True, timeout=5).stdout.split(None, 2)
                if len(ps) == 3 and int(ps[1]) == pid and program in ps[2] and \
                        (ps[0] == "1" or SERVICE_NAME not in parent_command(ps[0])):
                    os.killpg(pid, signal.SIGTERM)
                    LOG.warning("ended %s (pid %d) left running by an exporter that was killed (pid %d)",
                                SOURCE_NAME, pid, owner)
            except (OSError, ValueError, subprocess.SubprocessError):
                continue


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, another user's
    return True


def parent_command(pid):
    try:
        return subprocess.run(["ps", "-ww", "-o", "command=", "-p", pid], capture_output=True, text=True,
                              timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


class Supervisor:
    """Keeps one source child alive: restart with capped backoff, kill when silent, stop on exit 2."""

    def __init__(self, source, interval, stats, stopping, max_starts=None):
        self.source = source
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
        self.record = ChildRecord()
        self.record.end_leftovers()

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
            silence_s = max(3 * self.interval, MIN_SILENCE_S) + STARTUP_GRACE_S
            while not self.stopping.is_set():
                wait_s = max(0.01, silence_s - (time.monotonic() - self.last_line))
                lines, ended, woken = self.child.read(wait_s, self.wake_r)
                if woken:
                    os.read(self.wake_r, 64)
                for read_ns, line in lines:
                    self.last_line = time.monotonic()
                    if not got_line:
                        got_line = True
                        silence_s = max(3 * self.interval, MIN_SILENCE_S)
                    yield read_ns, line
                    if self.stopping.is_set():
                        break
                if ended:
                    break
                if not lines and not woken and time.monotonic() - self.last_line > silence_s:
                    LOG.warning("%s gave nothing for %.1fs; restarting it", self.source.name, silence_s)
                    break
            self.finish_child(got_line)

    def start(self):
        self.source.reset()
        try:
            started = self.source.command(self.interval)
            # A source read inside this process (NVML) hands back its reader, which reads like a child.
            self.child = SourceProcess(started) if isinstance(started, list) else started
        except OSError as exc:
            self.child = None
            LOG.error("cannot start %s: %s", self.source.name, exc)
            self.pause()
            return
        if self.started_once:
            self.stats.source_restarted()
        self.started_once = True
        self.last_line = time.monotonic()
        LOG.info("started %s %s", self.source.name, self.child.description())
        if self.child.pid is not None:
            self.record.write(self.child.pid, self.child.argv[0])

    def finish_child(self, got_line):
        self.child.terminate()
        if self.stopping.is_set():
            return
        code = self.child.returncode
        description = self.child.exit_description()
        if code == 2:
            raise SourceUsageError(f"{self.source.name} rejected its arguments ({description}); "
                                   f"command was: {' '.join(self.child.argv)}")
        if got_line:
            self.backoff = 1.0
        LOG.warning("%s stopped (%s); restarting in %.0fs", self.source.name, description, self.backoff)
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
            self.child.terminate()
        self.record.remove()




# ---------------------------------------------------------------- running

# ---------------------------------------------------------------- running

DEFAULT_BUFFER_CAP = 100000  # samples (about 60-90 MB): an hour at 0.05 s on 8 GPUs would be 576,000
SKIPPED_NOTE_S = 60.0  # unparsable source lines: a warning at once, then at most one a minute


def print_console(table, sample, out=None):
    """A readable rendering of one sample: what would be sent."""
    out = out or sys.stdout
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sample.time_ns / 1e9))
    lines = []
    for name, value, attributes, _start in sample.readings():
        attrs = " ".join(f"{key}={text}" for key, text in attributes)
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
        if args.buffer_max is None:  # one hour of samples, at most DEFAULT_BUFFER_CAP
            hour = max(1, int(3600 / args.interval)) * source.rows_per_interval()
            args.buffer_max = min(hour, DEFAULT_BUFFER_CAP)
        args.batch_max = min(args.batch_max, args.buffer_max)
        self.args = args
        self.source = source
        self.table = MetricTable(SOURCE_METRICS + source.extra_metrics() + SELF_METRICS)
        self.stats = Stats(time.time_ns())
        self.buffer = SampleBuffer(args.buffer_max, self.stats)
        self.stopping = threading.Event()
        self.resource_json = encode_attributes(sorted(args.resource_attributes.items()))
        self.spool = None
        if args.spool_dir and args.exporter == "otlp":
            self.spool = Spool(args.spool_dir, args.spool_max_bytes, self.stats, self.table, args.resource_attributes)
        self.client = None
        self.sender = None
        self.supervisor = None
        self.next_self_report = 0.0
        self.skipped_since_note = 0
        self.last_skip_note = None

    def request_stop(self):
        """From a signal handler: stop sampling now, then flush (see shutdown)."""
        self.stopping.set()
        if self.supervisor is not None:
            self.supervisor.wake()

    def make_client(self):
        a = self.args
        return OtlpHttpClient(a.url, a.http_headers, a.timeout_s, a.compression, a.certificate)

    def sample_from(self, read_ns, line):
        """Parse one source line into a Sample, or None when the line carries no data. A line
        without data still carries the exporter's own series when they are due, so that they go
        out even while every source line fails to parse."""
        try:
            parsed = self.source.parse_line(line, read_ns)
            if parsed is not None and not abs(parsed[0] - read_ns) <= MAX_CLOCK_SKEW_NS:
                raise ValueError("its time is more than a day away from the clock")
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
            self.line_skipped(line, exc)
            return self.self_report_sample(read_ns)
        if parsed is None:
            return None
        time_ns, readings = parsed
        self.stats.sample_read()
        if self.source.starts_round() and self.self_report_due():
            # The exporter's own series: with the first sample, then at most every
            # --self-report-interval (never once per GPU row): counters need no more, and sending
            # them with every sample would cost as much as the data.
            readings = readings + self.stats.readings(len(self.buffer))
        sample, implausible = make_sample(time_ns, readings, self.table)
        self.stats.points_left_out("out_of_range", implausible)
        return sample

    def self_report_due(self):
        now = time.monotonic()
        if now < self.next_self_report:
            return False
        self.next_self_report = now + self.args.self_report_interval
        return True

    def self_report_sample(self, time_ns):
        if not self.self_report_due():
            return None
        sample = make_sample(time_ns, self.stats.readings(len(self.buffer)), self.table)[0]
        sample.own = True
        return sample

    def line_skipped(self, line, why):
        """Count it; warn at once, then at most once a minute, so that a changed source format is
        seen at the default log level without flooding the log."""
        self.stats.line_skipped()
        self.skipped_since_note += 1
        now = time.monotonic()
        if self.last_skip_note is None or now - self.last_skip_note >= SKIPPED_NOTE_S:
            more = f" ({self.skipped_since_note} in the last minute)" if self.last_skip_note is not None else ""
            LOG.warning("skipped an unparsable %s line%s: %s: %s", self.source.name, more,
                        one_line(str(why), 120), one_line(str(line), 120))
            self.last_skip_note = now
            self.skipped_since_note = 0

    def run(self):
        if self.args.exporter == "otlp":
            self.client = self.make_client()
            self.sender = Sender(self.client, self.buffer, self.stats, self.table, self.resource_json,
                                 self.args.batch_max)
            if self.spool:
                self.buffer.prepend(self.spool.open())
            self.sender.start()
        supervisor = self.supervisor = Supervisor(self.source, self.args.interval, self.stats, self.stopping)
        LOG.info("%s %s: sampling every %gs, %s", SERVICE_NAME, __version__, self.args.interval,
                 f"sending to {self.args.url}" if self.client else f"exporter {self.args.exporter}")
        if self.client is not None and self.client.proxy:
            LOG.info("through the proxy %s (from the environment)", without_credentials(self.client.proxy))
        next_spool = time.monotonic() + self.args.spool_every
        try:
            for read_ns, line in supervisor.lines():
                sample = self.sample_from(read_ns, line)
                if sample is None:
                    continue
                if self.args.exporter == "console":
                    print_console(self.table, sample)
                elif self.args.exporter == "otlp":
                    self.buffer.add(sample)
                    if self.spool and time.monotonic() >= next_spool:
                        self.spool.sync(self.buffer, outage=self.sender.outage_since is not None)
                        next_spool = time.monotonic() + self.args.spool_every
        finally:
            supervisor.close()
        return self.shutdown()

    def shutdown(self):
        if self.sender is not None:
            self.sender.finish(5.0)
            remaining = self.buffer.snapshot()
            if self.spool:
                kept = self.spool.write_all(remaining)
                if kept:
                    LOG.info("spool: wrote %d unsent samples to %s", kept, self.spool.path)
                self.spool.close()
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
        if sample is None or sample.own:
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
        return client.post(encode_request(exporter.table, exporter.resource_json, samples)[0])
    finally:
        client.close()


def count_points(samples):
    return sum(len(sample.values) for sample in samples)


def export_one_round(args, source):
    """--once: one round of the source, one send: exit 0 only if the collector accepted it."""
    exporter = Exporter(args, source)
    samples = read_first_round(exporter, args.interval, max_starts=3)
    if not samples:
        LOG.error("no sample from %s", source.name)
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
    proxy = proxy_for(args.url)
    if proxy:
        # The exporter will connect to the proxy, not the collector: that is what to test.
        report.ok("proxy", f"{without_credentials(proxy)} (from the environment; NO_PROXY to go direct)")
        proxied = proxy_parts(proxy)
        parts, port = proxied, proxied.port or 8080
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


def check_spool(args, report):
    """Whether --spool-dir can be written: a file made and removed there (the running exporter's
    lock is left alone)."""
    probe = os.path.join(args.spool_dir, f".{SERVICE_NAME}.check-{os.getpid()}")
    try:
        os.makedirs(args.spool_dir, mode=0o700, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError as exc:
        report.warn("spool folder", f"{args.spool_dir}: {exc.strerror or exc}; unsent samples would be kept in "
                                    f"memory only. Fix its permissions or choose another --spool-dir")
        return
    report.ok("spool folder", f"{args.spool_dir} is writable")


def run_check(args, source):
    report = CheckReport()
    print(f"{SERVICE_NAME} {__version__} --check")
    sample_ok = source.check(report, args)
    if args.spool_dir:
        check_spool(args, report)
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
            report.fail("one sample parsed", f"{source.name} gave no usable line")
    if args.exporter == "otlp" and check_collector(args, report):
        if not samples:
            samples = [make_sample(time.time_ns(), exporter.stats.readings(0), exporter.table)[0]]
        outcome = post_samples(exporter, samples)
        if outcome.kind == "ok":
            report.ok("collector accepted a POST", args.url)
        else:
            report.fail("collector accepted a POST", f"{args.url}: {outcome.detail or outcome.kind}")
    print("result: " + ("problems found" if report.failed else "all checks passed"))
    return EXIT_EXPORT_FAILED if report.failed else EXIT_OK


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    LOG.set_level("INFO")
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
            origins = Source.origins()
            rows = [dict(row, source=origins[row["name"]]) if row["name"] in origins else row
                    for row in table.as_json()]
            print(json.dumps(rows, indent=2))
            return EXIT_OK
        args = finish_config(args)
        LOG.set_level(args.log_level)
        source = Source(args)
        if args.check:
            return run_check(args, source)
        source.locate()
        if args.once:
            return export_one_round(args, source)
        exporter = Exporter(args, source)

        def on_signal(signum, _frame):
            LOG.info("received %s: stopping", signal.Signals(signum).name)
            exporter.request_stop()

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


if __name__ == "__main__":
    sys.exit(main())
