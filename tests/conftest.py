"""Shared test helpers: load an exporter file as a module, run it as a process, a loopback receiver."""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tests", "tools")
sys.path.insert(0, TOOLS)

from otlp_receiver import Receiver  # noqa: E402

MACMON_EXPORTER = os.path.join(ROOT, "exporters", "macmon-otel-exporter.py")
NVSMI_EXPORTER = os.path.join(ROOT, "exporters", "nvsmi-otel-exporter.py")
FAKE_MACMON = os.path.join(TOOLS, "fake-macmon")
FAKE_NVSMI = os.path.join(TOOLS, "fake-nvidia-smi")
MACMON_FIXTURES = os.path.join(ROOT, "tests", "fixtures", "macmon")
CAPTURES = os.path.normpath(os.path.join(ROOT, "..", "shared", "captures", "nvidia-smi"))
# Our own capture of a real host (tests/tools/capture-nvidia-smi.sh, on an H200 with driver 580)
OWN_CAPTURE = os.path.join(ROOT, "tests", "fixtures", "nvidia-smi", "captures", "linux-x86_64__nvidia-h200__580.159.04")
# The interpreter the exporters run under in the tests: TPW_TEST_PYTHON=python3.9 runs the same
# tests against the oldest supported Python (make test-py39).
EXPORTER_PYTHON = os.environ.get("TPW_TEST_PYTHON") or sys.executable


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def macmon_mod():
    return load_module(MACMON_EXPORTER, "macmon_exporter")


@pytest.fixture(scope="session")
def nvsmi_mod():
    return load_module(NVSMI_EXPORTER, "nvsmi_exporter")


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def python39():
    """The oldest supported interpreter when this machine has one (macOS ships 3.9.6): on PATH, or
    a pyenv build (pyenv's shim answers "command not found" unless 3.9 is selected)."""
    import glob
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    candidates = [shutil.which("python3.9")] + pyenv
    for found in filter(None, candidates):
        check = subprocess.run([found, "-c", "import sys; assert sys.version_info[:2] == (3, 9)"], capture_output=True)
        if check.returncode == 0:
            return found
    return None


RUNNING = []  # every exporter a test started: killed after the test, even when it failed


@pytest.fixture(autouse=True)
def no_exporter_left_behind():
    yield
    while RUNNING:
        proc = RUNNING.pop()
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the exporter stops its own source child
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


class ExporterProcess:
    """An exporter running as a child process, with its stderr collected."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        RUNNING.append(self.proc)
        self.stdout = self.stderr = None

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, self.stderr = self.proc.communicate()
            raise
        return self.proc.returncode

    def wait(self, timeout=30):
        self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode


def start_macmon_exporter(endpoint, *extra, env=None, fake_env=None, python=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    environment.update({"FAKE_MACMON_SPEED": "10", "TPW_SELF_REPORT_INTERVAL": "1"})
    environment.update(fake_env or {})
    environment.update(env or {})
    argv = [python or EXPORTER_PYTHON, MACMON_EXPORTER, "--macmon", FAKE_MACMON, "--interval", "1",
            "--endpoint", endpoint, *extra]
    return ExporterProcess(argv, environment)


def run_cli(path, *args, env=None, timeout=30, python=None, cwd=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TPW_", "FAKE_"))}
    environment.update(env or {})
    return subprocess.run([python or EXPORTER_PYTHON, path, *args], env=environment, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def stop_process(proc, grace_s=10):
    """SIGTERM, then SIGKILL if it has not ended within grace_s: how every peer the tests start ends."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def need_peer(command, package):
    """Skip (one line naming the package) when a system program the test runs as a real peer is
    missing; with TPW_REQUIRE_PEERS=1 (.ci/run) that is a failure instead, so CI never skips it."""
    if shutil.which(command) or os.access(f"/usr/sbin/{command}", os.X_OK):
        return
    message = (f"needs {command}: apt-get install {package} "
               f"(make test installs it when run as root; tests/tools/install-test-peers.sh)")
    if os.environ.get("TPW_REQUIRE_PEERS") == "1":
        pytest.fail(message + " [TPW_REQUIRE_PEERS=1]", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 for the deploy and collector tests."""
    from sshd_peer import Sshd
    need_peer("sshd", "openssh-server")
    need_peer("ssh", "openssh-client")
    server = Sshd(tmp_path_factory.mktemp("ssh"))
    yield server
    server.stop()
