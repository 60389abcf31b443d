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
import re
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
    # what an API would charge for the same tokens, per dollar of electricity they cost here
    "api_over_onprem": "api_price_per_1m / (joules / tokens * 1000000 / 3600000 * price_per_kwh)",
    "cost_per_1m_tokens": "joules / tokens * 1000000 / 3600000 * price_per_kwh",
}

# Energy boundaries: (label, energy counters summed). The same words appear in every panel title.
BOUNDARIES = {
    "mac_soc": ("Mac SoC (mac.energy.total: CPU+GPU+ANE)", ["mac.energy.total"]),
    "mac_node": ("Mac whole node (mac.energy.system)", ["mac.energy.system"]),
    "nv_board": ("NVIDIA GPU board (gpu.energy)", ["gpu.energy"]),
    "nv_node": ("NVIDIA node (gpu.energy + host.energy.cpu packages)", ["gpu.energy", "host.energy.cpu"]),
}
CLUSTER_BOUNDARIES = {"mac-exo": ("mac_soc", "mac_node"), "nvidia": ("nv_board", "nv_node")}
# Output tokens: LiteLLM's gen_ai.client.token.usage, whose points the gateway tags with the
# `cluster` that served the model (TPW_MODEL_CLUSTERS), so a cluster's tokens meet its own energy.
TOKENS = "gen_ai.client.token.usage"
# RAPL: the package zones only. Sub-zones (package-0/core, /uncore, /dram) are inside their
# package and psys covers the whole platform: adding them would count the CPU twice.
RAPL_SUBZONE = ("rapl.zone", "*/*")
RAPL_PLATFORM = ("rapl.zone", "psys")
VARIABLES = [  # name, kind, default, what it filters
    ("cluster", "attribute", "cluster", "per-host panels"),
    ("host", "attribute", "host.name", "per-host panels"),
    ("model", "attribute", "gen_ai.request.model", "LLM performance panels"),
    ("price_per_kwh", "text", "0.30", "electricity price per kWh"),
    ("api_price_per_1m", "text", "0.60", "what an API charges per 1M output tokens, to compare with"),
    ("currency", "text", "USD", "currency of the prices"),
]


# ---------------------------------------------------------------- query builders per backend

SPL_DIMENSIONS = {"gpu.energy": "host gpu.uuid", "gpu.power.board": "host gpu.uuid",
                  "host.energy.cpu": "host rapl.zone", "host.power.cpu": "host rapl.zone"}  # else: BY host
SPL_RAPL_PACKAGES = 'NOT rapl.zone="*/*" NOT rapl.zone="psys"'


def spl_where(metric, cluster):
    """mstats WHERE for one energy or power metric of a cluster (RAPL: packages only)."""
    rapl = f" {SPL_RAPL_PACKAGES}" if metric.startswith("host.") else ""
    return f'WHERE index={INDEX} cluster="{cluster}"{rapl}'


def spl_rates(metrics, cluster, span=""):
    """SPL: watts = the energy counters' rate, per series (rate_sum handles counter resets), summed."""
    searches = [f'| mstats rate_sum("{m}") AS watts {spl_where(m, cluster)}{span}' for m in metrics]
    return searches[0] + "".join(f" | append [{more}]" for more in searches[1:])


def spl_token_rate(cluster, span=""):
    """SPL: output tokens per second of a cluster. LiteLLM's histogram _sum is a cumulative counter
    (1.96+): its rate per series, summed."""
    return (f'| mstats rate_sum("{TOKENS}_sum") AS tps WHERE index={INDEX} cluster="{cluster}" '
            f"gen_ai.token.type=output{span}")


def spl_formula(formula):
    """A formula over rates: tokens/s and joules/s (watts) have the same ratio as tokens and joules."""
    return (FORMULAS[formula].replace("tokens", "tps").replace("joules", "watts")
            .replace("api_price_per_1m", "$api_price_per_1m$").replace("price_per_kwh", "$price_per_kwh$"))


def spl_efficiency(boundary, cluster, formula):
    _label, metrics = BOUNDARIES[boundary]
    return (f"{spl_token_rate(cluster)} | appendcols [{spl_rates(metrics, cluster)} "
            f"| stats sum(watts) AS watts] | eval value=if(tps>0 AND watts>0, {spl_formula(formula)}, null())")


def spl_efficiency_over_time(boundary, cluster, formula, span_s=300):
    """SPL per time bucket: token rate and watts of the same bucket side by side, then the formula."""
    _label, metrics = BOUNDARIES[boundary]
    span = f" span={span_s}s"
    return (f"{spl_token_rate(cluster, span)} | append [{spl_rates(metrics, cluster, span)}] "
            f"| stats sum(tps) AS tps sum(watts) AS watts BY _time "
            f"| eval value=if(tps>0 AND watts>0, {spl_formula(formula)}, null()) | timechart span={span_s}s avg(value)")


def spl_percentiles(metric):
    """SPL p50/p95 per minute from HEC's _bucket series, which are already cumulative in `le`
    (the +Inf bucket is the total) and, from LiteLLM 1.96 on, over time: rate per bucket first."""
    return (f'| mstats rate_sum("{metric}_bucket") AS n WHERE index={INDEX} gen_ai.request.model=$model$ '
            f"span=1m BY le gen_ai.request.model "
            f'| eval bound=if(le="+Inf", 1e99, tonumber(le)) '
            f"| eventstats max(n) AS total BY _time gen_ai.request.model "
            f"| eval p50=if(n>=total*0.5 AND total>0, bound, null()), p95=if(n>=total*0.95 AND total>0, bound, null()) "
            f"| stats min(p50) AS p50 min(p95) AS p95 BY _time gen_ai.request.model")


def flow_filter(cluster, metric=None):
    rapl = " and filter('rapl.zone', 'package-*')" if metric and metric.startswith("host.") else ""
    return f"filter('cluster', '{cluster}'){rapl}"


def flow_tokens(cluster):
    return (f"data('{TOKENS}_sum', filter=filter('gen_ai.token.type', 'output') and filter('cluster', '{cluster}'), "
            f"rollup='rate').sum()")


def flow_efficiency(boundary, cluster, formula):
    """SignalFlow: rates of the same counters (J/s and tokens/s); their ratio is the same ratio."""
    _label, metrics = BOUNDARIES[boundary]
    energy = " + ".join(f"data('{m}', filter={flow_filter(cluster, m)}, rollup='rate').sum()" for m in metrics)
    expr = FORMULAS[formula].replace("tokens", "T").replace("joules", "J")
    # O11y has no numeric dashboard input: the push script writes the prices into the program.
    return (f"price_per_kwh = 0.30\n"
            f"api_price_per_1m = 0.60\n"
            f"T = {flow_tokens(cluster)}.above(0, inclusive=False)\n"
            f"J = ({energy})\n"
            f"({expr}).publish(label='{formula}')")


# SigNoz: ClickHouse SQL over its metric tables (signoz-otel-collector's schema): samples_v4 has
# every point (unix_milli, value, temporality) by series fingerprint; time_series_v4 has each series'
# labels (resource and point attributes together), one row per series per hour, unix_milli floored
# to the hour. A fingerprint leaves out the start time, so an exporter restart continues a series.
CH_SAMPLES = "signoz_metrics.distributed_samples_v4"
CH_SERIES = "signoz_metrics.distributed_time_series_v4"
CH_HOUR = 3600000


def ch_label(name):
    return f"JSONExtractString(labels, '{name}')"


def ch_series(metrics, conditions, since):
    """Fingerprints of the series of these metrics whose labels meet the conditions, bounded to
    the hour rows from `since` (an expression in ms) on."""
    names = ", ".join(f"'{m}'" for m in metrics)
    return (f"SELECT fingerprint FROM {CH_SERIES} WHERE metric_name IN ({names}) "
            f"AND unix_milli >= intDiv({since}, {CH_HOUR}) * {CH_HOUR}"
            + "".join(f" AND {c}" for c in conditions))


CH_LOOKBACK_MS = 300000  # samples read from before the window, so its first sample has one before it


def ch_increase_rows(metrics, conditions, bucket=None):
    """(ts,) inc rows: what each sample in the window adds (a sample covers the time since the one
    before it, so the window's increase is exact): a cumulative counter's rise since the sample
    before (one that went back, an exporter restart, counts from zero again), a delta series' value
    (LiteLLM before 1.96). `bucket` in seconds adds a ts column for graphs."""
    names = ", ".join(f"'{m}'" for m in metrics)
    ts = (f"toStartOfInterval(toDateTime(intDiv(unix_milli, 1000)), INTERVAL {bucket} SECOND) AS ts, "
          if bucket else "")
    since = f"{{{{.start_timestamp_ms}}}} - {CH_LOOKBACK_MS}"
    return (f"SELECT {ts}if(temporality = 'Delta', value, if(isNaN(prev), 0, if(value >= prev, value - prev, value)))"
            f" AS inc FROM (SELECT unix_milli, temporality, value, lagInFrame(value, 1, nan) OVER (PARTITION BY "
            f"fingerprint ORDER BY unix_milli ASC ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS prev FROM {CH_SAMPLES} "
            f"WHERE metric_name IN ({names}) AND unix_milli BETWEEN {since} AND {{{{.end_timestamp_ms}}}} "
            f"AND fingerprint GLOBAL IN ({ch_series(metrics, conditions, since)})) "
            f"WHERE unix_milli > {{{{.start_timestamp_ms}}}}")


def ch_energy_conditions(cluster):
    return [f"{ch_label('cluster')} = '{cluster}'",
            f"NOT ({ch_label('rapl.zone')} LIKE '%/%' OR {ch_label('rapl.zone')} = 'psys')"]


def ch_token_conditions(cluster):
    return [f"{ch_label('cluster')} = '{cluster}'", f"{ch_label('gen_ai.token.type')} = 'output'"]


def ch_formula(formula):
    """The formula with SigNoz's text variables: it substitutes them as quoted strings ('0.30')."""
    return (FORMULAS[formula].replace("api_price_per_1m", "toFloat64OrNull(toString({{.api_price_per_1m}}))")
            .replace("price_per_kwh", "toFloat64OrNull(toString({{.price_per_kwh}}))"))


def ch_efficiency(boundary, cluster, formula):
    """SigNoz ClickHouse SQL: one value over the dashboard window."""
    _label, metrics = BOUNDARIES[boundary]
    return (f"WITH (SELECT sum(inc) FROM ({ch_increase_rows(metrics, ch_energy_conditions(cluster))})) AS joules, "
            f"(SELECT sum(inc) FROM ({ch_increase_rows([TOKENS + '.sum'], ch_token_conditions(cluster))})) AS tokens "
            f"SELECT if(tokens > 0 AND joules > 0, {ch_formula(formula)}, NULL) AS value")


def ch_efficiency_over_time(boundary, cluster, formula, bucket=300):
    """SigNoz ClickHouse SQL for a graph: a DateTime column `ts` per window, and the value."""
    _label, metrics = BOUNDARIES[boundary]
    energy = ch_increase_rows(metrics, ch_energy_conditions(cluster), bucket)
    tokens = ch_increase_rows([TOKENS + ".sum"], ch_token_conditions(cluster), bucket)
    expr = ch_formula(formula).replace("tokens", "t.tokens").replace("joules", "e.joules")
    return (f"SELECT e.ts AS ts, if(t.tokens > 0 AND e.joules > 0, {expr}, NULL) AS value "
            f"FROM (SELECT ts, sum(inc) AS joules FROM ({energy}) GROUP BY ts) AS e "
            f"LEFT JOIN (SELECT ts, sum(inc) AS tokens FROM ({tokens}) GROUP BY ts) AS t ON e.ts = t.ts ORDER BY ts")


def ch_reporting(metric, attribute, cluster, minutes=10):
    """How many distinct `attribute` values had a sample in the last `minutes` of the window: recency
    from samples_v4 (time_series_v4 only knows the hour)."""
    since = f"{{{{.end_timestamp_ms}}}} - {minutes * 60000}"
    return (f"SELECT count(DISTINCT {ch_label(attribute)}) AS value FROM {CH_SERIES} "
            f"WHERE metric_name = '{metric}' AND {ch_label('cluster')} = '{cluster}' "
            f"AND unix_milli >= intDiv({since}, {CH_HOUR}) * {CH_HOUR} AND fingerprint GLOBAL IN "
            f"(SELECT fingerprint FROM {CH_SAMPLES} WHERE metric_name = '{metric}' "
            f"AND unix_milli BETWEEN {since} AND {{{{.end_timestamp_ms}}}})")


def ch_sample_age():
    """Seconds from each host's last exporter.samples.read point to the end of the window."""
    since = "{{.end_timestamp_ms}} - 86400000"
    return ("SELECT JSONExtractString(ts.labels, 'host.name') AS host, "
            f"({{{{.end_timestamp_ms}}}} - max(s.unix_milli)) / 1000 AS value FROM {CH_SAMPLES} AS s "
            f"INNER JOIN (SELECT DISTINCT fingerprint, labels FROM {CH_SERIES} WHERE metric_name = "
            f"'exporter.samples.read' AND unix_milli >= intDiv({since}, {CH_HOUR}) * {CH_HOUR}) AS ts "
            f"ON s.fingerprint = ts.fingerprint WHERE s.metric_name = 'exporter.samples.read' "
            f"AND s.unix_milli BETWEEN {since} AND {{{{.end_timestamp_ms}}}} GROUP BY host ORDER BY host")


def builder(name, metric, time_agg, space_agg, filters="", group_by=()):
    """A SigNoz v5 builder query. Temporality is left to SigNoz (it reads it from the metric's
    metadata): pinning it filters out a series stored with the other one."""
    return {"queryName": name, "expression": name, "dataSource": "metrics", "disabled": False,
            "aggregations": [{"metricName": metric, "temporality": "", "timeAggregation": time_agg,
                              "spaceAggregation": space_agg, "reduceTo": "last"}],
            "filter": {"expression": filters}, "source": "",
            "groupBy": [{"key": g, "dataType": "string", "type": "tag", "id": f"{g}--string--tag",
                         "isColumn": False, "isJSON": False} for g in group_by],
            "functions": [], "having": {"expression": ""}, "legend": "{{" + group_by[0] + "}}" if group_by else "",
            "orderBy": [], "limit": None, "stepInterval": 60}


def percentile(name, histogram, quantile, filters="", group_by=()):
    """A SigNoz percentile: from the histogram's .bucket series, no time aggregation."""
    return builder(name, f"{histogram}.bucket", "", quantile, filters, group_by)


# Prometheus (the gateway's `prometheus` exporter) and Grafana: OTLP names as the collector's
# Prometheus translator writes them with suffixes on: dots to underscores, the unit's word appended
# (W watts, J joules, s seconds; {annotations} dropped), `total` moved to the end of a monotonic
# counter (mac.energy.total -> mac_energy_joules_total), `_ratio` on unit-1 gauges; labels
# likewise (host.name -> host_name). Histograms get _bucket, _sum and _count.
PROM_UNITS = {"W": "watts", "J": "joules", "s": "seconds", "By": "bytes", "Cel": "celsius", "Hz": "hertz", "1": ""}
PROM_METRICS = {  # the OTLP metrics the Grafana dashboard reads: (unit, kind)
    "mac.power.system": ("W", "gauge"), "mac.power.cpu": ("W", "gauge"), "mac.power.gpu": ("W", "gauge"),
    "mac.power.ane": ("W", "gauge"), "mac.power.ram": ("W", "gauge"), "gpu.power.board": ("W", "gauge"),
    "host.power.cpu": ("W", "gauge"), "mac.gpu.usage": ("1", "gauge"), "gpu.utilization.gpu": ("1", "gauge"),
    "mac.energy.total": ("J", "counter"), "mac.energy.system": ("J", "counter"), "gpu.energy": ("J", "counter"),
    "host.energy.cpu": ("J", "counter"), "exporter.buffer.samples": ("{sample}", "gauge"),
    "exporter.datapoints.dropped": ("{datapoint}", "counter"), "exporter.source.restarts": ("{restart}", "counter"),
    "exporter.samples.read": ("{sample}", "counter"), TOKENS: ("{token}", "histogram"),
    "gen_ai.client.operation.duration": ("s", "histogram"), "gen_ai.server.time_to_first_token": ("s", "histogram"),
    "llamacpp.tokens_predicted_total": ("", "counter"),
}


def prom_name(metric):
    return prom_metric_name(metric, *PROM_METRICS[metric])


def prom_metric_name(metric, unit, kind):
    """kind: gauge, counter (a monotonic sum) or histogram. Also used by the demo receiver."""
    tokens = [t for t in re.split(r"[^A-Za-z0-9:]+", metric) if t]
    word = PROM_UNITS.get(unit, "" if unit.startswith("{") or not unit else unit)
    if word and word not in tokens:
        tokens.append(word)
    if kind == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    return "_".join(tokens)


def prom_label(attribute):
    return re.sub(r"[^A-Za-z0-9_]", "_", attribute)


PROM_RAPL_PACKAGES = 'rapl_zone!~".*/.*|psys"'


def prom_energy(metrics, cluster):
    """Joules over the dashboard's range: increase() of each counter series (resets handled), summed."""
    parts = []
    for m in metrics:
        rapl = f",{PROM_RAPL_PACKAGES}" if m.startswith("host.") else ""
        parts.append(f'sum(increase({prom_name(m)}{{cluster="{cluster}"{rapl}}}[$__range]))')
    return " + ".join(parts)


def prom_tokens(cluster, window="$__range"):
    return (f'sum(increase({prom_name(TOKENS)}_sum{{cluster="{cluster}",gen_ai_token_type="output"}}'
            f"[{window}]))")


def prom_formula(formula):
    return FORMULAS[formula].replace("price_per_kwh", "$price_per_kwh").replace("api_price_per_1m", "$api_price_per_1m")


PROM_HOST_FILTER = 'cluster=~"${cluster:regex}",host_name=~"${host:regex}"'
PROM_TOKEN_RATE = f'sum(rate({prom_name(TOKENS)}_sum{{gen_ai_token_type="output"}}[5m]))'


def prom_quantile(histogram, q):
    return (f'histogram_quantile({q}, sum by (le, gen_ai_request_model) (rate({prom_name(histogram)}_bucket'
            f'{{gen_ai_request_model=~"${{model:regex}}"}}[$__rate_interval])))',
            f"p{int(q * 100)} {{{{gen_ai_request_model}}}}")


def prom_efficiency(boundary, cluster, formula):
    """PromQL over the dashboard's range. A division by an empty or zero token count gives no value."""
    _label, metrics = BOUNDARIES[boundary]
    expr = (prom_formula(formula).replace("tokens", f"({prom_tokens(cluster)} > 0)")
            .replace("joules", f"(({prom_energy(metrics, cluster)}) > 0)"))
    return [(expr, formula)]


# ---------------------------------------------------------------- the layout, once

def panel(row, width, id, title, description, kind, unit, signoz, spl, flow, prom):
    """One panel: its row (a section; wide rows wrap), width of 12 columns, words, kind (value,
    graph or table), unit, and its query in each backend (signoz: {"sql": ...} or {"builder": [...]};
    prom: [(PromQL, legend)] for Grafana)."""
    return dict(row=row, width=width, id=id, title=title, description=description, kind=kind, unit=unit,
                signoz=signoz, spl=spl, flow=flow, prom=prom)


def efficiency_panel(row, width, cluster, prefix, boundary, formula, title, description, unit="none"):
    label = BOUNDARIES[boundary][0]
    return panel(row=row, width=width, id=f"{prefix}_{formula}_{boundary}", title=f"{cluster}: {title} [{label}]",
                 description=f"{description}; boundary: {label}; empty while no tokens flow", kind="value",
                 unit=unit, signoz={"sql": ch_efficiency(boundary, cluster, formula)},
                 spl=spl_efficiency(boundary, cluster, formula), flow=flow_efficiency(boundary, cluster, formula),
                 prom=prom_efficiency(boundary, cluster, formula))


CLUSTERS = (  # cluster, id prefix, power metric, GPU metric, what tells GPUs apart, how that reads
    ("mac-exo", "mac", "mac.power.system", "mac.power.gpu", "host.name", "one integrated GPU per Mac"),
    ("nvidia", "nv", "gpu.power.board", "gpu.power.board", "gpu.uuid", "distinct gpu.uuid in the last 10 minutes"),
)


def headline_panels():
    """Rows 1 and 2, one line per cluster: what runs, what it draws, what a token costs."""
    out = []
    for cluster, prefix, power, gpu_metric, gpu_key, gpu_text in CLUSTERS:
        for pid, title, metric, key, text, label in (
                ("hosts", "hosts reporting", power, "host.name", "hosts with a sample in the last 10 minutes", "hosts"),
                ("gpus", "GPUs reporting", gpu_metric, gpu_key, gpu_text, "GPUs")):
            spl_key = "host" if key == "host.name" else key  # HEC maps host.name to host
            out.append(panel(
                row=1, width=2, id=f"{prefix}_{pid}", title=f"{cluster}: {title}", description=text, kind="value",
                unit="none", signoz={"sql": ch_reporting(metric, key, cluster)},
                spl=f'| mstats count("{metric}") WHERE index={INDEX} cluster="{cluster}" earliest=-10m BY {spl_key} '
                    f"| stats dc({spl_key}) AS value",
                flow=f"data('{metric}', filter=filter('cluster', '{cluster}')).count(by=['{key}'])"
                     f".count().publish(label='{label}')",
                prom=[(f'count(count by ({prom_label(key)}) (last_over_time({prom_name(metric)}'
                       f'{{cluster="{cluster}"}}[10m])))', label)]))
        watts_label = "whole Macs (mac.power.system)" if cluster == "mac-exo" else "GPU boards (gpu.power.board)"
        out.append(panel(
            row=1, width=2, id=f"{prefix}_watts", title=f"{cluster}: watts now", description=watts_label,
            kind="value", unit="watt",
            signoz={"builder": [builder("A", power, "avg", "sum", f"cluster = '{cluster}'")]},
            spl=f'| mstats avg("{power}") AS w WHERE index={INDEX} cluster="{cluster}" earliest=-2m '
                f'BY {SPL_DIMENSIONS.get(power, "host")} | stats sum(w) AS value',
            flow=f"data('{power}', filter=filter('cluster', '{cluster}')).mean(over='1m').sum().publish(label='W')",
            prom=[(f'sum(avg_over_time({prom_name(power)}{{cluster="{cluster}"}}[2m]))', "W")]))
        out.append(panel(
            row=1, width=2, id=f"{prefix}_tps", title=f"{cluster}: output tokens/s now",
            description="LiteLLM output tokens of the models this cluster serves (cluster from TPW_MODEL_CLUSTERS)",
            kind="value", unit="none",
            signoz={"builder": [builder("A", f"{TOKENS}.sum", "rate", "sum",
                                        f"gen_ai.token.type = 'output' AND cluster = '{cluster}'")]},
            spl=f"{spl_token_rate(cluster)} earliest=-5m | eval value=tps",
            flow=f"{flow_tokens(cluster)}.publish(label='tokens/s')",
            prom=[(f'sum(rate({prom_name(TOKENS)}_sum{{cluster="{cluster}",gen_ai_token_type="output"}}[5m]))',
                   "tokens/s")]))
        chip, node = CLUSTER_BOUNDARIES[cluster]
        for boundary in (chip, node):
            out.append(efficiency_panel(1, 2, cluster, prefix, boundary, "tokens_per_joule", "tokens per joule",
                                        "increase of output tokens / increase of energy over the window"))
    for cluster, prefix, *_ in CLUSTERS:
        chip, node = CLUSTER_BOUNDARIES[cluster]
        for boundary in (chip, node):
            out.append(efficiency_panel(2, 3, cluster, prefix, boundary, "cost_per_1k_tokens", "$ per 1k tokens",
                                        "energy per token x $price_per_kwh $currency per kWh; electricity only"))
        out.append(efficiency_panel(2, 3, cluster, prefix, node, "cost_per_1m_tokens", "on-prem $ per 1M tokens",
                                    "electricity per 1M output tokens, to set beside an API's price per 1M "
                                    "($api_price_per_1m $currency)"))
        out.append(efficiency_panel(2, 3, cluster, prefix, node, "api_over_onprem", "API price / on-prem price",
                                    "what an API at $api_price_per_1m $currency per 1M output tokens would have "
                                    "charged for these tokens, per unit of their electricity here (above 1: "
                                    "cheaper here, electricity only)"))
    return out


def host_panels():
    return [
        panel(row=3, width=6, id="host_power", title="Power per host (W)",
              description="mac.power.system for Macs, gpu.power.board summed over each host's GPUs", kind="graph",
              unit="watt",
              signoz={"builder": [builder("A", "mac.power.system", "avg", "sum",
                                          "cluster IN $cluster AND host.name IN $host", ("host.name",)),
                                  builder("B", "gpu.power.board", "avg", "sum",
                                          "cluster IN $cluster AND host.name IN $host", ("host.name",))]},
              spl=f"| mstats avg(\"mac.power.system\") AS w WHERE index={INDEX} cluster=$cluster$ host=$host$ span=1m "
                  f"BY host | append [| mstats avg(\"gpu.power.board\") AS w WHERE index={INDEX} cluster=$cluster$ "
                  f"host=$host$ span=1m BY host gpu.uuid] | stats sum(w) AS w BY _time host "
                  f"| timechart span=1m sum(w) BY host",
              flow="data('mac.power.system').sum(by=['host.name']).publish(label='Mac W')\n"
                   "data('gpu.power.board').sum(by=['host.name']).publish(label='GPU W')",
              prom=[(f"sum by (host_name) ({prom_name(m)}{{{PROM_HOST_FILTER}}})", "{{host_name}}")
                    for m in ("mac.power.system", "gpu.power.board")]),
        panel(row=3, width=6, id="host_load", title="GPU load per host (0-1)",
              description="mac.gpu.usage and gpu.utilization.gpu", kind="graph", unit="percentunit",
              signoz={"builder": [builder("A", "mac.gpu.usage", "avg", "avg",
                                          "cluster IN $cluster AND host.name IN $host", ("host.name",)),
                                  builder("B", "gpu.utilization.gpu", "avg", "avg",
                                          "cluster IN $cluster AND host.name IN $host", ("host.name", "gpu.index"))]},
              spl=f"| mstats avg(\"mac.gpu.usage\") AS mac avg(\"gpu.utilization.gpu\") AS gpu WHERE index={INDEX} "
                  f"cluster=$cluster$ host=$host$ span=1m BY host | timechart span=1m avg(mac) avg(gpu) BY host",
              flow="data('mac.gpu.usage').mean(by=['host.name']).publish(label='Mac GPU')\n"
                   "data('gpu.utilization.gpu').mean(by=['host.name', 'gpu.index']).publish(label='NVIDIA GPU')",
              prom=[(f"avg by (host_name) (mac_gpu_usage_ratio{{{PROM_HOST_FILTER}}})", "{{host_name}}"),
                    (f"avg by (host_name, gpu_index) (gpu_utilization_gpu_ratio{{{PROM_HOST_FILTER}}})",
                     "{{host_name}} GPU {{gpu_index}}")]),
    ]


def llm_panels():
    duration, ttft = "gen_ai.client.operation.duration", "gen_ai.server.time_to_first_token"
    by_model = ("gen_ai.request.model",)
    models = "gen_ai.request.model IN $model"
    return [
        panel(row=4, width=4, id="latency", title="Request latency per model (p50 / p95)",
              description=f"LiteLLM {duration}; O11y shows the mean per minute (its exporter drops buckets)",
              kind="graph", unit="s",
              signoz={"builder": [percentile("A", duration, "p50", models, by_model),
                                  percentile("B", duration, "p95", models, by_model)]},
              spl=spl_percentiles(duration),
              flow=f"(data('{duration}_sum', rollup='rate').sum(by=['gen_ai.request.model']) / "
                   f"data('{duration}_count', rollup='rate').sum(by=['gen_ai.request.model']))"
                   ".publish(label='mean')",
              prom=[prom_quantile(duration, q) for q in (0.5, 0.95)]),
        panel(row=4, width=4, id="ttft", title="Time to first token per model (p95)",
              description=f"LiteLLM {ttft} (1.96+), streaming requests only", kind="graph", unit="s",
              signoz={"builder": [percentile("A", ttft, "p95", models, by_model)]},
              spl=spl_percentiles(ttft).replace(" p50=if(n>=total*0.5 AND total>0, bound, null()),", "")
                  .replace("min(p50) AS p50 ", ""),
              flow=f"(data('{ttft}_sum', rollup='rate').sum(by=['gen_ai.request.model']) / "
                   f"data('{ttft}_count', rollup='rate').sum(by=['gen_ai.request.model']))"
                   ".publish(label='mean TTFT')",
              prom=[prom_quantile(ttft, 0.95)]),
        panel(row=4, width=4, id="out_tps", title="Output tokens/s per cluster",
              description="LiteLLM output tokens by the cluster that served them; llama.cpp tokens_predicted",
              kind="graph", unit="none",
              signoz={"builder": [builder("A", f"{TOKENS}.sum", "rate", "sum", "gen_ai.token.type = 'output'",
                                          ("cluster",)),
                                  builder("B", "llamacpp.tokens_predicted_total", "rate", "sum", "", ("model",))]},
              spl=f'| mstats rate_sum("{TOKENS}_sum") AS tps WHERE index={INDEX} gen_ai.token.type=output '
                  f"span=1m BY cluster | timechart span=1m sum(tps) BY cluster",
              flow=f"data('{TOKENS}_sum', filter=filter('gen_ai.token.type', 'output'), rollup='rate')"
                   ".sum(by=['cluster']).publish(label='LiteLLM tokens/s')\n"
                   "data('llamacpp.tokens_predicted_total', rollup='rate').sum(by=['model'])"
                   ".publish(label='llama.cpp tokens/s')",
              prom=[(f'sum by (cluster) (rate({prom_name(TOKENS)}_sum{{gen_ai_token_type="output"}}'
                     f"[$__rate_interval]))", "{{cluster}}"),
                    ("sum by (model) (rate(llamacpp_tokens_predicted_total[$__rate_interval]))",
                     "llama.cpp {{model}}")]),
    ]


def cost_over_time_panels():
    out = []
    for cluster, prefix, *_ in CLUSTERS:
        boundary = CLUSTER_BOUNDARIES[cluster][1]
        label = BOUNDARIES[boundary][0]
        out.append(panel(
            row=5, width=6, id=f"{prefix}_cost_time", title=f"{cluster}: $ per 1k tokens over time [{label}]",
            description=f"per 5-minute window; boundary: {label}; windows without tokens are empty, not infinite",
            kind="graph", unit="none", signoz={"sql": ch_efficiency_over_time(boundary, cluster, "cost_per_1k_tokens")},
            spl=spl_efficiency_over_time(boundary, cluster, "cost_per_1k_tokens"),
            flow=flow_efficiency(boundary, cluster, "cost_per_1k_tokens"),
            prom=[(expr.replace("[$__range]", "[5m]"), legend)
                  for expr, legend in prom_efficiency(boundary, cluster, "cost_per_1k_tokens")]))
    return out


def power_panels():
    tokens_now = flow_tokens("mac-exo").replace(" and filter('cluster', 'mac-exo')", "")
    return [
        panel(row=6, width=4, id="mac_domains", title="Mac power by domain (W)",
              description="mac.power.cpu/.gpu/.ane/.ram/.system, summed over the Macs", kind="graph", unit="watt",
              signoz={"builder": [builder(q, f"mac.power.{d}", "avg", "sum", "host.name IN $host") for q, d in
                                  (("A", "cpu"), ("B", "gpu"), ("C", "ane"), ("D", "ram"), ("E", "system"))]},
              spl=f'| mstats avg("mac.power.cpu") AS cpu avg("mac.power.gpu") AS gpu avg("mac.power.ane") AS ane '
                  f'avg("mac.power.ram") AS ram avg("mac.power.system") AS system WHERE index={INDEX} host=$host$ '
                  f"span=1m BY host | timechart span=1m sum(cpu) sum(gpu) sum(ane) sum(ram) sum(system)",
              flow="\n".join(f"data('mac.power.{d}').sum().publish(label='{d}')"
                             for d in ("cpu", "gpu", "ane", "ram", "system")),
              prom=[(f"sum(mac_power_{d}_watts{{{PROM_HOST_FILTER}}})", d)
                    for d in ("cpu", "gpu", "ane", "ram", "system")]),
        panel(row=6, width=4, id="nv_domains", title="NVIDIA power by domain (W)",
              description="gpu.power.board summed over the GPUs; host.power.cpu over the RAPL packages",
              kind="graph", unit="watt",
              signoz={"builder": [builder("A", "gpu.power.board", "avg", "sum", "host.name IN $host"),
                                  builder("B", "host.power.cpu", "avg", "sum",
                                          "host.name IN $host" + ch_rapl_filter("host.power.cpu"))]},
              spl=f'| mstats avg("gpu.power.board") AS gpu WHERE index={INDEX} host=$host$ span=1m BY host gpu.uuid '
                  f'| append [| mstats avg("host.power.cpu") AS cpu WHERE index={INDEX} host=$host$ '
                  f"{SPL_RAPL_PACKAGES} span=1m BY host rapl.zone] | timechart span=1m sum(gpu) sum(cpu)",
              flow="data('gpu.power.board').sum().publish(label='GPU boards')\n"
                   "data('host.power.cpu', filter=filter('rapl.zone', 'package-*')).sum().publish(label='CPU (RAPL)')",
              prom=[(f"sum(gpu_power_board_watts{{{PROM_HOST_FILTER}}})", "GPU boards"),
                    (f"sum(host_power_cpu_watts{{{PROM_HOST_FILTER},{PROM_RAPL_PACKAGES}}})", "CPU (RAPL)")]),
        panel(row=6, width=4, id="idle_power", title="Idle power (W, while no tokens are generated)",
              description="power when the output token rate is 0: the floor a quiet hour costs", kind="graph",
              unit="watt",
              signoz={"builder": [builder("A", "mac.power.system", "avg", "sum", "cluster = 'mac-exo'"),
                                  builder("B", "gpu.power.board", "avg", "sum", "cluster = 'nvidia'")]},
              spl=f'| mstats avg("mac.power.system") AS mac WHERE index={INDEX} span=5m BY host '
                  f'| append [| mstats avg("gpu.power.board") AS gpu WHERE index={INDEX} span=5m BY host gpu.uuid] '
                  f'| append [| mstats rate_sum("{TOKENS}_sum") AS tps WHERE index={INDEX} gen_ai.token.type=output '
                  f"span=5m] | stats sum(mac) AS mac sum(gpu) AS gpu sum(tps) AS tps BY _time "
                  f"| where tps=0 OR isnull(tps) | timechart span=5m avg(mac) avg(gpu)",
              flow=f"T = {tokens_now}\n"
                   "idle = T.below(0, inclusive=True) * 0 + 1\n"
                   "(data('mac.power.system').sum() * idle).publish(label='Mac idle W')\n"
                   "(data('gpu.power.board').sum() * idle).publish(label='GPU idle W')",
              prom=[(f'sum({prom_name(m)}{{cluster="{c}"}}) and on() ({PROM_TOKEN_RATE} == 0)', f"{c} idle W")
                    for m, c in (("mac.power.system", "mac-exo"), ("gpu.power.board", "nvidia"))]),
        panel(row=7, width=12, id="energy", title="Energy per hour by boundary (J)",
              description="increase of each energy counter per hour (RAPL: packages)", kind="graph", unit="J",
              signoz={"builder": [builder(q, m, "increase", "sum", "host.name IN $host" + ch_rapl_filter(m),
                                          ("cluster",)) for q, m in zip("ABCD", ENERGY_COUNTERS)]},
              spl=" | append [".join(spl_energy_per_hour(m) for m in ENERGY_COUNTERS) + "]" * 3
                  + " | timechart span=1h sum(joules) BY boundary",
              flow="\n".join(f"data('{m}', {flow_rapl_filter(m)}rollup='delta').sum().sum(over='1h')"
                             f".publish(label='{m}')" for m in ENERGY_COUNTERS),
              prom=[(f"sum by (cluster) (increase({prom_name(m)}{{{PROM_HOST_FILTER}"
                     f"{',' + PROM_RAPL_PACKAGES if m.startswith('host.') else ''}}}[1h]))", f"{m} {{{{cluster}}}}")
                    for m in ENERGY_COUNTERS]),
    ]


ENERGY_COUNTERS = ("mac.energy.total", "mac.energy.system", "gpu.energy", "host.energy.cpu")


def ch_rapl_filter(metric):
    return " AND rapl.zone NOT LIKE '%/%' AND rapl.zone != 'psys'" if metric.startswith("host.") else ""


def flow_rapl_filter(metric):
    return "filter=filter('rapl.zone', 'package-*'), " if metric.startswith("host.") else ""


def spl_energy_per_hour(metric):
    rapl = f" {SPL_RAPL_PACKAGES}" if metric.startswith("host.") else ""
    return (f'| mstats rate_sum("{metric}") AS w WHERE index={INDEX}{rapl} span=1h '
            f'| eval joules=w*3600, boundary="{metric}"')


def health_panels():
    return [
        panel(row=8, width=3, id="buffer", title="Exporter buffer (samples waiting)",
              description="exporter.buffer.samples per host", kind="graph", unit="none",
              signoz={"builder": [builder("A", "exporter.buffer.samples", "max", "max", "", ("host.name",))]},
              spl=f'| mstats max("exporter.buffer.samples") AS b WHERE index={INDEX} span=1m BY host '
                  f"| timechart span=1m max(b) BY host",
              flow="data('exporter.buffer.samples').max(by=['host.name']).publish(label='buffered')",
              prom=[("max by (host_name) (exporter_buffer_samples)", "{{host_name}}")]),
        panel(row=8, width=3, id="drops", title="Data points dropped per second (by reason)",
              description="exporter.datapoints.dropped", kind="graph", unit="none",
              signoz={"builder": [builder("A", "exporter.datapoints.dropped", "rate", "sum", "",
                                          ("host.name", "reason"))]},
              spl=f'| mstats rate_sum("exporter.datapoints.dropped") AS d WHERE index={INDEX} span=5m BY host reason '
                  f"| timechart span=5m sum(d) BY reason",
              flow="data('exporter.datapoints.dropped', rollup='rate').sum(by=['host.name', 'reason'])"
                   ".publish(label='dropped/s')",
              prom=[("sum by (host_name, reason) (rate(exporter_datapoints_dropped_total[$__rate_interval]))",
                     "{{host_name}} {{reason}}")]),
        panel(row=8, width=3, id="restarts", title="Source restarts (macmon / nvidia-smi)",
              description="exporter.source.restarts, increase per window", kind="graph", unit="none",
              signoz={"builder": [builder("A", "exporter.source.restarts", "increase", "sum", "", ("host.name",))]},
              spl=f'| mstats rate_sum("exporter.source.restarts") AS r WHERE index={INDEX} span=5m BY host '
                  f"| eval r=r*300 | timechart span=5m sum(r) BY host",
              flow="data('exporter.source.restarts', rollup='delta').sum(by=['host.name']).publish(label='restarts')",
              prom=[("sum by (host_name) (increase(exporter_source_restarts_total[5m]))", "{{host_name}}")]),
        panel(row=8, width=3, id="sample_age", title="Last sample age (s)",
              description="seconds from each host's last exporter.samples.read point to the end of the window",
              kind="table", unit="s", signoz={"sql": ch_sample_age()},
              spl=f'| mstats latest_time("exporter.samples.read") AS t WHERE index={INDEX} earliest=-24h BY host '
                  f"| eval value=now()-t | table host value",
              flow="data('exporter.samples.read').count(by=['host.name']).publish(label='reporting')",
              prom=[("max by (host_name) (time() - timestamp(exporter_samples_read_total))", "{{host_name}}")]),
    ]


def panels():
    """Every panel, in order; place() puts them on the grid."""
    return (headline_panels() + host_panels() + llm_panels() + cost_over_time_panels() + power_panels()
            + health_panels())


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

SPLUNK_VIZ = {"value": "splunk.singlevalue", "graph": "splunk.line", "table": "splunk.table"}
O11Y_CHART = {"value": "SingleValue", "graph": "TimeSeriesChart", "table": "List"}


def build_splunk(layout):
    data_sources, visualizations, structure = {}, {}, []
    for p in layout:
        ds, viz = f"ds_{p['id']}", f"viz_{p['id']}"
        data_sources[ds] = {"type": "ds.search", "name": p["title"], "options": {"query": p["spl"]}}
        visualizations[viz] = {"type": SPLUNK_VIZ[p["kind"]],
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
                       "options": {"type": O11Y_CHART[p["kind"]]},
                       "tags": ["tokens-per-watt"]})
        placements.append({"chart": p["title"], "row": p["line"], "column": p["x"], "width": p["width"],
                           "height": 1})
    dashboard = {"name": TITLE, "description": "Same layout as the SigNoz and Splunk Enterprise dashboards. "
                 "Latency shows the mean per minute: the signalfx exporter drops histogram buckets.",
                 "charts": placements,
                 "filters": {"variables": [{"property": "cluster", "alias": "cluster", "value": [],
                                            "required": False, "applyIfExists": True},
                                           {"property": "host.name", "alias": "host", "value": [],
                                            "required": False, "applyIfExists": True},
                                           {"property": "gen_ai.request.model", "alias": "model", "value": [],
                                            "required": False, "applyIfExists": True}]}}
    return {"charts": charts, "dashboard": dashboard}


# ---------------------------------------------------------------- Grafana (Prometheus datasource)

GRAFANA_UNITS = {"watt": "watt", "J": "joule", "s": "s", "percentunit": "percentunit", "none": "none"}
GRAFANA_PANEL = {"value": "stat", "graph": "timeseries", "table": "table"}


def grafana_variable(name, kind, default, what):
    if kind == "text":
        return {"name": name, "label": name, "description": what, "type": "textbox", "query": default,
                "current": {"text": default, "value": default}, "hide": 0}
    label = prom_label(default)
    return {"name": name, "label": name, "description": what, "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "definition": f"label_values({label})", "query": {"query": f"label_values({label})", "refId": name},
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": ["All"], "value": ["$__all"]}, "sort": 1, "hide": 0}


def build_grafana(layout):
    panels = []
    for number, p in enumerate(layout, 1):
        value = p["kind"] == "value"
        targets = [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "instant": value or
                    p["kind"] == "table", "range": not value, "datasource": {"type": "prometheus",
                                                                             "uid": "${datasource}"}}
                   for i, (expr, legend) in enumerate(p["prom"])]
        panels.append({"id": number, "type": GRAFANA_PANEL[p["kind"]], "title": p["title"],
                       "description": p["description"], "datasource": {"type": "prometheus", "uid": "${datasource}"},
                       "gridPos": {"x": p["x"] * 2, "y": p["line"] * 8, "w": p["width"] * 2, "h": 8},
                       "fieldConfig": {"defaults": {"unit": GRAFANA_UNITS[p["unit"]]}, "overrides": []},
                       "options": {"reduceOptions": {"calcs": ["lastNotNull"]}} if value else {},
                       "targets": targets})
    variables = [{"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                  "current": {}, "hide": 0}]
    variables += [grafana_variable(*v) for v in VARIABLES]
    return {"uid": "tokens-per-watt", "title": TITLE, "description": "Same layout as the SigNoz and Splunk dashboards, "
            "over the gateway's Prometheus endpoint.", "tags": ["tokens-per-watt", "llm", "power"],
            "schemaVersion": 39, "version": 1, "editable": True, "time": {"from": "now-6h", "to": "now"},
            "refresh": "1m", "timezone": "", "templating": {"list": variables}, "panels": panels}


OUTPUTS = {
    "signoz/tokens-per-watt.json": build_signoz,
    "splunk-enterprise/tokens-per-watt.json": build_splunk,
    "splunk-o11y/tokens-per-watt.json": build_o11y,
    "grafana/tokens-per-watt.json": build_grafana,
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
