"""The spool (--spool-dir): an outage's backlog survives a restart or a crash, nothing delivered is
sent again, and a folder that cannot be used, a planted link, a second exporter or a spool from
another version never stops delivery (#14 D1, D3, D4, D14, D15, D16).

The exporter runs as a real process against the stand-in macmon and the loopback receiver."""
import json
import os
import re
import resource
import signal
import time

from conftest import start_macmon_exporter

SPOOL_NAME = "macmon-otel-exporter.spool"
SUMMARY = re.compile(r"samples read (\d+), delivered (\d+) \(resent (\d+)\), dropped (\d+)")


def sample_times(receiver):
    return [p.time_ns for p in receiver.series("mac.power.total")]


def spooled(path):
    """(unsent sample times, done mark) of a spool file, read the way the format is documented."""
    samples, done = {}, 0
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if isinstance(record, list):
            samples[record[0]] = record[1]
        elif "done" in record:
            done = max(done, record["done"])
    return [t for seq, t in sorted(samples.items()) if seq > done], done


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp-" in p.name]


def test_sigterm_writes_the_spool_and_a_restart_delivers_it_once(receiver, tmp_path):
    spool = tmp_path / "spool"
    exporter = start_macmon_exporter(receiver.url, "--spool-dir", str(spool), fake_env={"FAKE_MACMON_SPEED": "20"})
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 3, 20)
    receiver.stop()
    time.sleep(2)
    started = time.monotonic()
    assert exporter.stop() == 0
    assert time.monotonic() - started < 9  # last flush tried for at most 5 s
    pid = int(re.search(r"started macmon \(pid (\d+)\)", exporter.stderr).group(1))
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
    spool_file = spool / SPOOL_NAME
    assert spool_file.exists() and oct(spool_file.stat().st_mode)[-3:] == "600"
    times, _done = spooled(spool_file)
    assert len(times) >= 20
    delivered_before = set(sample_times(receiver))
    receiver.start()
    again = start_macmon_exporter(receiver.url, "--spool-dir", str(spool), "--spool-every", "0.5",
                                  fake_env={"FAKE_MACMON_SPEED": "20"})
    assert receiver.wait_for(lambda: set(times) <= set(sample_times(receiver)), 20)
    assert receiver.wait_for(lambda: not spool_file.exists(), 10)  # all sent: the spool is gone
    assert again.stop() == 0
    assert "unsent samples from the last run will be sent first" in again.stderr
    assert not delivered_before & set(times)  # nothing delivered twice
    assert not leftovers(spool)


def test_an_outage_is_appended_not_rewritten_and_cleared_once_delivered(receiver, tmp_path):
    """D3 and D8: during an outage the file only grows (appends, never a rewrite on a timer); once
    the backlog is delivered it is removed, so a SIGKILL after that sends nothing again."""
    spool = tmp_path / "spool"
    exporter = start_macmon_exporter(receiver.url, "--spool-dir", str(spool), "--spool-every", "0.5",
                                     fake_env={"FAKE_MACMON_SPEED": "20"})
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 3, 20)
    receiver.stop()
    spool_file = spool / SPOOL_NAME
    sizes, inodes = [], set()
    deadline = time.monotonic() + 20
    while len(sizes) < 6 and time.monotonic() < deadline:
        if spool_file.exists():
            stat = spool_file.stat()
            if not sizes or stat.st_size != sizes[-1]:
                sizes.append(stat.st_size)
                inodes.add(stat.st_ino)
        time.sleep(0.1)
    assert len(sizes) >= 6 and sizes == sorted(sizes), sizes
    assert len(inodes) == 1  # the same file all along: appended to, never replaced
    receiver.start()
    assert receiver.wait_for(lambda: not spool_file.exists(), 30)
    exporter.stop(signal.SIGKILL)
    times_before = set(sample_times(receiver))
    again = start_macmon_exporter(receiver.url, "--spool-dir", str(spool), fake_env={"FAKE_MACMON_SPEED": "20"})
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= len(times_before) + 3, 20)
    assert again.stop() == 0
    assert "from the last run" not in again.stderr


def test_sigkill_during_an_outage_loses_at_most_the_last_spool_interval(receiver, tmp_path):
    spool = tmp_path / "spool"
    exporter = start_macmon_exporter(receiver.url, "--spool-dir", str(spool), "--spool-every", "0.5",
                                     fake_env={"FAKE_MACMON_SPEED": "20"})
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 3, 20)
    receiver.stop()
    time.sleep(3)
    exporter.stop(signal.SIGKILL)
    times, _done = spooled(spool / SPOOL_NAME)
    assert len(times) >= 30  # about 50 samples in 2.5 s at 20x, less the last half second
    receiver.start()
    again = start_macmon_exporter(receiver.url, "--spool-dir", str(spool), fake_env={"FAKE_MACMON_SPEED": "20"})
    assert receiver.wait_for(lambda: set(times) <= set(sample_times(receiver)), 20)
    assert again.stop() == 0
    got = sample_times(receiver)
    assert len(got) == len(set(got))  # the spooled backlog arrived once


def test_a_folder_that_is_a_file_is_a_warning_and_delivery_goes_on(receiver, tmp_path):
    not_a_folder = tmp_path / "spool"
    not_a_folder.write_text("a file\n")
    exporter = start_macmon_exporter(receiver.url, "--spool-dir", str(not_a_folder))
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 3, 20)
    assert exporter.stop() == 0
    warnings = [line for line in exporter.stderr.splitlines() if "cannot use the spool folder" in line]
    assert len(warnings) == 1 and "kept in memory only" in warnings[0] and "--spool-dir" in warnings[0]
    assert "Traceback" not in exporter.stderr


def limit_file_size():
    """The stand-in for a full disk: writes past 64 KiB fail with EFBIG (SIGXFSZ ignored)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_full_disk_is_a_warning_said_once_and_leaves_no_temporary_file(receiver, tmp_path):
    import subprocess

    from conftest import EXPORTER_PYTHON, FAKE_MACMON, MACMON_EXPORTER
    spool = tmp_path / "spool"
    receiver.stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    env.update({"FAKE_MACMON_SPEED": "50"})
    proc = subprocess.Popen([EXPORTER_PYTHON, MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--interval", "1",
                             "--endpoint", receiver.url, "--spool-dir", str(spool), "--spool-every", "0.3"],
                            env=env, stderr=subprocess.PIPE, text=True, preexec_fn=limit_file_size)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (spool / SPOOL_NAME).exists():
            time.sleep(0.1)
        time.sleep(6)  # about 300 samples: far past 64 KiB of spool
        assert proc.poll() is None  # still running
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "cannot write the spool" in line]
    assert 1 <= len(warnings) <= 2, warnings  # once while running (and once more at exit, if it differs)
    assert "kept in memory only" in warnings[0]
    assert not leftovers(spool)
    times, _done = spooled(spool / SPOOL_NAME)  # what is there is whole lines, readable
    assert times


def test_a_planted_link_is_never_followed(receiver, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (spool / SPOOL_NAME).symlink_to(victim)
    exporter = start_macmon_exporter(receiver.url, "--spool-dir", str(spool), "--spool-every", "0.3",
                                     fake_env={"FAKE_MACMON_SPEED": "20"})
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 3, 20)
    receiver.stop()
    time.sleep(2)
    assert exporter.stop() == 0
    assert victim.read_text() == "precious\n"
    assert "Traceback" not in exporter.stderr


def test_a_second_exporter_on_the_same_folder_is_refused(receiver, tmp_path):
    spool = tmp_path / "spool"
    first = start_macmon_exporter(receiver.url, "--spool-dir", str(spool))
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 1, 20)
    second = start_macmon_exporter(receiver.url, "--spool-dir", str(spool))
    assert second.wait(20) == 7
    assert f"uses the spool folder {spool}" in second.stderr and "own --spool-dir" in second.stderr
    assert f"pid {first.proc.pid}" in second.stderr
    assert first.stop() == 0


def write_spool(folder, resource, samples, done=0):
    folder.mkdir(exist_ok=True)
    lines = [json.dumps({"format": 2, "resource": resource})]
    lines += [json.dumps([seq, t, readings]) for seq, t, readings in samples]
    if done:
        lines.append(json.dumps({"done": done}))
    (folder / SPOOL_NAME).write_text("\n".join(lines) + "\n")


def test_a_replayed_spool_keeps_its_resource_and_drops_what_this_version_cannot_send(receiver, tmp_path):
    """D16 and D4: samples recorded under another resource go out under it; a series this version
    does not know (a downgrade) is dropped and counted, never retried."""
    spool = tmp_path / "spool"
    t = time.time_ns() - 60 * 10 ** 9
    recorded = {"service.name": "macmon-otel-exporter", "cluster": "old-cluster", "host.name": "old-host"}
    write_spool(spool, recorded, [
        (1, t, [["mac.power.total", 11.5, [], 0], ["mac.power.future", 3.0, [], 0]]),
        (2, t + 10 ** 9, [["mac.power.total", 12.5, [], 0]]),
        (3, t + 2 * 10 ** 9, [["mac.power.total", 13.5, [], 0]]),
        (4, t + 3 * 10 ** 9, [["mac.power.future", 1.0, [], 0]]),
    ], done=1)
    exporter = start_macmon_exporter(receiver.url, "--spool-dir", str(spool), "--cluster", "new-cluster")
    assert receiver.wait_for(lambda: {t + 10 ** 9, t + 2 * 10 ** 9} <= set(sample_times(receiver)), 20)
    assert receiver.wait_for(lambda: any(p.value >= 1 for p in receiver.series("exporter.datapoints.dropped")
                                         if p.attributes.get("reason") == "unencodable"), 20)
    assert exporter.stop() == 0
    replayed = [p for p in receiver.series("mac.power.total") if p.time_ns < t + 3 * 10 ** 9]
    assert sorted(p.value for p in replayed) == [12.5, 13.5]  # seq 1 was marked done
    assert {p.resource["cluster"] for p in replayed} == {"old-cluster"}
    assert {p.resource["host.name"] for p in replayed} == {"old-host"}
    fresh = [p for p in receiver.series("mac.power.total") if p.time_ns > time.time_ns() - 30 * 10 ** 9]
    assert fresh and {p.resource["cluster"] for p in fresh} == {"new-cluster"}
    assert exporter.stderr.count("this version cannot send") == 1
    assert "mac.power.future" not in json.dumps([p.metric for p in receiver.points])


def test_a_corrupt_spool_is_moved_aside(receiver, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / SPOOL_NAME).write_text('[1, 17000\n{"format":2,"resou\n')
    exporter = start_macmon_exporter(receiver.url, "--spool-dir", str(spool))
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 2, 20)
    assert exporter.stop() == 0
    assert "is unreadable" in exporter.stderr and "moved aside" in exporter.stderr
    assert [p.name for p in spool.iterdir() if ".corrupt-" in p.name]


def make_samples(mod, table, count):
    samples = []
    for i in range(count):
        sample = mod.make_sample(1_700_000_000_000_000_000 + i, [("mac.power.total", 1.0 * i, (), 0)], table)[0]
        sample.seq = i + 1
        samples.append(sample)
    return samples


def test_spool_full_drops_are_counted_once_and_the_newest_are_kept(macmon_mod, tmp_path):
    table = macmon_mod.MetricTable(macmon_mod.SOURCE_METRICS + macmon_mod.SELF_METRICS)
    stats = macmon_mod.Stats(0)
    spool = macmon_mod.Spool(str(tmp_path), 4000, stats, table, {"service.name": "x"})
    assert spool.open() == []
    samples = make_samples(macmon_mod, table, 200)
    buffer = macmon_mod.SampleBuffer(1000, stats)
    buffer.prepend(samples)
    for _ in range(3):  # while running, an over-full file is trimmed: nothing is lost yet, nothing counted
        spool.sync(buffer, outage=True)
        assert os.path.getsize(spool.path) <= 4000
    assert stats.samples_dropped.get("spool_full", 0) == 0
    kept = spool.write_all(samples)  # at exit, what does not fit is lost: counted, once
    assert os.path.getsize(spool.path) <= 4000
    assert 0 < kept < 200 and stats.samples_dropped["spool_full"] == 200 - kept
    spool.close()
    again = macmon_mod.Spool(str(tmp_path), 4000, macmon_mod.Stats(0), table, {"service.name": "x"})
    assert [s.time_ns for s in again.open()] == [s.time_ns for s in samples[200 - kept:]]


def test_check_says_whether_the_spool_folder_can_be_written(receiver, tmp_path):
    from conftest import FAKE_MACMON, MACMON_EXPORTER, run_cli
    good = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--check", "--endpoint", receiver.url,
                   "--spool-dir", str(tmp_path / "spool"))
    assert good.returncode == 0 and "OK    spool folder" in good.stdout
    assert [p.name for p in (tmp_path / "spool").iterdir()] == []  # the probe is gone
    blocked = tmp_path / "file"
    blocked.write_text("x")
    bad = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--check", "--endpoint", receiver.url,
                  "--spool-dir", str(blocked))
    assert "WARN  spool folder" in bad.stdout and "kept in memory only" in bad.stdout
