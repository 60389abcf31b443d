"""The stand-in macmon must behave like the real one, or the exporter tests prove nothing."""
import json
import os
import signal
import subprocess

import pytest
from conftest import FAKE_MACMON


def fake(*args, version="0.8.2", timeout=10, **env):
    environment = dict(os.environ, FAKE_MACMON_VERSION=version, FAKE_MACMON_SPEED="20")
    environment.update({k: str(v) for k, v in env.items()})
    return subprocess.run([FAKE_MACMON, *args], capture_output=True, text=True, timeout=timeout, env=environment)


def test_version_text():
    result = fake("--version", version="0.7.0")
    assert result.returncode == 0 and result.stdout == "macmon 0.7.0\n"


def test_interval_before_subcommand_works_everywhere():
    for version in ("0.4.0", "0.4.2", "0.8.2"):
        sub = "raw" if version == "0.4.0" else "pipe"
        result = fake("-i", "100", sub, "-s", "1", version=version) if version != "0.4.0" else None
        if result is None:
            result = fake("-i", "100", sub, version=version, FAKE_MACMON_COUNT=1)
        assert result.returncode == 0, (version, result.stderr)
        assert json.loads(result.stdout.splitlines()[0])["cpu_power"] > 0


def test_interval_after_subcommand_only_from_050():
    old = fake("pipe", "--interval", "100", "-s", "1", version="0.4.2")
    assert old.returncode == 2 and "unexpected argument '--interval'" in old.stderr
    new = fake("pipe", "--interval", "100", "-s", "1", version="0.5.0")
    assert new.returncode == 0


def test_pipe_needs_042_and_raw_is_always_an_alias():
    assert fake("-i", "100", "pipe", version="0.4.1").returncode == 2
    assert fake("-i", "100", "raw", "-s", "1", version="0.8.2").returncode == 0


def test_interval_must_be_an_integer():
    result = fake("-i", "5000.0", "pipe")
    assert result.returncode == 2 and "invalid value '5000.0'" in result.stderr


def test_samples_flag_stops_after_n_lines():
    result = fake("-i", "100", "pipe", "-s", "3")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3


def test_timestamps_from_060_and_not_before():
    assert "timestamp" in json.loads(fake("-i", "100", "pipe", "-s", "1", version="0.6.0").stdout)
    assert "timestamp" not in json.loads(fake("-i", "100", "pipe", "-s", "1", version="0.5.1").stdout)


def test_error_exit_1_with_quoted_message():
    result = fake("-i", "100", "pipe", FAKE_MACMON_FAIL="exit1:2")
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr == 'Error: "Failed to get memory stats"\n'


def test_panic_dies_by_sigabrt():
    result = fake("-i", "100", "pipe", FAKE_MACMON_FAIL="abort:1")
    assert result.returncode == -signal.SIGABRT
    assert "panicked at" in result.stderr


def test_debug_fails_like_in_a_vm():
    result = fake("debug")
    assert result.returncode == 1 and 'Failed to get channels' in result.stderr


def test_hang_prints_nothing_more():
    with pytest.raises(subprocess.TimeoutExpired) as info:
        fake("-i", "100", "pipe", FAKE_MACMON_FAIL="hang:1", timeout=1.5)
    assert info.value.stdout.decode().count("\n") == 1


def test_invocations_are_logged(tmp_path):
    log = tmp_path / "calls"
    fake("-i", "100", "pipe", "-s", "1", FAKE_MACMON_LOG=log)
    fake("-i", "100", "pipe", "-s", "1", FAKE_MACMON_LOG=log)
    assert [json.loads(line) for line in log.read_text().splitlines()] == [["-i", "100", "pipe", "-s", "1"]] * 2
