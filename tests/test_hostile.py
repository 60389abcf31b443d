"""Some of the defects an adversarial review found (#14), each with a test that failed before the
fix: Retry-After 0, secrets in error lines, credentials and query strings in --endpoint, collector
messages that could forge a log line, a certificate that is not PEM, SIGHUP, --console into a
closed pipe, negative NVIDIA readings."""
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
    args = argparse.Namespace(interval=1.0, nvidia_smi=None, nvidia_smi_timeout="10", rapl_root="/nonexistent")
    source = nvsmi_mod.Source(args)
    row = {"index": "0", "uuid": "GPU-1", "name": "X", "pci.bus_id": "0", "power.draw": "-5.00",
           "temperature.gpu": "-1", "memory.used": "-3", "memory.total": "81559", "utilization.gpu": "40"}
    names = {name for name, *_ in source.gpu_readings(1_000_000_000, row)}
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
