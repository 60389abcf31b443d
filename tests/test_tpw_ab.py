"""tpw-ab through its command line, against stand-in OpenAI-compatible upstreams with a known token
schedule and a stand-in energy endpoint whose counters rise at known watts: joules per token must
come out within 1% of the analytic value."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import ROOT, load_module
from energy_standin import EnergyStandin
from openai_upstream import Upstream
from otlp_receiver import Receiver

TPW_AB = os.path.join(ROOT, "tpw-ab", "tpw-ab.py")
RATE = {"mac-exo": 100.0, "nvidia": 200.0}  # tokens per second per stream
WATTS = {("mac-exo", "Mac SoC"): 40.0, ("mac-exo", "whole node"): 100.0, ("nvidia", "GPU boards"): 300.0,
         ("nvidia", "whole node"): 400.0}  # the node: boards + RAPL packages, not core or psys


@pytest.fixture(scope="module")
def ab():
    return load_module(TPW_AB, "tpw_ab")


@pytest.fixture
def lab(tmp_path):
    mac = Upstream(output_tokens=200, ttft_s=0.05, token_interval_s=1 / RATE["mac-exo"])
    nv = Upstream(output_tokens=300, ttft_s=0.03, token_interval_s=1 / RATE["nvidia"])
    energy = EnergyStandin()
    yield {"mac": mac, "nv": nv, "energy": energy, "history": str(tmp_path / "history.sqlite"), "tmp": tmp_path}
    for server in (mac, nv, energy):
        server.stop()


def tpw_ab(*args, env=None, timeout=120):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("TPW_AB_", "OPENAI_"))}
    environment.update(env or {})
    return subprocess.run([sys.executable, TPW_AB, *args], capture_output=True, text=True, timeout=timeout,
                          env=environment)


def run_args(lab, *extra):
    return ["run", "--target", f"mac={lab['mac'].url},mlx-qwen,mac-exo", "--target", f"nv={lab['nv'].url},qwen,nvidia",
            "--energy-url", lab["energy"].url, "--energy-interval", "0.2", "--idle-seconds", "1",
            "--history", lab["history"], *extra]


def test_help_documents_every_flag_with_its_environment_variable(ab):
    text = tpw_ab("run", "--help", env={"COLUMNS": "250"}).stdout
    for flag, env, default, _text in ab.SETTINGS:
        assert flag in text and env in text, flag
        if default is not None:
            assert f"default {default}" in " ".join(text.split()), flag
    assert "--api-key" not in text  # a secret never on a command line
    assert "TPW_AB_API_KEY" in tpw_ab("--help").stdout


def test_joules_per_token_match_the_analytic_value_in_a_sweep(lab):
    out = lab["tmp"] / "run.json"
    result = tpw_ab(*run_args(lab, "--concurrency", "1,2", "--requests", "2", "--json", str(out)))
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(out.read_text())
    levels = {(r["target"], r["concurrency"]): r for r in run["results"]}
    assert set(levels) == {("mac", 1), ("mac", 2), ("nv", 1), ("nv", 2)}
    for (target, concurrency), r in levels.items():
        cluster = r["cluster"]
        assert r["failed"] == 0 and r["token_count_source"] == "usage"
        assert {e["boundary"] for e in r["energy"].values()} == {b for c, b in WATTS if c == cluster}
        for e in r["energy"].values():
            want = WATTS[(cluster, e["boundary"])] / (RATE[cluster] * concurrency)
            assert e["joules_per_token"] == pytest.approx(want, rel=0.01), (target, concurrency, e)
            assert e["tokens_per_joule"] == pytest.approx(1 / want, rel=0.01)
            assert e["cost_per_1m_tokens"] == pytest.approx(want * 1e6 / 3.6e6 * 0.30, rel=0.01)
            assert e["api_over_onprem"] == pytest.approx(0.60 / e["cost_per_1m_tokens"], rel=1e-9)
            # the idle baseline: the stand-in draws the same when idle, so nothing is above idle
            assert e["idle_watts"] == pytest.approx(WATTS[(cluster, e["boundary"])], rel=0.01)
            assert abs(e["joules_per_token_above_idle"]) < 0.02 * want
        assert r["ttft_s_p50"] == pytest.approx(0.05 if target == "mac" else 0.03, abs=0.03)
        assert r["itl_s_p50"] == pytest.approx(1 / RATE[cluster], rel=0.2)
    assert "Mac SoC" in result.stdout and "GPU boards" in result.stdout and re.search(r"run \w{8} kept", result.stdout)


def test_without_energy_the_latency_part_works_and_says_so(lab):
    result = tpw_ab("run", "--target", f"mac={lab['mac'].url},mlx-qwen,mac-exo", "--requests", "1",
                    "--history", lab["history"])
    assert result.returncode == 0, result.stderr
    assert "(no energy)" in result.stdout and "no --energy-url: latency only, energy is missing" in result.stdout


def test_history_list_and_compare(lab):
    for _ in range(2):
        assert tpw_ab(*run_args(lab, "--requests", "1", "--idle-seconds", "0")).returncode == 0
    runs = [row[0] for row in sqlite3.connect(lab["history"]).execute("SELECT id FROM runs ORDER BY started")]
    assert len(runs) == 2
    listing = tpw_ab("list", "--history", lab["history"])
    assert listing.returncode == 0 and all(r in listing.stdout for r in runs)
    compared = tpw_ab("compare", *runs, "--history", lab["history"])
    assert compared.returncode == 0 and compared.stdout.count("== run ") == 2
    missing = tpw_ab("compare", runs[0], "nope", "--history", lab["history"])
    assert missing.returncode == 2 and "no run 'nope' in the history" in missing.stderr


def test_a_server_without_usage_is_counted_and_said(lab):
    lab["mac"].include_usage = False
    out = lab["tmp"] / "run.json"
    assert tpw_ab(*run_args(lab, "--requests", "1", "--idle-seconds", "0", "--json", str(out))).returncode == 0
    mac = next(r for r in json.loads(out.read_text())["results"] if r["target"] == "mac")
    assert mac["token_count_source"] == "counted" and mac["output_tokens"] == 200


def test_a_target_that_refuses_is_a_line_and_the_run_finishes(lab):
    out = lab["tmp"] / "run.json"
    result = tpw_ab("run", "--target", "down=http://127.0.0.1:9/v1,x,nvidia", "--target",
                    f"mac={lab['mac'].url},mlx-qwen,mac-exo", "--requests", "1", "--history", lab["history"],
                    "--json", str(out))
    assert result.returncode == 1  # a target failed every request
    assert "down c=1: request failed: URLError" in result.stderr
    levels = {r["target"]: r for r in json.loads(out.read_text())["results"]}
    assert levels["down"]["failed"] == 1 and levels["mac"]["failed"] == 0


def test_rate_limited_and_malformed_events(lab, ab):
    """429 on every request is named; a malformed event inside a stream is skipped."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if "limited" in self.path:
                self.send_response(429)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {not json\n\n'
                    b'data: {"choices":[{"delta":{"content":"b"}}]}\n\ndata: [DONE]\n\n')
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        target = {"name": "t", "base_url": base + "/v1", "model": "m", "cluster": "nvidia"}
        answer = ab.stream_chat(target, "hi", 10, None, 5, 1)
        assert answer.ok and answer.counted_tokens == 2 and answer.usage_tokens is None
        limited = ab.stream_chat(dict(target, base_url=base + "/limited/v1"), "hi", 10, None, 5, 1)
        assert limited.error == "HTTP 429 (rate limited)"
    finally:
        server.shutdown()
        server.server_close()


def test_an_energy_endpoint_that_goes_away_is_noted(lab):
    lab["energy"].up = False
    out = lab["tmp"] / "run.json"
    result = tpw_ab(*run_args(lab, "--requests", "1", "--idle-seconds", "0", "--json", str(out)))
    assert result.returncode == 0
    assert "unreachable" in result.stderr and "no energy figures" in result.stdout


def test_ctrl_c_keeps_the_levels_already_finished(lab):
    slow = Upstream(output_tokens=50, token_interval_s=0.1)
    try:
        proc = subprocess.Popen([sys.executable, TPW_AB, "run", "--target", f"mac={lab['mac'].url},m,mac-exo",
                                 "--target", f"slow={slow.url},m,nvidia", "--requests", "2",
                                 "--history", lab["history"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not slow.requests:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        slow.stop()
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "interrupted: the levels that finished are kept" in out
    rows = sqlite3.connect(lab["history"]).execute("SELECT document FROM runs").fetchall()
    kept = json.loads(rows[0][0])
    assert [r["target"] for r in kept["results"]] == ["mac"] and kept["interrupted"]


def test_results_go_out_as_otlp_metrics(lab):
    receiver = Receiver()
    try:
        result = tpw_ab(*run_args(lab, "--requests", "1", "--idle-seconds", "0", "--otlp", receiver.url))
        assert result.returncode == 0, result.stderr
        assert receiver.wait_for(lambda: receiver.series("tpw.ab.joules_per_token"), 10)
    finally:
        receiver.stop()
    point = receiver.series("tpw.ab.joules_per_token")[0]
    assert {"tpw.ab.run", "tpw.ab.target", "cluster", "tpw.ab.boundary"} <= set(point.attributes)
    assert point.unit == "J"


def test_usage_errors_are_one_line_with_exit_2(lab, tmp_path):
    for args, needle in ((["run"], "no --target"),
                         (["run", "--target", "x=ftp://a,b,c"], "NAME=BASE_URL,MODEL,CLUSTER"),
                         (["run", "--target", f"m={lab['mac'].url},m,mac-exo", "--concurrency", "a"], "comma list"),
                         (["run", "--target", f"m={lab['mac'].url},m,mac-exo", "--concurrency", "4", "--requests",
                           "2"], "at least the highest concurrency")):
        result = tpw_ab(*args, "--history", lab["history"]) if args[0] == "run" and len(args) > 1 else tpw_ab(*args)
        assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr, args
    env_file = tmp_path / "ab.env"
    env_file.write_text("TPW_AB_API_KEY=sk-secret\n")
    env_file.chmod(0o644)
    result = tpw_ab("--env-file", str(env_file), "list", "--history", lab["history"])
    assert result.returncode == 2 and "chmod 600" in result.stderr


def test_the_api_key_comes_from_a_private_env_file(lab, tmp_path):
    env_file = tmp_path / "ab.env"
    env_file.write_text("TPW_AB_API_KEY=sk-from-file\n")
    env_file.chmod(0o600)
    result = tpw_ab("--env-file", str(env_file), "run", "--target", f"mac={lab['mac'].url},m,mac-exo",
                    "--requests", "1", "--history", lab["history"])
    assert result.returncode == 0, result.stderr
    assert "sk-from-file" not in result.stdout + result.stderr


def test_window_and_edges(ab):
    """series_increase: linear between samples, a reset counts from zero, no answer without
    samples on both sides; steady_window: the first wave's all-streaming time."""
    points = [(0.0, 0.0), (1.0, 10.0), (2.0, 20.0), (3.0, 5.0), (4.0, 15.0)]  # reset before t=3
    joules, spread = ab.series_increase(points, 0.5, 3.5)
    assert joules == pytest.approx(5 + 10 + 5 + 5)  # 0.5->1, 1->2, 2->3 (reset: 5), 3->3.5
    assert spread == pytest.approx(joules / 3.0 * (1 + 1) / 2)
    assert ab.series_increase(points, -1, 3) is None and ab.series_increase(points, 1, 5) is None

    class Fake:
        def __init__(self, started, first, finished):
            self.started, self.chunk_times, self.finished, self.error = started, [first, finished], finished, None

        ok = property(lambda self: True)
    wave = [Fake(0, 1.0, 5.0), Fake(0, 1.5, 4.0), Fake(4.1, 4.5, 9.0)]
    assert ab.steady_window(wave, 2) == (1.5, 4.0)
    assert ab.steady_window(wave[:1], 2) is None


def test_a_jsonl_prompt_file_and_a_bad_one(lab, tmp_path):
    good = tmp_path / "prompts.jsonl"
    good.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    assert tpw_ab("run", "--target", f"m={lab['mac'].url},m,mac-exo", "--requests", "2", "--prompts", str(good),
                  "--history", lab["history"]).returncode == 0
    assert {m["content"] for r in lab["mac"].requests for m in r["messages"]} >= {"one", "two"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    result = tpw_ab("run", "--target", f"m={lab['mac'].url},m,mac-exo", "--prompts", str(bad))
    assert result.returncode == 2 and 'a JSON object with a "prompt" string' in result.stderr


def test_the_html_report_renders_its_charts_in_chromium(lab, tmp_path):
    """Headless Chromium (Debian's) opens the report from disk, with no network: both charts are
    there with a line per target and boundary, and nothing is fetched from elsewhere."""
    from conftest import need_peer
    need_peer("chromium", "chromium")
    report = tmp_path / "report.html"
    result = tpw_ab(*run_args(lab, "--concurrency", "1,2", "--requests", "2", "--idle-seconds", "0",
                              "--html", str(report)))
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in text
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<svg class="chart"') == 2
    assert dom.stdout.count('class="series"') == 4 + 2  # tokens/J: 2 targets x 2 boundaries; latency: 2 targets
    assert "tokens per joule" in dom.stdout and "GPU boards" in dom.stdout


def test_end_to_end_through_the_real_litellm_proxy(lab, tmp_path):
    """The project's LiteLLM excerpt in front of the two stand-in clusters; tpw-ab asks for the
    public model names through it, as a user would."""
    from litellm_peer import LiteLLM
    receiver = Receiver()
    proxy = LiteLLM(tmp_path, {"qwen3-30b-mac": lab["mac"].url, "qwen3-30b-nvidia": lab["nv"].url}, receiver.url)
    try:
        proxy.wait_ready()
        out = tmp_path / "run.json"
        result = tpw_ab("run", "--target", f"mac={proxy.url},qwen3-30b-mac,mac-exo",
                        "--target", f"nv={proxy.url},qwen3-30b-nvidia,nvidia", "--energy-url", lab["energy"].url,
                        "--energy-interval", "0.2", "--idle-seconds", "0", "--requests", "2", "--concurrency", "1,2",
                        "--history", lab["history"], "--json", str(out), env={"TPW_AB_API_KEY": proxy.key})
    finally:
        proxy.stop()
        receiver.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(out.read_text())
    for r in run["results"]:
        assert r["failed"] == 0 and r["token_count_source"] == "usage", r
        assert r["output_tokens"] == (200 if r["cluster"] == "mac-exo" else 256) * 2  # max_tokens 256
        for e in r["energy"].values():
            want = WATTS[(r["cluster"], e["boundary"])] / (RATE[r["cluster"]] * r["concurrency"])
            assert e["joules_per_token"] == pytest.approx(want, rel=0.03), (r["target"], e)  # a proxy between
    assert {b["model"] for b in lab["mac"].requests} == {"mlx-community/Qwen3-30B-A3B-4bit"}


def test_make_demo_ends_with_the_answer():
    """make demo with no site-packages at all (-I -S): the exporter table for every macmon format,
    then tpw-ab's side-by-side table for the two stand-in clusters."""
    done = subprocess.run([sys.executable, "-I", "-S", os.path.join(ROOT, "tests", "tools", "demo.py")],
                          capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "7 of 7 macmon formats delivered" in done.stdout
    table = done.stdout.split("tpw-ab: the same prompts")[1]
    for needle in ("mac-exo", "nvidia", "Mac SoC", "whole node", "GPU boards", "tokens/J", "$/1M"):
        assert needle in table, needle
    rows = [line.split() for line in table.splitlines() if line.startswith(("mac ", "nvidia "))]
    assert len(rows) == 8  # 2 targets x 2 concurrencies x 2 boundaries


def test_an_energy_endpoint_that_disappears_mid_run_is_noted_and_the_run_finishes(lab):
    import threading

    def pull_the_plug():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not lab["mac"].requests:
            time.sleep(0.05)
        lab["energy"].up = False
    threading.Thread(target=pull_the_plug, daemon=True).start()
    out = lab["tmp"] / "run.json"
    result = tpw_ab(*run_args(lab, "--requests", "1", "--json", str(out)))
    assert result.returncode == 0, result.stderr
    run = json.loads(out.read_text())
    assert any("energy endpoint failed" in note for note in run["notes"])
    assert len(run["results"]) == 2 and all(r["failed"] == 0 for r in run["results"])
    assert all(not r["energy"] and r["energy_missing"] for r in run["results"])


def test_the_idle_baseline_reads_again_when_the_read_after_its_window_fails(ab):
    """The baseline needs a sample after its window's end; a loaded machine can lose that one read.
    The reader's background thread is not started, so only idle_baseline's own reads count."""
    energy = EnergyStandin()
    try:
        reader = ab.EnergyReader(energy.url, 0.2)
        assert reader.read_once()  # as the run does before the baseline: a sample before the window
        real_read, calls = reader.read_once, []

        def first_read_lost():
            calls.append(time.time())
            return False if len(calls) == 1 else real_read()

        reader.read_once = first_read_lost
        idle = ab.idle_baseline(reader, {"mac-exo", "nvidia"}, 0.3)
        assert len(calls) >= 2
        words = {(cluster, ab.BOUNDARY_WORDS[boundary]): watts for (cluster, boundary), watts in idle.items()}
        assert set(words) == set(WATTS)
        for key, watts in words.items():
            assert watts == pytest.approx(WATTS[key], rel=0.01), key
    finally:
        energy.stop()
