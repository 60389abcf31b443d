#!/usr/bin/env python3
"""make verify: is my data arriving?

First the collector's own counters (its :8888 Prometheus page): per receiver, accepted and refused
metric points; per exporter, sent, failed and queue size. Then, per backend, whether a known series
is really queryable there. One line per backend:

  OK           the series is there
  FAILING      why: the exporter fails to send, or sends nothing, or the API refuses us
  SILENT DROP  the exporter sent points without errors, but the backend shows nothing
               (the Splunk Observability trial's custom-metric cap does exactly this)

Backend API settings come from the environment (see otelcol/verify.env.example); a backend without
settings is skipped. Standard library only.

    python3 deploy/tpw-verify.py --metrics-url http://127.0.0.1:8888/metrics --series mac.power.total
"""
import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

BACKENDS = {  # backend -> (exporter name prefixes in the collector, API settings)
    "signoz": (("otlp/signoz", "otlp_grpc/signoz"), ("SIGNOZ_API_URL", "SIGNOZ_API_KEY")),
    "splunk": (("splunk_hec/metrics",), ("SPLUNK_REST_URL", "SPLUNK_REST_TOKEN")),
    "o11y": (("signalfx",), ("O11Y_API_URL", "O11Y_API_TOKEN")),
}
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """[(name, {label: value}, float)] from a Prometheus text page."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        found = SAMPLE.match(line)
        if found:
            try:
                value = float(found.group(3))
            except ValueError:
                continue
            out.append((found.group(1), dict(LABEL.findall(found.group(2) or "")), value))
    return out


def total(samples, name, **labels):
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == want for k, want in labels.items()))


def exporter_counts(samples, prefixes):
    names = {ls.get("exporter") for n, ls, _ in samples if n.startswith("otelcol_exporter_")}
    mine = [e for e in names if e and e.startswith(prefixes)]
    sent = sum(total(samples, "otelcol_exporter_sent_metric_points", exporter=e) for e in mine)
    failed = sum(total(samples, "otelcol_exporter_send_failed_metric_points", exporter=e) for e in mine)
    queue = sum(total(samples, "otelcol_exporter_queue_size", exporter=e) for e in mine)
    return mine, sent, failed, queue


def http_json(url, headers=None, data=None, timeout=10):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode() or "null")


def has_number_value(node):
    """Any series value at all in a query answer (the shapes differ between API versions)."""
    if isinstance(node, dict):
        if isinstance(node.get("value"), (int, float, str)) and node.get("value") not in ("", None):
            return True
        return any(has_number_value(v) for v in node.values())
    if isinstance(node, list):
        return any(has_number_value(v) for v in node)
    return False


def visible_in_signoz(url, key, series, minutes):
    end = int(time.time() * 1000)
    body = {"start": end - minutes * 60_000, "end": end, "requestType": "time_series",
            "compositeQuery": {"queries": [{"type": "builder_query", "spec": {
                "name": "A", "signal": "metrics", "stepInterval": 60,
                "aggregations": [{"metricName": series, "timeAggregation": "avg", "spaceAggregation": "sum"}]}}]}}
    answer = http_json(url.rstrip("/") + "/api/v5/query_range", {"SIGNOZ-API-KEY": key,
                                                                 "Content-Type": "application/json"},
                       json.dumps(body).encode())
    return has_number_value((answer or {}).get("data"))


def visible_in_splunk(url, token, series, minutes):
    search = f'| mstats count("{series}") AS points WHERE index=lab_otel_metrics earliest=-{minutes}m'
    data = urllib.parse.urlencode({"search": search, "output_mode": "json"}).encode()
    request = urllib.request.Request(url.rstrip("/") + "/services/search/jobs/export", data=data,
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    for line in text.splitlines():  # one JSON object per result row
        try:
            row = json.loads(line)
        except ValueError:
            continue
        points = (row.get("result") or {}).get("points")
        if points not in (None, "", "0"):
            return True
    return False


def visible_in_o11y(url, token, series, minutes):
    query = urllib.parse.quote(f"sf_metric:{series}")
    answer = http_json(f"{url.rstrip('/')}/v2/metrictimeseries?query={query}&limit=1", {"X-SF-Token": token})
    return bool((answer or {}).get("count") or (answer or {}).get("results"))


CHECKS = {"signoz": visible_in_signoz, "splunk": visible_in_splunk, "o11y": visible_in_o11y}


def verdict(backend, samples, series, minutes):
    prefixes, (url_var, key_var) = BACKENDS[backend]
    exporters, sent, failed, queue = exporter_counts(samples, prefixes)
    where = f"{', '.join(sorted(exporters)) or 'no exporter'}: sent {sent:.0f}, failed {failed:.0f}, queue {queue:.0f}"
    url, key = os.environ.get(url_var), os.environ.get(key_var)
    if not url or not key:
        return "SKIPPED", f"set {url_var} and {key_var} to query {backend} ({where})"
    try:
        visible = CHECKS[backend](url, key, series, minutes)
    except urllib.error.HTTPError as exc:
        return "FAILING", f"{backend} API answered HTTP {exc.code} ({url}); check {key_var} ({where})"
    except (OSError, ValueError) as exc:
        return "FAILING", f"cannot query {backend} at {url}: {getattr(exc, 'reason', exc)} ({where})"
    if visible:
        return "OK", f"{series} is queryable ({where})"
    if failed > 0:
        return "FAILING", f"the collector fails to send to {backend} ({where}); see its log"
    if not exporters or sent == 0:
        return "FAILING", f"nothing was sent to {backend} ({where}); is it in the pipeline, is data arriving?"
    return "SILENT DROP", (f"{sent:.0f} points sent without errors but {series} is not visible in {backend} "
                           f"({where}); a trial or custom-metric cap drops data this way")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--metrics-url", default=os.environ.get("TPW_METRICS_URL", "http://127.0.0.1:8888/metrics"),
                        help="the collector's internal metrics page [env TPW_METRICS_URL]")
    source.add_argument("--metrics-file", help="the same page, already fetched (make verify reads it over ssh)")
    parser.add_argument("--series", default=os.environ.get("TPW_VERIFY_SERIES", "mac.power.total"),
                        help="a series that must be queryable in every backend [env TPW_VERIFY_SERIES; "
                             "default mac.power.total]")
    parser.add_argument("--minutes", type=int, default=15, help="how far back to look (default 15)")
    args = parser.parse_args()
    if os.environ.get("VERIFY_ENV_FILE"):
        load_env_file(os.environ["VERIFY_ENV_FILE"])
    try:
        if args.metrics_file:
            with open(args.metrics_file) as fh:
                page = fh.read()
        else:
            page = urllib.request.urlopen(args.metrics_url, timeout=10).read().decode()
    except OSError as exc:
        print(f"collector     FAILING      cannot read its metrics ({exc}); is it running?")
        return 1
    samples = parse_prometheus(page)
    # The otlp receiver only: a llama.cpp scrape adds up/scrape_* points every 15 s even when it
    # fails, which would read as traffic with no exporter sending at all.
    accepted = total(samples, "otelcol_receiver_accepted_metric_points", receiver="otlp")
    refused = total(samples, "otelcol_receiver_refused_metric_points")
    receivers = sorted({ls.get("receiver") for n, ls, _ in samples if n == "otelcol_receiver_accepted_metric_points"})
    state = "OK" if accepted > 0 and refused == 0 else "FAILING"
    why = "the otlp receiver accepted nothing yet: are the exporters sending here?" if accepted == 0 else \
        (f"{refused:.0f} points refused (memory_limiter?)" if refused else "")
    print(f"{'collector':<13} {state:<12} receivers {', '.join(filter(None, receivers)) or 'none'}: "
          f"otlp accepted {accepted:.0f}, refused {refused:.0f}{'; ' + why if why else ''}")
    worst = 0 if state == "OK" else 1
    for backend in BACKENDS:
        status, detail = verdict(backend, samples, args.series, args.minutes)
        print(f"{backend:<13} {status:<12} {detail}")
        if status not in ("OK", "SKIPPED"):
            worst = 1
    return worst


def load_env_file(path):
    if os.stat(path).st_mode & 0o077:
        sys.exit(f"tpw-verify: {path} is readable by others; run: chmod 600 {path}")
    with open(path) as fh:
        for line in fh:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                os.environ.setdefault(key.strip(), value.strip())


if __name__ == "__main__":
    sys.exit(main())
