"""The NVIDIA exporter's NVML backend, against a stand-in libnvidia-ml.so.1 written in C
(tests/tools/fake-libnvidia-ml.c), compiled here with the machine's C compiler and loaded through
the exporter's real ctypes path. It serves the stand-in nvidia-smi's host profiles."""
import json
import os
import re

import nvml_standin
import pytest
from conftest import EXPORTER_PYTHON, FAKE_NVSMI, NVSMI_EXPORTER, ExporterProcess, need_peer, run_cli
from otlp_check import check_payload


@pytest.fixture(scope="session")
def libraries(tmp_path_factory):
    """(the current library, an R390-era one without the newer symbols), each as libnvidia-ml.so.1."""
    need_peer("cc", "gcc libc6-dev")
    root = tmp_path_factory.mktemp("nvml")
    return nvml_standin.build(str(root / "current")), nvml_standin.build(str(root / "old"), old_driver=True)


@pytest.fixture
def host(tmp_path, libraries):
    """Environment and flags for one stand-in host; host(profile, **knobs) -> (env, library path)."""
    def make(profile="r535-v100x8", old_driver=False, watts=None, **knobs):
        path = tmp_path / f"{profile}.nvml"
        rows = nvml_standin.write_profile(str(path), profile, watts=watts)
        env = {"FAKE_NVML_PROFILE": str(path), "FAKE_NVML_LOG": str(tmp_path / "nvml.log"),
               "TPW_RAPL_ROOT": "/nonexistent", "TPW_SELF_REPORT_INTERVAL": "1"}
        env.update({f"FAKE_NVML_{key.upper()}": str(value) for key, value in knobs.items()})
        return env, libraries[1 if old_driver else 0], rows
    return make


def start(endpoint, env, library, *extra):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    environment.update(env)
    return ExporterProcess([EXPORTER_PYTHON, NVSMI_EXPORTER, "--backend", "nvml", "--nvml-library", library,
                            "--interval", "0.2", "--endpoint", endpoint, *extra], environment)


def served_energy(env):
    """Every counter value the stand-in served, per GPU index, in order."""
    served = {}
    with open(env["FAKE_NVML_LOG"]) as fh:
        for line in fh:
            if line.startswith("energy "):
                _word, index, millijoules = line.split()
                served.setdefault(index, []).append(int(millijoules))
    return served


def by_gpu(points):
    out = {}
    for p in sorted(points, key=lambda p: p.time_ns):
        out.setdefault(p.attributes["gpu.index"], []).append(p)
    return out


# ---- energy

def test_energy_is_the_counters_own_value_and_rises_at_its_watts(receiver, host):
    env, library, rows = host("r535-v100x8")
    exporter = start(receiver.url, env, library)
    assert receiver.wait_for(lambda: len(receiver.series("gpu.energy")) >= 8 * 8, 30)
    assert exporter.stop() == 0
    served = served_energy(env)
    energy = by_gpu(receiver.series("gpu.energy"))
    assert sorted(energy) == [str(i) for i in range(8)]
    for index, points in energy.items():
        counter = served[index][1:]  # the first read is the probe at start: has this GPU a counter?
        assert {p.attributes["gpu.energy.source"] for p in points} == {"counter"}
        assert len({p.start_ns for p in points}) == 1
        # The k-th point is the (k+1)-th counter read less the first: the counter's own joules.
        for k, point in enumerate(points):
            expected = (counter[k + 1] - counter[0]) / 1000.0
            assert point.value == pytest.approx(expected, rel=1e-3, abs=1e-6)
        watts = float(rows[int(index)]["power.draw"])
        seconds = (points[-1].time_ns - points[0].start_ns) / 1e9
        assert points[-1].value / seconds == pytest.approx(watts, rel=0.05)
    for _headers, raw, _d, status in receiver.requests:
        if status == 200:
            check_payload(raw.decode())


def test_counter_that_goes_back_starts_a_new_series(receiver, host):
    env, library, _rows = host("r590-h100-mig", counter_reset=6)
    exporter = start(receiver.url, env, library)
    assert receiver.wait_for(lambda: len({p.start_ns for p in receiver.series("gpu.energy")}) >= 2
                             and len(receiver.series("gpu.energy")) >= 8, 30)
    assert exporter.stop() == 0
    points = sorted(receiver.series("gpu.energy"), key=lambda p: p.time_ns)
    starts = sorted({p.start_ns for p in points})
    assert len(starts) == 2
    assert "the energy counter went back" in exporter.stderr
    for start_ns in starts:  # each series only rises from its own start
        values = [p.value for p in points if p.start_ns == start_ns]
        assert values == sorted(values) and values[0] >= 0


def test_mig_gpu_gives_one_energy_series_not_one_per_instance(receiver, host):
    env, library, _rows = host("r590-h100-mig")
    exporter = start(receiver.url, env, library)
    assert receiver.wait_for(lambda: len(receiver.series("gpu.energy")) >= 4, 30)
    assert exporter.stop() == 0
    series = {tuple(sorted(p.attributes.items())) for p in receiver.series("gpu.energy")}
    assert len(series) == 1
    assert "MIG on: one energy series for the whole GPU" in exporter.stderr
    # utilization is N/A under MIG: left out, never 0
    assert receiver.series("gpu.utilization.gpu") == []
    assert receiver.series("gpu.power.board")


def test_maxwell_without_a_counter_integrates_power(receiver, host):
    env, library, rows = host("r470-maxwell-m6000")
    exporter = start(receiver.url, env, library)
    assert receiver.wait_for(lambda: len(receiver.series("gpu.energy")) >= 5, 30)
    assert exporter.stop() == 0
    points = sorted(receiver.series("gpu.energy"), key=lambda p: p.time_ns)
    assert {p.attributes["gpu.energy.source"] for p in points} == {"integrated"}
    seconds = (points[-1].time_ns - points[0].start_ns) / 1e9
    assert points[-1].value == pytest.approx(17.45 * seconds, rel=1e-6)
    assert "energy integrated from its power (no energy counter" in exporter.stderr
    assert "energy.log" not in env and served_energy(env) == {}  # never asked: NOT_SUPPORTED at start


def test_old_driver_without_newer_symbols_degrades_series_by_series(receiver, host):
    env, library, _rows = host("r535-v100x8", old_driver=True)
    exporter = start(receiver.url, env, library)
    assert receiver.wait_for(lambda: len(receiver.series("gpu.energy")) >= 8, 30)
    assert exporter.stop() == 0
    names = {p.metric for p in receiver.points}
    # no field values (power.instant, memory temperature), no energy counter: integrated instead
    assert "gpu.power.instant" not in names and "gpu.temp.memory" not in names
    assert {"gpu.power.board", "gpu.temp.core", "gpu.throttle.power", "gpu.memory.used"} <= names
    assert {p.attributes["gpu.energy.source"] for p in receiver.series("gpu.energy")} == {"integrated"}
    assert "Traceback" not in exporter.stderr


def test_no_reading_is_left_out_never_zero(receiver, host):
    env, library, _rows = host("r550-geforce-no-power")
    exporter = start(receiver.url, env, library)
    assert receiver.wait_for(lambda: len(receiver.series("gpu.temp.core")) >= 3, 30)
    assert exporter.stop() == 0
    names = {p.metric for p in receiver.points}
    assert not names & {"gpu.power.board", "gpu.power.limit", "gpu.energy", "gpu.power.instant"}
    assert {"gpu.temp.core", "gpu.fan.speed", "gpu.clock.sm"} <= names


# ---- both backends agree

def console_points(result):
    points = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1].startswith("gpu.") and "gpu.index=" in line:
            index = re.search(r"gpu\.index=(\d+)", line).group(1)
            points[(parts[1], index, parts[3])] = float(parts[2])
    return points


@pytest.mark.parametrize("profile", ["r535-v100x8", "r470-maxwell-m6000", "r590-h100-mig"])
def test_both_backends_send_the_same_series_units_and_values(host, profile):
    env, library, _rows = host(profile)
    env = dict(env, FAKE_NVSMI_PROFILE=profile, FAKE_NVSMI_SPEED="10")
    common = ["--once", "--console", "--interval", "0.5", "--nvml-library", library, "--nvidia-smi", FAKE_NVSMI]
    nvml = run_cli(NVSMI_EXPORTER, "--backend", "nvml", *common, env=env)
    smi = run_cli(NVSMI_EXPORTER, "--backend", "nvidia-smi", *common, env=env)
    assert nvml.returncode == 0 and smi.returncode == 0, nvml.stderr + smi.stderr
    assert console_points(nvml) and console_points(nvml) == console_points(smi)
    assert "started NVML (in this process)" in nvml.stderr and "started nvidia-smi (pid" in smi.stderr


# ---- choosing the backend, and saying so

def test_auto_takes_nvml_when_it_loads_else_nvidia_smi(host):
    env, library, _rows = host("r535-v100x8")
    env = dict(env, FAKE_NVSMI_SPEED="10")
    found = run_cli(NVSMI_EXPORTER, "--once", "--console", "--nvml-library", library, "--nvidia-smi", FAKE_NVSMI,
                    env=env)
    assert found.returncode == 0 and "reading the GPUs through NVML" in found.stderr
    missing = run_cli(NVSMI_EXPORTER, "--once", "--console", "--nvml-library", "/nonexistent/libnvidia-ml.so.1",
                      "--nvidia-smi", FAKE_NVSMI, env=env)
    assert missing.returncode == 0
    assert "NVML is not usable (cannot load /nonexistent/libnvidia-ml.so.1" in missing.stderr
    assert "started nvidia-smi (pid" in missing.stderr
    no_driver = run_cli(NVSMI_EXPORTER, "--once", "--console", "--nvml-library", library, "--nvidia-smi", FAKE_NVSMI,
                        env=dict(env, FAKE_NVML_INIT_ERROR="9"))
    assert "NVML is not usable (NVML did not initialise: Driver Not Loaded (NVML 9))" in no_driver.stderr


def test_backend_nvml_without_the_library_is_a_one_line_error(tmp_path):
    done = run_cli(NVSMI_EXPORTER, "--backend", "nvml", "--nvml-library", str(tmp_path / "absent.so"), "--once")
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "--backend nvml: cannot load" in done.stderr and "--backend nvidia-smi" in done.stderr


def test_below_a_tenth_of_a_second_needs_nvml(host):
    env, library, _rows = host("r535-v100x8")
    done = run_cli(NVSMI_EXPORTER, "--backend", "nvidia-smi", "--nvidia-smi", FAKE_NVSMI, "--interval", "0.05",
                   "--once", env=env)
    assert done.returncode == 2 and "below that needs NVML" in done.stderr
    fast = run_cli(NVSMI_EXPORTER, "--backend", "nvml", "--nvml-library", library, "--interval", "0.05", "--once",
                   "--console", env=env)
    assert fast.returncode == 0, fast.stderr
    assert "every 0.05s" in fast.stderr


def test_check_and_list_metrics_say_backend_and_fields(host):
    env, library, _rows = host("r470-maxwell-m6000")
    check = run_cli(NVSMI_EXPORTER, "--check", "--exporter", "none", "--nvml-library", library, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK    backend: NVML (" in check.stdout and "driver 470.256.02" in check.stdout
    assert "GPU 0 fields: energy: integrated power (no energy counter); no gpu.power.average" in check.stdout
    listed = {m["name"]: m for m in json.loads(run_cli(NVSMI_EXPORTER, "--list-metrics").stdout)}
    assert listed["gpu.power.board"]["source"] == {"nvidia-smi": "power.draw", "nvml": "nvmlDeviceGetPowerUsage"}
    assert "nvmlDeviceGetTotalEnergyConsumption" in listed["gpu.energy"]["source"]["nvml"]
    assert listed["gpu.temp.memory"]["source"]["nvml"] == "nvmlDeviceGetFieldValues NVML_FI_DEV_MEMORY_TEMP"


# ---- faults

def test_a_lost_gpu_is_named_once_and_the_others_go_on(receiver, host):
    env, library, _rows = host("r535-v100x8", lost="3:4:2")  # lost at its 4th read, back 2 inits later
    exporter = start(receiver.url, env, library)
    assert receiver.wait_for(lambda: back_after_a_gap(receiver, "3"), 40)
    assert exporter.stop() == 0
    assert exporter.stderr.count("GPU 3 (00000000:45:00.0) is lost (GPU is lost (NVML 15))") == 1
    assert "GPU 3 (00000000:45:00.0) answers again" in exporter.stderr
    inits = [line for line in open(env["FAKE_NVML_LOG"]) if line.startswith("init ")]
    assert len(inits) >= 3  # the first, and the re-initialisations with backoff
    gap_from, gap_to = back_after_a_gap(receiver, "3")
    during = {p.attributes["gpu.index"] for p in receiver.series("gpu.power.board") if gap_from < p.time_ns < gap_to}
    assert during == {str(i) for i in range(8)} - {"3"}


def back_after_a_gap(receiver, index):
    """(end, start) of the first gap of over 0.8 s in a GPU's rows, once 3 rows followed it; else None."""
    times = sorted(p.time_ns for p in receiver.series("gpu.power.board") if p.attributes["gpu.index"] == index)
    for k in range(1, len(times)):
        if times[k] - times[k - 1] > 0.8e9:
            return (times[k - 1], times[k]) if len(times) - k >= 3 else None
    return None


def test_driver_gone_restarts_the_reader_with_backoff(receiver, host):
    env, library, _rows = host("r535-v100x8", unload="3:2")  # gone at GPU 0's 3rd read; 2 inits fail
    exporter = start(receiver.url, env, library)
    assert receiver.wait_for(lambda: back_after_a_gap(receiver, "0"), 40)
    assert exporter.stop() == 0
    log = exporter.stderr
    assert "NVML stopped (the driver went away: nvmlDeviceGetPowerUsage: Driver Not Loaded (NVML 9)); " \
           "restarting in 1s" in log
    assert "NVML stopped (NVML did not initialise: Driver Not Loaded (NVML 9)); restarting in 2s" in log
    assert "Traceback" not in log
    assert {p.attributes["gpu.index"] for p in receiver.series("gpu.power.board")} == {str(i) for i in range(8)}


def test_a_call_that_never_returns_leaves_its_gpu_out_and_the_others_go_on(receiver, host):
    env, library, _rows = host("r535-v100x8", hang=20, hang_s=3600)  # the 20th power read: GPU 3, round 3
    exporter = start(receiver.url, env, library)
    assert receiver.wait_for(lambda: rows_after_last(receiver, "3") >= 7 * 5, 40)
    assert exporter.stop() == 0
    log = exporter.stderr
    assert "NVML gave nothing for 2.0s; restarting it" in log
    assert re.search(r"NVML stopped \(nvmlDeviceGetPowerUsage on GPU 3 has not returned for \ds\)", log)
    assert "GPU 3 is left out while NVML's nvmlDeviceGetPowerUsage on it has not returned" in log
    last_3 = max(p.time_ns for p in receiver.series("gpu.power.board") if p.attributes["gpu.index"] == "3")
    after = {p.attributes["gpu.index"] for p in receiver.series("gpu.power.board") if p.time_ns > last_3}
    assert after == {str(i) for i in range(8)} - {"3"}


def rows_after_last(receiver, index):
    points = receiver.series("gpu.power.board")
    last = max((p.time_ns for p in points if p.attributes["gpu.index"] == index), default=None)
    return 0 if last is None else sum(1 for p in points if p.time_ns > last)


def test_the_real_gpu_comparison_tool_runs_on_the_stand_ins(host, tmp_path):
    """tests/tools/compare_backends.py is meant for a lent GPU machine; here it runs on the stand-ins
    so that it works when one is lent: both backends over the same window, each one's cost."""
    import subprocess
    import sys

    from conftest import TOOLS
    env, library, rows = host("r535-v100x8")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    environment.update(env, TPW_NVML_LIBRARY=library, NVIDIA_SMI=FAKE_NVSMI, FAKE_NVSMI_PROFILE="r535-v100x8")
    done = subprocess.run([sys.executable, os.path.join(TOOLS, "compare_backends.py"), str(tmp_path / "out"),
                           "--seconds", "3", "--interval", "0.5"], env=environment, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "out" / "backends.json").read_text())
    assert sorted(results["energy"]) == [str(i) for i in range(8)]
    for index, gpu in results["energy"].items():
        assert gpu["source_nvml"] == "counter" and gpu["integrated_j"] > 0
        watts = float(rows[int(index)]["power.draw"])
        assert gpu["counter_j"] == pytest.approx(watts * 3, rel=0.35)  # the window's ends fall between rows
    assert results["cost"]["nvml"]["child_processes"] == 0 and results["cost"]["nvidia-smi"]["child_processes"] == 1
    assert "--backend nvml" in (tmp_path / "out" / "backends.log").read_text()
