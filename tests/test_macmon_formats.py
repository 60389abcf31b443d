"""Every macmon output format from v0.4.0 to today parses by key into the fixed series."""
import argparse
import calendar
import json
import os
from datetime import datetime, timedelta, timezone

import pytest
from conftest import MACMON_FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st


def parse(mod, line, interval=1.0, read_ns=1_700_000_000_000_000_000, source=None):
    source = source or mod.Source(argparse.Namespace(interval=interval, macmon=None))
    result = source.parse_line(line, read_ns)
    assert result is not None
    time_ns, readings = result
    values = {name: value for name, value, _attributes, _start in readings}
    return time_ns, values, readings


def first_line(name):
    with open(os.path.join(MACMON_FIXTURES, name)) as fh:
        return fh.readline().strip()


def test_v040_struct_order_without_timestamp_uses_read_time(macmon_mod):
    time_ns, values, _ = parse(macmon_mod, first_line("v0.4.0.jsonl"), read_ns=123_000_000_000)
    assert time_ns == 123_000_000_000
    assert values["mac.power.total"] == pytest.approx(0.22231553)
    assert values["mac.power.system"] == pytest.approx(5.876533)
    assert values["mac.gpu.usage"] == pytest.approx(0.021497859)
    assert values["mac.cpu.ecpu_usage"] == pytest.approx(0.082656614)
    assert values["mac.memory.ram_total"] == 25769803776
    assert values["mac.temp.gpu"] == pytest.approx(36.95167)
    # v0.4.0 has no ram_power or gpu_ram_power: omitted, not zero
    assert "mac.power.ram" not in values and "mac.power.gpu_ram" not in values
    assert "mac.energy.ram" not in values


def test_v042_adds_ram_power_and_zero_sys_power_is_omitted(macmon_mod):
    _, values, _ = parse(macmon_mod, first_line("v0.4.2.jsonl"))
    assert values["mac.power.ram"] == pytest.approx(0.11635789)
    assert values["mac.power.gpu_ram"] == pytest.approx(0.0009615385)
    with open(os.path.join(MACMON_FIXTURES, "v0.4.2.jsonl")) as fh:
        second = fh.readlines()[1]
    assert '"sys_power":0.0' in second
    _, values, _ = parse(macmon_mod, second)
    assert "mac.power.system" not in values and "mac.energy.system" not in values
    assert values["mac.power.total"] == pytest.approx(23.75)


def test_v061_real_line_sorted_keys_timestamp_and_no_gpu_sensor(macmon_mod):
    time_ns, values, _ = parse(macmon_mod, first_line("v0.6.0.jsonl"))
    assert time_ns == 1772827565259623000  # 2026-03-06T20:06:05.259623+00:00
    assert "mac.temp.gpu" not in values  # gpu_temp_avg 0.0 = no sensor
    assert values["mac.temp.cpu"] == pytest.approx(44.509185791015625)
    assert values["mac.power.ane"] == 0.0  # a real zero reading stays a zero


def test_v070_cpu_usage_pct_is_ignored_but_legacy_pairs_used(macmon_mod):
    _, values, _ = parse(macmon_mod, first_line("v0.7.0.jsonl"))
    assert values["mac.cpu.pcpu_usage"] == pytest.approx(0.024282800033688545)


def test_v080_prefers_usage_ratio_over_pair(macmon_mod):
    line = json.loads(first_line("v0.8.0.jsonl"))
    line["gpu_usage"] = [461, 0.5]  # make the legacy pair differ so the choice is visible
    _, values, _ = parse(macmon_mod, json.dumps(line))
    assert values["mac.gpu.usage"] == pytest.approx(0.021497858688235283)


def test_v082_prefers_scaled_ratio_and_two_digit_fraction(macmon_mod):
    line = json.loads(first_line("v0.8.2.jsonl"))
    line["ecpu_usage"] = [1650, 0.99]
    line["timestamp"] = "2026-08-05T07:41:10.52+00:00"
    time_ns, values, _ = parse(macmon_mod, json.dumps(line))
    assert values["mac.cpu.ecpu_usage"] == pytest.approx(0.12999999523162842)
    assert time_ns == 1785915670520000000


def test_post_09_main_null_temperature_is_omitted(macmon_mod):
    _, values, _ = parse(macmon_mod, first_line("v0.10.0-main.jsonl"))
    assert "mac.temp.gpu" not in values
    assert values["mac.temp.cpu"] == pytest.approx(47.29999923706055)


@pytest.mark.parametrize("stamp,expected", [
    ("2026-03-06T20:06:05+00:00", 1772827565000000000),
    ("2026-03-06T20:06:05.259+00:00", 1772827565259000000),
    ("2026-03-06T20:06:05.259623123+00:00", 1772827565259623123),
    ("2026-03-06T21:06:05.5+01:00", 1772827565500000000),
    ("2026-03-06T20:06:05.5Z", 1772827565500000000),
])
def test_timestamp_formats(macmon_mod, stamp, expected):
    assert macmon_mod.parse_timestamp_ns(stamp) == expected


def test_every_fixture_line_gives_the_core_series(macmon_mod):
    for name in sorted(os.listdir(MACMON_FIXTURES)):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(MACMON_FIXTURES, name)) as fh:
            for line in fh:
                _, values, _ = parse(macmon_mod, line)
                for series in ("mac.power.total", "mac.power.cpu", "mac.power.gpu", "mac.gpu.usage",
                               "mac.memory.ram_used", "mac.energy.total"):
                    assert series in values, (name, series)


def test_energy_integrates_power_over_real_windows(macmon_mod):
    source = macmon_mod.Source(argparse.Namespace(interval=1.0, macmon=None))
    line = json.loads(first_line("v0.8.2.jsonl"))
    line["all_power"] = 10.0
    readings = []
    for _i, stamp in enumerate(["2026-08-05T07:41:10+00:00", "2026-08-05T07:41:11.100000+00:00",
                               "2026-08-05T07:41:12+00:00", "2026-08-05T07:41:30+00:00"]):
        line["timestamp"] = stamp
        _, values, points = parse(macmon_mod, json.dumps(line), source=source)
        readings.append(values["mac.energy.total"])
        start = {name: start for name, _value, _attributes, start in points}["mac.energy.total"]
        assert start == 1785915669000000000  # one window before the first line
    # 1 s (first window = one interval), 1.1 s, 0.9 s, then an 18 s gap counts as one interval
    assert readings == pytest.approx([10.0, 21.0, 30.0, 40.0])
    source.reset()
    line["timestamp"] = "2026-08-05T07:42:00+00:00"
    _, values, points = parse(macmon_mod, json.dumps(line), source=source)
    assert values["mac.energy.total"] == pytest.approx(10.0)
    assert {name: start for name, _v, _a, start in points}["mac.energy.total"] == 1785915719000000000


@pytest.mark.parametrize("line", [
    '{"all_power":1.39966905,"ane_power":0.0,"cpu_po',
    '{"all_power":NaN,"cpu_power":0.5}',
    '{"all_power":Infinity,"cpu_power":0.5}',
    "thread main: something",
    "[1, 2, 3]",
    '{"unrelated":true}',
    '{"timestamp":"yesterday","all_power":1.0}',
])
def test_bad_lines_raise_value_error(macmon_mod, line):
    source = macmon_mod.Source(argparse.Namespace(interval=1.0, macmon=None))
    with pytest.raises(ValueError):
        source.parse_line(line, 1)


def test_command_uses_raw_before_042_and_pipe_after(macmon_mod):
    source = macmon_mod.Source(argparse.Namespace(interval=0.25, macmon=None))
    source.path = "/opt/homebrew/bin/macmon"
    source.version = (0, 4, 1)
    assert source.command(0.25) == ["/opt/homebrew/bin/macmon", "-i", "250", "raw"]
    source.version = (0, 7, 0)
    assert source.command(5) == ["/opt/homebrew/bin/macmon", "-i", "5000", "pipe"]
    source.version = None
    assert source.command(0.1)[-2:] == ["100", "pipe"]


def stamp_text(local, offset_minutes, digits, nanos):
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{nanos:09d}"[:digits]
    sign = "+" if offset_minutes >= 0 else "-"
    return text + f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
       offsets=st.lists(st.integers(-14 * 4, 14 * 4).map(lambda q: q * 15), min_size=1, max_size=3),
       digits=st.sampled_from([0, 3, 6, 9]))
def test_timestamps_agree_with_datetime(macmon_mod, moment, offsets, digits):
    """The per-minute cache in parse_timestamp_ns must give what a full conversion gives, also for
    the same wall-clock minute read in different zones one after the other."""
    nanos = moment.microsecond * 1000 + (123 if digits == 9 else 0)
    expected_nanos = int(f"{nanos:09d}"[:digits].ljust(9, "0")) if digits else 0
    for offset_minutes in offsets:
        local = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
        expected = calendar.timegm(local.astimezone(timezone.utc).timetuple()) * 10**9 + expected_nanos
        assert macmon_mod.parse_timestamp_ns(stamp_text(local, offset_minutes, digits, nanos)) == expected


# ---- a frozen power channel (macOS 27 betas, macmon issue 76)

def frozen_run(mod, readings_per_second):
    """Feed FrozenChannels one reading a second; returns what it let through each second."""
    guard = mod.FrozenChannels()
    return [guard.filter(int(t * 1e9), dict(readings)) for t, readings in enumerate(readings_per_second)]


def test_a_busy_domain_at_exactly_zero_for_a_minute_is_left_out_until_it_moves(macmon_mod):
    busy_zero = {"mac.power.cpu": 0.0, "mac.cpu.ecpu_usage": 0.4, "mac.cpu.pcpu_usage": 0.2,
                 "mac.power.total": 3.0, "mac.power.gpu": 3.0, "mac.gpu.usage": 0.5}
    moving = dict(busy_zero, **{"mac.power.cpu": 4.2, "mac.power.total": 7.2})
    out = frozen_run(macmon_mod, [busy_zero] * 90 + [moving] * 3)
    assert all(o["mac.power.cpu"] == 0.0 and "mac.power.total" in o for o in out[:60])  # within the minute
    assert all("mac.power.cpu" not in o and "mac.power.total" not in o for o in out[60:90])
    assert all(o["mac.power.gpu"] == 3.0 for o in out)  # the other domains go on
    assert all(o["mac.power.cpu"] == 4.2 and o["mac.power.total"] == 7.2 for o in out[90:])


def test_an_idle_domain_at_zero_is_a_reading(macmon_mod):
    idle_zero = {"mac.power.cpu": 0.0, "mac.cpu.ecpu_usage": 0.01, "mac.cpu.pcpu_usage": 0.0,
                 "mac.power.gpu": 0.0, "mac.gpu.usage": 0.0, "mac.power.total": 0.0}
    out = frozen_run(macmon_mod, [idle_zero] * 120)
    assert all(o == idle_zero for o in out)


def test_zeros_broken_by_a_real_reading_start_the_minute_again(macmon_mod):
    busy_zero = {"mac.power.gpu": 0.0, "mac.gpu.usage": 0.9}
    blip = {"mac.power.gpu": 1.5, "mac.gpu.usage": 0.9}
    out = frozen_run(macmon_mod, ([busy_zero] * 50 + [blip]) * 3)
    assert all("mac.power.gpu" in o for o in out)
