"""The Grafana dashboard's PromQL, executed by a real Prometheus (Debian's package) that scrapes a
stand-in of the gateway's Prometheus endpoint, named exactly as the collector's `prometheus`
exporter names what the exporters and LiteLLM send, with the sample timestamps it passes on
(send_timestamps).

The workload runs in compressed time, from the moment the endpoint starts (t = 0):
- mac-exo: Macs m1 and m2 at 30 W SoC / 60 W whole each; m2's exporter restarts at t = 10 s (its
  counters start again from zero; its first point covers the time since its last one).
- nvidia: one node, GPUs at 300 W and 200 W; RAPL package-0 80 W, package-1 70 W, and the
  sub-zone package-0/core 50 W and psys 250 W that must not be added.
- LiteLLM output tokens (cumulative histogram _sum, with the cluster the gateway tagged): 90/s
  mac-exo, 650/s nvidia, 1000/s unmapped; input tokens besides.
So over any window: tokens per joule 1.5 (Mac SoC), 0.75 (Mac node), 1.3 (GPU boards), 1.0
(NVIDIA node), and $ per 1k tokens = joules per token x 1000 / 3.6e6 x the price.
"""
import json
import os
import re
import time

import pytest
from conftest import ROOT, need_peer
from standin_http import prometheus_page_handler, start_server

WINDOW_S = 15
PRICE, API_PRICE = 0.30, 0.60
RESTART_AT = 10.0
TOKENS_PER_S = {"mac-exo": 90.0, "nvidia": 650.0, "unmapped": 1000.0}
WATTS = {"mac_soc": 60.0, "mac_node": 120.0, "nv_board": 500.0, "nv_node": 650.0}
BOUNDARY_CLUSTER = {"mac_soc": "mac-exo", "mac_node": "mac-exo", "nv_board": "nvidia", "nv_node": "nvidia"}

with open(os.path.join(ROOT, "dashboards", "grafana", "tokens-per-watt.json")) as _fh:
    DASHBOARD = json.load(_fh)


class GatewayEndpoint:
    """Serves /metrics like the collector's prometheus exporter would for the workload above."""

    def __init__(self):
        self.start = time.time()
        self.restarted_base = None  # m2's new counters count from the moment of its last point
        self.last_served = None
        self.server = start_server(prometheus_page_handler(self.page))

    @property
    def target(self):
        return f"127.0.0.1:{self.server.server_address[1]}"

    def page(self):
        now = time.time()
        t = now - self.start
        ms = int(now * 1000)
        if t >= RESTART_AT and self.restarted_base is None:
            self.restarted_base = self.last_served if self.last_served is not None else RESTART_AT
        self.last_served = t
        lines = []

        def sample(name, labels, value):
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{text}}} {value!r} {ms}")

        def counter_t(host):
            return t - self.restarted_base if host == "m2" and self.restarted_base is not None else t

        mac = {"cluster": "mac-exo", "service_name": "macmon-otel-exporter", "job": "otel"}
        lines.append("# TYPE mac_energy_joules_total counter")
        for host in ("m1", "m2"):
            sample("mac_energy_joules_total", dict(mac, host_name=host), 30.0 * counter_t(host))
        lines.append("# TYPE mac_energy_system_joules_total counter")
        for host in ("m1", "m2"):
            sample("mac_energy_system_joules_total", dict(mac, host_name=host), 60.0 * counter_t(host))
        lines.append("# TYPE mac_power_system_watts gauge")
        for host in ("m1", "m2"):
            sample("mac_power_system_watts", dict(mac, host_name=host), 60.0)
        lines.append("# TYPE mac_power_gpu_watts gauge")
        for host in ("m1", "m2"):
            sample("mac_power_gpu_watts", dict(mac, host_name=host), 12.0)
        lines.append("# TYPE mac_gpu_usage_ratio gauge")
        for host in ("m1", "m2"):
            sample("mac_gpu_usage_ratio", dict(mac, host_name=host), 0.5)
        lines.append("# TYPE exporter_samples_read_total counter")
        for host in ("m1", "m2"):
            sample("exporter_samples_read_total", dict(mac, host_name=host), float(int(counter_t(host))))

        node = {"cluster": "nvidia", "host_name": "g1", "service_name": "nvsmi-otel-exporter", "job": "otel"}
        gpus = (("GPU-aaaa", "0", 300.0), ("GPU-bbbb", "1", 200.0))
        lines.append("# TYPE gpu_energy_joules_total counter")
        for uuid, index, watts in gpus:
            sample("gpu_energy_joules_total", dict(node, gpu_uuid=uuid, gpu_index=index), watts * t)
        lines.append("# TYPE gpu_power_board_watts gauge")
        for uuid, index, watts in gpus:
            sample("gpu_power_board_watts", dict(node, gpu_uuid=uuid, gpu_index=index), watts)
        lines.append("# TYPE gpu_utilization_gpu_ratio gauge")
        for uuid, index, _watts in gpus:
            sample("gpu_utilization_gpu_ratio", dict(node, gpu_uuid=uuid, gpu_index=index), 0.9)
        zones = (("package-0", 80.0), ("package-1", 70.0), ("package-0/core", 50.0), ("psys", 250.0))
        lines.append("# TYPE host_energy_cpu_joules_total counter")
        for zone, watts in zones:
            sample("host_energy_cpu_joules_total", dict(node, rapl_zone=zone), watts * t)
        lines.append("# TYPE host_power_cpu_watts gauge")
        for zone, watts in zones:
            sample("host_power_cpu_watts", dict(node, rapl_zone=zone), watts)
        sample("exporter_samples_read_total", node, float(int(t)))

        lines.append("# TYPE gen_ai_client_token_usage histogram")
        for cluster, rate in TOKENS_PER_S.items():
            for kind, scale in (("output", 1.0), ("input", 5.0)):
                labels = {"cluster": cluster, "gen_ai_token_type": kind, "gen_ai_request_model": f"model-{cluster}",
                          "gen_ai_system": "openai", "service_name": "litellm", "job": "litellm"}
                requests = int(t)  # one request a second, each of rate*scale tokens
                for le in ("64", "1024", "+Inf"):
                    fits = le == "+Inf" or rate * scale <= float(le)
                    sample("gen_ai_client_token_usage_bucket", dict(labels, le=le), float(requests if fits else 0))
                sample("gen_ai_client_token_usage_sum", labels, rate * scale * t)
                sample("gen_ai_client_token_usage_count", labels, float(requests))
        lines.append("# TYPE gen_ai_client_operation_duration_seconds histogram")
        for le, n in (("0.5", 0.2), ("2", 0.9), ("+Inf", 1.0)):
            sample("gen_ai_client_operation_duration_seconds_bucket",
                   {"gen_ai_request_model": "model-nvidia", "le": le, "job": "litellm"}, 100.0 * n * t)
        lines.append("# TYPE gen_ai_server_time_to_first_token_seconds histogram")
        for le, n in (("0.1", 0.5), ("1", 1.0), ("+Inf", 1.0)):
            sample("gen_ai_server_time_to_first_token_seconds_bucket",
                   {"gen_ai_request_model": "model-nvidia", "le": le, "job": "litellm"}, 50.0 * n * t)
        lines.append("# TYPE llamacpp_tokens_predicted_total counter")
        sample("llamacpp_tokens_predicted_total", {"model": "model-nvidia", "cluster": "nvidia"}, 650.0 * t)
        lines.append("# TYPE exporter_buffer_samples gauge")
        sample("exporter_buffer_samples", dict(mac, host_name="m1"), 0.0)
        lines.append("# TYPE exporter_datapoints_dropped_total counter")
        sample("exporter_datapoints_dropped_total", dict(mac, host_name="m1", reason="buffer_full"), 0.0)
        lines.append("# TYPE exporter_source_restarts_total counter")
        sample("exporter_source_restarts_total", dict(mac, host_name="m2"), 1.0 if t >= RESTART_AT else 0.0)
        return "\n".join(lines) + "\n"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    need_peer("prometheus", "prometheus")
    from prometheus_peer import Prometheus
    endpoint = GatewayEndpoint()
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), [endpoint.target])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a full window of scrapes after the restart
            result = server.query("count_over_time(gpu_power_board_watts[30s])")
            points = result["data"]["result"]
            if points and float(points[0]["value"][1]) >= RESTART_AT + WINDOW_S + 2:
                break
            time.sleep(1)
        yield server
    finally:
        server.stop()
        endpoint.stop()


def render(expr):
    """Grafana's substitutions for the dashboard's variables, at their defaults (All = .*)."""
    for name, value in (("$__range", f"{WINDOW_S}s"), ("$__rate_interval", "4s"), ("${cluster:regex}", ".*"),
                        ("${host:regex}", ".*"), ("${model:regex}", ".*"), ("$price_per_kwh", str(PRICE)),
                        ("$api_price_per_1m", str(API_PRICE))):
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def expected(formula, boundary):
    tokens = TOKENS_PER_S[BOUNDARY_CLUSTER[boundary]]
    joules = WATTS[boundary]
    per_token_kwh = joules / tokens / 3_600_000
    return {"tokens_per_joule": tokens / joules, "cost_per_1k_tokens": per_token_kwh * 1000 * PRICE,
            "cost_per_1m_tokens": per_token_kwh * 1_000_000 * PRICE,
            "api_over_onprem": API_PRICE / (per_token_kwh * 1_000_000 * PRICE)}[formula]


def panels():
    return {p["title"]: p for p in DASHBOARD["panels"]}


def test_every_promql_expression_runs(prometheus):
    count = 0
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            result = prometheus.query(render(target["expr"]))
            assert result["status"] == "success", (panel["title"], target["expr"], result)
            count += 1
    assert count >= 30


FORMULAS = ("tokens_per_joule", "cost_per_1k_tokens", "cost_per_1m_tokens", "api_over_onprem")
EFFICIENCY = [p["title"] for p in DASHBOARD["panels"]
              if p["type"] == "stat" and p["targets"] and p["targets"][0]["legendFormat"] in FORMULAS]
BOUNDARY_OF_LABEL = {"Mac SoC": "mac_soc", "Mac whole node": "mac_node", "NVIDIA GPU board": "nv_board",
                     "NVIDIA node": "nv_node"}


@pytest.mark.parametrize("title", EFFICIENCY)
def test_efficiency_and_cost_panels_give_the_known_answer(prometheus, title):
    panel = panels()[title]
    boundary = next(b for label, b in BOUNDARY_OF_LABEL.items() if f"[{label} (" in title)
    formula = panel["targets"][0]["legendFormat"]
    result = prometheus.query(render(panel["targets"][0]["expr"]))
    values = result["data"]["result"]
    assert len(values) == 1, (title, result)
    assert float(values[0]["value"][1]) == pytest.approx(expected(formula, boundary), rel=0.01), title


def test_both_boundaries_of_both_clusters_are_there():
    assert len(EFFICIENCY) == 12


@pytest.mark.parametrize("title,want", [("mac-exo: hosts reporting", 2), ("mac-exo: GPUs reporting", 2),
                                        ("nvidia: hosts reporting", 1), ("nvidia: GPUs reporting", 2)])
def test_hosts_and_gpus_reporting(prometheus, title, want):
    result = prometheus.query(render(panels()[title]["targets"][0]["expr"]))
    assert [float(r["value"][1]) for r in result["data"]["result"]] == [want]


def test_no_efficiency_while_no_tokens_flow(prometheus):
    """A cluster whose tokens do not move: the division has nothing to give, not infinity."""
    panel = panels()["mac-exo: tokens per joule [Mac SoC (mac.energy.total: CPU+GPU+ANE)]"]
    expr = render(panel["targets"][0]["expr"]).replace('cluster="mac-exo",gen_ai_token_type="output"',
                                                       'cluster="mac-exo",gen_ai_token_type="none"')
    assert prometheus.query(expr)["data"]["result"] == []


def test_names_are_the_collectors(prometheus):
    """The series the stand-in serves are the names build.py derives for the Grafana queries."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("build", os.path.join(ROOT, "dashboards", "build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for metric, name in (("gpu.power.board", "gpu_power_board_watts"), ("gpu.energy", "gpu_energy_joules_total"),
                         ("mac.gpu.usage", "mac_gpu_usage_ratio"), ("mac.energy.total", "mac_energy_joules_total"),
                         ("host.energy.cpu", "host_energy_cpu_joules_total"),
                         ("gen_ai.client.token.usage", "gen_ai_client_token_usage"),
                         ("gen_ai.server.time_to_first_token", "gen_ai_server_time_to_first_token_seconds"),
                         ("llamacpp.tokens_predicted_total", "llamacpp_tokens_predicted_total"),
                         ("exporter.samples.read", "exporter_samples_read_total")):
        assert build.prom_name(metric) == name
    names = {r["metric"]["__name__"] for r in prometheus.query('{job=~".+"}')["data"]["result"]}
    assert {"gpu_power_board_watts", "mac_energy_joules_total", "gen_ai_client_token_usage_sum"} <= names


# ---- the demo receiver serves the same names (GET /metrics), so Grafana and tpw-ab work without a collector

def test_the_demo_receiver_serves_the_gateways_prometheus_names(tmp_path):
    import shutil
    import subprocess
    import urllib.request

    from conftest import start_macmon_exporter
    from otlp_receiver import Receiver

    need_peer("promtool", "prometheus")
    receiver = Receiver()
    try:
        exporter = start_macmon_exporter(receiver.url, "--resource", "host.name=m1")
        assert receiver.wait_for(lambda: len(receiver.series("mac.energy.total")) >= 2, 20)
        assert exporter.stop() == 0
        histogram = {"resourceMetrics": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "litellm"}}]}, "scopeMetrics": [{"metrics": [{
                "name": "gen_ai.client.token.usage", "unit": "{token}", "histogram": {
                    "aggregationTemporality": 2, "dataPoints": [{
                        "attributes": [{"key": "gen_ai.token.type", "value": {"stringValue": "output"}},
                                       {"key": "cluster", "value": {"stringValue": "mac-exo"}}],
                        "startTimeUnixNano": "1", "timeUnixNano": str(time.time_ns()), "count": "3", "sum": 30.0,
                        "bucketCounts": ["1", "2", "0"], "explicitBounds": [5.0, 20.0]}]}}]}]}]}
        request = urllib.request.Request(receiver.url + "/v1/metrics", data=json.dumps(histogram).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()
        with urllib.request.urlopen(receiver.url + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        receiver.stop()
    check = subprocess.run([shutil.which("promtool") or "/usr/bin/promtool", "check", "metrics"], input=text,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(r'^mac_energy_joules_total\{[^}]*cluster="mac-exo"[^}]*host_name="m1"', text, re.M)
    assert re.search(r"^mac_power_system_watts\{", text, re.M) or re.search(r"^mac_power_total_watts\{", text, re.M)
    assert "# TYPE mac_energy_joules_total counter" in text and "# TYPE mac_gpu_usage_ratio gauge" in text
    buckets = re.findall(r'^gen_ai_client_token_usage_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)', text, re.M)
    assert buckets == [("5.0", "1.0"), ("20.0", "3.0"), ("+Inf", "3.0")]  # cumulative in le, +Inf = count
    assert re.search(r'^gen_ai_client_token_usage_sum\{[^}]*gen_ai_token_type="output"[^}]*\} 30.0', text, re.M)
