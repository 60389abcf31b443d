"""Collector configs parse and hang together; the rollout validates, swaps, checks health and rolls
back over a real sshd; make verify tells OK from FAILING from SILENT DROP against stand-in APIs."""
import copy
import glob
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.parse

import pytest
import yaml
from conftest import ROOT
from deploy_lab import Lab
from otlp_receiver import free_port

OTELCOL = os.path.join(ROOT, "otelcol")
PROFILES = ["signoz", "signoz+splunk", "all", "prometheus", "signoz+prometheus", "splunk+o11y+prometheus"]
ROLLOUT = os.path.join(ROOT, "deploy", "collector-rollout.sh")


def rollout(step, **env):
    """A rendering step of the rollout (render-models, render-pipelines, config-files) as the
    gateway runs it."""
    return subprocess.run(["bash", ROLLOUT, step], env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=30)
ENV_REF = re.compile(r"\$\{env:([A-Z0-9_]+)(?::-[^}]*)?\}")


def example_setting(name):
    text = open(os.path.join(OTELCOL, "collector.env.example")).read()
    return re.search(rf"^{name}=(.*)$", text, re.M).group(1)


def render_models(mapping):
    """models.yaml as `make collector` renders it on the gateway (collector-rollout.sh)."""
    return rollout("render-models", TPW_MODEL_CLUSTERS=mapping)


def load(name, profile="signoz"):
    if name in ("models.yaml", "pipelines.yaml"):
        rendered = (render_models(example_setting("TPW_MODEL_CLUSTERS")) if name == "models.yaml"
                    else rollout("render-pipelines", TPW_BACKENDS=profile))
        assert rendered.returncode == 0, rendered.stderr
        return yaml.safe_load(rendered.stdout)
    with open(os.path.join(OTELCOL, name)) as fh:
        return yaml.safe_load(fh)


def merge(base, overlay):
    """The collector's merge of several --config files: maps merge deeply, lists are replaced."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def merged(profile):
    config = {}
    files = rollout("config-files", TPW_BACKENDS=profile)
    assert files.returncode == 0, files.stderr
    for name in files.stdout.split():
        config = merge(config, load(name, profile))
    return config


@pytest.mark.parametrize("profile", PROFILES + ["agent"])
def test_every_pipeline_names_only_defined_components(profile):
    config = load("agent-mac.yaml") if profile == "agent" else merged(profile)
    pipelines = config["service"]["pipelines"]
    signals = {"agent": {"metrics"}, "prometheus": {"metrics"}, "splunk+o11y+prometheus": {"metrics", "traces", "logs"}}
    assert set(pipelines) == signals.get(profile, {"metrics", "traces", "logs"})
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{profile}/{name}: {component} is not defined"
        assert pipeline["processors"][0] == "memory_limiter" and pipeline["processors"][-1] == "batch"
    for extension in config["service"]["extensions"]:
        assert extension in config["extensions"]
    reader = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader["without_type_suffix"] and reader["without_units"] and reader["without_scope_info"]
    assert "address" not in config["service"]["telemetry"]["metrics"]  # a config error since 0.128


def test_each_profile_defines_only_the_exporters_it_uses():
    """An unused splunk_hec with an empty token would fail validation: profiles add exporters with
    the pipelines that use them."""
    for profile in PROFILES:
        config = merged(profile)
        used = {e for p in config["service"]["pipelines"].values() for e in p["exporters"]}
        assert set(config["exporters"]) == used, profile
    assert "signalfx" not in merged("signoz+splunk")["exporters"]
    assert merged("all")["exporters"]["splunk_hec/metrics"]["index"] == "lab_otel_metrics"
    assert merged("all")["exporters"]["splunk_hec/events"]["index"] == "lab_otel"


def test_gateway_essentials():
    config = load("gateway.yaml")
    otlp = config["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"] == "0.0.0.0:4317" and otlp["http"]["endpoint"] == "0.0.0.0:4318"
    scrape = config["receivers"]["prometheus/llamacpp"]["config"]["scrape_configs"][0]
    assert scrape["metrics_path"].startswith("/upstream/") and scrape["metrics_path"].endswith("/metrics")
    assert "model" in scrape["static_configs"][0]["labels"]
    actions = config["processors"]["attributes/genai_cardinality"]["actions"]
    assert {"key": "hidden_params", "action": "delete"} in actions
    assert any(a.get("pattern", "").startswith("^metadata") for a in actions)
    statement = config["processors"]["transform/llamacpp_names"]["metric_statements"][0]["statements"][0]
    assert 'replace_pattern(name, "^llamacpp:", "llamacpp.")' == statement
    assert load("backends/signoz.yaml")["exporters"]["otlp/signoz"]["headers"]["signoz-ingestion-key"].startswith(
        "${env:")
    assert "health_check" in config["extensions"]
    o11y = load("backends/o11y.yaml")["exporters"]
    assert o11y["otlphttp/o11y_traces"]["traces_endpoint"].endswith("/v2/trace/otlp")


def test_every_env_reference_is_documented_and_no_literal_secret():
    documented = set(re.findall(r"^([A-Z0-9_]+)=", open(os.path.join(OTELCOL, "collector.env.example")).read(), re.M))
    gateway_files = [p for p in glob.glob(os.path.join(OTELCOL, "**", "*.yaml"), recursive=True)
                     if not p.endswith(("agent-mac.yaml", "litellm-config.yaml"))]
    used = set()
    for path in gateway_files:
        used |= set(ENV_REF.findall(open(path).read()))
    assert used <= documented, f"undocumented in collector.env.example: {sorted(used - documented)}"
    # ...and nothing the gateway does not read (TPW_BACKENDS and TPW_MODEL_CLUSTERS are make collector's)
    assert documented - used == {"TPW_BACKENDS", "TPW_MODEL_CLUSTERS"}, sorted(documented - used)
    for path in glob.glob(os.path.join(OTELCOL, "**", "*.yaml"), recursive=True):
        text = open(path).read()
        for key in ("token", "access_token", "signoz-ingestion-key", "X-SF-Token", "api_key"):
            for found in re.finditer(rf"^\s*{re.escape(key)}:\s*(.+)$", text, re.M):
                value = found.group(1).strip().strip('"')
                assert value.startswith("${env:") or value == "none", f"{path}: {key} holds a literal"
    example = open(os.path.join(OTELCOL, "collector.env.example")).read()
    for secret in ("SIGNOZ_INGESTION_KEY", "SPLUNK_HEC_TOKEN", "SPLUNK_O11Y_TOKEN"):
        assert re.search(rf"^{secret}=$", example, re.M), f"{secret} must be empty in the example"


def test_the_agent_reads_exactly_what_its_plist_sets():
    with open(os.path.join(ROOT, "plists", "io.tokens-per-watt.otelcol-agent.plist"), "rb") as fh:
        import plistlib
        plist = plistlib.load(fh)
    text = open(os.path.join(OTELCOL, "agent-mac.yaml")).read()
    assert set(ENV_REF.findall(text)) == set(plist["EnvironmentVariables"])
    for name in plist["EnvironmentVariables"]:
        assert re.search(rf"^#\s+{name}\b", text, re.M), f"agent-mac.yaml's header must name {name}"


def test_the_agents_queue_survives_a_restart():
    config = load("agent-mac.yaml")
    queue = config["exporters"]["otlphttp/gateway"]["sending_queue"]
    storage = queue["storage"]
    assert queue["enabled"] and storage in config["extensions"] and storage in config["service"]["extensions"]
    assert storage.startswith("file_storage") and config["extensions"][storage]["directory"].startswith("${env:")
    limiter = config["processors"]["memory_limiter"]
    assert limiter["limit_mib"] > limiter["spike_limit_mib"]


def test_transform_processors_ignore_errors_and_memory_is_above_the_spike():
    for profile in PROFILES:
        config = merged(profile)
        for name, processor in config["processors"].items():
            if name.startswith("transform"):
                assert processor.get("error_mode") == "ignore", (profile, name)
        limiter = config["processors"]["memory_limiter"]
        default = int(re.search(r":-(\d+)\}", str(limiter["limit_mib"])).group(1))
        assert default > limiter["spike_limit_mib"]
    example = open(os.path.join(OTELCOL, "collector.env.example")).read()
    assert int(re.search(r"^TPW_COLLECTOR_MEMORY_MIB=(\d+)$", example, re.M).group(1)) > 128


def test_readme_names_the_llama_swap_version_and_keeps_its_default_pattern():
    readme = open(os.path.join(ROOT, "docs", "collector.md")).read()
    assert "v229" in readme and "upstream.ignorePaths" in readme
    assert r"'.*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$'" in readme and "'^/metrics$'" in readme


def test_the_prometheus_backend_as_the_issue_asks():
    exporter = merged("signoz+prometheus")["exporters"]["prometheus"]
    assert exporter["endpoint"] == "${env:TPW_PROMETHEUS_ENDPOINT:-0.0.0.0:8889}"
    assert exporter["resource_to_telemetry_conversion"] == {"enabled": True} and exporter["send_timestamps"] is True
    assert exporter["metric_expiration"] == "10m"
    alone = merged("prometheus")
    assert set(alone["exporters"]) == {"prometheus"} and set(alone["service"]["pipelines"]) == {"metrics"}
    both = merged("signoz+prometheus")["service"]["pipelines"]
    assert both["metrics"]["exporters"] == ["otlp/signoz", "prometheus"] and both["traces"]["exporters"] == [
        "otlp/signoz"]


@pytest.mark.parametrize("backends", ["signoz+grafana", "", "signoz++"])
def test_an_unknown_backend_is_refused_in_words(backends):
    result = rollout("config-files", TPW_BACKENDS=backends or "nope")
    assert result.returncode == 1 and "is not a backend" in result.stderr if backends != "signoz++" else \
        result.stdout.split() == ["gateway.yaml", "backends/signoz.yaml", "models.yaml", "pipelines.yaml"]


def test_the_model_map_tags_tokens_with_their_cluster():
    rendered = render_models("mlx-community/Qwen3-30B-A3B-4bit=mac-exo, qwen3-30b-a3b=nvidia")
    assert rendered.returncode == 0, rendered.stderr
    processor = yaml.safe_load(rendered.stdout)["processors"]["transform/genai_cluster"]
    assert processor["error_mode"] == "ignore"
    block = processor["metric_statements"][0]
    assert block["context"] == "datapoint" and block["conditions"] == ['IsMatch(metric.name, "^gen_ai[.]")']
    assert block["statements"] == [
        'set(attributes["cluster"], "mac-exo") where attributes["gen_ai.request.model"] == '
        '"mlx-community/Qwen3-30B-A3B-4bit"',
        'set(attributes["cluster"], "nvidia") where attributes["gen_ai.request.model"] == "qwen3-30b-a3b"',
        'set(attributes["cluster"], "unmapped") where attributes["cluster"] == nil']
    for profile in PROFILES:  # every metrics pipeline tags tokens before they leave
        assert "transform/genai_cluster" in merged(profile)["service"]["pipelines"]["metrics"]["processors"]


@pytest.mark.parametrize("mapping", ["qwen3", "a=b=c=", 'evil"model=nvidia', "m=clu'ster"])
def test_a_bad_model_map_is_refused_in_words(mapping):
    rendered = render_models(mapping)
    assert rendered.returncode == 1 and "is not MODEL=CLUSTER" in rendered.stderr


def test_the_litellm_excerpt_gives_each_cluster_its_own_model_id():
    config = load("litellm-config.yaml")
    upstream = {m["litellm_params"]["model"].split("/", 1)[1]: m for m in config["model_list"]}
    mapping = dict(pair.rsplit("=", 1) for pair in example_setting("TPW_MODEL_CLUSTERS").split(","))
    assert len(upstream) == 2 and set(upstream) == set(mapping)
    assert sorted(mapping.values()) == ["mac-exo", "nvidia"]


def test_litellm_excerpt():
    config = load("litellm-config.yaml")
    assert config["litellm_settings"]["callbacks"] == ["otel"]
    assert len(config["model_list"]) == 2
    text = open(os.path.join(OTELCOL, "litellm-config.yaml")).read()
    assert "LITELLM_OTEL_INTEGRATION_ENABLE_METRICS=true" in text
    readme = open(os.path.join(ROOT, "docs", "collector.md")).read()
    assert "LITELLM_OTEL_INTEGRATION_ENABLE_METRICS" in readme


# ---------------------------------------------------------------- rollout over ssh

class Gateway(Lab):
    def __init__(self, tmp_path, sshd):
        super().__init__(tmp_path, sshd)
        shutil.copy(os.path.join(ROOT, "tests", "tools", "remote-bin", "otelcol-contrib"), self.fakes / "bin")
        unit = self.remote_root / "lib/systemd/system/otelcol-contrib.service"
        unit.parent.mkdir(parents=True)
        unit.write_text("[Service]\nEnvironmentFile=/etc/otelcol-contrib/otelcol-contrib.conf\n")
        self.health, self.metrics = free_port(), free_port()
        conf = self.remote_root / "etc/otelcol-contrib/otelcol-contrib.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(open(os.path.join(OTELCOL, "collector.env.example")).read() +
                        f"TPW_HEALTH_ENDPOINT=127.0.0.1:{self.health}\nTPW_TELEMETRY_PORT={self.metrics}\n"
                        "SPLUNK_HEC_TOKEN=kept-secret\n")
        conf.chmod(0o600)
        self.conf = conf
        with open(self.hosts, "a") as fh:
            fh.write("ai-stack  collector  root@127.0.0.1  http://127.0.0.1:4318  -  -  signoz\n")
        self.env.update(TPW_HEALTH_URL=f"http://127.0.0.1:{self.health}/",
                        TPW_METRICS_URL=f"http://127.0.0.1:{self.metrics}/metrics",
                        TPW_HEALTH_WAIT="5", TPW_TRAFFIC_WAIT="5")

    def profile(self, name):
        text = self.hosts.read_text()
        self.hosts.write_text(re.sub(r"(ai-stack .*)\s\S+\n", rf"\1  {name}\n", text))

    def link(self):
        return os.readlink(self.remote_root / "etc/otelcol-contrib/tpw")

    def options(self):
        return re.findall(r'^OTELCOL_OPTIONS="(.*)"$', self.conf.read_text(), re.M)

    def kill(self):
        pid_file = self.fakes / "state/systemd/otelcol-contrib.service.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except OSError:
                pass


@pytest.fixture
def gateway(tmp_path, sshd):
    lab = Gateway(tmp_path, sshd)
    yield lab
    lab.kill()


def test_rollout_validates_swaps_checks_and_is_idempotent(gateway):
    first = gateway.make("collector", "ai-stack")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "accepted metric points rising" in first.stdout and "collector healthy" in first.stdout
    link = gateway.link()
    assert link.startswith("tpw-")
    conf_dir = gateway.remote_root / "etc/otelcol-contrib"
    assert gateway.options() == [f"--config={conf_dir}/tpw/gateway.yaml --config={conf_dir}/tpw/backends/signoz.yaml "
                                 f"--config={conf_dir}/tpw/models.yaml --config={conf_dir}/tpw/pipelines.yaml"]
    models = yaml.safe_load((conf_dir / "tpw" / "models.yaml").read_text())
    statements = models["processors"]["transform/genai_cluster"]["metric_statements"][0]["statements"]
    assert 'set(attributes["cluster"], "nvidia") where attributes["gen_ai.request.model"] == "qwen3-30b-a3b"' \
        in statements
    assert "SPLUNK_HEC_TOKEN=kept-secret" in gateway.conf.read_text()
    assert oct(gateway.conf.stat().st_mode)[-3:] == "600"
    calls = gateway.calls()
    assert any(c.startswith("otelcol-contrib validate --config=") for c in calls)
    assert "systemctl restart otelcol-contrib.service" in calls
    assert "kept-secret" not in first.stdout + first.stderr

    again = gateway.make("collector", "ai-stack")
    assert again.returncode == 0 and "no change" in again.stdout
    assert not [c for c in gateway.calls() if "restart" in c or "validate" in c]

    gateway.profile("all")
    third = gateway.make("collector", "ai-stack")
    assert third.returncode == 0, third.stdout + third.stderr
    assert gateway.link() != link and "o11y.yaml" in gateway.options()[0]


def test_rollout_needs_otlp_traffic_not_just_scrapes(gateway):
    """The stand-in collector's otlp receiver accepts nothing while its llama.cpp scrape points
    rise: the rollout must not call that traffic, and rolls back."""
    assert gateway.make("collector", "ai-stack").returncode == 0
    running = gateway.link()
    with open(gateway.top / "otelcol" / "gateway.yaml", "a") as fh:
        fh.write("# TEST: scrapes only\n")
    result = gateway.make("collector", "ai-stack")
    assert result.returncode != 0, result.stdout
    assert "accepted metric points did not rise" in result.stdout and "rolled back to" in result.stderr
    assert gateway.link() == running


def test_a_memory_limit_at_the_spike_limit_is_refused_before_rollout(gateway):
    assert gateway.make("collector", "ai-stack").returncode == 0
    running, options = gateway.link(), gateway.options()
    gateway.calls()
    gateway.conf.write_text(gateway.conf.read_text() + "TPW_COLLECTOR_MEMORY_MIB=128\n")
    with open(gateway.top / "otelcol" / "gateway.yaml", "a") as fh:
        fh.write("# a change, so the rollout runs\n")
    result = gateway.make("collector", "ai-stack")
    assert result.returncode != 0
    assert "TPW_COLLECTOR_MEMORY_MIB=128" in result.stderr and "spike limit (128 MiB)" in result.stderr
    assert gateway.link() == running and gateway.options() == options
    assert not [c for c in gateway.calls() if "restart" in c or "validate" in c]


def test_rollout_of_signoz_and_prometheus(gateway):
    gateway.profile("signoz+prometheus")
    result = gateway.make("collector", "ai-stack")
    assert result.returncode == 0, result.stdout + result.stderr
    options = gateway.options()[0]
    assert "backends/signoz.yaml" in options and "backends/prometheus.yaml" in options
    conf_dir = gateway.remote_root / "etc/otelcol-contrib"
    pipelines = yaml.safe_load((conf_dir / "tpw" / "pipelines.yaml").read_text())["service"]["pipelines"]
    assert pipelines["metrics"]["exporters"] == ["otlp/signoz", "prometheus"]


def test_invalid_config_is_never_swapped_in(gateway):
    assert gateway.make("collector", "ai-stack").returncode == 0
    running, options = gateway.link(), gateway.options()
    gateway.calls()
    with open(gateway.top / "otelcol" / "gateway.yaml", "a") as fh:
        fh.write("# TEST: invalid\n")
    result = gateway.make("collector", "ai-stack")
    assert result.returncode != 0
    assert "does not validate" in result.stderr and "running config is untouched" in result.stderr
    assert gateway.link() == running and gateway.options() == options
    assert not [c for c in gateway.calls() if "restart" in c]


def test_unhealthy_config_is_rolled_back(gateway):
    assert gateway.make("collector", "ai-stack").returncode == 0
    running, options = gateway.link(), gateway.options()
    with open(gateway.top / "otelcol" / "gateway.yaml", "a") as fh:
        fh.write("# TEST: unhealthy\n")
    result = gateway.make("collector", "ai-stack")
    assert result.returncode != 0, result.stdout
    assert "rolled back to" in result.stderr and "healthy again" in result.stderr
    assert gateway.link() == running and gateway.options() == options
    status = urllib_status(f"http://127.0.0.1:{gateway.health}/")
    assert status == 200


def urllib_status(url):
    import urllib.error
    import urllib.request
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_collector_action_refuses_an_exporter_host(gateway):
    result = gateway.make("collector", "gpu")
    assert result.returncode != 0 and "works on a host of kind 'collector'" in result.stderr


# ---------------------------------------------------------------- verify against stand-in APIs

# A real-format :8888 page (names as otelcol-contrib 0.140 exposes them with the without_* options);
# {splunk_sent}, {splunk_failed} and {splunk_queue} are filled in per test.
with open(os.path.join(ROOT, "tests", "fixtures", "otelcol-internal-metrics.txt")) as _fh:
    COLLECTOR_PAGE = _fh.read()


class Backends:
    """Loopback stand-ins for the SigNoz query API, Splunk's REST search and O11y's MTS search."""

    def __init__(self, has_series):
        self.has_series = has_series  # backend -> True/False, or an HTTP status to answer
        self.seen = []
        backends = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status, body, content_type="application/json"):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                backends.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if self.path == "/api/v5/query_range":
                    state = backends.has_series["signoz"]
                    if state is not True and state is not False:
                        return self.answer(state, '{"status":"error","error":{"message":"invalid api key"}}')
                    series = [{"labels": [], "values": [{"timestamp": 1795750000000, "value": 41.2}]}] if state else []
                    return self.answer(200, json.dumps({"status": "success", "data": {"type": "time_series", "data": {
                        "results": [{"queryName": "A", "aggregations": [{"index": 0, "series": series}]}]}}}))
                if self.path == "/services/search/jobs/export":
                    form = urllib.parse.parse_qs(body)
                    assert "mstats" in form["search"][0]
                    state = backends.has_series["splunk"]
                    if state is not True and state is not False:
                        return self.answer(state, '{"messages":[{"type":"WARN","text":"not authenticated"}]}')
                    row = {"preview": False, "result": {"points": "120" if state else "0"}}
                    return self.answer(200, json.dumps(row) + "\n")
                self.answer(404, "{}")

            def do_GET(self):
                backends.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, ""))
                if self.path.startswith("/v2/metrictimeseries"):
                    state = backends.has_series["o11y"]
                    if state is not True and state is not False:
                        return self.answer(state, '{"message":"Unauthorized"}')
                    results = [{"id": "AAAA", "metric": "mac.power.total", "dimensions": {}}] if state else []
                    return self.answer(200, json.dumps({"count": len(results), "results": results}))
                if self.path == "/metrics":
                    return self.answer(200, backends.page, "text/plain; version=0.0.4")
                self.answer(404, "{}")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.page = ""

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def run_verify(backends, **page):
    values = {"splunk_sent": 21054, "splunk_failed": 0, "splunk_queue": 0}
    values.update(page)
    text = COLLECTOR_PAGE
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    backends.page = text
    env = dict(os.environ, SIGNOZ_API_URL=backends.url, SIGNOZ_API_KEY="sz-key", SPLUNK_REST_URL=backends.url,
               SPLUNK_REST_TOKEN="sp-token", O11Y_API_URL=backends.url, O11Y_API_TOKEN="o11y-token")
    return subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "tpw-verify.py"), "--metrics-url",
                           backends.url + "/metrics"], env=env, capture_output=True, text=True, timeout=60)


def lines(result):
    return {line.split()[0]: line for line in result.stdout.splitlines()}


def test_verify_all_good():
    backends = Backends({"signoz": True, "splunk": True, "o11y": True})
    try:
        result = run_verify(backends)
    finally:
        backends.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    got = lines(result)
    assert "OK" in got["collector"] and "otlp accepted 18844" in got["collector"]
    for backend in ("signoz", "splunk", "o11y"):
        assert got[backend].split()[1] == "OK", got[backend]
    auth = {path.split("?")[0]: headers for _m, path, headers, _b in backends.seen}
    assert auth["/api/v5/query_range"]["signoz-api-key"] == "sz-key"
    assert auth["/services/search/jobs/export"]["authorization"] == "Bearer sp-token"
    assert auth["/v2/metrictimeseries"]["x-sf-token"] == "o11y-token"
    assert "sz-key" not in result.stdout and "o11y-token" not in result.stdout


def test_verify_tells_failing_from_silent_drop():
    backends = Backends({"signoz": 401, "splunk": False, "o11y": False})
    try:
        result = run_verify(backends, splunk_failed=530, splunk_queue=12)
    finally:
        backends.stop()
    assert result.returncode == 1
    got = lines(result)
    assert "FAILING" in got["signoz"] and "HTTP 401" in got["signoz"] and "SIGNOZ_API_KEY" in got["signoz"]
    assert "FAILING" in got["splunk"] and "fails to send" in got["splunk"] and "failed 530" in got["splunk"]
    assert "SILENT DROP" in got["o11y"] and "sent without errors" in got["o11y"]


def test_verify_nothing_sent_and_skipped_backends():
    backends = Backends({"signoz": False, "splunk": True, "o11y": True})
    try:
        text = COLLECTOR_PAGE.replace("21054", "0")
        for key, value in {"splunk_sent": 0, "splunk_failed": 0, "splunk_queue": 0}.items():
            text = text.replace("{" + key + "}", str(value))
        backends.page = text
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNOZ_", "SPLUNK_", "O11Y_"))}
        env.update(SIGNOZ_API_URL=backends.url, SIGNOZ_API_KEY="k")
        result = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "tpw-verify.py"), "--metrics-url",
                                 backends.url + "/metrics"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        backends.stop()
    got = lines(result)
    assert "FAILING" in got["signoz"] and "nothing was sent" in got["signoz"]
    assert "SKIPPED" in got["splunk"] and "SPLUNK_REST_URL" in got["splunk"]


def test_verify_counts_the_otlp_receiver_only():
    """A llama.cpp scrape that fails still adds up/scrape_* points: that is no exporter traffic."""
    backends = Backends({"signoz": True, "splunk": True, "o11y": True})
    try:
        page = COLLECTOR_PAGE.replace('receiver="otlp",service_instance_id="5e2c",service_name="otelcol-contrib",'
                                      'service_version="0.140.0",transport="http"} 18844',
                                      'receiver="otlp",service_instance_id="5e2c",service_name="otelcol-contrib",'
                                      'service_version="0.140.0",transport="http"} 0')
        assert page != COLLECTOR_PAGE
        text = page
        for key, value in {"splunk_sent": 0, "splunk_failed": 0, "splunk_queue": 0}.items():
            text = text.replace("{" + key + "}", str(value))
        backends.page = text
        result = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "tpw-verify.py"), "--metrics-url",
                                 backends.url + "/metrics"], capture_output=True, text=True, timeout=60,
                                env={k: v for k, v in os.environ.items() if not k.startswith(("SIGNOZ_", "SPLUNK_"))})
    finally:
        backends.stop()
    got = lines(result)
    assert result.returncode == 1
    assert "FAILING" in got["collector"] and "otlp accepted 0" in got["collector"]
    assert "the otlp receiver accepted nothing yet" in got["collector"]


def test_verify_when_the_collector_is_down():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "tpw-verify.py"), "--metrics-url",
                             f"http://127.0.0.1:{free_port()}/metrics"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "cannot read its metrics" in result.stdout
