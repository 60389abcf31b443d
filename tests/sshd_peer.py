"""A real OpenSSH server on 127.0.0.1 with a throwaway host key, client key and config."""
import os
import shutil
import subprocess
import time

from otlp_receiver import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class Sshd:
    def __init__(self, tmp_path):
        self.dir = tmp_path / "sshd"
        self.dir.mkdir()
        self.port = free_port()
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True)
        (self.dir / "authorized_keys").write_text((self.dir / "client.pub").read_text())
        config = self.dir / "sshd_config"
        config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.dir / 'host'}
AuthorizedKeysFile {self.dir / 'authorized_keys'}
PidFile {self.dir / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp /usr/lib/openssh/sftp-server
""")
        os.makedirs("/run/sshd", exist_ok=True)
        self.log = open(self.dir / "sshd.log", "w")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["ssh", *self.options().split(), "root@127.0.0.1", "true"],
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("sshd did not come up: " + (self.dir / "sshd.log").read_text())

    def options(self):
        return (f"-p {self.port} -i {self.dir / 'client'} -o StrictHostKeyChecking=no "
                f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
