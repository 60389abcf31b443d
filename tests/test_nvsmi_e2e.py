"""The NVIDIA exporter as a process: against the stand-in nvidia-smi, the loopback receiver, rotel,
the official protobuf definitions, and the real captures in shared/captures when they are there."""
import collections
import gzip
import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import (
    CAPTURES,
    EXPORTER_PYTHON,
    FAKE_NVSMI,
    NVSMI_EXPORTER,
    OWN_CAPTURE,
    ExporterProcess,
    python39,
    run_cli,
)
from otlp_check import check_payload
from otlp_receiver import free_port
from rotel_peer import Rotel


def start(endpoint, *extra, **fake_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    env.update({"FAKE_NVSMI_SPEED": "10", "TPW_RAPL_ROOT": "/nonexistent", "TPW_SELF_REPORT_INTERVAL": "1",
                "TPW_NVIDIA_BACKEND": "nvidia-smi"})
    env.update(fake_env)
    return ExporterProcess([EXPORTER_PYTHON, NVSMI_EXPORTER, "--nvidia-smi", FAKE_NVSMI, "--interval", "1",
                            "--endpoint", endpoint, *extra], env)


# ---- the exporter

def test_eight_gpus_land_with_identity_and_parse_strictly(receiver):
    exporter = start(receiver.url, "--compression", "gzip")
    assert receiver.wait_for(lambda: len(receiver.series("gpu.energy")) >= 16, 20)
    assert exporter.stop() == 0
    by_gpu = {}
    for p in receiver.series("gpu.power.board"):
        by_gpu.setdefault(p.attributes["gpu.index"], []).append(p)
    assert sorted(by_gpu) == [str(i) for i in range(8)]
    first = by_gpu["0"][0]
    assert first.resource["cluster"] == "nvidia" and first.resource["service.name"] == "nvsmi-otel-exporter"
    assert set(first.attributes) == {"gpu.index", "gpu.uuid", "gpu.name", "gpu.pci.bus_id"}
    for _h, raw, _d, status in receiver.requests:
        assert status == 200
        check_payload(gzip.decompress(raw).decode())
    energies = [p.value for p in receiver.series("gpu.energy") if p.attributes["gpu.index"] == "3"]
    assert energies == sorted(energies) and energies[-1] > 0
    # the exporter's own series at most once per round (here every 1 s), never once per GPU
    rounds = len(by_gpu["0"])
    self_times = [p.time_ns for p in receiver.series("exporter.samples.read")]
    assert 1 <= len(self_times) <= rounds
    assert set(self_times) <= {p.time_ns for p in by_gpu["0"]}


def test_once_against_rotel(tmp_path):
    rotel = Rotel(tmp_path)
    try:
        result = run_cli(NVSMI_EXPORTER, "--nvidia-smi", FAKE_NVSMI, "--once", "--interval", "0.2",
                         "--endpoint", rotel.url, env={"FAKE_NVSMI_PROFILE": "r590-h100-mig",
                                                       "TPW_RAPL_ROOT": "/nonexistent"})
        assert result.returncode == 0, result.stderr
        metrics = {m["name"]: m for m in rotel.metrics()}
    finally:
        rotel.stop()
    power = metrics["gpu.power.board"]
    assert power["unit"] == "W" and power["points"][0]["value"] == pytest.approx(69.85)
    assert power["points"][0]["attributes"]["gpu.name"] == "NVIDIA H100 80GB HBM3"
    assert power["resource"]["cluster"] == "nvidia"
    assert "gpu.utilization.gpu" not in metrics  # [N/A] under MIG
    assert metrics["gpu.temp.core"]["unit"] == "Cel"


# What one round of the V100x8 profile carries for each GPU (no module power, fan [N/A]); gpu.energy
# needs two rows of a GPU, so a single round has none.
V100_ROUND_SERIES = {"gpu.power.board", "gpu.power.instant", "gpu.power.limit", "gpu.temp.core", "gpu.temp.memory",
                     "gpu.utilization.gpu", "gpu.utilization.memory", "gpu.memory.used", "gpu.memory.total",
                     "gpu.clock.sm", "gpu.clock.memory", "gpu.pstate", "gpu.throttle.power", "gpu.throttle.thermal"}


def write_rapl(root, zones):
    """A powercap tree: {"intel-rapl:0": "package-0", ...} with counters at 1 J."""
    for path, name in zones.items():
        os.makedirs(root / path, exist_ok=True)
        (root / path / "name").write_text(name + "\n")
        (root / path / "energy_uj").write_text("1000000\n")
        (root / path / "max_energy_range_uj").write_text("262143328850\n")


@pytest.mark.parametrize("mode", ["--once", "--check"])
def test_once_and_check_send_every_gpu_of_one_round_and_rapl(receiver, tmp_path, mode):
    write_rapl(tmp_path, {"intel-rapl:0": "package-0", "intel-rapl:0:0": "core", "intel-rapl:1": "package-1"})
    result = run_cli(NVSMI_EXPORTER, "--nvidia-smi", FAKE_NVSMI, mode, "--interval", "0.2", "--endpoint", receiver.url,
                     "--rapl-root", str(tmp_path), env={"FAKE_NVSMI_SPEED": "5"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(receiver.requests) == 1  # one request: the whole round
    by_gpu = collections.defaultdict(set)
    for p in receiver.points:
        if "gpu.index" in p.attributes:
            by_gpu[p.attributes["gpu.index"]].add(p.metric)
    assert sorted(by_gpu) == [str(i) for i in range(8)]
    for index, series in by_gpu.items():
        assert series == V100_ROUND_SERIES, index
    assert {p.attributes["rapl.zone"] for p in receiver.series("host.power.cpu")} == {
        "package-0", "package-0/core", "package-1"}
    if mode == "--once":
        assert "sent 8 samples (" in result.stderr
    else:
        assert "OK    one sample parsed: 8 rows, " in result.stdout


@pytest.mark.parametrize("code", [9, 12, 18])
def test_driver_failures_at_start_are_retried_then_recover(receiver, tmp_path, code):
    log = tmp_path / "calls"
    exporter = start(receiver.url, FAKE_NVSMI_EXIT=str(code), FAKE_NVSMI_EXIT_RUNS="3", FAKE_NVSMI_LOG=str(log))
    assert receiver.wait_for(lambda: len(receiver.series("gpu.power.board")) >= 8, 30)
    assert exporter.stop() == 0
    assert f"exit {code}" in exporter.stderr


def test_gpu_lost_mid_stream_restarts_and_counts(receiver, tmp_path):
    exporter = start(receiver.url, FAKE_NVSMI_EXIT="15", FAKE_NVSMI_EXIT_AFTER="3", FAKE_NVSMI_EXIT_RUNS="1",
                     FAKE_NVSMI_LOG=str(tmp_path / "calls"))
    assert receiver.wait_for(lambda: any(p.value >= 1 for p in receiver.series("exporter.source.restarts")), 30)
    assert exporter.stop() == 0
    assert "exit 15: Unable to determine the device handle" in exporter.stderr


def test_help_that_hangs_is_cut_off(receiver):
    exporter = start(receiver.url, "--nvidia-smi-timeout", "1", FAKE_NVSMI_HANG="help")
    time.sleep(3.5)
    assert exporter.stop() == 0
    assert "did not answer within 1s" in exporter.stderr
    assert not receiver.points


def test_xid_lines_are_logged_not_counted(receiver):
    exporter = start(receiver.url, FAKE_NVSMI_XID="2")
    assert receiver.wait_for(lambda: len(receiver.series("gpu.power.board")) >= 40, 30)
    assert exporter.stop() == 0
    assert "nvidia-smi reported: Xid (PCI:0000:3b:00): 79" in exporter.stderr
    assert "lines skipped 0" in exporter.stderr


def test_outage_and_sigterm_hold_for_nvidia_too(receiver):
    exporter = start(receiver.url, FAKE_NVSMI_SPEED="20")
    assert receiver.wait_for(lambda: len(receiver.series("gpu.power.board")) >= 16, 20)
    receiver.stop()
    time.sleep(2)
    receiver.start()
    before = len(receiver.series("gpu.power.board"))
    assert receiver.wait_for(lambda: len(receiver.series("gpu.power.board")) > before + 200, 30)
    assert exporter.stop() == 0
    read, delivered, resent, dropped = map(int, re.search(
        r"samples read (\d+), delivered (\d+) \(resent (\d+)\), dropped (\d+)", exporter.stderr).groups())
    assert read == delivered and dropped == 0
    # every row once, in order, except rows the exporter sent again after an answer that never
    # came (the receiver stopping mid-request): at least once, and counted
    duplicates = 0
    for index in map(str, range(8)):
        times = [p.time_ns for p in receiver.series("gpu.power.board") if p.attributes["gpu.index"] == index]
        first_arrivals = list(dict.fromkeys(times))
        assert first_arrivals == sorted(first_arrivals)
        duplicates += len(times) - len(first_arrivals)
    assert duplicates <= resent
    # The backlog went out in requests of about 64 KiB (REQUEST_TARGET_BYTES), not of --batch-max
    # (500) rows: one such request of about 1 MB would set the exporter's peak memory.
    rows_per_request = collections.Counter(p.request for p in receiver.series("gpu.power.board"))
    assert max(rows_per_request.values()) > 8, "no backlog was sent (one round is 8 rows): the test did not test"
    assert max(len(raw) for _h, raw, _d, status in receiver.requests if status == 200) <= 2 * 64 * 1024
    pid = int(re.search(r"started nvidia-smi \(pid (\d+)\)", exporter.stderr).group(1))
    assert not os.path.exists(f"/proc/{pid}") or " Z " in open(f"/proc/{pid}/stat").read()


def test_check_reports_driver_fields_persistence_and_rapl(receiver):
    result = run_cli(NVSMI_EXPORTER, "--check", "--nvidia-smi", FAKE_NVSMI, "--endpoint", receiver.url,
                     env={"FAKE_NVSMI_PROFILE": "r470-maxwell-m6000", "TPW_RAPL_ROOT": "/nonexistent",
                          "FAKE_NVSMI_SPEED": "5"})
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for needle in ("OK    nvidia-smi found", "OK    driver version: 470.256.02", "OK    GPUs seen: 1: Quadro M6000",
                   "OK    persistence mode: on", "WARN  fields this driver lacks: power.draw.average, "
                   "power.draw.instant, module.power.draw.average", "WARN  RAPL (host CPU power): no RAPL zones",
                   "OK    one sample parsed", "OK    collector accepted a POST"):
        assert needle in out


def test_no_nvidia_smi_is_named(tmp_path):
    result = run_cli(NVSMI_EXPORTER, "--once", env={"PATH": str(tmp_path)})
    assert result.returncode == 3
    assert "nvidia-smi not found; looked in: PATH, /usr/bin/nvidia-smi, /usr/local/bin/nvidia-smi" in result.stderr


def test_list_metrics_and_isolated_run(tmp_path, receiver):
    table = {m["name"]: m for m in json.loads(run_cli(NVSMI_EXPORTER, "--list-metrics").stdout)}
    expected = {"gpu.power.board": "W", "gpu.power.average": "W", "gpu.power.instant": "W", "gpu.power.module": "W",
                "gpu.power.limit": "W", "gpu.energy": "J", "gpu.temp.core": "Cel", "gpu.temp.memory": "Cel",
                "gpu.utilization.gpu": "1", "gpu.utilization.memory": "1", "gpu.memory.used": "By",
                "gpu.memory.total": "By", "gpu.clock.sm": "Hz", "gpu.clock.memory": "Hz", "gpu.fan.speed": "1",
                "gpu.pstate": "1", "gpu.throttle.power": "1", "gpu.throttle.thermal": "1", "host.energy.cpu": "J",
                "host.power.cpu": "W"}
    for name, unit in expected.items():
        assert table[name]["unit"] == unit, name
    assert table["gpu.energy"]["type"] == "sum" and table["host.energy.cpu"]["type"] == "sum"
    copy = tmp_path / "nvsmi-otel-exporter.py"
    copy.write_bytes(open(NVSMI_EXPORTER, "rb").read())
    for python in filter(None, [sys.executable, python39()]):  # alone, stdlib only, and on Python 3.9
        done = subprocess.run([python, "-I", "-S", str(copy), "--once", "--nvidia-smi", FAKE_NVSMI,
                               "--interval", "0.2", "--endpoint", receiver.url, "--rapl-root", str(tmp_path)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=30,
                              env={"PATH": os.environ["PATH"], "FAKE_NVSMI_SPEED": "5"})
        assert done.returncode == 0, (python, done.stderr)


# Our own capture of a real host (tests/tools/capture-nvidia-smi.sh, on an H200 with driver 580),
# always here, and the third-party ones in ../shared/captures when that folder is.
CAPTURE_FILES = [os.path.join(OWN_CAPTURE, "capture.txt")] + (
    sorted(os.path.join(CAPTURES, f) for f in os.listdir(CAPTURES) if f.endswith(".txt"))
    if os.path.isdir(CAPTURES) else [])


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=[os.path.basename(os.path.dirname(p)) if
                                                     p.endswith("capture.txt") else os.path.basename(p)
                                                     for p in CAPTURE_FILES])
def test_real_captures_parse_and_match(path, tmp_path):
    """The captured help text of each real driver and its real rows, through the exporter."""
    result = run_cli(NVSMI_EXPORTER, "--nvidia-smi", FAKE_NVSMI, "--once", "--console", "--interval", "0.2",
                     env={"FAKE_NVSMI_CAPTURE": path, "TPW_RAPL_ROOT": "/nonexistent", "FAKE_NVSMI_SPEED": "5"})
    assert result.returncode == 0, result.stderr
    text = open(path, encoding="utf-8", errors="replace").read()
    after = text.split("# idle :: query-gpu (csv, what the exporter parses)\n", 1)[1].splitlines()
    body = after[after.index(next(line for line in after if line.startswith("#####"))) + 1:]
    lines = [line for line in body if line.strip()]
    header = [h.strip() for h in lines[0].split(", ")]
    row = lines[1].split(", ")
    board = row[header.index("power.draw [W]")]
    printed = [line for line in result.stdout.splitlines() if "gpu.power.board" in line]
    if board.startswith("["):
        assert not printed
    else:
        assert printed and float(printed[0].split()[2]) == pytest.approx(float(board.split()[0]))
    assert "lines skipped 0" in result.stderr or "stopped" not in result.stderr
    used = row[header.index("memory.used [MiB]")].split()[0]
    mem = [line for line in result.stdout.splitlines() if "gpu.memory.used" in line]
    assert int(mem[0].split()[2]) == int(used) * 1048576


def console_series(text):
    """(metric, unit, attributes) of each line --console printed: what identifies a series."""
    found = set()
    for line in text.splitlines():
        fields = line.split(None, 4)
        if len(fields) >= 4 and fields[0].endswith("Z"):
            found.add((fields[1], fields[3], fields[4] if len(fields) > 4 else ""))
    return found


def test_the_h200_capture_gives_the_series_the_real_host_gave():
    """On the H200, the exporter (--once --console) against the real nvidia-smi printed once.txt;
    against the stand-in serving that host's capture it must print the very same series."""
    result = run_cli(NVSMI_EXPORTER, "--nvidia-smi", FAKE_NVSMI, "--once", "--console", "--interval", "0.2",
                     env={"FAKE_NVSMI_CAPTURE": os.path.join(OWN_CAPTURE, "capture.txt"),
                          "TPW_RAPL_ROOT": "/nonexistent", "FAKE_NVSMI_SPEED": "5"})
    assert result.returncode == 0, result.stderr
    real = console_series(open(os.path.join(OWN_CAPTURE, "once.txt")).read())
    assert len(real) > 20 and ("gpu.power.board", "W", "gpu.index=0 gpu.uuid=GPU-00000000-0000-0000-0000-000000000000 "
                                                       "gpu.name=NVIDIA H200 gpu.pci.bus_id=00000000:00:06.0") in real
    ours = console_series(result.stdout)
    # The GPU's series are the driver's: the very same. The exporter's own series may have grown
    # since the capture was taken (exporter.datapoints.resent), but none may be missing.
    def own(series):
        return {s for s in series if s[0].startswith("exporter.")}

    assert ours - own(ours) == real - own(real)
    assert own(real) <= own(ours)


def test_exits_4_when_the_driver_rejects_the_query(receiver, tmp_path):
    """A driver that lists a field in its help but refuses it: exit 2 from nvidia-smi is a config error."""
    profile = json.load(open(os.path.join(os.path.dirname(FAKE_NVSMI), "..", "fixtures", "nvidia-smi",
                                          "r470-maxwell-m6000.json")))
    profile["fields"].append(["power.draw.instant"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(profile))
    real = open(FAKE_NVSMI).read()
    wrapper = tmp_path / "nvidia-smi"
    wrapper.write_text(real.replace("if field not in host.aliases:", "if field not in host.aliases or "
                                                                       "field == 'power.draw.instant':"))
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    env.update({"FAKE_NVSMI_PROFILE": str(bad), "TPW_RAPL_ROOT": "/nonexistent"})
    port = free_port()
    done = subprocess.run([sys.executable, NVSMI_EXPORTER, "--nvidia-smi", str(wrapper), "--endpoint",
                           f"http://127.0.0.1:{port}"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 4
    assert 'Field "power.draw.instant" is not a valid field to query.' in done.stderr


def test_a_query_that_hangs_is_killed_and_restarted(receiver, tmp_path):
    """nvidia-smi can hang under load: silent for three intervals (plus start-up grace) and it is replaced."""
    log = tmp_path / "calls"
    exporter = start(receiver.url, "--interval", "0.2", FAKE_NVSMI_HANG="query", FAKE_NVSMI_LOG=str(log))

    def loops():
        return [line for line in log.read_text().splitlines() if '"-lms"' in line] if log.exists() else []

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(loops()) < 2:
        time.sleep(0.2)
    assert exporter.stop() == 0
    assert "nvidia-smi gave nothing for 12.0s; restarting it" in exporter.stderr
    assert len(loops()) >= 2


def test_a_lost_gpu_0_is_named_and_the_host_and_exporter_series_go_on(receiver, tmp_path):
    """D7: GPU 0 falls off the bus while the others go on. It is named in a warning, and the
    round still begins (with GPU 1 now): RAPL and the exporter's own series keep coming."""
    write_rapl(tmp_path, {"intel-rapl:0": "package-0"})
    exporter = start(receiver.url, "--rapl-root", str(tmp_path), FAKE_NVSMI_LOST="0:2")
    assert receiver.wait_for(lambda: len(receiver.series("gpu.power.board")) >= 8 * 2 + 7 * 3, 30)
    lost_at = max(p.time_ns for p in receiver.series("gpu.power.board") if p.attributes["gpu.index"] == "0")
    assert receiver.wait_for(lambda: sum(p.time_ns > lost_at for p in receiver.series("host.power.cpu")) >= 3, 30)
    assert receiver.wait_for(lambda: sum(p.time_ns > lost_at for p in receiver.series("exporter.samples.read")) >= 2,
                             30)
    assert exporter.stop() == 0
    lost = [line for line in exporter.stderr.splitlines() if "GPU is lost" in line]
    assert len(lost) == 1 and "WARNING" in lost[0] and "0000:15:00.0" in lost[0]
    assert "lines skipped 0" in exporter.stderr


def test_a_malformed_gpu_row_is_named(nvsmi_mod):
    import argparse
    args = argparse.Namespace(interval=1.0, nvidia_smi=FAKE_NVSMI, nvidia_smi_timeout="10",
        backend="nvidia-smi", nvml_library="", rapl_root="/nonexistent")
    source = nvsmi_mod.Source(args)
    source.command(1.0)
    with pytest.raises(ValueError, match="GPU 3's row: expected"):
        source.parse_line("3, GPU-abc, 45.0", 1)
