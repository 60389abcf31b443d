"""A real HTTP proxy (Debian's `tinyproxy`) on loopback: plain http forwarded, https through
CONNECT, optionally with Basic proxy authentication. Its log says what it was asked to do."""
import shutil
import socket
import subprocess
import time

from conftest import stop_process
from otlp_receiver import free_port

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


class Tinyproxy:
    def __init__(self, tmp_path, user=None, password=None):
        self.port = free_port()
        self.log_path = tmp_path / "tinyproxy.log"
        config = tmp_path / "tinyproxy.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", "Allow 127.0.0.1", "MaxClients 20",
                 "LogLevel Connect"]
        if user:
            lines.append(f"BasicAuth {user} {password}")
        config.write_text("\n".join(lines) + "\n")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tinyproxy did not start: {self.log_path.read_text()[-2000:]}")

    def url(self, user=None, password=None):
        credentials = f"{user}:{password}@" if user else ""
        return f"http://{credentials}127.0.0.1:{self.port}"

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text()

    def stop(self):
        stop_process(self.proc)
        self.log.close()
