"""Delivery guarantees: no sample lost to collector outages, throttling, crashes or bad input.

The exporter runs as a real process against the stand-in macmon (timestamps on a 1 s grid, lines
at 10-50x speed) and the loopback receiver, which the tests switch between failure modes."""
import json
import re
import time

import pytest
from conftest import start_macmon_exporter
from otlp_receiver import Receiver

SUMMARY = re.compile(r"samples read (\d+), delivered (\d+) \(resent (\d+)\), dropped (\d+)")


def summary(stderr):
    """(read, delivered, dropped) from the exporter's stop line."""
    found = SUMMARY.search(stderr)
    assert found, stderr[-2000:]
    read, delivered, _resent, dropped = (int(x) for x in found.groups())
    return read, delivered, dropped


def resent(stderr):
    return int(SUMMARY.search(stderr).group(3))


def sample_times(receiver):
    return [p.time_ns for p in receiver.series("mac.power.total")]


def assert_exactly_once_in_order(times):
    assert times == sorted(times), "samples arrived out of order"
    assert len(times) == len(set(times)), "a sample arrived twice"
    steps = {b - a for a, b in zip(times, times[1:])}
    assert steps == {1_000_000_000}, f"gaps in the series: {sorted(steps)[:5]}"


def test_outage_then_recovery_delivers_every_sample_once_in_order(receiver):
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "50"})
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 5, 20)
    receiver.stop()
    time.sleep(4.5)  # about 200 samples at 50x
    receiver.start()
    time.sleep(0.5)
    before_stop = len(sample_times(receiver))
    assert receiver.wait_for(lambda: len(sample_times(receiver)) > before_stop + 150, 40)
    # the exporter's own series go out at most every 10 s; wait for the ones that tell of the outage
    assert receiver.wait_for(lambda: receiver.series("exporter.send.errors"), 20)
    assert exporter.stop() == 0
    read, delivered, dropped = summary(exporter.stderr)
    times = sample_times(receiver)
    assert_exactly_once_in_order(times)
    assert len(times) == read == delivered and dropped == 0
    assert read >= 200
    log = exporter.stderr
    assert log.count("cannot deliver to") == 1                      # one line when it starts
    assert re.search(r"collector is back after \d+s: delivered (\d+) samples late, dropped 0", log)
    # the delivered data itself reports the outage: send errors by type
    errors = {p.attributes["error.type"] for p in receiver.series("exporter.send.errors")}
    assert errors & {"connection_refused", "connection_reset"}


def test_buffer_overflow_drops_oldest_and_counts_exactly(receiver):
    exporter = start_macmon_exporter(receiver.url, "--buffer-max", "40", fake_env={"FAKE_MACMON_SPEED": "50"})
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 3, 20)
    receiver.stop()
    time.sleep(3)  # ~150 samples into a 40-sample buffer
    receiver.start()
    assert receiver.wait_for(lambda: receiver.series("exporter.datapoints.dropped") and max(
        p.value for p in receiver.series("exporter.datapoints.dropped")
        if p.attributes["reason"] == "buffer_full") > 0, 40)
    time.sleep(1)
    assert exporter.stop() == 0
    read, delivered, dropped = summary(exporter.stderr)
    times = sample_times(receiver)
    assert len(times) == delivered and read == delivered + dropped
    assert dropped >= 50
    assert times == sorted(times) and len(times) == len(set(times))
    # what is missing is exactly the dropped samples: the gap in the 1 s grid
    missing = (times[-1] - times[0]) // 1_000_000_000 + 1 - len(times)
    assert missing == dropped
    assert exporter.stderr.count("buffer full (40 samples)") == 1   # once per outage, not per sample
    assert re.search(rf"dropped {dropped} while the buffer was full", exporter.stderr)


def test_retry_after_is_honoured(receiver):
    receiver.mode, receiver.retry_after = "429", 3
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "5"})
    assert receiver.wait_for(lambda: len(receiver.arrivals) >= 3, 20)
    receiver.mode = "accept"
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 5, 20)
    assert exporter.stop() == 0
    # the exporter's own backoff would retry after about 1 s and 2 s; Retry-After says 3 s
    gaps = [b - a for a, b in zip(receiver.arrivals[:3], receiver.arrivals[1:3])]
    assert all(2.8 <= gap <= 4.5 for gap in gaps), gaps
    assert "HTTP 429" in exporter.stderr
    read, delivered, dropped = summary(exporter.stderr)
    assert read == delivered and dropped == 0
    assert_exactly_once_in_order(sample_times(receiver))


def test_retry_after_wait_is_measured(macmon_mod):
    """The sender waits what Retry-After says (seconds or HTTP date), not its own backoff."""
    sender = macmon_mod.Sender.__new__(macmon_mod.Sender)
    import threading
    sender.stopping = threading.Event()
    sender.backoff = 1.0
    sender.deadline = None
    started = time.monotonic()
    sender.wait_before_retry(macmon_mod.Outcome("retry", retry_after=1.5))
    assert 1.4 <= time.monotonic() - started < 2.5
    assert macmon_mod.parse_retry_after("120") == 120.0
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= macmon_mod.parse_retry_after(future) <= 61
    assert macmon_mod.parse_retry_after("soon") is None


def test_400_is_not_retried_and_the_message_is_logged(receiver):
    receiver.mode = "400"
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "10"})
    assert receiver.wait_for(lambda: len(receiver.requests) >= 8, 20)
    assert exporter.stop() == 0
    bodies = [json.loads(raw) for _h, raw, _d, status in receiver.requests if status == 400]
    sent_times = [dp["timeUnixNano"] for b in bodies for m in b["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
                  if m["name"] == "mac.power.total" for dp in m["gauge"]["dataPoints"]]
    assert len(sent_times) == len(set(sent_times)), "a rejected batch was sent again"
    assert "HTTP 400: unmarshal: bad metric data" in exporter.stderr
    read, delivered, dropped = summary(exporter.stderr)
    assert delivered == 0 and read == dropped


def test_413_splits_the_batch(receiver):
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "40"})
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 2, 20)
    one_sample = max(len(raw) for _h, raw, _d, status in receiver.requests if status == 200)
    receiver.stop()
    time.sleep(2)  # a backlog of ~80 samples
    receiver.max_body = one_sample * 3
    receiver.start()
    time.sleep(1)
    before = len(sample_times(receiver))
    assert receiver.wait_for(lambda: len(sample_times(receiver)) > before + 20, 40)
    assert exporter.stop() == 0
    statuses = [status for _h, _r, _d, status in receiver.requests]
    assert 413 in statuses
    read, delivered, dropped = summary(exporter.stderr)
    assert read == delivered and dropped == 0
    assert_exactly_once_in_order(sample_times(receiver))


def test_partial_success_is_logged_and_not_retried(receiver):
    receiver.mode = "partial"
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "10"})
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 4, 20)
    assert receiver.wait_for(lambda: any(p.value >= 3 for p in receiver.series("exporter.datapoints.dropped")
                                         if p.attributes["reason"] == "rejected"), 20)
    assert exporter.stop() == 0
    assert_exactly_once_in_order(sample_times(receiver))
    assert "rejected 3 data points: 3 points had unknown units" in exporter.stderr
    rejected = [p.value for p in receiver.series("exporter.datapoints.dropped") if p.attributes["reason"] == "rejected"]
    assert max(rejected) >= 3


def test_hanging_collector_delays_no_reading(receiver):
    receiver.mode, receiver.hang_s = "hang", 4
    exporter = start_macmon_exporter(receiver.url, "--timeout", "1000", fake_env={"FAKE_MACMON_SPEED": "20"})
    time.sleep(3)
    receiver.mode = "accept"
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 60, 40)
    assert exporter.stop() == 0
    read, delivered, dropped = summary(exporter.stderr)
    assert read == delivered and dropped == 0
    assert_exactly_once_in_order(sample_times(receiver))
    assert "timeout" in exporter.stderr


@pytest.mark.parametrize("fault,expect", [
    ("exit1:3", 'exit 1: Error: "Failed to get memory stats"'),
    ("abort:3", "killed by SIGABRT"),
    ("hang:3", "gave nothing for 3.0s"),
])
def test_source_failures_are_restarted_and_counted(receiver, tmp_path, fault, expect):
    exporter = start_macmon_exporter(receiver.url, fake_env={
        "FAKE_MACMON_SPEED": "10" if not fault.startswith("hang") else "1", "FAKE_MACMON_FAIL": fault,
        "FAKE_MACMON_FAIL_RUNS": "1", "FAKE_MACMON_LOG": str(tmp_path / "calls")})
    assert receiver.wait_for(lambda: any(p.value >= 1 for p in receiver.series("exporter.source.restarts")), 40)
    assert exporter.stop() == 0
    assert expect in exporter.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2  # the first run failed, one restart, still running
    read, delivered, dropped = summary(exporter.stderr)
    assert read == delivered and dropped == 0


def test_a_frozen_cpu_channel_is_left_out_said_once_and_back_when_it_moves(receiver):
    """The stand-in freezes the CPU energy channel (cpu_power 0.0 while busy) for lines 5-99,
    one line per second of sample time."""
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "25",
                                                             "FAKE_MACMON_FREEZE": "cpu:5:100"})
    def gpu_times():  # every sample has GPU power; mac.power.total is left out while frozen
        return sorted({p.time_ns for p in receiver.series("mac.power.gpu")})

    assert receiver.wait_for(lambda: len(gpu_times()) >= 110, 30)
    assert exporter.stop() == 0
    times = gpu_times()
    start = times[0]
    cpu = {p.time_ns: p.value for p in receiver.series("mac.power.cpu")}
    total = {p.time_ns for p in receiver.series("mac.power.total")}

    def second(t):
        return round((t - start) / 1e9)

    frozen_at = [second(t) for t in times if t not in cpu]
    # left out from a minute into the freeze (line 5 + 60 s) until the channel moved (line 100)
    assert frozen_at == list(range(65, 100)), frozen_at
    assert all(cpu[t] == 0.0 for t in times if 5 <= second(t) < 65)
    assert all(cpu[t] > 0 for t in times if second(t) < 5 or second(t) >= 100)
    assert {second(t) for t in times if t not in total} == set(frozen_at)
    assert exporter.stderr.count("the channel is frozen") == 1
    assert "mac.power.cpu moves again" in exporter.stderr


def test_garbage_lines_are_skipped_and_counted(receiver):
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "20",
                                                             "FAKE_MACMON_FAIL": "garbage:4"})
    assert receiver.wait_for(lambda: any(p.value >= 4 for p in receiver.series("exporter.source.lines_skipped")), 30)
    assert exporter.stop() == 0
    assert "restart" not in exporter.stderr.split("stopped:")[0].lower().replace("source restarts", "")
    skipped = int(re.search(r"lines skipped (\d+)", exporter.stderr).group(1))
    read, delivered, _ = summary(exporter.stderr)
    assert skipped >= 4 and read == delivered
    # every fourth line is broken: three good samples per four lines
    assert abs(read - 3 * skipped) <= 3


def test_usage_error_exits_with_its_own_code(receiver):
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_VERSION": "0.4.1",
                                                             "FAKE_MACMON_VERSION_TEXT": "macmon (vendored)"})
    assert exporter.wait(30) == 4
    assert "rejected its arguments" in exporter.stderr and "configuration error" in exporter.stderr
    assert "unrecognized subcommand 'pipe'" in exporter.stderr


def test_sigterm_stops_at_once_on_a_healthy_connection(receiver):
    """SIGTERM on a healthy, idle connection ends the sender at once, not after the 5 s flush limit
    (a sender asleep waiting for samples must be woken: 5.5 s once, timed on a real nvidia-smi host)."""
    exporter = start_macmon_exporter(receiver.url, "--log-level", "debug")
    assert receiver.wait_for(lambda: len(sample_times(receiver)) >= 4, 20)
    started = time.monotonic()
    assert exporter.stop() == 0
    took = time.monotonic() - started
    assert took < 4, f"stopping took {took:.1f}s"
    read, delivered, dropped = summary(exporter.stderr)
    assert read == delivered and dropped == 0


def test_outage_logs_stay_readable(macmon_mod):
    """A reminder at most once a minute, whatever the number of failed attempts."""
    records = []
    listener = lambda level, message: records.append(message)  # noqa: E731
    macmon_mod.LOG.listeners.append(listener)
    try:
        stats = macmon_mod.Stats(0)
        buffer = macmon_mod.SampleBuffer(10, stats)
        sender = macmon_mod.Sender(None, buffer, stats, None, "[]", 10)
        sender.client = type("C", (), {"url": "http://x"})()
        for _ in range(500):
            sender.note_outage(macmon_mod.Outcome("retry", "HTTP 503"))
        assert len(records) == 1
        sender.last_reminder -= 61
        sender.note_outage(macmon_mod.Outcome("retry", "HTTP 503"))
        assert len(records) == 2 and "still unavailable" in records[1]
    finally:
        macmon_mod.LOG.listeners.remove(listener)


def test_an_answer_that_never_came_is_resent_and_counted(receiver):
    """The collector stores a request and answers after the exporter's timeout: the exporter sends
    it again (at least once) and counts the resent samples, in its stop line and as a series."""
    receiver.mode, receiver.hang_s = "slow", 1.5
    exporter = start_macmon_exporter(receiver.url, "--timeout", "400", fake_env={"FAKE_MACMON_SPEED": "20"})
    assert receiver.wait_for(lambda: receiver.request_count >= 2, 20)
    receiver.mode = "accept"
    assert receiver.wait_for(lambda: receiver.series("exporter.datapoints.resent")
                             and receiver.series("exporter.datapoints.resent")[-1].value > 0, 30)
    assert exporter.stop() == 0
    read, delivered, dropped = summary(exporter.stderr)
    times = sample_times(receiver)
    duplicates = len(times) - len(set(times))
    assert read == delivered and dropped == 0 and len(set(times)) == delivered
    assert 1 <= duplicates <= resent(exporter.stderr)
    series = receiver.series("exporter.datapoints.resent")
    assert series[0].kind == "sum" and series[0].monotonic


@pytest.mark.slow
def test_soak_with_random_faults_accounts_for_every_sample(tmp_path):
    """Over ten thousand samples with faults switched at random: read = delivered + dropped,
    and resident memory stays flat."""
    import random
    import threading
    receiver = Receiver()
    rng = random.Random(7)
    exporter = start_macmon_exporter(receiver.url, "--interval", "0.1", "--buffer-max", "3000", "--timeout", "500",
                                     fake_env={"FAKE_MACMON_SPEED": "100", "FAKE_MACMON_FAIL": "garbage:50"})
    rss = []
    stop = threading.Event()

    def faults():
        while not stop.is_set():
            receiver.mode = rng.choice(["accept"] * 6 + ["503", "429", "hang", "partial"])
            receiver.retry_after = rng.choice([None, 0, 1])
            receiver.hang_s = 0.7
            stop.wait(rng.uniform(0.1, 0.6))

    def memory():
        while not stop.is_set():
            try:
                with open(f"/proc/{exporter.proc.pid}/status") as fh:
                    rss.append(int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1)))
            except (OSError, AttributeError):
                pass
            stop.wait(0.5)

    threads = [threading.Thread(target=faults), threading.Thread(target=memory)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(receiver.series("mac.power.total")) < 12000:
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    receiver.mode = "accept"
    assert exporter.stop(timeout=30) == 0
    receiver.stop()
    read, delivered, dropped = summary(exporter.stderr)
    times = sample_times(receiver)
    print(f"\nsoak: read {read}, delivered {delivered}, dropped {dropped}; "
          f"RSS KiB first/median/last {rss[0]}/{sorted(rss)[len(rss) // 2]}/{rss[-1]} over {len(rss)} readings")
    assert read >= 10000
    assert read == delivered + dropped
    # At least once: every delivered sample arrived; beyond those only copies of requests whose
    # answer never came, which the exporter counts: resent (then delivered) and possibly
    # delivered (then given up on, e.g. pushed out of a full buffer).
    maybe = int((re.search(r"possibly delivered (\d+)", exporter.stderr) or [0, 0])[1])
    assert delivered <= len(set(times)) <= delivered + maybe
    assert len(times) <= delivered + resent(exporter.stderr) + maybe
    quarter = max(1, len(rss) // 4)
    assert max(rss[-quarter:]) <= max(rss[:quarter]) * 1.25 + 4096, rss


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",   # a chunk size that is not hex
    b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n{}",             # a length that is not a number
    b"SSH-2.0-OpenSSH_9.2\r\n",                                       # not HTTP at all
    b"",                                                              # closed without a word
    b"HTTP/1.1 50",                                                   # closed inside the status line (#14 D18)
    b"HTTP/1.1 200 OK\r\nContent-Le",                                 # closed inside the head
    b"HTTP/1.1 5000 Odd\r\n\r\n",                                     # not a three-digit status
])
def test_malformed_collector_answers_are_retried_not_raised(macmon_mod, answer):
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def serve():
        # Answer every connection (the first attempt, and a retry if there is one) until the test
        # closes the listening socket.
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(answer)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    client = macmon_mod.OtlpHttpClient(f"http://127.0.0.1:{server.getsockname()[1]}/v1/metrics", {}, 5, "none", None)
    outcome = client.post('{"resourceMetrics":[]}')
    server.close()
    assert outcome.kind == "retry" and outcome.detail
    assert outcome.unanswered  # the request went out whole: the retry may duplicate it, and is counted
