"""The macmon exporter through its command line, as a user meets it."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import FAKE_MACMON, MACMON_EXPORTER, python39, run_cli
from otlp_receiver import free_port

ISSUE_TABLE = {  # the series users' dashboards depend on, with their units
    "mac.power.total": "W", "mac.power.cpu": "W", "mac.power.gpu": "W", "mac.power.ane": "W", "mac.power.ram": "W",
    "mac.power.system": "W", "mac.power.gpu_ram": "W", "mac.temp.cpu": "Cel", "mac.temp.gpu": "Cel",
    "mac.gpu.usage": "1", "mac.cpu.ecpu_usage": "1", "mac.cpu.pcpu_usage": "1", "mac.memory.ram_used": "By",
    "mac.memory.ram_total": "By", "mac.memory.swap_used": "By", "mac.memory.swap_total": "By",
    "mac.energy.total": "J", "mac.energy.cpu": "J", "mac.energy.gpu": "J", "mac.energy.ane": "J",
    "mac.energy.ram": "J", "mac.energy.system": "J",
}


def test_help_documents_every_setting_with_env_and_default(macmon_mod):
    result = run_cli(MACMON_EXPORTER, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, env, default, _ in macmon_mod.Source.SETTINGS + macmon_mod.SHARED_SETTINGS:
        assert flag in text
        assert f"env {env}; default {default if default is not None else 'none'}" in text, env
    assert "exit codes:" in text and "EXO.app" in text


def test_version():
    result = run_cli(MACMON_EXPORTER, "--version")
    assert result.returncode == 0 and result.stdout.startswith("macmon-otel-exporter 0.")


def test_list_metrics_matches_the_published_table():
    result = run_cli(MACMON_EXPORTER, "--list-metrics")
    assert result.returncode == 0
    table = {m["name"]: m for m in json.loads(result.stdout)}
    for name, unit in ISSUE_TABLE.items():
        assert table[name]["unit"] == unit
        assert table[name]["type"] == ("sum" if name.startswith("mac.energy.") else "gauge")
        assert table[name]["description"]
    assert "exporter.datapoints.dropped" in table


def test_no_macmon_lists_every_place_looked(tmp_path):
    env = {"HOME": str(tmp_path), "PATH": str(tmp_path)}
    result = run_cli(MACMON_EXPORTER, "--once", env=env)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line
    for place in ("/Applications/EXO.app/Contents/Resources/exo/_internal/macmon", "/opt/homebrew/bin/macmon",
                  "/usr/local/bin/macmon", ".cargo/bin/macmon", "PATH", "brew install macmon"):
        assert place in line


def test_explicit_macmon_that_does_not_exist_is_named(tmp_path):
    result = run_cli(MACMON_EXPORTER, "--once", env={"EXO_MACMON_PATH": str(tmp_path / "nope")})
    assert result.returncode == 3 and "$EXO_MACMON_PATH" in result.stderr


def test_macmon_found_on_path(tmp_path, receiver):
    os.symlink(FAKE_MACMON, tmp_path / "macmon")
    env = {"HOME": str(tmp_path), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = run_cli(MACMON_EXPORTER, "--once", "--interval", "0.1", "--endpoint", receiver.url, env=env)
    assert result.returncode == 0, result.stderr
    assert receiver.series("mac.power.total")


@pytest.mark.parametrize("args,needle", [
    (["--interval", "0.01"], "between 0.05 and 3600"),
    (["--interval", "soon"], "not a number"),
    (["--endpoint", "ftp://collector:21"], "not an http:// or https:// URL"),
    (["--endpoint", "http://collector:99999"], "bad port"),
    (["--compression", "zstd"], "use none or gzip"),
    (["--exporter", "prometheus"], "use otlp, console or none"),
    (["--bogus"], "unrecognized arguments"),
    (["--resource", "novalue"], "KEY=VALUE"),
])
def test_user_errors_are_one_line_with_exit_2(args, needle):
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", *args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_bad_interval_in_environment_is_named():
    result = run_cli(MACMON_EXPORTER, "--once", env={"TPW_INTERVAL": "fast"})
    assert result.returncode == 2 and "TPW_INTERVAL" in result.stderr


def test_env_file_must_be_private(tmp_path):
    env_file = tmp_path / "exporter.env"
    env_file.write_text("OTEL_EXPORTER_OTLP_HEADERS=x-token=abc\n")
    env_file.chmod(0o644)
    result = run_cli(MACMON_EXPORTER, "--env-file", str(env_file), "--once")
    assert result.returncode == 6
    assert f"chmod 600 {env_file}" in result.stderr
    result = run_cli(MACMON_EXPORTER, "--env-file", str(tmp_path / "missing.env"), "--once")
    assert result.returncode == 6 and "missing.env" in result.stderr
    env_file.write_text("this is not a setting\n")
    env_file.chmod(0o600)
    result = run_cli(MACMON_EXPORTER, "--env-file", str(env_file), "--once")
    assert result.returncode == 6 and "line 1" in result.stderr


def test_env_file_and_headers_reach_the_collector_but_never_the_log(tmp_path, receiver):
    env_file = tmp_path / "exporter.env"
    env_file.write_text(f"# tokens live here, not in the plist\nexport OTEL_EXPORTER_OTLP_ENDPOINT={receiver.url}\n"
                        "OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20s3cr3t-token,x-scope=lab\n"
                        "MACMON=" + FAKE_MACMON + "\nTPW_LOG_LEVEL=debug\n")
    env_file.chmod(0o600)
    result = run_cli(MACMON_EXPORTER, "--env-file", str(env_file), "--once", "--interval", "0.1")
    assert result.returncode == 0, result.stderr
    headers = receiver.requests[0][0]
    assert headers["authorization"] == "Bearer s3cr3t-token"
    assert headers["x-scope"] == "lab"
    assert headers["user-agent"].startswith("macmon-otel-exporter/")
    assert "s3cr3t" not in result.stderr + result.stdout


def test_metrics_endpoint_is_used_as_is(receiver):
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--interval", "0.1",
                     env={"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.url + "/custom/path",
                          "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert result.returncode == 0, result.stderr
    assert receiver.points


def test_once_fails_with_exit_5_when_nobody_listens():
    port = free_port()
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--interval", "0.1",
                     "--endpoint", f"http://127.0.0.1:{port}")
    assert result.returncode == 5
    assert "did not accept" in result.stderr and "Traceback" not in result.stderr


def test_once_fails_with_exit_5_when_collector_rejects(receiver):
    receiver.mode = "400"
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--interval", "0.1",
                     "--endpoint", receiver.url)
    assert result.returncode == 5 and "bad metric data" in result.stderr


def test_console_prints_readable_sample():
    result = run_cli(MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--once", "--console", "--interval", "0.1",
                     env={"FAKE_MACMON_VERSION": "0.6.1"})
    assert result.returncode == 0
    lines = [line for line in result.stdout.splitlines() if "mac.power.system" in line]
    assert lines and "9.391488075256348" in lines[0] and " W " in lines[0] + " "
    assert "mac.temp.gpu" not in result.stdout


def test_runs_alone_isolated_without_site_packages(tmp_path, receiver):
    """Stdlib-only and single-file: copied alone into an empty folder, run with -I -S."""
    shutil.copy(MACMON_EXPORTER, tmp_path / "macmon-otel-exporter.py")
    for python in filter(None, [sys.executable, python39()]):
        argv = [python, "-I", "-S", "macmon-otel-exporter.py"]
        help_run = subprocess.run(argv + ["--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert help_run.returncode == 0, (python, help_run.stderr)
        env = {"PATH": os.environ["PATH"], "FAKE_MACMON_SPEED": "5"}
        once = subprocess.run(argv + ["--once", "--macmon", FAKE_MACMON, "--interval", "0.2",
                                      "--endpoint", receiver.url], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30)
        assert once.returncode == 0, (python, once.stderr)
    assert len(receiver.requests) >= 1


def test_check_reports_source_and_collector(receiver):
    result = run_cli(MACMON_EXPORTER, "--check", "--macmon", FAKE_MACMON, "--endpoint", receiver.url,
                     env={"FAKE_MACMON_VERSION": "0.7.0", "FAKE_MACMON_SPEED": "5"})
    assert result.returncode == 0, result.stdout + result.stderr
    for needle in ("OK    macmon found", "0.7.0", "OK    one sample parsed", "OK    endpoint resolves",
                   "OK    TCP connect", "OK    collector accepted a POST", "all checks passed"):
        assert needle in result.stdout


def test_check_names_a_dead_collector():
    port = free_port()
    result = run_cli(MACMON_EXPORTER, "--check", "--macmon", FAKE_MACMON, "--endpoint", f"http://127.0.0.1:{port}",
                     env={"FAKE_MACMON_SPEED": "5"})
    assert result.returncode == 5
    assert "FAIL  TCP connect" in result.stdout and "is the collector running" in result.stdout


IFCONFIG = """lo0: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> mtu 16384
\tinet 127.0.0.1 netmask 0xff000000
en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500
\tether 3c:22:fb:00:00:01
\tinet 192.168.1.23 netmask 0xffffff00 broadcast 192.168.1.255
"""


def test_local_network_privacy_is_recognised_only_on_the_local_subnet(macmon_mod):
    assert macmon_mod.on_link_private("192.168.1.40", IFCONFIG)
    assert not macmon_mod.on_link_private("192.168.2.40", IFCONFIG)  # routed: not LNP
    assert not macmon_mod.on_link_private("127.0.0.1", IFCONFIG)
    assert not macmon_mod.on_link_private("8.8.8.8", IFCONFIG)
    assert "LaunchDaemon" in macmon_mod.LOCAL_NETWORK_HINT and "127.0.0.1" in macmon_mod.LOCAL_NETWORK_HINT


def test_resource_precedence(macmon_mod, monkeypatch):
    import argparse
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=ml%2Cops,cluster=from-env,deployment.environment.name=stg")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "power-mac")
    args = argparse.Namespace(cluster=None, environment=None, resource=["rack=r1", "team=infra"])
    attrs = macmon_mod.resource_attributes(args)
    assert attrs["team"] == "infra"                    # --resource beats the variable
    assert attrs["cluster"] == "from-env"
    assert attrs["service.name"] == "power-mac"        # OTEL_SERVICE_NAME wins
    assert attrs["deployment.environment"] == "stg"    # old key mirrors the new one
    assert attrs["host.arch"] in ("amd64", "arm64")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=%zz-broken-but-tolerated,=x")
    attrs = macmon_mod.resource_attributes(argparse.Namespace(cluster=None, environment=None, resource=[]))
    assert attrs["cluster"] == "mac-exo" and "team" not in attrs


def test_the_configuration_table_lists_every_setting(macmon_mod, nvsmi_mod):
    reference = open(os.path.join(os.path.dirname(MACMON_EXPORTER), "..", "docs", "exporters.md")).read()
    table = reference.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for module in (macmon_mod, nvsmi_mod):
        for flag, env, _default, _ in module.Source.SETTINGS + module.SHARED_SETTINGS:
            assert f"`{flag}`" in table and f"`{env}`" in table, (flag, env)


def test_exporter_none_reads_but_sends_nothing(receiver, tmp_path):
    import time

    from conftest import start_macmon_exporter
    printed = tmp_path / "printed"
    exporter = start_macmon_exporter(receiver.url, env={"OTEL_METRICS_EXPORTER": "none"},
                                     fake_env={"FAKE_MACMON_PRINTED": str(printed)})
    deadline = time.monotonic() + 30  # on a loaded machine the first lines can take a while
    while time.monotonic() < deadline and (not printed.exists() or len(printed.read_text().split()) < 3):
        time.sleep(0.1)
    time.sleep(0.3)
    assert exporter.stop() == 0
    assert receiver.requests == []
    assert "exporter none" in exporter.stderr and re.search(r"samples read [1-9]", exporter.stderr)
