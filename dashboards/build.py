#!/usr/bin/env python3
"""Build the three dashboards from one layout, so SigNoz, Splunk Enterprise and Splunk O11y show
the same panels in the same places (screenshots compare).

    python3 dashboards/build.py           # write signoz/, splunk-enterprise/, splunk-o11y/
    python3 dashboards/build.py --check   # exit 1 if a committed file differs from what this builds

Efficiency is computed from counters over the same window: tokens per joule = increase of output
tokens / increase of energy; $ per 1k tokens = energy per token x electricity price. Every
efficiency panel names its energy boundary. Idle power is its own panel, and an efficiency panel
shows nothing (not infinity) while no tokens flow. Standard library only.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TITLE = "tokens-per-watt: watts, tokens, tokens per joule, $ per 1k tokens"
INDEX = "lab_otel_metrics"

# The formulas, once. Variables: tokens (output tokens), joules (energy) over the same window,
# price_per_kwh (currency per kWh). 1 kWh = 3,600,000 J.
FORMULAS = {
    "tokens_per_joule": "tokens / joules",
    "joules_per_token": "joules / tokens",
    "cost_per_1k_tokens": "joules / tokens * 1000 / 3600000 * price_per_kwh",
}

# Energy boundaries: (label, energy counters summed). The same words appear in every panel title.
BOUNDARIES = {
    "mac_soc": ("Mac SoC (mac.energy.total: CPU+GPU+ANE)", ["mac.energy.total"]),
    "mac_node": ("Mac whole node (mac.energy.system)", ["mac.energy.system"]),
    "nv_board": ("NVIDIA GPU board (gpu.energy)", ["gpu.energy"]),
    "nv_node": ("NVIDIA node (gpu.energy + host.energy.cpu)", ["gpu.energy", "host.energy.cpu"]),
}
TOKENS = {  # output tokens per cluster: LiteLLM for both, filtered to that cluster's model
    "mac-exo": ("gen_ai.client.token.usage", "mac_model"),
    "nvidia": ("gen_ai.client.token.usage", "nvidia_model"),
}
VARIABLES = [  # name, kind, default, what it filters
    ("cluster", "attribute", "cluster", "per-host panels"),
    ("host", "attribute", "host.name", "per-host panels"),
    ("model", "attribute", "gen_ai.request.model", "LLM performance panels"),
    ("mac_model", "attribute", "gen_ai.request.model", "the model the Mac cluster serves (its token source)"),
    ("nvidia_model", "attribute", "gen_ai.request.model", "the model the NVIDIA cluster serves"),
    ("price_per_kwh", "text", "0.30", "electricity price per kWh"),
    ("currency", "text", "USD", "currency of the price"),
]


# ---------------------------------------------------------------- query builders per backend

SPL_DIMENSIONS = {"gpu.energy": 'host "gpu.uuid"', "gpu.power.board": 'host "gpu.uuid"',
                  "host.energy.cpu": 'host "rapl.zone"'}  # anything else: BY host


def spl_energy(metrics, cluster):
    """SPL: joules over the search window (latest - earliest of each counter series), summed.
    Each counter is split by the dimensions it has: mstats drops points lacking a BY field."""
    searches = [f'| mstats earliest("{m}") AS e0 latest("{m}") AS e1 WHERE index={INDEX} cluster="{cluster}" '
                f'BY {SPL_DIMENSIONS.get(m, "host")} | eval joules=e1-e0' for m in metrics]
    return searches[0] + "".join(f" | append [{more}]" for more in searches[1:]) + " | stats sum(joules) AS joules"


def spl_tokens(model_var):
    return (f'| mstats sum("gen_ai.client.token.usage_sum") AS tokens WHERE index={INDEX} '
            f'"gen_ai.token.type"="output" "gen_ai.request.model"="${model_var}$"')


def spl_efficiency(boundary, cluster, formula):
    _label, metrics = BOUNDARIES[boundary]
    metric, model_var = TOKENS[cluster]
    expr = FORMULAS[formula].replace("price_per_kwh", "$price_per_kwh$")
    return (f"{spl_tokens(model_var)} | appendcols [{spl_energy(metrics, cluster)}] "
            f"| eval value=if(tokens>0 AND joules>0, {expr}, null())")


def spl_efficiency_over_time(boundary, cluster, formula, span_s=300):
    """SPL per time bucket: tokens and joules of the same bucket side by side, then the formula."""
    _label, metrics = BOUNDARIES[boundary]
    _metric, model_var = TOKENS[cluster]
    expr = FORMULAS[formula].replace("price_per_kwh", "$price_per_kwh$")
    energy = "".join(f' | append [| mstats rate("{m}") AS w WHERE index={INDEX} cluster="{cluster}" span={span_s}s '
                     f'BY {SPL_DIMENSIONS.get(m, "host")} | stats sum(w) AS w BY _time | eval joules=w*{span_s}]'
                     for m in metrics)
    return (f"{spl_tokens(model_var)} span={span_s}s{energy} | stats sum(tokens) AS tokens sum(joules) AS joules "
            f"BY _time | eval value=if(tokens>0 AND joules>0, {expr}, null()) | timechart span={span_s}s avg(value)")


def flow_efficiency(boundary, cluster, formula):
    """SignalFlow: rates of the same counters (J/s and tokens/s); their ratio is the same ratio."""
    _label, metrics = BOUNDARIES[boundary]
    metric, model_var = TOKENS[cluster]
    energy = " + ".join(f"data('{m}', filter=filter('cluster', '{cluster}'), rollup='rate').sum()" for m in metrics)
    expr = (FORMULAS[formula].replace("tokens", "T").replace("joules", "J")
            .replace("price_per_kwh", "price_per_kwh"))
    # O11y has no numeric dashboard input: the push script writes the price into the program.
    return (f"price_per_kwh = 0.30\n"
            f"T = data('{metric}_sum', filter=filter('gen_ai.token.type', 'output'), rollup='rate')"
            f".sum().above(0, inclusive=False)\n"
            f"J = ({energy})\n"
            f"({expr}).publish(label='{formula}')")


def ch_efficiency(boundary, cluster, formula):
    """SigNoz ClickHouse SQL over the dashboard window: increase of each energy series, summed."""
    _label, metrics = BOUNDARIES[boundary]
    names = ", ".join(f"'{m}'" for m in metrics)
    expr = FORMULAS[formula].replace("price_per_kwh", "{{.price_per_kwh}}")
    return (
        "WITH energy AS (SELECT sum(increase) AS joules FROM (SELECT s.fingerprint, max(s.value) - min(s.value) "
        "AS increase FROM signoz_metrics.distributed_samples_v4 AS s WHERE s.metric_name IN (" + names + ") "
        "AND s.unix_milli BETWEEN {{.start_timestamp_ms}} AND {{.end_timestamp_ms}} AND s.fingerprint IN "
        "(SELECT fingerprint FROM signoz_metrics.distributed_time_series_v4 WHERE metric_name IN (" + names + ") "
        f"AND JSONExtractString(labels, 'cluster') = '{cluster}') GROUP BY s.fingerprint)), "
        "tok AS (SELECT sum(s.value) AS tokens FROM signoz_metrics.distributed_samples_v4 AS s "
        "WHERE s.metric_name = 'gen_ai.client.token.usage.sum' AND s.unix_milli BETWEEN {{.start_timestamp_ms}} "
        "AND {{.end_timestamp_ms}} AND s.fingerprint IN (SELECT fingerprint FROM "
        "signoz_metrics.distributed_time_series_v4 WHERE metric_name = 'gen_ai.client.token.usage.sum' AND "
        "JSONExtractString(labels, 'gen_ai.token.type') = 'output' AND "
        f"JSONExtractString(labels, 'gen_ai.request.model') = {{{{.{TOKENS[cluster][1]}}}}})) "
        f"SELECT if(tokens > 0 AND joules > 0, {expr}, NULL) AS value FROM energy, tok")


def ch_distinct(metric, attribute, cluster):
    """The builder's value panel shows a label, not a count: count distinct in SQL instead."""
    return (f"SELECT count(DISTINCT JSONExtractString(labels, '{attribute}')) AS value "
            f"FROM signoz_metrics.distributed_time_series_v4 WHERE metric_name = '{metric}' "
            f"AND JSONExtractString(labels, 'cluster') = '{cluster}' "
            f"AND unix_milli >= {{{{.end_timestamp_ms}}}} - 600000")


def builder(name, metric, time_agg, space_agg, filters="", group_by=(), temporality="", disabled=False):
    return {"queryName": name, "expression": name, "dataSource": "metrics", "disabled": disabled,
            "aggregations": [{"metricName": metric, "temporality": temporality, "timeAggregation": time_agg,
                              "spaceAggregation": space_agg, "reduceTo": "last"}],
            "filter": {"expression": filters}, "source": "",
            "groupBy": [{"key": g, "dataType": "string", "type": "tag", "id": f"{g}--string--tag",
                         "isColumn": False, "isJSON": False} for g in group_by],
            "functions": [], "having": {"expression": ""}, "legend": "{{" + group_by[0] + "}}" if group_by else "",
            "orderBy": [], "limit": None, "stepInterval": 60}


# ---------------------------------------------------------------- the layout, once

def panels():
    """Every panel: row, width (of 12), title, description, kind, unit, and one query per backend."""
    out = []

    def add(row, width, pid, title, description, kind, unit, signoz, spl, flow):
        out.append(dict(row=row, width=width, id=pid, title=title, description=description, kind=kind,
                        unit=unit, signoz=signoz, spl=spl, flow=flow))

    # 1. headline tiles per cluster
    # cluster, id prefix, power metric, GPU metric, what tells GPUs apart, and how that reads
    clusters = (("mac-exo", "mac", "mac.power.system", "mac.power.gpu", "host.name", "one integrated GPU per Mac"),
                ("nvidia", "nv", "gpu.power.board", "gpu.power.board", "gpu.uuid",
                 "distinct gpu.uuid in the last 10 minutes"))
    for cluster, prefix, power, gpu_metric, gpu_key, gpu_text in clusters:
        for pid, title, metric, key, text, label in (
                ("hosts", "hosts reporting", power, "host.name", "hosts with a sample in the last 10 minutes",
                 "hosts"),
                ("gpus", "GPUs reporting", gpu_metric, gpu_key, gpu_text, "GPUs")):
            spl_key = "host" if key == "host.name" else f'"{key}"'  # HEC maps host.name to host
            add(1, 2, f"{prefix}_{pid}", f"{cluster}: {title}", text, "value", "none",
                {"sql": ch_distinct(metric, key, cluster)},
                f'| mstats count("{metric}") WHERE index={INDEX} cluster="{cluster}" earliest=-10m BY {spl_key} '
                f"| stats dc({spl_key}) AS value",
                f"data('{metric}', filter=filter('cluster', '{cluster}')).count(by=['{key}'])"
                f".count().publish(label='{label}')")
        watts_label = "whole Macs (mac.power.system)" if cluster == "mac-exo" else "GPU boards (gpu.power.board)"
        add(1, 2, f"{prefix}_watts", f"{cluster}: watts now", watts_label, "value", "watt",
            {"builder": [builder("A", power, "avg", "sum", f"cluster = '{cluster}'")]},
            f'| mstats avg("{power}") AS w WHERE index={INDEX} cluster="{cluster}" earliest=-2m '
            f'BY {SPL_DIMENSIONS.get(power, "host")} | stats sum(w) AS value',
            f"data('{power}', filter=filter('cluster', '{cluster}')).mean(over='1m').sum().publish(label='W')")
        model_var = TOKENS[cluster][1]
        add(1, 2, f"{prefix}_tps", f"{cluster}: output tokens/s now", "LiteLLM output tokens of the cluster's model",
            "value", "none",
            {"builder": [builder("A", "gen_ai.client.token.usage.sum", "rate", "sum",
                                 f"gen_ai.token.type = 'output' AND gen_ai.request.model = ${model_var}",
                                 temporality="delta")]},
            f'{spl_tokens(model_var)} earliest=-5m | eval value=tokens/300',
            "data('gen_ai.client.token.usage_sum', filter=filter('gen_ai.token.type', 'output'), "
            "rollup='rate').sum().publish(label='tokens/s')")
        boundary = "mac_soc" if cluster == "mac-exo" else "nv_board"
        label = BOUNDARIES[boundary][0]
        add(1, 2, f"{prefix}_tpj", f"{cluster}: tokens per joule [{label}]",
            f"increase of output tokens / increase of energy over the window; boundary: {label}; "
            "empty while no tokens flow", "value", "none",
            {"sql": ch_efficiency(boundary, cluster, "tokens_per_joule")},
            spl_efficiency(boundary, cluster, "tokens_per_joule"), flow_efficiency(boundary, cluster,
                                                                                   "tokens_per_joule"))
        add(1, 2, f"{prefix}_cost", f"{cluster}: $ per 1k tokens [{label}]",
            f"energy per token x $price_per_kwh $currency per kWh; boundary: {label}; electricity only",
            "value", "none", {"sql": ch_efficiency(boundary, cluster, "cost_per_1k_tokens")},
            spl_efficiency(boundary, cluster, "cost_per_1k_tokens"),
            flow_efficiency(boundary, cluster, "cost_per_1k_tokens"))

    # 2. per-host power and load
    add(2, 6, "host_power", "Power per host (W)", "mac.power.system for Macs, gpu.power.board summed per host",
        "graph", "watt",
        {"builder": [builder("A", "mac.power.system", "avg", "sum", "cluster IN $cluster AND host.name IN $host",
                             ("host.name",)),
                     builder("B", "gpu.power.board", "avg", "sum", "cluster IN $cluster AND host.name IN $host",
                             ("host.name",))]},
        f'| mstats avg("mac.power.system") AS mac avg("gpu.power.board") AS gpu WHERE index={INDEX} '
        f'cluster=$cluster$ host=$host$ span=1m BY host | eval w=coalesce(mac,0)+coalesce(gpu,0) '
        f"| timechart span=1m sum(w) BY host",
        "data('mac.power.system').sum(by=['host.name']).publish(label='Mac W')\n"
        "data('gpu.power.board').sum(by=['host.name']).publish(label='GPU W')")
    add(2, 6, "host_load", "GPU load per host (0-1)", "mac.gpu.usage and gpu.utilization.gpu", "graph", "percentunit",
        {"builder": [builder("A", "mac.gpu.usage", "avg", "avg", "cluster IN $cluster AND host.name IN $host",
                             ("host.name",)),
                     builder("B", "gpu.utilization.gpu", "avg", "avg", "cluster IN $cluster AND host.name IN $host",
                             ("host.name", "gpu.index"))]},
        f'| mstats avg("mac.gpu.usage") AS mac avg("gpu.utilization.gpu") AS gpu WHERE index={INDEX} '
        f"cluster=$cluster$ host=$host$ span=1m BY host | timechart span=1m avg(mac) avg(gpu) BY host",
        "data('mac.gpu.usage').mean(by=['host.name']).publish(label='Mac GPU')\n"
        "data('gpu.utilization.gpu').mean(by=['host.name', 'gpu.index']).publish(label='NVIDIA GPU')")

    # 3. LLM performance per model
    add(3, 4, "latency", "Request latency per model (p50 / p95)",
        "LiteLLM gen_ai.client.operation.duration; O11y shows min/max/mean (see README)", "graph", "s",
        {"builder": [builder("A", "gen_ai.client.operation.duration", "p50", "p50", "gen_ai.request.model IN $model",
                             ("gen_ai.request.model",), "delta"),
                     builder("B", "gen_ai.client.operation.duration", "p95", "p95", "gen_ai.request.model IN $model",
                             ("gen_ai.request.model",), "delta")]},
        f'| mstats sum("gen_ai.client.operation.duration_bucket") AS n WHERE index={INDEX} '
        f'"gen_ai.request.model"=$model$ span=1m BY le "gen_ai.request.model" '
        f'| eval le=tonumber(le) | sort 0 _time "gen_ai.request.model" le '
        f'| streamstats sum(n) AS cum BY _time "gen_ai.request.model" '
        f'| eventstats max(cum) AS total BY _time "gen_ai.request.model" '
        f'| eval p50=if(cum>=total*0.5, le, null()), p95=if(cum>=total*0.95, le, null()) '
        f'| stats min(p50) AS p50 min(p95) AS p95 BY _time "gen_ai.request.model"',
        "data('gen_ai.client.operation.duration_min').min(by=['gen_ai.request.model']).publish(label='min')\n"
        "data('gen_ai.client.operation.duration_max').max(by=['gen_ai.request.model']).publish(label='max')\n"
        "(data('gen_ai.client.operation.duration_sum', rollup='sum').sum(by=['gen_ai.request.model']) / "
        "data('gen_ai.client.operation.duration_count', rollup='sum').sum(by=['gen_ai.request.model']))"
        ".publish(label='mean')")
    add(3, 4, "ttft", "Time to first token per model (p95)", "LiteLLM, streaming requests only", "graph", "s",
        {"builder": [builder("A", "gen_ai.client.response.time_to_first_token", "p95", "p95",
                             "gen_ai.request.model IN $model", ("gen_ai.request.model",), "delta")]},
        f'| mstats sum("gen_ai.client.response.time_to_first_token_sum") AS s '
        f'sum("gen_ai.client.response.time_to_first_token_count") AS c WHERE index={INDEX} '
        f'"gen_ai.request.model"=$model$ span=1m BY "gen_ai.request.model" | eval mean=s/c '
        f'| timechart span=1m avg(mean) BY "gen_ai.request.model"',
        "(data('gen_ai.client.response.time_to_first_token_sum', rollup='sum').sum(by=['gen_ai.request.model']) / "
        "data('gen_ai.client.response.time_to_first_token_count', rollup='sum').sum(by=['gen_ai.request.model']))"
        ".publish(label='mean TTFT')")
    add(3, 4, "out_tps", "Output tokens/s per model", "LiteLLM output tokens; llama.cpp tokens_predicted for NVIDIA",
        "graph", "none",
        {"builder": [builder("A", "gen_ai.client.token.usage.sum", "rate", "sum",
                             "gen_ai.token.type = 'output' AND gen_ai.request.model IN $model",
                             ("gen_ai.request.model",), "delta"),
                     builder("B", "llamacpp.tokens_predicted_total", "rate", "sum", "", ("model",), "cumulative")]},
        f'| mstats sum("gen_ai.client.token.usage_sum") AS t WHERE index={INDEX} "gen_ai.token.type"="output" '
        f'"gen_ai.request.model"=$model$ span=1m BY "gen_ai.request.model" | eval tps=t/60 '
        f'| timechart span=1m sum(tps) BY "gen_ai.request.model"',
        "data('gen_ai.client.token.usage_sum', filter=filter('gen_ai.token.type', 'output'), rollup='rate')"
        ".sum(by=['gen_ai.request.model']).publish(label='LiteLLM tokens/s')\n"
        "data('llamacpp.tokens_predicted_total', rollup='rate').sum(by=['model']).publish(label='llama.cpp tokens/s')")

    # 4. token rate and cost over time
    for cluster, prefix, boundary in (("mac-exo", "mac", "mac_node"), ("nvidia", "nv", "nv_node")):
        label = BOUNDARIES[boundary][0]
        add(4, 6, f"{prefix}_cost_time", f"{cluster}: $ per 1k tokens over time [{label}]",
            f"per 5-minute window; boundary: {label}; windows without tokens are empty, not infinite",
            "graph", "none", {"sql": ch_efficiency(boundary, cluster, "cost_per_1k_tokens")},
            spl_efficiency_over_time(boundary, cluster, "cost_per_1k_tokens"),
            flow_efficiency(boundary, cluster, "cost_per_1k_tokens"))

    # 5. power by domain and energy; idle apart
    add(5, 4, "mac_domains", "Mac power by domain (W)", "mac.power.cpu/.gpu/.ane/.ram/.system", "graph", "watt",
        {"builder": [builder(q, f"mac.power.{d}", "avg", "sum", "host.name IN $host") for q, d in
                     (("A", "cpu"), ("B", "gpu"), ("C", "ane"), ("D", "ram"), ("E", "system"))]},
        f'| mstats avg("mac.power.cpu") AS cpu avg("mac.power.gpu") AS gpu avg("mac.power.ane") AS ane '
        f'avg("mac.power.ram") AS ram avg("mac.power.system") AS system WHERE index={INDEX} host=$host$ span=1m '
        f"| timechart span=1m sum(cpu) sum(gpu) sum(ane) sum(ram) sum(system)",
        "\n".join(f"data('mac.power.{d}').sum().publish(label='{d}')" for d in ("cpu", "gpu", "ane", "ram", "system")))
    add(5, 4, "nv_domains", "NVIDIA power by domain (W)", "gpu.power.board per GPU and host.power.cpu per RAPL zone",
        "graph", "watt",
        {"builder": [builder("A", "gpu.power.board", "avg", "sum", "host.name IN $host", ("gpu.index",)),
                     builder("B", "host.power.cpu", "avg", "sum", "host.name IN $host", ("rapl.zone",))]},
        f'| mstats avg("gpu.power.board") AS gpu avg("host.power.cpu") AS cpu WHERE index={INDEX} host=$host$ '
        f"span=1m | timechart span=1m sum(gpu) sum(cpu)",
        "data('gpu.power.board').sum(by=['gpu.index']).publish(label='GPU board')\n"
        "data('host.power.cpu').sum(by=['rapl.zone']).publish(label='CPU (RAPL)')")
    add(5, 4, "idle_power", "Idle power (W, while no tokens are generated)",
        "power when the output token rate is 0: the floor a quiet hour costs", "graph", "watt",
        {"builder": [builder("A", "mac.power.system", "avg", "sum", "cluster = 'mac-exo'"),
                     builder("B", "gpu.power.board", "avg", "sum", "cluster = 'nvidia'")]},
        f'| mstats avg("mac.power.system") AS mac avg("gpu.power.board") AS gpu WHERE index={INDEX} span=5m '
        f'| appendcols [| mstats sum("gen_ai.client.token.usage_sum") AS tokens WHERE index={INDEX} '
        f'"gen_ai.token.type"="output" span=5m] | where tokens=0 OR isnull(tokens) '
        f"| timechart span=5m avg(mac) avg(gpu)",
        "T = data('gen_ai.client.token.usage_sum', filter=filter('gen_ai.token.type', 'output'), "
        "rollup='rate').sum()\n"
        "data('mac.power.system').sum().publish(label='Mac W', enable=False)\n"
        "data('gpu.power.board').sum().publish(label='GPU W', enable=False)\n"
        "(data('mac.power.system').sum() * (T == 0)).publish(label='Mac idle W')")
    add(5, 12, "energy", "Energy per hour by boundary (J)", "increase of each energy counter per hour", "graph", "J",
        {"builder": [builder(q, m, "increase", "sum", "host.name IN $host", ("cluster",), "cumulative")
                     for q, m in (("A", "mac.energy.total"), ("B", "mac.energy.system"), ("C", "gpu.energy"),
                                  ("D", "host.energy.cpu"))]},
        f'| mstats rate("mac.energy.total") AS soc rate("mac.energy.system") AS mac_node rate("gpu.energy") AS gpu '
        f'rate("host.energy.cpu") AS cpu WHERE index={INDEX} span=1h | eval soc=soc*3600, mac_node=mac_node*3600, '
        f"gpu=gpu*3600, cpu=cpu*3600 | timechart span=1h sum(soc) sum(mac_node) sum(gpu) sum(cpu)",
        "\n".join(f"data('{m}', rollup='delta').sum().sum(over='1h').publish(label='{m}')"
                  for m in ("mac.energy.total", "mac.energy.system", "gpu.energy", "host.energy.cpu")))

    # 6. exporter health
    add(6, 3, "buffer", "Exporter buffer (samples waiting)", "exporter.buffer.samples per host", "graph", "none",
        {"builder": [builder("A", "exporter.buffer.samples", "max", "max", "", ("host.name",))]},
        f'| mstats max("exporter.buffer.samples") AS b WHERE index={INDEX} span=1m BY host '
        f"| timechart span=1m max(b) BY host",
        "data('exporter.buffer.samples').max(by=['host.name']).publish(label='buffered')")
    add(6, 3, "drops", "Data points dropped (by reason)", "exporter.datapoints.dropped", "graph", "none",
        {"builder": [builder("A", "exporter.datapoints.dropped", "increase", "sum", "", ("host.name", "reason"),
                             "cumulative")]},
        f'| mstats rate("exporter.datapoints.dropped") AS d WHERE index={INDEX} span=5m BY host reason '
        f"| timechart span=5m sum(d) BY reason",
        "data('exporter.datapoints.dropped', rollup='delta').sum(by=['host.name', 'reason']).publish(label='dropped')")
    add(6, 3, "restarts", "Source restarts (macmon / nvidia-smi)", "exporter.source.restarts", "graph", "none",
        {"builder": [builder("A", "exporter.source.restarts", "increase", "sum", "", ("host.name",), "cumulative")]},
        f'| mstats rate("exporter.source.restarts") AS r WHERE index={INDEX} span=5m BY host '
        f"| timechart span=5m sum(r) BY host",
        "data('exporter.source.restarts', rollup='delta').sum(by=['host.name']).publish(label='restarts')")
    add(6, 3, "sample_age", "Last sample age (s)", "seconds since each host's last exporter.samples.read point",
        "graph", "s",
        {"sql": "SELECT JSONExtractString(labels, 'host.name') AS host, (toUnixTimestamp(now()) * 1000 - "
                "max(unix_milli)) / 1000 AS value FROM signoz_metrics.distributed_time_series_v4 WHERE metric_name = "
                "'exporter.samples.read' AND unix_milli >= {{.end_timestamp_ms}} - 86400000 GROUP BY host"},
        f'| mstats latest("exporter.samples.read") AS n WHERE index={INDEX} earliest=-24h BY host '
        f'| join host [| mstats latest_time("exporter.samples.read") AS t WHERE index={INDEX} earliest=-24h BY host] '
        f"| eval value=now()-t | table host value",
        "data('exporter.samples.read').count(by=['host.name']).publish(label='reporting')")
    return out


# ---------------------------------------------------------------- placement, once for every backend

GRID = 12  # columns, in every backend


def place(layout):
    """Give every panel a column (x) and a line (y) on a 12-column grid, once: the panels of a row go
    left to right and wrap onto a new line where the next one would not fit, so no two overlap."""
    line, x, row = -1, GRID, None
    for p in layout:
        if p["row"] != row or x + p["width"] > GRID:
            line, x, row = line + 1, 0, p["row"]
        p["x"], p["line"] = x, line
        x += p["width"]
    return layout


# ---------------------------------------------------------------- SigNoz (classic dashboard JSON, v5 builder)

def build_signoz(layout):
    widgets, grid = [], []
    for p in layout:
        grid.append({"i": p["id"], "x": p["x"], "y": p["line"] * 6, "w": p["width"], "h": 6,
                     "moved": False, "static": False})
        query = {"id": f"query-{p['id']}", "queryType": "builder", "clickhouse_sql": [], "promql": [],
                 "builder": {"queryData": [], "queryFormulas": [], "queryTraceOperator": []}}
        if "sql" in p["signoz"]:
            query["queryType"] = "clickhouse_sql"
            query["clickhouse_sql"] = [{"name": "A", "query": p["signoz"]["sql"], "legend": "", "disabled": False}]
        else:
            query["builder"]["queryData"] = p["signoz"]["builder"]
        widgets.append({"id": p["id"], "panelTypes": p["kind"], "title": p["title"], "description": p["description"],
                        "yAxisUnit": p["unit"], "timePreferance": "GLOBAL_TIME", "opacity": "1", "nullZeroValues":
                        "zero" if p["kind"] == "value" else "", "isStacked": False, "query": query})
    variables = {}
    for order, (name, kind, default, what) in enumerate(VARIABLES):
        common = {"id": name, "key": name, "name": name, "description": what, "order": order, "sort": "DISABLED",
                  "customValue": "", "queryValue": "", "defaultValue": default if kind == "text" else "",
                  "allSelected": kind != "text" and name in ("cluster", "host", "model")}
        if kind == "text":
            variables[name] = dict(common, type="TEXTBOX", textboxValue=default, selectedValue=default,
                                   multiSelect=False, showALLOption=False)
        else:
            multi = name in ("cluster", "host", "model")
            variables[name] = dict(common, type="DYNAMIC", textboxValue="", dynamicVariablesAttribute=default,
                                   dynamicVariablesSource="All telemetry", multiSelect=multi, showALLOption=multi)
    return {"title": TITLE, "description": __doc__.split("\n\n")[1].replace("\n", " "),
            "tags": ["tokens-per-watt", "llm", "power"], "version": "v5", "variables": variables,
            "layout": grid, "panelMap": {}, "uploadedGrafana": False, "widgets": widgets}


# ---------------------------------------------------------------- Splunk Enterprise (Dashboard Studio)

def build_splunk(layout):
    data_sources, visualizations, structure = {}, {}, []
    for p in layout:
        ds, viz = f"ds_{p['id']}", f"viz_{p['id']}"
        data_sources[ds] = {"type": "ds.search", "name": p["title"], "options": {"query": p["spl"]}}
        visualizations[viz] = {"type": "splunk.singlevalue" if p["kind"] == "value" else "splunk.line",
                               "title": p["title"], "description": p["description"],
                               "dataSources": {"primary": ds}}
        structure.append({"item": viz, "type": "block", "position": {
            "x": p["x"] * 120, "y": p["line"] * 250, "w": p["width"] * 120, "h": 240}})
    inputs = {"input_time": {"type": "input.timerange", "title": "Time",
                             "options": {"token": "trp", "defaultValue": "-4h,now"}}}
    tokens = {}
    for name, kind, default, what in VARIABLES:
        if kind == "text":
            inputs[f"input_{name}"] = {"type": "input.text", "title": name, "options": {"token": name,
                                                                                      "defaultValue": default}}
        else:
            inputs[f"input_{name}"] = {"type": "input.text", "title": f"{name} ({what})",
                                       "options": {"token": name, "defaultValue": "*"}}
        tokens[name] = default
    return {"title": TITLE, "description": "Same layout as the SigNoz and Splunk O11y dashboards.",
            "dataSources": data_sources, "visualizations": visualizations, "inputs": inputs,
            "defaults": {"dataSources": {"ds.search": {"options": {"queryParameters": {
                "earliest": "$trp.earliest$", "latest": "$trp.latest$"}}}}},
            "layout": {"type": "absolute", "options": {"width": 1440, "height": (layout[-1]["line"] + 1) * 250},
                       "globalInputs": list(inputs), "structure": structure}}


# ---------------------------------------------------------------- Splunk O11y (/v2/chart + /v2/dashboard)

def build_o11y(layout):
    charts, placements = [], []
    for p in layout:
        charts.append({"name": p["title"], "description": p["description"], "programText": p["flow"],
                       "options": {"type": "SingleValue" if p["kind"] == "value" else "TimeSeriesChart"},
                       "tags": ["tokens-per-watt"]})
        placements.append({"chart": p["title"], "row": p["line"], "column": p["x"], "width": p["width"],
                           "height": 1})
    dashboard = {"name": TITLE, "description": "Same layout as the SigNoz and Splunk Enterprise dashboards. "
                 "Latency shows min/max/mean: the signalfx exporter drops histogram buckets.",
                 "charts": placements,
                 "filters": {"variables": [{"property": "cluster", "alias": "cluster", "value": [],
                                            "required": False, "applyIfExists": True},
                                           {"property": "host.name", "alias": "host", "value": [],
                                            "required": False, "applyIfExists": True},
                                           {"property": "gen_ai.request.model", "alias": "model", "value": [],
                                            "required": False, "applyIfExists": True}]}}
    return {"charts": charts, "dashboard": dashboard}


OUTPUTS = {
    "signoz/tokens-per-watt.json": build_signoz,
    "splunk-enterprise/tokens-per-watt.json": build_splunk,
    "splunk-o11y/tokens-per-watt.json": build_o11y,
}


def rendered():
    layout = place(panels())
    return {path: json.dumps(build(layout), indent=2, sort_keys=False) + "\n" for path, build in OUTPUTS.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed dashboard is out of date")
    args = parser.parse_args()
    stale = []
    for path, text in rendered().items():
        full = os.path.join(HERE, path)
        current = open(full).read() if os.path.exists(full) else None
        if current != text:
            if args.check:
                stale.append(path)
            else:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "w") as fh:
                    fh.write(text)
                print(f"wrote dashboards/{path}")
    if stale:
        print("out of date (run python3 dashboards/build.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
