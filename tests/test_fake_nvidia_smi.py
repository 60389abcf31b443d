"""The stand-in nvidia-smi behaves like the real one where the exporter depends on it: its field
and header rules, exit codes and words, loop and signals, held to a capture of a real H200."""
import json
import os
import re
import signal
import subprocess

import pytest
from conftest import FAKE_NVSMI, OWN_CAPTURE


def fake(*args, **env):
    return subprocess.run([FAKE_NVSMI, *args], env=dict(os.environ, **env), capture_output=True, text=True, timeout=10)


def test_fake_unknown_field_fails_the_whole_query_on_stdout():
    result = fake("--query-gpu=index,power.draw.instant", "--format=csv", FAKE_NVSMI_PROFILE="r470-maxwell-m6000")
    assert result.returncode == 2
    assert result.stdout == 'Field "power.draw.instant" is not a valid field to query.\n\n' and not result.stderr


@pytest.mark.parametrize("code,needle", [(9, "couldn't communicate with the NVIDIA driver"),
                                         (12, "couldn't find libnvidia-ml.so"), (15, "GPU is lost"),
                                         (18, "Driver/library version mismatch")])
def test_fake_exit_codes(code, needle):
    result = fake("--query-gpu=index", "--format=csv", FAKE_NVSMI_EXIT=str(code))
    assert result.returncode == code and needle in result.stdout


def test_fake_header_keeps_units_with_nounits_and_renames_throttle():
    result = fake("--query-gpu=index,power.draw,clocks_throttle_reasons.active", "--format=csv,nounits")
    header, first = result.stdout.splitlines()[:2]
    assert header == "index, power.draw [W], clocks_event_reasons.active"
    assert first == "0, 44.05, 0x0000000000000001"


def test_fake_loop_streams_with_interleaved_xid():
    """A loop streams round after round (8 rows each) with Xid messages between them; read until
    two rounds and an Xid came, or 30 s (a loaded machine may be slow to start it)."""
    import time
    proc = subprocess.Popen([FAKE_NVSMI, "--query-gpu=index,power.draw", "--format=csv,noheader,nounits",
                             "-lms", "100"], env=dict(os.environ, FAKE_NVSMI_XID="1", FAKE_NVSMI_SPEED="10"),
                            stdout=subprocess.PIPE, text=True)
    lines, deadline = [], time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if any("Xid" in x for x in lines) and sum(1 for x in lines if x[:1].isdigit()) >= 16:
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert any("Xid" in line for line in lines) and sum(1 for line in lines if line[:1].isdigit()) >= 16


def capture_sections(path):
    text = open(path).read()
    pattern = r"^#{10,}\n# ([^\n]+)\n# \$ ([^\n]*)\n#{10,}\n(.*?)^# exit status: (\d+)\n"
    return {m.group(1): (m.group(2), m.group(3), int(m.group(4))) for m in re.finditer(pattern, text, re.M | re.S)}


@pytest.mark.parametrize("title", ["errors :: invalid field", "errors :: invalid GPU id"])
def test_fake_fails_like_the_real_driver(title):
    """The same command as on the real host: the same words on stdout and the same exit status."""
    command, output, status = capture_sections(os.path.join(OWN_CAPTURE, "capture.txt"))[title]
    args = command.split()[1:]
    done = fake(*args)
    assert (done.returncode, done.stdout.strip()) == (status, output.strip())


def test_fake_loop_ends_on_a_signal_like_the_real_one():
    """Real nvidia-smi 580 in a -lms loop: SIGTERM or SIGINT ends it with status 0 within a second
    and no further row (signals.json). The exporter's shutdown relies on neither, but a stand-in
    that died by the signal instead would hide a restart loop on an exit status 0."""
    real = json.load(open(os.path.join(OWN_CAPTURE, "signals.json")))["loops"]
    assert {(r["exit"], r["rows_after_signal"]) for r in real} == {(0, 0)}
    assert max(r["seconds_to_exit"] for r in real) < 1
    for sig in sorted({r["signal"] for r in real}):
        proc = subprocess.Popen([FAKE_NVSMI, "--query-gpu=index,power.draw", "--format=csv,noheader,nounits",
                                 "-lms", "2000"], stdout=subprocess.PIPE,
                                env=dict(os.environ, FAKE_NVSMI_PROFILE="r535-v100x8"))
        for _ in range(8):
            proc.stdout.readline()  # the first round
        proc.send_signal(getattr(signal, sig))
        rest, _ = proc.communicate(timeout=5)
        assert proc.returncode == 0, sig
        assert rest.count(b"\n") < 8, "a whole round after the signal"
