"""nvidia-smi rows -> data points: field discovery per driver, "no value" spellings, GPUs, RAPL."""
import argparse
import os
import subprocess
import time

import pytest
from conftest import FAKE_NVSMI


def make_source(mod, profile="r535-v100x8", tmp_path=None, interval=1.0, **env):
    os.environ["FAKE_NVSMI_PROFILE"] = profile
    for key, value in env.items():
        os.environ[key] = value
    args = argparse.Namespace(interval=interval, nvidia_smi=FAKE_NVSMI, nvidia_smi_timeout="10",
        backend="nvidia-smi", nvml_library="",
                              rapl_root=str(tmp_path or "/nonexistent"))
    source = mod.Source(args)
    source.command_argv = source.command(interval)
    return source


@pytest.fixture(autouse=True)
def clean_env():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def rows(profile, fields, round_index=0):
    out = subprocess.run([FAKE_NVSMI, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"],
                         env=dict(os.environ, FAKE_NVSMI_PROFILE=profile), capture_output=True, text=True).stdout
    return out.splitlines()


def values(readings):
    out = {}
    for name, value, attributes, _start in readings:
        attrs = dict(attributes)
        out[(name, attrs.get("gpu.index") or attrs.get("rapl.zone"))] = value
    return out


def query_fields(source):
    return source.command_argv[1].split("=", 1)[1].split(",")


def test_old_driver_gets_only_fields_it_offers(nvsmi_mod):
    source = make_source(nvsmi_mod, "r470-maxwell-m6000")
    fields = query_fields(source)
    assert "power.draw" in fields and "clocks_throttle_reasons.active" in fields
    assert not {"power.draw.average", "power.draw.instant", "clocks_event_reasons.active"} & set(fields)
    assert source.command_argv[-3:] == ["--format=csv,noheader,nounits", "-lms", "1000"]
    assert "power.draw.instant" in source.missing


def test_r535_driver_uses_event_reasons_and_new_power_fields(nvsmi_mod):
    fields = query_fields(make_source(nvsmi_mod, "r535-v100x8"))
    assert {"power.draw.average", "power.draw.instant", "clocks_event_reasons.active"} <= set(fields)
    assert "module.power.draw.average" not in fields


def test_every_queried_field_is_accepted_by_the_driver(nvsmi_mod):
    """The real failure mode: one unknown field and nvidia-smi answers nothing (exit 2)."""
    for profile in ("r470-maxwell-m6000", "r535-v100x8", "r550-geforce-no-power", "r590-h100-mig"):
        argv = make_source(nvsmi_mod, profile).command_argv
        done = subprocess.run([argv[0], argv[1], argv[2]], env=dict(os.environ, FAKE_NVSMI_PROFILE=profile),
                              capture_output=True, text=True)
        assert done.returncode == 0, (profile, done.stdout)


def test_eight_gpus_give_eight_series_with_identity(nvsmi_mod):
    source = make_source(nvsmi_mod, "r535-v100x8")
    seen = {}
    for line in rows("r535-v100x8", query_fields(source)):
        _, readings = source.parse_line(line, 1_000_000_000)
        for name, _value, attributes, _start in readings:
            if name == "gpu.power.board":
                seen[dict(attributes)["gpu.index"]] = dict(attributes)
    assert sorted(seen) == [str(i) for i in range(8)]
    assert len({a["gpu.uuid"] for a in seen.values()}) == 8
    assert seen["3"]["gpu.name"] == "Tesla V100-SXM2-32GB" and seen["3"]["gpu.pci.bus_id"] == "00000000:45:00.0"


def test_units_and_scaling(nvsmi_mod):
    source = make_source(nvsmi_mod, "r535-v100x8")
    line = rows("r535-v100x8", query_fields(source))[5]
    _, points = source.parse_line(line, 1)
    got = values(points)
    assert got[("gpu.power.board", "5")] == pytest.approx(49.55)
    assert ("gpu.power.average", "5") not in got            # [N/A] on pre-GA100
    assert got[("gpu.power.instant", "5")] == pytest.approx(49.55)
    assert got[("gpu.memory.total", "5")] == 32768 * 1048576
    assert got[("gpu.clock.sm", "5")] == 135_000_000
    assert got[("gpu.temp.memory", "5")] == 36.0
    assert ("gpu.fan.speed", "5") not in got                # passive cooling: [N/A]
    assert got[("gpu.pstate", "5")] == 0
    assert got[("gpu.utilization.gpu", "5")] == 0.0         # a real idle zero stays


def test_throttle_reasons_from_the_event_bitmask(nvsmi_mod):
    source = make_source(nvsmi_mod, "r535-v100x8")
    fields = query_fields(source)
    out = subprocess.run([FAKE_NVSMI, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits",
                          "-lms", "10"], env=dict(os.environ, FAKE_NVSMI_PROFILE="r535-v100x8",
                                                  FAKE_NVSMI_EXIT="15", FAKE_NVSMI_EXIT_AFTER="2"),
                         capture_output=True, text=True).stdout.splitlines()
    load = [line for line in out if line[:1].isdigit()][8:16]
    got = {}
    for line in load:
        got.update(values(source.parse_line(line, 1)[1]))
    assert got[("gpu.throttle.thermal", "5")] == 1 and got[("gpu.throttle.power", "5")] == 0
    assert got[("gpu.throttle.power", "2")] == 1 and got[("gpu.throttle.thermal", "2")] == 0
    assert got[("gpu.throttle.power", "0")] == 0 and got[("gpu.utilization.gpu", "0")] == 0.9


def test_mig_gpu_has_no_utilization_but_has_power(nvsmi_mod):
    source = make_source(nvsmi_mod, "r590-h100-mig")
    got = values(source.parse_line(rows("r590-h100-mig", query_fields(source))[0], 1)[1])
    assert ("gpu.utilization.gpu", "0") not in got and ("gpu.utilization.memory", "0") not in got
    assert ("gpu.power.module", "0") not in got
    assert got[("gpu.power.board", "0")] == pytest.approx(69.85)
    assert got[("gpu.power.limit", "0")] == 700.0


def test_card_without_power_reading_sends_no_power_and_no_energy(nvsmi_mod):
    source = make_source(nvsmi_mod, "r550-geforce-no-power")
    line = rows("r550-geforce-no-power", query_fields(source))[0]
    for t in (1_000_000_000, 2_000_000_000, 3_000_000_000):
        got = values(source.parse_line(line, t)[1])
    assert not [k for k in got if k[0].startswith("gpu.power") or k[0] == "gpu.energy"]
    assert got[("gpu.temp.core", "0")] == 33.0 and got[("gpu.fan.speed", "0")] == 0.35


def test_maxwell_row(nvsmi_mod):
    source = make_source(nvsmi_mod, "r470-maxwell-m6000")
    got = values(source.parse_line(rows("r470-maxwell-m6000", query_fields(source))[0], 1)[1])
    assert got[("gpu.power.board", "0")] == pytest.approx(17.45)
    assert ("gpu.temp.memory", "0") not in got   # plain N/A on GDDR5
    assert got[("gpu.pstate", "0")] == 8 and got[("gpu.throttle.power", "0")] == 0


@pytest.mark.parametrize("token", ["[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", "[Insufficient Permissions]",
                                   "[Requested functionality has been deprecated]", "[Function Not Found]", "",
                                   "[GPU is lost]", "ERR!", "[Something New]"])
def test_every_no_value_spelling_is_omitted(nvsmi_mod, token):
    assert nvsmi_mod.cell_number(token) is None
    source = make_source(nvsmi_mod, "r470-maxwell-m6000")
    fields = query_fields(source)
    cells = rows("r470-maxwell-m6000", fields)[0].split(", ")
    cells[fields.index("power.draw")] = token
    got = values(source.parse_line(", ".join(cells), 1)[1])
    assert ("gpu.power.board", "0") not in got


def test_xid_lines_and_short_rows(nvsmi_mod):
    source = make_source(nvsmi_mod, "r535-v100x8")
    assert source.parse_line("Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.", 1) is None
    assert source.parse_line("", 1) is None
    with pytest.raises(ValueError):
        source.parse_line("0, GPU-abc, 45.0", 1)
    with pytest.raises(ValueError):
        source.parse_line('Field "x" is not a valid field to query.', 1)


def test_energy_is_trapezoids_over_real_time_per_gpu(nvsmi_mod):
    source = make_source(nvsmi_mod, "r470-maxwell-m6000")
    fields = query_fields(source)
    template = rows("r470-maxwell-m6000", fields)[0].split(", ")
    energy = []
    for t_s, watts in ((0.0, "100.00"), (1.0, "200.00"), (2.2, "200.00"), (3.2, "[N/A]"), (4.2, "50.00"),
                       (5.2, "50.00")):
        cells = list(template)
        cells[fields.index("power.draw")] = watts
        got = values(source.parse_line(", ".join(cells), int(1e9 + t_s * 1e9))[1])
        energy.append(got.get(("gpu.energy", "0")))
    # first row starts the series; 1 s of 100->200 W = 150 J; 1.2 s at 200 W = 240 J;
    # the [N/A] row breaks the chain (nothing added, no point); then 1 s at 50 W = 50 J
    assert energy == [None, pytest.approx(150.0), pytest.approx(390.0), None, pytest.approx(390.0),
                      pytest.approx(440.0)]


def make_rapl(root, zones):
    for path, (name, energy, max_range) in zones.items():
        os.makedirs(root / path, exist_ok=True)
        (root / path / "name").write_text(name + "\n")
        (root / path / "energy_uj").write_text(f"{energy}\n")
        (root / path / "max_energy_range_uj").write_text(f"{max_range}\n")


def test_rapl_zones_with_counter_wrap(nvsmi_mod, tmp_path):
    make_rapl(tmp_path, {"intel-rapl:0": ("package-0", 262_143_000_000, 262_143_328_850),
                         "intel-rapl:0:0": ("core", 1_000_000, 262_143_328_850),
                         "intel-rapl:1": ("package-1", 5_000_000, 262_143_328_850)})
    rapl = nvsmi_mod.RaplReader(str(tmp_path))
    assert rapl.disabled is None
    assert sorted(rapl.zones.values()) == ["package-0", "package-0/core", "package-1"]
    assert rapl.readings(1_000_000_000) == []  # first read only sets the baseline
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("671150\n")     # wrapped: +1,000,000 uJ
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("3000000\n")  # +2 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("5000000\n")    # idle: +0
    got = values(rapl.readings(3_000_000_000))
    assert got[("host.energy.cpu", "package-0")] == pytest.approx(1.0)
    assert got[("host.power.cpu", "package-0")] == pytest.approx(0.5)
    assert got[("host.energy.cpu", "package-0/core")] == pytest.approx(2.0)
    assert got[("host.power.cpu", "package-1")] == 0.0
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("2671150\n")
    got = values(rapl.readings(4_000_000_000))
    assert got[("host.energy.cpu", "package-0")] == pytest.approx(3.0)  # cumulative across the wrap
    assert got[("host.power.cpu", "package-0")] == pytest.approx(2.0)


def test_rapl_not_readable_says_why(nvsmi_mod, tmp_path, monkeypatch):
    assert "no RAPL zones" in nvsmi_mod.RaplReader(str(tmp_path)).disabled
    make_rapl(tmp_path, {"intel-rapl:0": ("package-0", 1, 2)})
    real_open = open

    def denied(path, *args, **kwargs):
        if str(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    rapl = nvsmi_mod.RaplReader(str(tmp_path))
    assert "permission denied" in rapl.disabled and "root-only since Linux 5.10" in rapl.disabled
    assert rapl.readings(1) == []


def test_rapl_is_read_once_per_round(nvsmi_mod, tmp_path):
    make_rapl(tmp_path, {"intel-rapl:0": ("package-0", 1_000_000, 262_143_328_850)})
    source = make_source(nvsmi_mod, "r535-v100x8", tmp_path=tmp_path)
    lines = rows("r535-v100x8", query_fields(source))
    host = 0
    start_ns = time.time_ns()
    for t in (1, 2):
        (tmp_path / "intel-rapl:0" / "energy_uj").write_text(f"{t * 3_000_000}\n")
        for line in lines:
            host += sum(1 for name, *_ in source.parse_line(line, start_ns + t * 1_000_000_000)[1]
                        if name.startswith("host."))
    # energy + power once a round; the counters were read once when the source started, so the
    # first round has a window too (--once sends that round alone)
    assert host == 4


def test_help_parsing_reads_names_and_aliases(nvsmi_mod):
    text = ('List of valid properties to query for the switch "--query-gpu":\n\n"timestamp"\nThe time.\n\n'
            '"clocks.current.sm" or "clocks.sm"\nCurrent SM clock. Values "like this" in prose are ignored.\n\n'
            'Section about power properties\nProse.\n\n"power.draw.average" or "gpu.power.draw.average"\nAvg.\n')
    assert nvsmi_mod.offered_fields(text) == {"timestamp", "clocks.current.sm", "clocks.sm", "power.draw.average",
                                              "gpu.power.draw.average"}
