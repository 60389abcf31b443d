#!/usr/bin/env python3
"""A stand-in for the gateway's Prometheus endpoint whose energy counters rise at known watts, for
tpw-ab's tests and `make demo`: per cluster and boundary, the collector's names and labels, each
sample stamped with the time it was read (send_timestamps).

    python3 tests/tools/energy_standin.py --port 8889
"""
import argparse
import sys
import time

from standin_http import prometheus_page_handler, start_server, wait_for_ctrl_c

# What each (cluster, boundary) wattage drives: (metric, labels, share of the watts)
DEFAULT_WATTS = {"mac-exo:soc": 40.0, "mac-exo:node": 100.0, "nvidia:board": 300.0, "nvidia:packages": 100.0}


class EnergyStandin:
    def __init__(self, watts=None, host="127.0.0.1", port=0):
        self.watts = dict(DEFAULT_WATTS, **(watts or {}))
        self.start = time.time()
        self.up = True
        self.server = start_server(prometheus_page_handler(self.page, lambda: self.up), host, port)
        self.port = self.server.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/metrics"

    def page(self):
        now = time.time()
        seconds, ms = now - self.start, int(now * 1000)
        w = self.watts
        mac = 'cluster="mac-exo",host_name="m1"'
        node = 'cluster="nvidia",host_name="g1"'
        package = w["nvidia:packages"] / 2
        lines = [
            "# TYPE mac_energy_joules_total counter",
            f"mac_energy_joules_total{{{mac}}} {w['mac-exo:soc'] * seconds!r} {ms}",
            "# TYPE mac_energy_system_joules_total counter",
            f"mac_energy_system_joules_total{{{mac}}} {w['mac-exo:node'] * seconds!r} {ms}",
            "# TYPE gpu_energy_joules_total counter",
            f'gpu_energy_joules_total{{{node},gpu_uuid="GPU-a"}} {w["nvidia:board"] * 0.6 * seconds!r} {ms}',
            f'gpu_energy_joules_total{{{node},gpu_uuid="GPU-b"}} {w["nvidia:board"] * 0.4 * seconds!r} {ms}',
            "# TYPE host_energy_cpu_joules_total counter",
            f'host_energy_cpu_joules_total{{{node},rapl_zone="package-0"}} {package * seconds!r} {ms}',
            f'host_energy_cpu_joules_total{{{node},rapl_zone="package-1"}} {package * seconds!r} {ms}',
            # inside package-0, and the whole platform: never added
            f'host_energy_cpu_joules_total{{{node},rapl_zone="package-0/core"}} {30.0 * seconds!r} {ms}',
            f'host_energy_cpu_joules_total{{{node},rapl_zone="psys"}} {500.0 * seconds!r} {ms}',
        ]
        return "\n".join(lines) + "\n"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8889)
    args = parser.parse_args()
    standin = EnergyStandin(port=args.port)
    return wait_for_ctrl_c(f"serving {standin.url} (Ctrl-C to stop)")


if __name__ == "__main__":
    sys.exit(main())
