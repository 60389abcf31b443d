"""rotel-agent (PyPI `rotel`), a real OTLP receiver written independently of us, on loopback."""
import os
import re
import subprocess
import time

from conftest import stop_process
from otlp_receiver import free_port

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Rotel:
    def __init__(self, tmp_path):
        import rotel
        binary = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")
        self.http_port, grpc_port = free_port(), free_port()
        self.log = tmp_path / "rotel.out"
        self.handle = open(self.log, "w")
        self.proc = subprocess.Popen(
            [binary, "start", "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
             "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--exporter", "blackhole",
             "--debug-log", "metrics", "--debug-log-verbosity", "detailed",
             "--pid-file", str(tmp_path / "rotel.pid"), "--log-file", str(tmp_path / "rotel.log")],
            stdout=self.handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while "Starting Rotel" not in self.text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Starting Rotel" in self.text(), self.text()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.http_port}"

    def text(self):
        return ANSI.sub("", self.log.read_text())

    def stop(self):
        stop_process(self.proc)
        self.handle.close()

    def metrics(self):
        """[{name, unit, type, resource{}, points[{value, attributes{}, start, time}]}] from the debug log."""
        out, resource, metric, point = [], {}, None, None
        section = None
        for raw in self.text().splitlines():
            line = raw.strip()
            if line.startswith("ResourceMetrics #"):
                resource, section = {}, "resource"
            elif line == "Resource attributes:":
                section = "resource"
            elif line.startswith("Metric #"):
                metric = {"resource": dict(resource), "points": []}
                out.append(metric)
                section = "metric"
            elif line.startswith("NumberDataPoints #"):
                point = {"attributes": {}}
                metric["points"].append(point)
                section = "point"
            elif line == "Data point attributes:":
                section = "point_attrs"
            elif line.startswith("-> ") and ": " in line:
                key, value = line[3:].split(": ", 1)
                match = re.fullmatch(r"\w+\((.*)\)", value)
                value = match.group(1) if match else value
                if section == "resource":
                    resource[key] = value
                elif section == "metric":
                    metric[key.lower()] = value
                elif section == "point_attrs":
                    point["attributes"][key] = value
            elif line.startswith("Value: ") and point is not None:
                point["value"] = float(line.split(": ", 1)[1])
            elif line.startswith("StartTimestamp: ") and point is not None:
                point["start"] = int(line.split(": ", 1)[1])
            elif line.startswith("Timestamp: ") and point is not None:
                point["time"] = int(line.split(": ", 1)[1])
        return out
