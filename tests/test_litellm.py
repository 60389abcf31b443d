"""The real LiteLLM proxy in front of stand-in upstreams for both clusters: what it sends is what
the dashboards and the gateway's model map are built on.

What it sent is kept in tests/fixtures/litellm/ (the shape of every metric: unit, kind, temporality,
attribute keys). A run that differs fails here; TPW_RECORD_LITELLM=1 writes the fixture anew
(after a deliberate LiteLLM upgrade: then read the diff, and the dashboards test reads the new one).
"""
import json
import os
import time

import pytest
from conftest import ROOT
from litellm_peer import LiteLLM
from openai_upstream import Upstream
from otlp_receiver import Receiver

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "litellm", "metrics.json")
# The upstream model id of each public name in otelcol/litellm-config.yaml (the proxy runs that file)
MODELS = {"qwen3-30b-mac": "mlx-community/Qwen3-30B-A3B-4bit", "qwen3-30b-nvidia": "qwen3-30b-a3b"}
TEMPORALITY = {1: "delta", 2: "cumulative", "AGGREGATION_TEMPORALITY_DELTA": "delta",
               "AGGREGATION_TEMPORALITY_CUMULATIVE": "cumulative"}
OUTPUT_TOKENS = 10  # per answer, from each stand-in upstream
REQUESTS = 2        # per model and mode (streaming, not)


def litellm_version():
    from importlib.metadata import version
    return version("litellm")


def shape(points):
    """What identifies each metric LiteLLM sent, without the values."""
    metrics = {}
    for p in points:
        m = metrics.setdefault(p.metric, {"unit": p.unit, "kind": p.kind,
                                          "temporality": TEMPORALITY.get(p.temporality, str(p.temporality)),
                                          "point_attributes": set(), "resource_attributes": set()})
        m["point_attributes"] |= set(p.attributes)
        m["resource_attributes"] |= set(p.resource)
    return {name: dict(m, point_attributes=sorted(m["point_attributes"]),
                       resource_attributes=sorted(m["resource_attributes"])) for name, m in sorted(metrics.items())}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two upstreams, a receiver, a proxy with metrics on and one with them off (the default),
    started together: each proxy takes 10-20 s to come up."""
    tmp = tmp_path_factory.mktemp("litellm")
    upstreams = {name: Upstream(output_tokens=OUTPUT_TOKENS, token_interval_s=0.005) for name in MODELS}
    receiver, silent_receiver = Receiver(), Receiver()
    urls = {name: upstream.url for name, upstream in upstreams.items()}
    proxy = LiteLLM(tmp, urls, receiver.url)
    silent = LiteLLM(tmp, urls, silent_receiver.url, metrics=False)
    try:
        proxy.wait_ready()
        silent.wait_ready()
        for name in MODELS:
            for stream in (True, False):
                for _ in range(REQUESTS):
                    proxy.chat(name, stream)
                    silent.chat(name, stream)
        yield {"receiver": receiver, "silent_receiver": silent_receiver, "upstreams": upstreams}
    finally:
        proxy.stop()
        silent.stop()
        receiver.stop()
        silent_receiver.stop()
        for upstream in upstreams.values():
            upstream.stop()


def output_tokens(receiver, model):
    """The latest cumulative output-token sum of one model (LiteLLM exports every 5 s)."""
    points = [p for p in receiver.series("gen_ai.client.token.usage") if
              p.attributes.get("gen_ai.request.model") == model and p.attributes.get("gen_ai.token.type") == "output"]
    return max((p.value for p in points), default=0)


def test_litellm_sends_what_the_dashboards_read(lab):
    receiver = lab["receiver"]
    want = OUTPUT_TOKENS * REQUESTS * 2
    assert receiver.wait_for(lambda: all(output_tokens(receiver, m) >= want for m in MODELS.values()), 40), \
        {m: output_tokens(receiver, m) for m in MODELS.values()}
    time.sleep(0.5)
    sent = shape(receiver.points)
    record = {"litellm": litellm_version(), "metrics": sent}
    if os.environ.get("TPW_RECORD_LITELLM") == "1":
        os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
        with open(FIXTURE, "w") as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
            fh.write("\n")
    with open(FIXTURE) as fh:
        kept = json.load(fh)
    assert kept["litellm"] == litellm_version(), "LiteLLM was upgraded: TPW_RECORD_LITELLM=1 and read the diff"
    # LiteLLM exports each histogram once something was recorded in it: every kept metric must be there
    assert sent == kept["metrics"]
    # the facts the dashboards and the gateway's model map rest on
    usage = sent["gen_ai.client.token.usage"]
    assert usage["kind"] == "histogram" and usage["temporality"] == "cumulative" and usage["unit"] == "{token}"
    assert {"gen_ai.request.model", "gen_ai.token.type"} <= set(usage["point_attributes"])
    assert sent["gen_ai.server.time_to_first_token"]["unit"] == "s"
    models = {p.attributes["gen_ai.request.model"] for p in receiver.series("gen_ai.client.token.usage")}
    assert models == set(MODELS.values())  # the upstream id without `openai/`, never the public name
    # one series per model and token type: the excerpt's attribute filter keeps per-request
    # metadata off the points, so the cumulative counts add up
    series = {tuple(sorted(p.attributes.items())) for p in receiver.series("gen_ai.client.token.usage")}
    assert len(series) == len(MODELS) * 2, sorted(series)
    # every upstream really served its own model
    for name, upstream in lab["upstreams"].items():
        assert {r["model"] for r in upstream.requests} == {MODELS[name]}


def test_without_the_metrics_switch_no_metric_arrives(lab):
    """LITELLM_OTEL_INTEGRATION_ENABLE_METRICS unset (its default): traces arrive, metrics never do."""
    silent = lab["silent_receiver"]
    assert silent.wait_for(lambda: silent.other_signals["traces"] > 0, 30)
    time.sleep(6)  # more than LiteLLM's 5 s metric export interval
    assert silent.request_count == 0 and not silent.points
