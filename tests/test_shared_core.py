"""The OTLP core is copied on purpose into each single-file exporter; the copies must not drift."""
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import EXPORTER_PYTHON, FAKE_MACMON, MACMON_EXPORTER, NVSMI_EXPORTER, ROOT
from otlp_receiver import Receiver

BEGIN = "# ===== BEGIN SHARED CORE"
END = "# ===== END SHARED CORE ====="


def core(path):
    with open(path) as fh:
        text = fh.read()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, path
    return text[text.index(BEGIN):text.index(END)]


def test_shared_core_is_identical():
    macmon, nvsmi = core(MACMON_EXPORTER), core(NVSMI_EXPORTER)
    if macmon != nvsmi:
        for number, (a, b) in enumerate(zip(macmon.splitlines(), nvsmi.splitlines()), 1):
            assert a == b, f"shared core differs at line {number} of the block; run `make sync`"
    assert macmon == nvsmi, "shared core lengths differ; run `make sync`"


def test_the_source_contract_reads_the_same_in_both_exporters():
    """The contract is written above each Source class (a reader meets it before the core); the two
    texts must not drift apart."""
    def contract(path):
        text = open(path).read()
        start = text.index("# ---------------------------------------------------------------- the Source contract")
        return text[start:text.index("class Source:", start)]
    assert contract(MACMON_EXPORTER) == contract(NVSMI_EXPORTER)
    assert "parse_line(line, read_ns)" in contract(MACMON_EXPORTER)


def test_the_sync_stamp_is_the_core_of_both_copies():
    import hashlib
    with open(os.path.join(ROOT, "tests", "tools", "shared-core.sha256")) as fh:
        stamp = fh.read().split()[0]
    for path in (MACMON_EXPORTER, NVSMI_EXPORTER):
        text = open(path).read()
        block = text[text.index(BEGIN):text.index(END) + len(END)]
        assert hashlib.sha256(block.encode()).hexdigest() == stamp, f"{path}: run `make sync`"


def sync_copy(tmp_path):
    """A copy of the exporters and the sync tool, to edit and sync without touching the repository."""
    for part in ("exporters", os.path.join("tests", "tools")):
        os.makedirs(tmp_path / part, exist_ok=True)
    for name in ("macmon-otel-exporter.py", "nvsmi-otel-exporter.py"):
        shutil.copy(os.path.join(ROOT, "exporters", name), tmp_path / "exporters" / name)
    for name in ("sync_shared.py", "shared-core.sha256"):
        shutil.copy(os.path.join(ROOT, "tests", "tools", name), tmp_path / "tests" / "tools" / name)
    return lambda *args: subprocess.run([sys.executable, str(tmp_path / "tests" / "tools" / "sync_shared.py"), *args],
                                        capture_output=True, text=True, timeout=30)


def test_make_sync_refuses_to_overwrite_an_edit_of_the_nvidia_copy(tmp_path):
    sync = sync_copy(tmp_path)
    nvidia = tmp_path / "exporters" / "nvsmi-otel-exporter.py"
    edited = nvidia.read_text().replace("def jitter():", "def jitter():  # edited here by mistake", 1)
    nvidia.write_text(edited)
    result = sync()
    assert result.returncode == 3
    assert "was edited since the last sync; syncing would lose that edit" in result.stderr
    assert nvidia.read_text() == edited  # untouched
    assert sync("--check").returncode == 1


def test_make_sync_carries_an_edit_of_the_macmon_copy(tmp_path):
    sync = sync_copy(tmp_path)
    macmon = tmp_path / "exporters" / "macmon-otel-exporter.py"
    macmon.write_text(macmon.read_text().replace("def jitter():", "def jitter():  # edited in the one place", 1))
    assert sync("--check").returncode == 1
    result = sync()
    assert result.returncode == 0, result.stderr
    assert "# edited in the one place" in (tmp_path / "exporters" / "nvsmi-otel-exporter.py").read_text()
    assert sync("--check").returncode == 0
    stamp = (tmp_path / "tests" / "tools" / "shared-core.sha256").read_text()
    assert stamp != open(os.path.join(ROOT, "tests", "tools", "shared-core.sha256")).read()


def test_exporters_import_nothing_from_the_repository():
    for path in (MACMON_EXPORTER, NVSMI_EXPORTER):
        with open(path) as fh:
            imports = [line for line in fh if line.startswith(("import ", "from "))]
        local = [line for line in imports if "tests" in line or "exporters" in line or "otlp_receiver" in line]
        assert not local, local


# ---- the stand-ins for stdlib modules that cost resident memory (see make bench)

@pytest.mark.parametrize("name", ["", "mac-studio/macmon-otel-exporter", "0a1b2c3d4e5f/nvsmi-otel-exporter",
                                  "hôte-ünïcode/日本語"])
def test_name_based_uuid_is_uuid5(macmon_mod, name):
    namespace = "4d63009a-8d0f-11ee-aad7-4c796ed8e320"
    assert macmon_mod.name_based_uuid(namespace, name) == str(uuid.uuid5(uuid.UUID(namespace), name))


def test_which_finds_only_executable_files(macmon_mod, tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "tool").write_text("#!/bin/sh\n")  # not executable: skipped
    (first / "dir-tool").mkdir()
    (second / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(0o755)
    (second / "dir-tool").mkdir(mode=0o755)
    monkeypatch.setenv("PATH", f"{first}{os.pathsep}{second}")
    assert macmon_mod.which("tool") == shutil.which("tool") == str(second / "tool")
    assert macmon_mod.which("dir-tool") is None and macmon_mod.which("missing") is None


def test_jitter_spreads_over_the_unit_interval(macmon_mod):
    draws = [macmon_mod.jitter() for _ in range(2000)]
    assert 0 <= min(draws) and max(draws) < 1
    assert min(draws) < 0.05 and max(draws) > 0.95 and 0.4 < sum(draws) / len(draws) < 0.6


def test_the_exporters_leave_heavy_modules_unloaded(tmp_path):
    """hashlib (OpenSSL's libcrypto: 3.7 MB resident), shutil (bz2, lzma: 0.6 MB), random, uuid and
    the idna codec (unicodedata: 0.7 MB) stay out of a running exporter."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import runpy, sys, threading, time, os\n"
        "def report():\n"
        "    time.sleep(4)\n"
        "    print(' '.join(sorted(sys.modules)), flush=True)\n"
        "    os._exit(0)\n"
        "threading.Thread(target=report, daemon=True).start()\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    receiver = Receiver()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
        env.update({"FAKE_MACMON_SPEED": "10"})
        done = subprocess.run([EXPORTER_PYTHON, str(probe), MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--interval", "1",
                               "--endpoint", receiver.url], env=env, capture_output=True, text=True, timeout=30)
    finally:
        receiver.stop()
    loaded = set(done.stdout.split())
    assert "json" in loaded and "socket" in loaded, done.stdout + done.stderr  # the probe saw a running exporter
    assert receiver.count("mac.power.total") >= 2  # and it was sending
    assert not loaded & {"hashlib", "_hashlib", "shutil", "random", "uuid", "encodings.idna", "unicodedata"}


def test_the_readme_stays_short_and_every_docs_link_resolves():
    import re
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert len(readme.encode()) <= 12 * 1024
    for path in [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", f) for f in os.listdir(
            os.path.join(ROOT, "docs"))]:
        text = open(path).read()
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert os.path.exists(os.path.join(os.path.dirname(path), target)), (path, target)
