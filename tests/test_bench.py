"""make bench keeps working: a tiny run of the real tool (its numbers are not judged here: speed and
memory are measured by `make bench`, never in a test), and the receiver's counting it relies on."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import TOOLS, need_peer
from otlp_receiver import Receiver


def test_counting_receiver_keeps_nothing_and_counts_everything():
    receiver = Receiver(keep=False)
    try:
        point = {"timeUnixNano": "1", "asDouble": 1.5}
        body = json.dumps({"resourceMetrics": [{"resource": {"attributes": []}, "scopeMetrics": [{"metrics": [
            {"name": "a", "unit": "W", "gauge": {"dataPoints": [point, point]}},
            {"name": "b", "unit": "W", "gauge": {"dataPoints": [point]}}]}]}]}).encode()
        for _ in range(3):
            request = urllib.request.Request(receiver.url + "/v1/metrics", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
        assert (receiver.count("a"), receiver.count("b"), receiver.count("c")) == (6, 3, 0)
        assert receiver.request_count == 3 and receiver.wire_bytes == 3 * len(body)
        assert receiver.points == [] and receiver.requests == []
    finally:
        receiver.stop()


def test_a_tiny_bench_run_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, os.path.join(TOOLS, "bench.py"), "--only", "nvsmi", "--only", "macmon",
                           "--samples", "48", "--runs", "1", "--idle-seconds", "2", "--outage-seconds", "2",
                           "--backend-seconds", "2", "--pythons", "3.{} 3.99".format(sys.version_info[1]),
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: a target missed, which a tiny run may
    results = json.loads(out.read_text())
    assert results["exporters"]["macmon"]["sdk"]["samples"] >= 48  # the SDK equivalent keeps up with the exporter
    nvsmi = results["exporters"]["nvsmi"]
    for which in ("exporter", "deployed", "sdk"):
        assert nvsmi[which]["samples"] >= 48
        assert nvsmi[which]["source_starts_after_first_sample"] == 0
        assert nvsmi[which]["cpu_ms_per_sample"] > 0 and nvsmi[which]["peak_rss_mb"] > 5
        assert nvsmi[which]["bytes_per_sample"] > 100 and nvsmi[which]["requests"] >= 1
    assert set(nvsmi["ratio"]) >= {"cpu_ms_per_sample", "peak_rss_mb", "bytes_per_sample", "first_export_s"}
    idle = results["at_5s_interval"]["nvsmi"]
    assert idle["exporter_cpu_percent"] >= 0 and idle["source_cpu_percent"] >= 0
    assert idle["real_source_cpu_percent"] == 0.0462  # the H200's nvidia-smi, from its capture
    row = results["buffered_row"]["nvsmi"]
    assert row["rows"] == 5760 and 100 < row["bytes_per_row"] < 20000 and row["readings_per_row"] >= 10
    outage = results["outage"]
    assert outage["steady_rss_mb"] > 5 and outage["outage_rss_mb"] > 5 and outage["written_mb"] >= 0
    backends = results["nvidia_backends"]
    if "skipped" in backends:
        need_peer("cc", "gcc libc6-dev")
    assert set(backends) == {"nvidia-smi@0.1s", "nvml@0.1s", "nvml@0.05s", "nvidia-smi@5s", "nvml@5s"}
    assert backends["nvml@0.1s"]["child_processes"] == 0 and backends["nvidia-smi@0.1s"]["child_processes"] == 1
    assert backends["nvml@0.05s"]["rounds"] > backends["nvml@0.1s"]["rounds"]
    assert backends["nvml@0.1s"]["peak_rss_mb"] > 5
    by_python = results["peak_rss_by_python"]
    assert by_python.pop("3.99") == "not found" and len(by_python) == 1
    (version, kinds), = by_python.items()
    assert version.startswith("3.{}.".format(sys.version_info[1]))
    assert all(kinds[kind][form] > 5 for kind in ("macmon", "nvsmi") for form in ("exporter", "deployed"))
    assert "ratio" in done.stdout and ("all targets met" in done.stdout or "TARGET MISSED" in done.stdout)


def test_a_request_whose_sender_hung_up_before_the_answer_is_not_counted():
    """The exporter gave up waiting and closed: writing the answer would still succeed, so the
    receiver looks first. Counted, the request it sends again would read as a duplicate."""
    receiver = Receiver()
    try:
        receiver.on_point = lambda _point: time.sleep(0.5)  # a collector slower than the sender's patience
        body = json.dumps({"resourceMetrics": [{"resource": {"attributes": []}, "scopeMetrics": [{"metrics": [
            {"name": "a", "unit": "W", "gauge": {"dataPoints": [{"timeUnixNano": "1", "asDouble": 1.5}]}}]}]}]})
        port = int(receiver.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            time.sleep(0.1)
        assert receiver.wait_for(lambda: receiver.request_count == 1, 5)
        time.sleep(1.0)  # the answer is due by now
        assert receiver.count("a") == 0
    finally:
        receiver.stop()


def test_a_request_the_receiver_could_not_acknowledge_is_not_counted(monkeypatch):
    """Its answer never reached the exporter, which will send it again: kept, it would read as a
    duplicate (Receiver.forget)."""
    receiver = Receiver()
    try:
        def broken(*_args):
            raise BrokenPipeError(32, "the exporter is gone")
        monkeypatch.setattr(receiver, "send", broken)
        body = json.dumps({"resourceMetrics": [{"resource": {"attributes": []}, "scopeMetrics": [{"metrics": [
            {"name": "a", "unit": "W", "gauge": {"dataPoints": [{"timeUnixNano": "1", "asDouble": 1.5}]}}]}]}]})
        request = urllib.request.Request(receiver.url + "/v1/metrics", body.encode(),
                                         {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=2).close()
        except OSError:
            pass  # no answer came, as intended
        assert receiver.wait_for(lambda: receiver.request_count == 1, 10)
        # read and decoded, but not counted as delivered
        assert receiver.wait_for(lambda: len(receiver.requests) == 1 and receiver.count("a") == 0, 10)
        assert receiver.series("a") == []
    finally:
        receiver.stop()


def test_targets_judge_the_exporter_at_5s_against_the_real_source(capsys):
    """The stand-ins cost less than the tools they imitate: the 5 s target reads the real tools' cost."""
    sys.path.insert(0, TOOLS)
    import bench
    ok = {"cpu_ms_per_sample": 0.2}
    exporter = {"cpu_ms_per_sample": 0.05, "peak_rss_mb": 19.0, "source_starts_after_first_sample": 0}
    deployed = dict(exporter, peak_rss_mb=12.0)
    results = {"exporters": {"macmon": {"ratio": ok, "exporter": exporter, "deployed": deployed}},
               "at_5s_interval": {"macmon": {"exporter_cpu_percent": 0.02, "source_cpu_percent": 0.006,
                                             "real_source_cpu_percent": bench.real_source_cpu_percent("macmon")}},
               "outage": {"growth_mb": 1.0, "spool_mb": 1.0, "written_mb": 1.0}}
    assert bench.check_targets(results) == 0, capsys.readouterr().out
    results["at_5s_interval"]["macmon"]["exporter_cpu_percent"] = 0.3
    assert bench.check_targets(results) == 1
    assert "macmon at 5 s" in capsys.readouterr().out


def test_memory_is_judged_as_deployed_and_the_script_form_is_reported(capsys):
    """A copied script keeps its parse tree resident (docs/cost.md): its peak is printed, not judged."""
    sys.path.insert(0, TOOLS)
    import bench
    script = {"cpu_ms_per_sample": 0.05, "peak_rss_mb": 21.4, "source_starts_after_first_sample": 0}
    results = {"exporters": {"nvsmi": {"ratio": {"cpu_ms_per_sample": 0.2}, "exporter": script,
                                       "deployed": dict(script, peak_rss_mb=13.3)}},
               "at_5s_interval": {}, "outage": {"growth_mb": 1.0, "spool_mb": 1.0, "written_mb": 1.0}}
    assert bench.check_targets(results) == 0
    assert "note: nvsmi run as a script peaks at 21.4 MB" in capsys.readouterr().out
    results["exporters"]["nvsmi"]["deployed"]["peak_rss_mb"] = 20.5
    assert bench.check_targets(results) == 1
    assert "TARGET MISSED: nvsmi: peak RSS as deployed 20.5 MB (target 20 MB)" in capsys.readouterr().out
