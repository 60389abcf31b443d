"""A deploy lab for the deploy and collector tests: a copy of the toolkit, an inventory, a remote
root reached over the real sshd on loopback, and the stand-ins for launchctl, codesign and systemctl."""
import os
import shutil
import stat
import subprocess

from conftest import ROOT, TOOLS


class Lab:
    """A copy of the toolkit, an inventory, a remote root and stand-in tools, per test."""

    def __init__(self, tmp_path, sshd):
        self.top = tmp_path / "repo"
        for part in ("deploy", "exporters", "plists", "units", "otelcol"):
            shutil.copytree(os.path.join(ROOT, part), self.top / part)
        self.remote_root = tmp_path / "remote"
        self.remote_root.mkdir()
        clt = self.remote_root / "Library/Developer/CommandLineTools/usr/bin"
        clt.mkdir(parents=True)
        (clt / "python3").symlink_to(shutil.which("python3"))
        self.fakes = tmp_path / "fakes"
        (self.fakes / "bin").mkdir(parents=True)
        for tool in ("launchctl", "codesign", "systemctl"):
            shutil.copy(os.path.join(TOOLS, "remote-bin", tool), self.fakes / "bin" / tool)
        self.hosts = self.top / "deploy" / "hosts"
        self.hosts.write_text(
            "# test inventory\n"
            "mac-agent   mac    root@127.0.0.1  http://127.0.0.1:4318      mac-exo  lab  agent\n"
            "mac-daemon  mac    root@127.0.0.1  http://192.168.1.10:4318   mac-exo  -    daemon\n"
            "gpu         linux  root@127.0.0.1  http://10.1.2.3:4318       nvidia   lab  system\n"
            "gpu-root    linux  root@127.0.0.1  http://10.1.2.3:4318       nvidia   lab  root\n")
        self.env = dict(os.environ, HOSTS_FILE=str(self.hosts), SSH_OPTS=sshd.options(),
                        TPW_REMOTE_ROOT=str(self.remote_root), TPW_REMOTE_PATH=str(self.fakes / "bin"))

    def make(self, target, host, **env):
        result = subprocess.run(["make", "--no-print-directory", "-f", os.path.join(ROOT, "Makefile"), target,
                                 f"HOST={host}"], cwd=self.top, env=dict(self.env, **env), capture_output=True,
                                text=True, timeout=120)
        return result

    def calls(self):
        path = self.fakes / "calls.log"
        calls = path.read_text().splitlines() if path.exists() else []
        path.write_text("")
        return calls

    def files(self):
        """Every file under the remote root except the stand-in CLT python."""
        out = {}
        for path in self.remote_root.rglob("*"):
            if path.is_file() and "CommandLineTools" not in str(path):
                out[str(path.relative_to(self.remote_root))] = stat.S_IMODE(path.stat().st_mode)
        return out
