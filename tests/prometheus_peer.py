"""A real Prometheus (Debian's `prometheus` package) on loopback, scraping the given targets every
second, and its HTTP query API."""
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

from conftest import stop_process
from otlp_receiver import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class Prometheus:
    def __init__(self, tmp_path, targets, interval="1s"):
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  scrape_timeout: {interval}\n"
            "scrape_configs:\n"
            "  - job_name: tpw-gateway\n"
            "    honor_timestamps: true\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        self.log = open(tmp_path / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise RuntimeError("prometheus did not come up: " + (tmp_path / "prometheus.log").read_text()[-2000:])

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def query(self, expr, at=None):
        """The API's whole answer for an instant query (status, data or errorType/error)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        request = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as exc:
            return json.load(exc)

    def stop(self):
        stop_process(self.proc)
        self.log.close()
