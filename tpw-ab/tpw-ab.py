#!/usr/bin/env python3
"""tpw-ab: the same prompts against several inference clusters, with latency, joules and dollars
per token side by side.

    python3 tpw-ab.py run --target mac=http://litellm.lab:4000/v1,qwen3-30b-mac,mac-exo \\
                          --target nv=http://litellm.lab:4000/v1,qwen3-30b-nvidia,nvidia \\
                          --energy-url http://ai-stack.lab:8889/metrics --concurrency 1,4,8
    python3 tpw-ab.py list
    python3 tpw-ab.py compare RUN RUN

`run` sends streaming chat completions (OpenAI-compatible, typically the LiteLLM proxy) and times
each: time to first token, inter-token latency, output tokens per second, end-to-end latency. With
--energy-url (a Prometheus text endpoint: the gateway's `prometheus` exporter, or the stand-in
receiver's /metrics) it reads each cluster's energy counters before, every second during and after
the run, and takes their increase over the steady-state window: from the moment every concurrent
stream has its first token until the first one finishes (as the ML.ENERGY leaderboard does),
interpolating the counters at the window's edges by each sample's own timestamp. An idle baseline
measured first gives joules per token both in total and above idle.

Energy boundaries, by cluster: Mac SoC (mac_energy_joules_total) and whole Mac
(mac_energy_system_joules_total); NVIDIA GPU boards (gpu_energy_joules_total) and node (boards +
RAPL packages, host_energy_cpu_joules_total without sub-zones or psys).

One file, Python standard library only, Python 3.9+. Every run is kept in a local SQLite history.
Exit codes: 0 done, 1 a target failed every request, 2 usage error, 130 interrupted (the finished
runs are kept).
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import signal
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

__version__ = "0.1.0"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Every setting: flag, environment variable, default, help. `run` flags only unless noted.
SETTINGS = [
    ("--energy-url", "TPW_AB_ENERGY_URL", None, "Prometheus text endpoint with the clusters' energy counters"),
    ("--requests", "TPW_AB_REQUESTS", "16", "measured requests per target and concurrency"),
    ("--concurrency", "TPW_AB_CONCURRENCY", "1", "concurrent streams, a comma list for a sweep (1,4,8)"),
    ("--max-tokens", "TPW_AB_MAX_TOKENS", "256", "max_tokens of each request"),
    ("--warmup", "TPW_AB_WARMUP", "1", "warm-up requests per target, not measured"),
    ("--prompts", "TPW_AB_PROMPTS", "chat", "built-in set (chat, code) or a JSONL file of {\"prompt\": ...}"),
    ("--price-per-kwh", "TPW_AB_PRICE_PER_KWH", "0.30", "electricity price per kWh"),
    ("--api-price-per-1m", "TPW_AB_API_PRICE_PER_1M", "0.60", "an API's price per 1M output tokens, to compare"),
    ("--currency", "TPW_AB_CURRENCY", "USD", "currency of both prices"),
    ("--idle-seconds", "TPW_AB_IDLE_SECONDS", "10", "idle baseline before the run (0: none)"),
    ("--energy-interval", "TPW_AB_ENERGY_INTERVAL", "1", "seconds between energy reads during the run"),
    ("--timeout", "TPW_AB_TIMEOUT", "120", "seconds one request may take"),
    ("--json", "TPW_AB_JSON", None, "write the results to this JSON file"),
    ("--html", "TPW_AB_HTML", None, "write a self-contained HTML report with SVG charts"),
    ("--otlp", "TPW_AB_OTLP", None, "send the results as OTLP/JSON metrics (tpw.ab.*) to this collector URL"),
    ("--history", "TPW_AB_HISTORY", "~/.local/share/tpw-ab/history.sqlite", "SQLite file of every run (all commands)"),
]

PROMPTS = {
    "chat": ["Explain in a short paragraph why the sky is blue.",
             "Give three tips for writing clear commit messages.",
             "What is the difference between a process and a thread?",
             "Summarise the plot of a heist film you would enjoy, in five sentences."],
    "code": ["Here is a Python module:\n\n" + "\n".join(f"def step_{i}(x):\n    return x * {i} + {i % 7}\n"
                                                        for i in range(120)) +
             "\nWrite a docstring for each function that explains what it computes.",
             "Review this code for bugs and rewrite it idiomatically:\n\n" +
             "\n".join(f"for i in range(len(items_{i})):\n    total_{i} = total_{i} + items_{i}[i]\n"
                       for i in range(80))],
}

# cluster -> boundary -> [(Prometheus metric, label filter)]
BOUNDARIES = {
    "mac-exo": {"soc": [("mac_energy_joules_total", None)], "node": [("mac_energy_system_joules_total", None)]},
    "nvidia": {"board": [("gpu_energy_joules_total", None)],
               "node": [("gpu_energy_joules_total", None), ("host_energy_cpu_joules_total", "rapl_package")]},
}
BOUNDARY_WORDS = {"soc": "Mac SoC", "node": "whole node", "board": "GPU boards"}


class UsageError(Exception):
    pass


# ---------------------------------------------------------------- settings

def env_default(env, default):
    return os.environ.get(env, default)


def load_env_file(path):
    """KEY=VALUE lines into the environment; the file must be private (it holds the API key)."""
    try:
        mode = os.stat(path).st_mode & 0o077
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--env-file {path}: {exc.strerror}")
    if mode:
        raise UsageError(f"--env-file {path} is readable by others; run: chmod 600 {path}")
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            os.environ.setdefault(key.strip(), value.strip().strip('"').strip("'"))


def parse_target(text):
    """NAME=BASE_URL,MODEL,CLUSTER"""
    name, _, rest = text.partition("=")
    parts = rest.split(",")
    if not name or len(parts) != 3 or not all(parts) or not parts[0].startswith(("http://", "https://")):
        raise UsageError(f"--target {text!r}: use NAME=BASE_URL,MODEL,CLUSTER "
                         f"(e.g. nv=http://litellm:4000/v1,qwen3-30b-nvidia,nvidia)")
    return {"name": name, "base_url": parts[0].rstrip("/"), "model": parts[1], "cluster": parts[2]}


def build_parser():
    parser = argparse.ArgumentParser(prog="tpw-ab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Every setting can come from its environment variable; a flag wins.")
    parser.add_argument("--version", action="version", version=f"tpw-ab {__version__}")
    parser.add_argument("--env-file", help="a mode-0600 file of KEY=VALUE lines read first; the targets' API key "
                        "comes from it or the environment (TPW_AB_API_KEY, else OPENAI_API_KEY), never a flag")
    commands = parser.add_subparsers(dest="command", metavar="run | list | compare")
    run = commands.add_parser("run", help="measure the targets", formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--target", action="append", default=[], metavar="NAME=BASE_URL,MODEL,CLUSTER",
                     help="a target (repeat for each); env TPW_AB_TARGETS: targets separated by spaces")
    for flag, env, default, text in SETTINGS:
        shown = f"(env {env}, default {default})" if default is not None else f"(env {env})"
        run.add_argument(flag, default=env_default(env, default), help=f"{text} {shown}")
    listing = commands.add_parser("list", help="the runs in the history")
    listing.add_argument("--history", default=env_default("TPW_AB_HISTORY", SETTINGS[-1][2]),
                         help="SQLite history (env TPW_AB_HISTORY)")
    compare = commands.add_parser("compare", help="two runs side by side")
    compare.add_argument("runs", nargs=2, metavar="RUN")
    compare.add_argument("--history", default=env_default("TPW_AB_HISTORY", SETTINGS[-1][2]),
                         help="SQLite history (env TPW_AB_HISTORY)")
    return parser


def number(args, name, kind=float, minimum=0):
    text = getattr(args, name)
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise UsageError(f"--{name.replace('_', '-')} {text!r}: not a number")
    if value < minimum:
        raise UsageError(f"--{name.replace('_', '-')} {text!r}: at least {minimum}")
    return value


def prompts(spec):
    if spec in PROMPTS:
        return PROMPTS[spec]
    try:
        with open(spec) as fh:
            found = [json.loads(line)["prompt"] for line in fh if line.strip()]
    except OSError as exc:
        raise UsageError(f"--prompts {spec}: {exc.strerror}; or use a built-in set: {', '.join(PROMPTS)}")
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--prompts {spec}: each line must be a JSON object with a \"prompt\" string")
    if not found:
        raise UsageError(f"--prompts {spec}: no prompt in the file")
    return found


# ---------------------------------------------------------------- one streamed request

class Answer:
    """One chat completion as it streamed: when it started, each content chunk, the usage."""

    def __init__(self, target, concurrency, started):
        self.target, self.concurrency, self.started = target, concurrency, started
        self.chunk_times = []     # arrival time of each chunk with content
        self.finished = None
        self.usage_tokens = None  # completion_tokens from the server's usage chunk
        self.counted_tokens = 0   # chunks with content (about one token each)
        self.error = None

    @property
    def tokens(self):
        return self.usage_tokens if self.usage_tokens is not None else self.counted_tokens

    @property
    def ok(self):
        return self.error is None and self.finished is not None and self.chunk_times

    def tokens_between(self, start, end):
        """Output tokens that arrived in (start, end], scaled from chunks to the usage count (a
        chunk at `start` was made before it)."""
        inside = sum(1 for t in self.chunk_times if start < t <= end)
        scale = self.tokens / self.counted_tokens if self.counted_tokens else 0
        return inside * scale


def stream_chat(target, prompt, max_tokens, api_key, timeout, concurrency):
    answer = Answer(target["name"], concurrency, time.time())
    body = {"model": target["model"], "stream": True, "max_tokens": max_tokens,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": prompt}]}
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(target["base_url"] + "/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            read_events(response, answer)
    except urllib.error.HTTPError as exc:
        answer.error = f"HTTP {exc.code}" + (" (rate limited)" if exc.code == 429 else "")
    except (OSError, ValueError) as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    if answer.error is None and not answer.chunk_times:
        answer.error = "the stream carried no content"
    return answer


def read_events(response, answer):
    """Server-sent events: `data: {...}` lines until `data: [DONE]`; a malformed event is skipped."""
    skipped = 0
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            event = json.loads(data)
        except ValueError:
            skipped += 1
            continue
        if isinstance(event.get("error"), dict):  # a proxy reports a failure inside the stream
            answer.error = f"stream error: {str(event['error'].get('message'))[:200]}"
            break
        now = time.time()
        for choice in event.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                answer.chunk_times.append(now)
                answer.counted_tokens += 1
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            answer.usage_tokens = usage["completion_tokens"]
    answer.finished = time.time()
    if skipped and not answer.chunk_times and answer.error is None:
        answer.error = f"{skipped} malformed events and no content"


# ---------------------------------------------------------------- energy counters

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(?:\s+(-?\d+))?\s*$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text, read_at):
    """{(name, labels): (sample time in s, value)} from the text format; a sample's own timestamp
    when it has one (send_timestamps), else the time it was read."""
    found = {}
    for line in text.splitlines():
        match = SAMPLE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        name, _, label_text, value, stamp = match.groups()
        try:
            number_value = float(value)
        except ValueError:
            continue
        labels = tuple(sorted(LABEL.findall(label_text or "")))
        found[(name, labels)] = (int(stamp) / 1000 if stamp else read_at, number_value)
    return found


def wanted(name, labels, cluster, boundary):
    label_map = dict(labels)
    if label_map.get("cluster") != cluster:
        return False
    for metric, rule in BOUNDARIES.get(cluster, {}).get(boundary, []):
        if name == metric:
            if rule == "rapl_package":
                zone = label_map.get("rapl_zone", "")
                return "/" not in zone and zone != "psys"
            return True
    return False


class EnergyReader(threading.Thread):
    """Reads the energy endpoint every `interval` seconds; keeps each series' samples."""

    def __init__(self, url, interval):
        super().__init__(name="energy", daemon=True)
        self.url, self.interval = url, interval
        self.samples = {}  # (name, labels) -> [(time, value)]
        self.errors = 0
        self.last_error = None
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def read_once(self):
        try:
            with urllib.request.urlopen(self.url, timeout=5) as answer:
                text = answer.read().decode("utf-8", "replace")
        except (OSError, ValueError) as exc:
            self.errors += 1
            self.last_error = str(getattr(exc, "reason", exc))
            return False
        now = time.time()
        with self.lock:
            for key, (when, value) in parse_prometheus(text, now).items():
                series = self.samples.setdefault(key, [])
                if not series or when > series[-1][0]:
                    series.append((when, value))
        return True

    def run(self):
        while not self.stopping.wait(self.interval):
            self.read_once()

    def stop(self):
        self.stopping.set()
        self.join(self.interval + 6)
        self.read_once()

    def has_series(self, cluster, boundary):
        with self.lock:
            return any(wanted(k[0], k[1], cluster, boundary) for k in self.samples)

    def joules(self, cluster, boundary, start, end):
        """(joules over [start, end], uncertainty in J, series used) by interpolating each
        series at the edges; a counter that went back (an exporter restart) counts from zero."""
        total, uncertainty, used = 0.0, 0.0, 0
        with self.lock:
            items = [(k, list(v)) for k, v in self.samples.items() if wanted(k[0], k[1], cluster, boundary)]
        for _key, points in items:
            result = series_increase(points, start, end)
            if result is None:
                continue
            joules, spread = result
            total += joules
            uncertainty += spread
            used += 1
        return (total, uncertainty, used) if used else (None, None, 0)


def series_increase(points, start, end):
    """A counter's increase over [start, end] from samples [(t, value)], linear between samples;
    None without samples on both sides of the window. The uncertainty is the energy of the sample
    gaps the edges fall into, at the window's mean power: the exporters' interval leaves that much
    unknown about when inside a gap the energy was spent."""
    if len(points) < 2 or points[0][0] > start or points[-1][0] < end:
        return None
    running, cumulative = 0.0, [(points[0][0], 0.0)]
    for (_t0, v0), (t1, v1) in zip(points, points[1:]):
        running += (v1 - v0) if v1 >= v0 else v1
        cumulative.append((t1, running))

    def at(t):
        for (t0, c0), (t1, c1) in zip(cumulative, cumulative[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0), t1 - t0
        return cumulative[-1][1], 0.0

    first, gap_start = at(start)
    last, gap_end = at(end)
    joules = last - first
    power = joules / (end - start) if end > start else 0.0
    return joules, power * (gap_start + gap_end) / 2


# ---------------------------------------------------------------- a run

def run_level(target, texts, concurrency, settings):
    """settings.requests answers at `concurrency` streams; returns the answers in start order."""
    queue = list(range(settings.requests))
    answers, lock = [], threading.Lock()

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                index = queue.pop(0)
            answer = stream_chat(target, texts[index % len(texts)], settings.max_tokens, settings.api_key,
                                 settings.timeout, concurrency)
            with lock:
                answers.append(answer)
            if answer.error:
                say(f"{target['name']} c={concurrency}: request failed: {answer.error}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    return sorted(answers, key=lambda a: a.started)


def steady_window(answers, concurrency):
    """The steady state of the first wave (ML.ENERGY's window): from the moment all of the first
    `concurrency` streams have their first token until the first of them finishes (its last token). Later waves
    are not used: a stream that takes a new request spends its prefill without tokens."""
    wave = answers[:concurrency]
    if len(wave) < concurrency or not all(a.ok for a in wave):
        return None
    start = max(a.chunk_times[0] for a in wave)
    end = min(a.chunk_times[-1] for a in wave)  # its last token: what follows (usage, [DONE]) is not decoding
    return (start, end) if end > start else None


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    rank = (len(values) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return values[low] + (values[high] - values[low]) * (rank - low)


def latency_stats(answers):
    good = [a for a in answers if a.ok]
    ttft = [a.chunk_times[0] - a.started for a in good]
    e2e = [a.finished - a.started for a in good]
    itl = [b - a for answer in good for a, b in zip(answer.chunk_times, answer.chunk_times[1:])]
    per_request = [a.tokens / (a.finished - a.chunk_times[0]) for a in good
                   if a.finished > a.chunk_times[0] and a.tokens > 1]
    out = {"requests": len(answers), "failed": len(answers) - len(good),
           "output_tokens": sum(a.tokens for a in good),
           "token_count_source": "usage" if good and all(a.usage_tokens is not None for a in good) else
           ("counted" if good and not any(a.usage_tokens is not None for a in good) else "mixed")}
    for name, values in (("ttft_s", ttft), ("itl_s", itl), ("e2e_s", e2e), ("tokens_per_s_per_request", per_request)):
        out[f"{name}_p50"] = percentile(values, 0.5)
        out[f"{name}_p95"] = percentile(values, 0.95)
    if good:
        span = max(a.finished for a in good) - min(a.started for a in good)
        out["tokens_per_s_aggregate"] = out["output_tokens"] / span if span > 0 else None
    return out


def energy_results(reader, idle_watts, target, window, answers, settings):
    """Per boundary: joules in the steady window, per token, per request, $ per 1M, break-even."""
    results = {}
    if reader is None or window is None:
        return results
    start, end = window
    tokens = sum(a.tokens_between(start, end) for a in answers if a.ok)
    seconds = end - start
    good = [a for a in answers if a.ok]
    mean_tokens = sum(a.tokens for a in good) / len(good) if good else 0
    for boundary in BOUNDARIES.get(target["cluster"], {}):
        joules, spread, used = reader.joules(target["cluster"], boundary, start, end)
        if joules is None or tokens <= 0:
            continue
        idle = idle_watts.get((target["cluster"], boundary))
        per_token = joules / tokens
        cost_1m = per_token * 1e6 / 3.6e6 * settings.price_per_kwh
        entry = {"boundary": BOUNDARY_WORDS[boundary], "window_s": seconds, "window_tokens": tokens,
                 "joules": joules, "uncertainty_joules": spread, "joules_per_token": per_token,
                 "tokens_per_joule": tokens / joules if joules > 0 else None,
                 "joules_per_request": per_token * mean_tokens,
                 "cost_per_1m_tokens": cost_1m,
                 "api_over_onprem": settings.api_price_per_1m / cost_1m if cost_1m > 0 else None,
                 "series": used}
        if idle is not None:
            above = joules - idle * seconds
            entry["idle_watts"] = idle
            entry["joules_per_token_above_idle"] = above / tokens
        results[boundary] = entry
    return results


def idle_baseline(reader, clusters, seconds):
    """Watts per (cluster, boundary) over `seconds` before any request."""
    if reader is None or seconds <= 0:
        return {}
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    wanted_pairs = [(c, b) for c in clusters for b in BOUNDARIES.get(c, {}) if reader.has_series(c, b)]
    # A sample after the end is needed to interpolate the edge; on a loaded machine one read may fail
    # or come back stamped before the end, so read again (bounded) until every boundary has one.
    deadline = time.monotonic() + max(5.0, 3 * reader.interval)
    while True:
        reader.read_once()
        idle = {}
        for cluster, boundary in wanted_pairs:
            joules, _spread, _used = reader.joules(cluster, boundary, start, end)
            if joules is not None:
                idle[(cluster, boundary)] = joules / (end - start)
        if len(idle) == len(wanted_pairs) or time.monotonic() >= deadline:
            return idle
        time.sleep(0.05)


def say(text):
    sys.stderr.write(f"tpw-ab: {text}\n")
    sys.stderr.flush()


def measure(settings, targets, texts):
    run = {"id": uuid.uuid4().hex[:8], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": {k: getattr(settings, k) for k in ("requests", "concurrency", "max_tokens", "warmup",
                                                           "prompts", "price_per_kwh", "api_price_per_1m",
                                                           "currency", "energy_url")},
           "targets": targets, "results": [], "notes": [], "interrupted": False}
    reader = None
    if settings.energy_url:
        reader = EnergyReader(settings.energy_url, settings.energy_interval)
        if not reader.read_once():
            run["notes"].append(f"energy endpoint {settings.energy_url} unreachable ({reader.last_error}): "
                                "no energy figures")
            say(run["notes"][-1])
            reader = None
        else:
            reader.start()
    else:
        run["notes"].append("no --energy-url: latency only, energy is missing")
    try:
        idle = idle_baseline(reader, {t["cluster"] for t in targets}, settings.idle_seconds)
        for target in targets:
            for _ in range(settings.warmup):
                stream_chat(target, texts[0], settings.max_tokens, settings.api_key, settings.timeout, 1)
            for concurrency in settings.concurrency:
                say(f"{target['name']}: {settings.requests} requests at concurrency {concurrency}")
                answers = run_level(target, texts, concurrency, settings)
                if reader is not None:
                    reader.read_once()
                    time.sleep(min(2.0, settings.energy_interval * 1.5))  # the exporters' next samples
                    reader.read_once()
                window = steady_window(answers, concurrency)
                result = {"target": target["name"], "cluster": target["cluster"], "model": target["model"],
                          "concurrency": concurrency, **latency_stats(answers),
                          "window": list(window) if window else None,
                          "energy": energy_results(reader, idle, target, window, answers, settings)}
                if reader is not None and not result["energy"]:
                    result["energy_missing"] = (reader.last_error or "no energy series of this cluster "
                                                "cover the window")
                run["results"].append(result)
    except KeyboardInterrupt:
        run["interrupted"] = True
        run["notes"].append("interrupted: the levels that finished are kept")
    finally:
        if reader is not None:
            reader.stop()
            if reader.errors:
                run["notes"].append(f"energy endpoint failed {reader.errors} times during the run "
                                    f"(last: {reader.last_error}); affected levels have no energy figures")
    return run


# ---------------------------------------------------------------- output

def fmt(value, digits=3):
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def table(run):
    rows = [("target", "cluster", "c", "ttft p50", "ttft p95", "itl p50", "tok/s/req", "tok/s all", "boundary",
             "J/token", "+-%", "above idle", "tokens/J", "$/1M", "API/on-prem")]
    for r in run["results"]:
        energy = list(r["energy"].values()) or [None]
        for e in energy:
            rows.append((r["target"], r["cluster"], str(r["concurrency"]), fmt(r["ttft_s_p50"]), fmt(r["ttft_s_p95"]),
                         fmt(r["itl_s_p50"]), fmt(r["tokens_per_s_per_request_p50"]),
                         fmt(r.get("tokens_per_s_aggregate")),
                         e["boundary"] if e else "(no energy)", fmt(e and e["joules_per_token"]),
                         fmt(e and e["joules"] and 100 * e["uncertainty_joules"] / e["joules"], 2),
                         fmt(e and e.get("joules_per_token_above_idle")),
                         fmt(e and e["tokens_per_joule"]), fmt(e and e["cost_per_1m_tokens"], 2),
                         fmt(e and e["api_over_onprem"], 3)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    currency = run["settings"]["currency"]
    lines.append("J/token over the steady window; +-%: what the exporters' sample gaps at its edges leave unknown; "
                 "above idle: less the idle baseline's watts")
    lines.append(f"$ = {currency} at {run['settings']['price_per_kwh']}/kWh; API/on-prem: an API at "
                 f"{run['settings']['api_price_per_1m']} {currency} per 1M output tokens over this electricity "
                 f"(above 1: cheaper here)")
    return "\n".join(lines + [f"note: {n}" for n in run["notes"]])


def svg_line_chart(series, x_label, y_label, width=700, height=280):
    """series: {name: [(x, y)]} -> an inline SVG line chart, no scripts, no external assets."""
    points = [p for values in series.values() for p in values if p[1] is not None]
    if not points:
        return f'<svg class="chart" width="{width}" height="{height}"><text x="10" y="20">no data</text></svg>'
    xs, ys = sorted({p[0] for p in points}), [p[1] for p in points]
    x0, x1, y1 = xs[0], xs[-1], max(ys) or 1.0
    right = width - 200  # the legend sits to the right of the plot
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

    def px(x):
        return 60 + (x - x0) / ((x1 - x0) or 1) * (right - 80)

    def py(y):
        return height - 40 - y / y1 * (height - 70)
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="60" y1="{height - 40}" x2="{right}" y2="{height - 40}" stroke="#333"/>',
             f'<line x1="60" y1="20" x2="60" y2="{height - 40}" stroke="#333"/>',
             f'<text x="{(60 + right) / 2:.0f}" y="{height - 6}" text-anchor="middle">{html.escape(x_label)}</text>',
             f'<text x="8" y="14">{html.escape(y_label)}</text>',
             f'<text x="54" y="{py(y1) + 4:.1f}" text-anchor="end">{fmt(y1)}</text>',
             f'<text x="54" y="{height - 36}" text-anchor="end">0</text>']
    parts += [f'<text x="{px(x):.1f}" y="{height - 24}" text-anchor="middle">{fmt(x)}</text>' for x in xs]
    for i, (name, values) in enumerate(series.items()):
        good = sorted((x, y) for x, y in values if y is not None)
        if not good:
            continue
        color = colors[i % len(colors)]
        parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" '
                     f'points="{" ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in good)}"/>')
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in good]
        parts.append(f'<text x="{right + 16}" y="{30 + 18 * i}" fill="{color}">{html.escape(name)}</text>')
    return "\n".join(parts + ["</svg>"])


def html_report(run):
    by_target = {}
    for r in run["results"]:
        for e in r["energy"].values():
            by_target.setdefault(f"{r['target']} ({e['boundary']})", []).append(
                (r["concurrency"], e["tokens_per_joule"]))
    latency = {r_name: [] for r_name in {r["target"] for r in run["results"]}}
    for r in run["results"]:
        latency[r["target"]].append((r["concurrency"], r["e2e_s_p50"]))
    return "\n".join([
        "<!doctype html><html><head><meta charset='utf-8'><title>tpw-ab run " + run["id"] + "</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}th{background:#eee}</style></head><body>",
        f"<h1>tpw-ab run {run['id']}</h1><p>{html.escape(run['started'])}</p>",
        "<h2>Tokens per joule against concurrency</h2>",
        svg_line_chart(by_target, "concurrent streams", "tokens per joule"),
        "<h2>End-to-end latency p50 against concurrency</h2>",
        svg_line_chart(latency, "concurrent streams", "seconds"),
        "<h2>Results</h2><pre>" + html.escape(table(run)) + "</pre>",
        "</body></html>"])


def send_otlp(run, endpoint):
    """tpw.ab.* gauges, one data point per target, concurrency and boundary."""
    now = str(time.time_ns())
    metrics = {}

    def point(name, unit, value, attributes):
        if value is None:
            return
        attrs = [{"key": k, "value": {"stringValue": str(v)}} for k, v in attributes.items()]
        metrics.setdefault((name, unit), []).append({"timeUnixNano": now, "asDouble": float(value),
                                                     "attributes": attrs})
    for r in run["results"]:
        base = {"tpw.ab.run": run["id"], "tpw.ab.target": r["target"], "cluster": r["cluster"],
                "gen_ai.request.model": r["model"], "tpw.ab.concurrency": r["concurrency"]}
        point("tpw.ab.ttft.p50", "s", r["ttft_s_p50"], base)
        point("tpw.ab.e2e.p50", "s", r["e2e_s_p50"], base)
        point("tpw.ab.tokens_per_second", "{token}/s", r.get("tokens_per_s_aggregate"), base)
        for e in r["energy"].values():
            attrs = dict(base, **{"tpw.ab.boundary": e["boundary"]})
            point("tpw.ab.joules_per_token", "J", e["joules_per_token"], attrs)
            point("tpw.ab.tokens_per_joule", "{token}/J", e["tokens_per_joule"], attrs)
            point("tpw.ab.cost_per_1m_tokens", "1", e["cost_per_1m_tokens"], attrs)
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "tpw-ab"}}]}
    body = {"resourceMetrics": [{"resource": resource,
                                 "scopeMetrics": [{"scope": {"name": "tokens-per-watt/tpw-ab"}, "metrics": [
                                     {"name": name, "unit": unit, "gauge": {"dataPoints": points}}
                                     for (name, unit), points in metrics.items()]}]}]}
    url = endpoint.rstrip("/") + ("" if endpoint.rstrip("/").endswith("/v1/metrics") else "/v1/metrics")
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).read()
        return None
    except (OSError, ValueError) as exc:
        return f"--otlp {url}: {getattr(exc, 'reason', exc)}"


# ---------------------------------------------------------------- history

def history(path):
    path = os.path.expanduser(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, started TEXT, document TEXT)")
    return db


def keep(run, path):
    with history(path) as db:
        db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", (run["id"], run["started"], json.dumps(run)))


def load_run(db, run_id):
    row = db.execute("SELECT document FROM runs WHERE id = ? OR id LIKE ?", (run_id, run_id + "%")).fetchone()
    if row is None:
        raise UsageError(f"no run {run_id!r} in the history; `tpw-ab list` shows them")
    return json.loads(row[0])


def command_list(args):
    with history(args.history) as db:
        rows = db.execute("SELECT id, started, document FROM runs ORDER BY started").fetchall()
    if not rows:
        print("no runs yet: tpw-ab run --target ...")
    for run_id, started, document in rows:
        run = json.loads(document)
        targets = ", ".join(f"{t['name']} ({t['cluster']})" for t in run["targets"])
        print(f"{run_id}  {started}  {targets}  concurrency {run['settings']['concurrency']}")
    return EXIT_OK


def command_compare(args):
    with history(args.history) as db:
        runs = [load_run(db, run_id) for run_id in args.runs]
    for run in runs:
        print(f"== run {run['id']} ({run['started']})")
        print(table(run))
    return EXIT_OK


# ---------------------------------------------------------------- main

def command_run(args):
    targets = [parse_target(t) for t in (args.target or os.environ.get("TPW_AB_TARGETS", "").split())]
    if not targets:
        raise UsageError("no --target: give NAME=BASE_URL,MODEL,CLUSTER once per target")
    try:
        args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    except ValueError:
        raise UsageError(f"--concurrency {args.concurrency!r}: a comma list of whole numbers, e.g. 1,4,8")
    if any(c < 1 for c in args.concurrency):
        raise UsageError("--concurrency: each level is at least 1")
    args.requests = number(args, "requests", int, 1)
    args.max_tokens = number(args, "max_tokens", int, 1)
    args.warmup = number(args, "warmup", int, 0)
    for name in ("price_per_kwh", "api_price_per_1m", "idle_seconds", "timeout"):
        setattr(args, name, number(args, name))
    args.energy_interval = number(args, "energy_interval", float, 0.05)
    if args.requests < max(args.concurrency):
        raise UsageError(f"--requests {args.requests}: at least the highest concurrency ({max(args.concurrency)})")
    texts = prompts(args.prompts)
    run = measure(args, targets, texts)
    keep(run, args.history)
    print(table(run))
    print(f"run {run['id']} kept in {os.path.expanduser(args.history)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(run, fh, indent=2)
    if args.html:
        with open(args.html, "w") as fh:
            fh.write(html_report(run))
    if args.otlp:
        problem = send_otlp(run, args.otlp)
        if problem:
            say(problem)
    if run["interrupted"]:
        return EXIT_INTERRUPTED
    failed = [t["name"] for t in targets if not any(r["target"] == t["name"] and r["failed"] < r["requests"]
                                                    for r in run["results"])]
    return EXIT_FAILED if failed else EXIT_OK


def main(argv=None):
    # Ctrl-C must end a run with the levels that finished, whatever the parent left SIGINT as (a
    # process started with SIGINT ignored would otherwise run on to the end).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.env_file:
            load_env_file(args.env_file)
            args = build_parser().parse_args(argv)  # the file's values as defaults; flags still win
        if args.command == "run":
            args.api_key = os.environ.get("TPW_AB_API_KEY") or os.environ.get("OPENAI_API_KEY")
            return command_run(args)
        if args.command == "list":
            return command_list(args)
        if args.command == "compare":
            return command_compare(args)
        parser.print_help()
        return EXIT_USAGE
    except UsageError as exc:
        sys.stderr.write(f"tpw-ab: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
