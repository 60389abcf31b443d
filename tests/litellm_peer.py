"""The real LiteLLM proxy (PyPI `litellm`, pinned in requirements-dev.txt) on loopback, in front of
stand-in upstreams, with its OpenTelemetry callback sending to a test receiver."""
import os
import secrets
import subprocess
import sys
import time
import urllib.request

import yaml
from conftest import stop_process
from otlp_receiver import free_port

LITELLM = os.path.join(os.path.dirname(sys.executable), "litellm")
EXCERPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "otelcol", "litellm-config.yaml")


class LiteLLM:
    def __init__(self, tmp_path, upstreams, otlp_endpoint, metrics=True):
        """The project's otelcol/litellm-config.yaml as it is, each model's api_base pointed at a
        stand-in: upstreams maps the public model name to a base URL."""
        self.port = free_port()
        self.key = "sk-" + secrets.token_hex(32)
        with open(EXCERPT) as fh:
            config = yaml.safe_load(fh)
        for model in config["model_list"]:
            model["litellm_params"]["api_base"] = upstreams[model["model_name"]]
        path = tmp_path / f"litellm-{self.port}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LITELLM_"))}
        env.update(OTEL_EXPORTER="otlp_http", OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint, OTEL_SERVICE_NAME="litellm",
                   LITELLM_MASTER_KEY=self.key, LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch from the web
                   LITELLM_TELEMETRY="False")
        if metrics:
            env["LITELLM_OTEL_INTEGRATION_ENABLE_METRICS"] = "true"
        self.log = tmp_path / f"litellm-{self.port}.log"
        self.handle = open(self.log, "w")
        self.proc = subprocess.Popen([LITELLM, "--config", str(path), "--host", "127.0.0.1", "--port", str(self.port)],
                                     env=env, stdout=self.handle, stderr=subprocess.STDOUT)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=1):
                    return
            except OSError:
                time.sleep(0.25)
        raise RuntimeError("LiteLLM did not come up: " + self.log.read_text()[-3000:])

    def chat(self, model, stream, max_tokens=None):
        """One chat completion through the proxy; returns the raw answer text."""
        import json
        body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "count to ten please"}]}
        if max_tokens:
            body["max_tokens"] = max_tokens
        request = urllib.request.Request(self.url + "/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {self.key}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.read().decode()

    def stop(self):
        stop_process(self.proc, 15)
        self.handle.close()
