"""Some of the defects an adversarial review found (#14), each with a test that failed before the
fix: Retry-After 0, secrets in error lines, credentials and query strings in --endpoint, collector
messages that could forge a log line, a certificate that is not PEM, SIGHUP, --console into a
closed pipe, negative NVIDIA readings."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import FAKE_MACMON, MACMON_EXPORTER, run_cli, start_macmon_exporter


def chosen_delay(mod, retry_after, backoff=1.0):
    sender = mod.Sender.__new__(mod.Sender)
    sender.stopping = threading.Event()
    sender.backoff, sender.deadline = backoff, None
    waited = []
    sender.stopping.wait = lambda delay: waited.append(delay)
    sender.wait_before_retry(mod.Outcome("retry", retry_after=retry_after))
    return waited[0], sender.backoff


@pytest.mark.parametrize("retry_after", [0.0, None])
def test_retry_after_zero_waits_at_least_the_backoff(macmon_mod, retry_after):
    delay, backoff = chosen_delay(macmon_mod, retry_after, backoff=4.0)
    assert 3.2 <= delay <= 4.8 and backoff == 8.0  # the backoff grows with every retry either way
    past = macmon_mod.parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() - 60)))
    assert past == 0.0 and chosen_delay(macmon_mod, past)[0] >= 0.8
    assert chosen_delay(macmon_mod, 20.0)[0] == 20.0  # a longer Retry-After still wins


@pytest.mark.parametrize("headers", ["Authorization: Bearer sk-live-123456", "Authorization=Bearer sk-live,123456"])
def test_a_malformed_header_never_shows_the_token(headers):
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", env={"OTEL_EXPORTER_OTLP_HEADERS": headers})
    assert result.returncode == 2 and "is not key=value" in result.stderr
    assert "sk-live" not in result.stderr and "123456" not in result.stderr


def test_credentials_in_the_endpoint_are_refused_without_showing_them():
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--endpoint",
                     "http://admin:hunter2@127.0.0.1:4318")
    assert result.returncode == 2 and "holds credentials" in result.stderr and "hunter2" not in result.stderr


def test_a_query_string_stays_after_the_path(receiver):
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--interval", "0.1", "--endpoint",
                     receiver.url + "/otlp?tenant=lab")
    assert result.returncode == 0, result.stderr
    assert receiver.requests and "/otlp/v1/metrics?tenant=lab" in receiver.paths


def test_a_collector_message_cannot_forge_a_log_line(macmon_mod):
    body = b'{"message": "bad\\n2026-11-27T05:00:00Z INFO first export accepted by http://x\\n' + b"y" * 500 + b'"}'
    outcome = macmon_mod.classify_response(400, {}, body)
    assert "\n" not in outcome.detail and len(outcome.detail) < 340
    assert "\\n2026-11-27T05:00:00Z INFO" in outcome.detail  # escaped, still readable


def test_a_certificate_that_is_not_pem_is_one_line_with_exit_2(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("this is not a certificate\n")
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--certificate", str(bogus),
                     "--endpoint", "https://127.0.0.1:4318")
    assert result.returncode == 2 and "not a PEM CA bundle" in result.stderr and "Traceback" not in result.stderr


def test_sighup_stops_cleanly_like_sigterm(receiver):
    exporter = start_macmon_exporter(receiver.url)
    assert receiver.wait_for(lambda: receiver.series("mac.power.total"), 30)
    assert exporter.stop(signal.SIGHUP) == 0
    assert "received SIGHUP: stopping" in exporter.stderr and "stopped: samples read" in exporter.stderr


def test_console_into_a_closed_pipe_ends_quietly():
    pipeline = subprocess.run(f"{sys.executable} {MACMON_EXPORTER} --macmon {FAKE_MACMON} --console --interval 0.2 "
                              f"| head -1", shell=True, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, FAKE_MACMON_SPEED="10"))
    assert pipeline.stdout.count("\n") == 1
    assert "Traceback" not in pipeline.stderr and "BrokenPipeError" not in pipeline.stderr


def test_negative_nvidia_readings_are_left_out(nvsmi_mod):
    import argparse
    args = argparse.Namespace(interval=1.0, nvidia_smi=None, nvidia_smi_timeout="10", rapl_root="/nonexistent",
                              backend="nvidia-smi")
    source = nvsmi_mod.Source(args)
    row = {"index": "0", "uuid": "GPU-1", "name": "X", "pci.bus_id": "0", "power.draw": "-5.00",
           "temperature.gpu": "-1", "memory.used": "-3", "memory.total": "81559", "utilization.gpu": "40"}
    readings = source.gpu_readings(1_000_000_000, row["uuid"], source.row_attributes(row), source.row_values(row))
    names = {name for name, *_ in readings}
    assert "gpu.power.board" not in names and "gpu.temp.core" not in names and "gpu.memory.used" not in names
    assert {"gpu.memory.total", "gpu.utilization.gpu"} <= names


def test_check_tries_every_address_a_name_resolves_to(macmon_mod, receiver, monkeypatch, capsys):
    """`localhost` resolves to ::1 first on macOS; a collector on 127.0.0.1 only must still pass
    --check's TCP connect (D13). The resolver's answer is the part faked: this machine's is fixed."""
    import argparse
    import socket

    from otlp_receiver import free_port
    dead = free_port()  # nothing listens there: stands for the ::1 that comes first
    real = socket.getaddrinfo

    def resolver(host, port, *args, **kwargs):
        if host == "collector.lab":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    report = macmon_mod.CheckReport()
    args = argparse.Namespace(url=f"http://collector.lab:{receiver.port}/v1/metrics", timeout_s=2.0)
    assert macmon_mod.check_collector(args, report) == "127.0.0.1"
    out = capsys.readouterr().out
    assert "OK    TCP connect: 127.0.0.1" in out and "nothing on 127.0.0.2" in out
    args = argparse.Namespace(url=f"http://collector.lab:{dead}/v1/metrics", timeout_s=2.0)
    assert macmon_mod.check_collector(args, macmon_mod.CheckReport()) is None
    out = capsys.readouterr().out
    assert f"127.0.0.2:{dead}" in out and f"127.0.0.1:{dead}" in out and "is the collector running" in out


def test_a_child_left_by_a_killed_exporter_is_ended_by_the_next_start(receiver, tmp_path):
    """D23: SIGKILL gives the exporter no chance to stop its source. At a long interval the orphan
    would live until its next line; the next exporter to start ends it at once."""
    env = {"TMPDIR": str(tmp_path)}
    first = start_macmon_exporter(receiver.url, "--interval", "30", env=env, fake_env={"FAKE_MACMON_SPEED": "1"})
    deadline = time.monotonic() + 20
    records = []
    while time.monotonic() < deadline and not records:
        records = list(tmp_path.glob("macmon-otel-exporter-*.child"))
        time.sleep(0.05)
    assert records, "no record of the child"
    child = int(records[0].read_text().split()[0])
    first.stop(signal.SIGKILL)
    time.sleep(0.5)
    assert os.path.exists(f"/proc/{child}")  # the orphan lives on (its next line is 30 s away)
    second = start_macmon_exporter(receiver.url, "--interval", "30", env=env, fake_env={"FAKE_MACMON_SPEED": "1"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}") and \
            "Z" not in open(f"/proc/{child}/stat").read().split()[2]:
        time.sleep(0.1)
    gone = not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split()[2]
    assert second.stop() == 0
    assert gone, second.stderr + subprocess.run(["ps", "-o", "pid=,ppid=,pgid=,command=", "-p", str(child)],
                                                capture_output=True, text=True).stdout + str(list(tmp_path.iterdir()))
    assert f"pid {child}) left running by an exporter that was killed" in second.stderr
    assert not list(tmp_path.glob("macmon-otel-exporter-*.child"))  # a clean stop leaves no record


def absurd_fixture(tmp_path):
    """macmon lines with readings no machine gives, between good ones (FAKE_MACMON_FIXTURE)."""
    from conftest import MACMON_FIXTURES
    with open(os.path.join(MACMON_FIXTURES, "v0.8.2.jsonl")) as fh:
        good = json.loads(fh.readline())
    lines = []
    for change in ({"all_power": 1e308, "cpu_power": 1e308},           # energy would overflow to inf
                   {"memory": dict(good["memory"], ram_usage=2 ** 70)},  # past int64
                   {"gpu_power": -0.0, "sys_power": 5e6}):               # more than a megawatt
        lines.append(json.dumps(dict(good, **change), separators=(",", ":")))
    year_9999 = dict(good)
    year_9999.pop("timestamp", None)
    # (written with a space after the colon, so the stand-in does not restamp it)
    lines.append(json.dumps(year_9999).replace("{", '{"timestamp": "9999-12-31T23:59:59Z",', 1))
    lines.append('{"a":' + "[" * 100000 + "]" * 100000 + "}")          # RecursionError in the parser
    lines += [json.dumps(good, separators=(",", ":"))] * 3
    path = tmp_path / "absurd.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_absurd_readings_never_break_the_stream(receiver, tmp_path):
    """D5: non-finite and out-of-range readings are left out and counted, an impossible time or a
    deeply nested line is a skipped line, and every request stays valid OTLP (the official
    protobuf mapping parses it)."""
    from otlp_check import check_payload
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "20",
                                                             "FAKE_MACMON_FIXTURE": str(absurd_fixture(tmp_path))})
    assert receiver.wait_for(lambda: any(p.attributes.get("reason") == "out_of_range" and p.value >= 5
                                         for p in receiver.series("exporter.datapoints.dropped")), 30)
    assert receiver.wait_for(lambda: any(p.value >= 4 for p in receiver.series("exporter.source.lines_skipped")), 30)
    assert exporter.stop() == 0
    assert "Traceback" not in exporter.stderr
    for _headers, raw, _doc, status in receiver.requests:
        assert status == 200
        check_payload(raw.decode())
    assert max(p.value for p in receiver.series("mac.power.total")) < 100
    assert max(p.value for p in receiver.series("mac.energy.total")) < 1e6  # 1e308 W was never integrated
    assert max(p.value for p in receiver.series("mac.memory.ram_used")) < 2 ** 63
    assert all(p.value < 1e6 for p in receiver.series("mac.power.system"))
    assert all(p.time_ns < 2 ** 63 for p in receiver.points)


def test_a_changed_macmon_format_is_a_warning_and_the_exporter_series_go_on(receiver, tmp_path):
    """D7: every line unparsable (a macmon that changed its format): a warning at the default log
    level at once (then at most once a minute), and the exporter's own series still go out."""
    changed = tmp_path / "changed.jsonl"
    changed.write_text('{"soc": {"power_w": 4.2}, "format": "2027"}\n')
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "20",
                                                             "FAKE_MACMON_FIXTURE": str(changed)})
    assert receiver.wait_for(lambda: any(p.value >= 10 for p in receiver.series("exporter.source.lines_skipped")), 30)
    assert exporter.stop() == 0
    warnings = [line for line in exporter.stderr.splitlines() if "WARNING skipped an unparsable macmon line" in line]
    assert len(warnings) == 1 and "no known field" in warnings[0] and '\\"soc\\"' in warnings[0]
    assert not receiver.series("mac.power.total")
    assert receiver.series("exporter.samples.read")
    # the exporter's own series went out, but no sample was read, so none counts as delivered
    assert "samples read 0, delivered 0 (resent 0)" in exporter.stderr


@pytest.fixture
def tinyproxy(tmp_path):
    from conftest import need_peer
    need_peer("tinyproxy", "tinyproxy")
    from proxy_peer import Tinyproxy
    proxy = Tinyproxy(tmp_path, "lab", "s3cret")
    yield proxy
    proxy.stop()


def test_http_goes_through_the_proxy_the_environment_names(receiver, tinyproxy):
    """D9: HTTP_PROXY (with credentials, which never show), NO_PROXY, and --check saying so."""
    env = {"HTTP_PROXY": tinyproxy.url("lab", "s3cret")}
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--interval", "0.1",
                     "--endpoint", receiver.url, env=env)
    assert result.returncode == 0, result.stderr
    assert "tinyproxy" in receiver.requests[-1][0].get("via", "")  # it came through the proxy
    assert "s3cret" not in result.stderr
    check = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--check", "--endpoint", receiver.url, env=env)
    assert check.returncode == 0, check.stdout
    assert f"OK    proxy: http://127.0.0.1:{tinyproxy.port}" in check.stdout and "s3cret" not in check.stdout
    wrong = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--interval", "0.1", "--endpoint",
                    receiver.url, env={"http_proxy": tinyproxy.url("lab", "wrong")})
    # tinyproxy answers 407 and closes before reading the body, so the answer may be lost to a reset
    assert wrong.returncode == 5 and "wrong" not in wrong.stderr and "lab:" not in wrong.stderr
    count = len(receiver.requests)
    bypass = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--interval", "0.1", "--endpoint",
                     receiver.url, env={"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "localhost,127.0.0.1"})
    assert bypass.returncode == 0, bypass.stderr
    assert len(receiver.requests) == count + 1 and "via" not in receiver.requests[-1][0]


def test_https_goes_through_a_connect_tunnel(tmp_path, tinyproxy):
    from otlp_receiver import Receiver
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    receiver = Receiver(tls=(str(cert), str(key)))
    try:
        result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--interval", "0.1", "--endpoint",
                         receiver.url, "--certificate", str(cert),
                         env={"HTTPS_PROXY": tinyproxy.url("lab", "s3cret")})
        assert result.returncode == 0, result.stderr
        assert receiver.requests and "via" not in receiver.requests[-1][0]  # end to end TLS: the proxy saw nothing
        assert f"CONNECT 127.0.0.1:{receiver.port}" in tinyproxy.log_text()
    finally:
        receiver.stop()
