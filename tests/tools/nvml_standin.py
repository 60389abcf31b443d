"""The stand-in NVML library (fake-libnvidia-ml.c): build it, and describe a host for it.

The host profiles are the stand-in nvidia-smi's (tests/fixtures/nvidia-smi/*.json): the same GPUs,
names, UUIDs, bus ids and readings, turned into the units NVML answers in (mW, bytes, MHz, %,
P-state numbers, the clock event mask), from the profile's first round.
"""
import json
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "fake-libnvidia-ml.c")
PROFILES = os.path.join(HERE, "..", "fixtures", "nvidia-smi")

# nvmlDeviceArchitecture_t by product (nvml.h: 2 Kepler, 3 Maxwell, 4 Pascal, 5 Volta, 9 Hopper)
ARCHITECTURES = (("M6000", 3), ("GTX 10", 4), ("V100", 5), ("A100", 7), ("H100", 9), ("H200", 9))


def compiler():
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(directory, old_driver=False):
    """Compile the stand-in as DIRECTORY/libnvidia-ml.so.1 (the name the exporter loads)."""
    os.makedirs(directory, exist_ok=True)
    out = os.path.join(directory, "libnvidia-ml.so.1")
    flags = ["-DFAKE_NVML_OLD_DRIVER"] if old_driver else []
    subprocess.run([compiler(), "-shared", "-fPIC", "-O2", "-Wall", "-Werror", *flags, "-o", out, SOURCE],
                   check=True, capture_output=True, text=True)
    return out


def number(text):
    """A cell as the stand-in nvidia-smi prints it: a number, or None for every "no value" spelling."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def architecture(name):
    return next((arch for part, arch in ARCHITECTURES if part in name), 7)


def gpu_lines(row, watts=None):
    """One GPU of a profile round as stand-in profile lines; watts overrides its power reading."""
    def first(*names):
        return next((row[name] for name in names if name in row), None)

    power = watts if watts is not None else number(row.get("power.draw"))
    values = {
        "arch": architecture(row["name"]),
        "power_mw": power and round(power * 1000),
        "power_avg_mw": number(row.get("power.draw.average")),
        "power_inst_mw": number(row.get("power.draw.instant")),
        "limit_mw": number(row.get("enforced.power.limit")),
        "temp": number(row.get("temperature.gpu")),
        "mem_temp": number(row.get("temperature.memory")),
        "util_gpu": number(row.get("utilization.gpu")),
        "util_mem": number(row.get("utilization.memory")),
        "mem_total": number(row.get("memory.total")),
        "mem_used": number(row.get("memory.used")),
        "clock_sm": number(first("clocks.sm", "clocks.current.sm")),
        "clock_mem": number(first("clocks.mem", "clocks.current.memory")),
        "fan": number(row.get("fan.speed")),
        "pstate": int(row["pstate"][1:]) if row.get("pstate", "").startswith("P") else None,
        "reasons": first("clocks_event_reasons.active", "clocks_throttle_reasons.active"),
    }
    for key in ("power_avg_mw", "power_inst_mw", "limit_mw"):
        values[key] = values[key] if values[key] is None else round(values[key] * 1000)
    for key in ("mem_total", "mem_used"):
        values[key] = values[key] if values[key] is None else int(values[key]) * 1048576
    if values["reasons"] is not None and not values["reasons"].startswith("0x"):
        values["reasons"] = None
    lines = ["gpu", f"name {row['name']}", f"uuid {row['uuid']}", f"bus {row['pci.bus_id']}"]
    lines += [f"{key} {int(value) if isinstance(value, float) else value}"
              for key, value in values.items() if value is not None]
    return lines


def write_profile(path, profile="r535-v100x8", watts=None, mig=False):
    """Write the stand-in's profile file for one of the nvidia-smi host profiles."""
    with open(os.path.join(PROFILES, profile + ".json")) as fh:
        host = json.load(fh)
    rows = host["rounds"][0]
    lines = [f"driver {rows[0]['driver_version']}"]
    for row in rows:
        lines += gpu_lines(row, watts)
        if mig or "mig" in profile:
            lines.append("mig 1")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return rows
