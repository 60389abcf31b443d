"""Dashboards: importable shapes, every queried metric exists with its unit, the efficiency formulas
on worked examples, and the push scripts against loopback stand-ins of the three APIs."""
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse

import pytest
from conftest import MACMON_EXPORTER, NVSMI_EXPORTER, ROOT, load_module

DASH = os.path.join(ROOT, "dashboards")
build = load_module(os.path.join(DASH, "build.py"), "dashboard_build")


def load(path):
    with open(os.path.join(DASH, path)) as fh:
        return json.load(fh)


def exporter_units():
    units = {}
    for path in (MACMON_EXPORTER, NVSMI_EXPORTER):
        out = subprocess.run([sys.executable, path, "--list-metrics"], capture_output=True, text=True, check=True)
        units.update({m["name"]: m["unit"] for m in json.loads(out.stdout)})
    return units


def known_units():
    units = exporter_units()
    units.update({name: m["unit"] for name, m in load("external-metrics.json")["metrics"].items()})
    return units


def base_name(name, known):
    """A queried name back to its metric: histograms are queried through suffixes."""
    if name in known:
        return name
    for suffix in (".sum", ".count", ".bucket", "_sum", "_count", "_bucket", "_min", "_max"):
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return name


def queried_metrics():
    """(backend, panel title, metric name) for every metric every panel queries, read from the files."""
    out = []
    for widget in load("signoz/tokens-per-watt.json")["widgets"]:
        query = widget["query"]
        for q in query["builder"]["queryData"]:
            out += [("signoz", widget["title"], a["metricName"]) for a in q["aggregations"]]
        for q in query["clickhouse_sql"]:
            for found in re.finditer(r"metric_name (?:= '([^']+)'|IN \(([^)]*)\))", q["query"]):
                names = [found.group(1)] if found.group(1) else re.findall(r"'([^']+)'", found.group(2))
                out += [("signoz", widget["title"], n) for n in names]
    splunk = load("splunk-enterprise/tokens-per-watt.json")
    for ds in splunk["dataSources"].values():
        functions = r'\b(?:avg|sum|count|max|min|rate|rate_sum|earliest|latest|latest_time)\("([^"]+)"\)'
        out += [("splunk", ds["name"], n) for n in re.findall(functions, ds["options"]["query"])]
    for chart in load("splunk-o11y/tokens-per-watt.json")["charts"]:
        out += [("o11y", chart["name"], n) for n in re.findall(r"data\('([^']+)'", chart["programText"])]
    return out


def test_committed_dashboards_are_built_from_the_one_layout():
    result = subprocess.run([sys.executable, os.path.join(DASH, "build.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_same_layout_everywhere():
    signoz = [w["title"] for w in load("signoz/tokens-per-watt.json")["widgets"]]
    splunk = [v["title"] for v in load("splunk-enterprise/tokens-per-watt.json")["visualizations"].values()]
    o11y = [c["name"] for c in load("splunk-o11y/tokens-per-watt.json")["charts"]]
    grafana = [p["title"] for p in load("grafana/tokens-per-watt.json")["panels"]]
    assert signoz == splunk == o11y == grafana
    for needle in ("hosts reporting", "GPUs reporting", "watts now", "output tokens/s now", "tokens per joule",
                   "$ per 1k tokens", "Power per host", "Request latency", "Time to first token", "Idle power",
                   "Exporter buffer", "Data points dropped", "Source restarts", "Last sample age"):
        assert any(needle in title for title in signoz), needle


def test_every_efficiency_panel_names_its_boundary():
    for widget in load("signoz/tokens-per-watt.json")["widgets"]:
        if "per joule" in widget["title"] or "per 1k tokens" in widget["title"]:
            assert any(label in widget["title"] for label, _m in build.BOUNDARIES.values()), widget["title"]
            assert "boundary" in widget["description"]


# Key sets of a public example, SigNoz/dashboards nvidia-dcgm/nvidia-dcgm.json (classic, version v5):
# what an importable dashboard, layout item, variable, widget, query and builder query carry.
EXAMPLE_SIGNOZ = {
    "dashboard": {"title", "description", "tags", "layout", "panelMap", "uploadedGrafana", "variables", "version",
                  "widgets"},
    "layout": {"i", "x", "y", "w", "h", "moved", "static"},
    "variable": {"id", "key", "name", "type", "description", "multiSelect", "showALLOption", "sort", "order",
                 "allSelected", "customValue", "defaultValue", "textboxValue", "queryValue"},
    "widget": {"id", "panelTypes", "title", "description", "yAxisUnit", "timePreferance", "query", "opacity",
               "nullZeroValues"},
    "query": {"id", "queryType", "builder", "clickhouse_sql", "promql"},
    "queryData": {"queryName", "expression", "dataSource", "disabled", "aggregations", "filter", "groupBy",
                  "functions", "having", "legend", "orderBy", "limit", "stepInterval", "source"},
    "aggregation": {"metricName", "temporality", "timeAggregation", "spaceAggregation", "reduceTo"},
    "groupBy": {"key", "dataType", "type", "id", "isColumn", "isJSON"},
}


def test_signoz_shape():
    """The classic format that the UI import and POST /api/v1/dashboards take, key for key like a
    public example."""
    dash = load("signoz/tokens-per-watt.json")
    assert EXAMPLE_SIGNOZ["dashboard"] <= set(dash)
    assert dash["version"] == "v5"
    for item in dash["layout"]:
        assert EXAMPLE_SIGNOZ["layout"] <= set(item)
    for variable in dash["variables"].values():
        assert EXAMPLE_SIGNOZ["variable"] <= set(variable)
        if variable["type"] == "DYNAMIC":
            assert variable["dynamicVariablesAttribute"] and variable["dynamicVariablesSource"]
    for widget in dash["widgets"]:
        assert EXAMPLE_SIGNOZ["widget"] <= set(widget) and EXAMPLE_SIGNOZ["query"] <= set(widget["query"])
        for q in widget["query"]["builder"]["queryData"]:
            assert EXAMPLE_SIGNOZ["queryData"] <= set(q)
            assert all(EXAMPLE_SIGNOZ["aggregation"] <= set(a) for a in q["aggregations"])
            assert all(EXAMPLE_SIGNOZ["groupBy"] <= set(g) for g in q["groupBy"])
    ids = {w["id"] for w in dash["widgets"]}
    assert ids == {item["i"] for item in dash["layout"]} and len(ids) == len(dash["widgets"])
    for item in dash["layout"]:
        assert 0 <= item["x"] and item["x"] + item["w"] <= 12
    for widget in dash["widgets"]:
        assert widget["panelTypes"] in ("graph", "value", "table", "bar", "pie", "list", "histogram")
        assert widget["timePreferance"] == "GLOBAL_TIME"
        query = widget["query"]
        assert query["queryType"] in ("builder", "clickhouse_sql", "promql")
        if query["queryType"] == "builder":
            for q in query["builder"]["queryData"]:
                assert {"queryName", "dataSource", "aggregations", "filter", "groupBy", "stepInterval"} <= set(q)
        else:
            assert query["clickhouse_sql"][0]["query"].startswith(("SELECT", "WITH"))
    hosts = next(w for w in dash["widgets"] if w["title"] == "mac-exo: hosts reporting")
    assert "count(DISTINCT JSONExtractString(labels, 'host.name'))" in hosts["query"]["clickhouse_sql"][0]["query"]
    assert dash["variables"]["price_per_kwh"]["type"] == "TEXTBOX"


def test_splunk_shape():
    dash = load("splunk-enterprise/tokens-per-watt.json")
    assert {"title", "dataSources", "visualizations", "inputs", "defaults", "layout"} <= set(dash)
    for viz in dash["visualizations"].values():
        assert viz["type"] in ("splunk.singlevalue", "splunk.line", "splunk.table")
        assert viz["dataSources"]["primary"] in dash["dataSources"]
    for item in dash["layout"]["structure"]:
        assert item["item"] in dash["visualizations"] and item["type"] == "block"
    for ds in dash["dataSources"].values():
        assert ds["type"] == "ds.search" and ds["options"]["query"].startswith("| mstats")
        assert "index=lab_otel_metrics" in ds["options"]["query"]
    assert set(dash["layout"]["globalInputs"]) == set(dash["inputs"])


def test_o11y_shape():
    bundle = load("splunk-o11y/tokens-per-watt.json")
    names = {c["name"] for c in bundle["charts"]}
    for chart in bundle["charts"]:
        assert chart["options"]["type"] in ("TimeSeriesChart", "SingleValue", "List")
        assert ".publish(" in chart["programText"]
    for place in bundle["dashboard"]["charts"]:
        assert place["chart"] in names and place["column"] + place["width"] <= 12
    assert "mean per minute" in bundle["dashboard"]["description"]


def test_every_queried_metric_exists_with_its_unit():
    known = known_units()
    missing = sorted({(backend, name) for backend, _t, name in queried_metrics()
                      if base_name(name, known) not in known})
    assert not missing, missing
    unit_of_panel = {"watt": "W", "J": "J", "s": "s", "percentunit": "1"}
    for widget in load("signoz/tokens-per-watt.json")["widgets"]:
        want = unit_of_panel.get(widget["yAxisUnit"])
        for q in widget["query"]["builder"]["queryData"]:
            for a in q["aggregations"]:
                if want:
                    assert known[base_name(a["metricName"], known)] == want, (widget["title"], a["metricName"])
    for _label, metrics in build.BOUNDARIES.values():
        assert all(known[m] == "J" for m in metrics)


def test_renaming_an_exporter_metric_breaks_the_check():
    known = known_units()
    del known["mac.power.system"]
    missing = {name for _b, _t, name in queried_metrics() if base_name(name, known) not in known}
    assert "mac.power.system" in missing


# ---- the formulas, on worked examples with known answers

WORKED = [
    # tokens, joules, price/kWh -> tokens/J, J/token, cost per 1k tokens
    (36_000, 360_000, 0.30, 0.1, 10.0, 0.30 * 10_000 / 3_600_000),     # 100 W for an hour, 10 tok/s
    (1_000, 3_600_000, 0.25, 1 / 3600, 3600.0, 0.25),                 # 1 kWh for 1k tokens at 0.25/kWh
    (500_000, 250_000, 0.40, 2.0, 0.5, 0.40 * 500 / 3_600_000),      # a very efficient hour
]


@pytest.mark.parametrize("tokens,joules,price,tpj,jpt,cost", WORKED)
def test_formulas_on_worked_examples(tokens, joules, price, tpj, jpt, cost):
    env = {"tokens": tokens, "joules": joules, "price_per_kwh": price}
    assert eval(build.FORMULAS["tokens_per_joule"], {}, env) == pytest.approx(tpj)
    assert eval(build.FORMULAS["joules_per_token"], {}, env) == pytest.approx(jpt)
    assert eval(build.FORMULAS["cost_per_1k_tokens"], {}, env) == pytest.approx(cost)


def formulas_in_files():
    """(backend, expression, names) for each efficiency expression as it stands in the built files."""
    found = []
    for widget in load("signoz/tokens-per-watt.json")["widgets"]:
        for q in widget["query"]["clickhouse_sql"]:
            for m in re.finditer(r"if\((?:t\.)?tokens > 0 AND (?:e\.)?joules > 0, (.+?), NULL\)", q["query"]):
                found.append(("signoz", m.group(1), {
                    "toFloat64OrNull(toString({{.price_per_kwh}}))": "price_per_kwh",
                    "toFloat64OrNull(toString({{.api_price_per_1m}}))": "api_price_per_1m",
                    "t.tokens": "tokens", "e.joules": "joules"}))
    for ds in load("splunk-enterprise/tokens-per-watt.json")["dataSources"].values():
        for m in re.finditer(r"if\(tps>0 AND watts>0, (.+?), null\(\)\)", ds["options"]["query"]):
            found.append(("splunk", m.group(1), {"$price_per_kwh$": "price_per_kwh", "$api_price_per_1m$":
                                                 "api_price_per_1m", "tps": "tokens", "watts": "joules"}))
    for chart in load("splunk-o11y/tokens-per-watt.json")["charts"]:
        for m in re.finditer(r"^\((.+)\)\.publish\(label='(" + "|".join(build.FORMULAS) + r")'\)",
                             chart["programText"], re.M):
            found.append(("o11y", m.group(1), {"T": "tokens", "J": "joules"}))
    return found


def test_formulas_as_written_in_each_backend_give_the_worked_answers():
    found = formulas_in_files()
    assert {b for b, _e, _n in found} == {"signoz", "splunk", "o11y"}
    for backend, expression, names in found:
        for old, new in names.items():
            expression = expression.replace(old, new) if not old.isalpha() else \
                re.sub(rf"(?<![\w.$]){re.escape(old)}(?![\w$])", new, expression)
        for tokens, joules, price, tpj, _jpt, cost in WORKED:
            env = {"tokens": tokens, "joules": joules, "price_per_kwh": price, "api_price_per_1m": 0.6}
            value = eval(expression, {}, env)
            answers = [eval(f, {}, env) for f in build.FORMULAS.values()]
            assert any(value == pytest.approx(a) for a in answers), (backend, expression)
            assert value == pytest.approx(tpj) or value == pytest.approx(cost) or backend != "signoz" or \
                "1000000" in expression, (backend, expression)


def test_no_efficiency_without_tokens():
    """A quiet hour must not read as an infinite cost: every efficiency expression is guarded."""
    signoz = json.dumps(load("signoz/tokens-per-watt.json"))
    splunk = json.dumps(load("splunk-enterprise/tokens-per-watt.json"))
    o11y = load("splunk-o11y/tokens-per-watt.json")
    assert signoz.count("if(tokens > 0 AND joules > 0") == 12  # 6 tiles per cluster
    assert signoz.count("if(t.tokens > 0 AND e.joules > 0") == 2
    assert splunk.count("if(tps>0 AND watts>0") == 14  # and 2 graphs
    for chart in o11y["charts"]:
        if "publish(label='cost_per_1k_tokens')" in chart["programText"]:
            assert ".above(0, inclusive=False)" in chart["programText"]


# ---- push scripts against a loopback stand-in API

class FakeApi:
    """Records method, path, auth header and body; keeps what was created so a second push updates."""

    def __init__(self, signoz="current"):
        self.requests = []
        self.store = {}
        self.signoz = signoz  # current: v2 only (v1 answers 501, 0.135+); old: v1 only
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, document):
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                auth = {k.lower(): v for k, v in self.headers.items()
                        if k.lower() in ("signoz-api-key", "authorization", "x-sf-token")}
                api.requests.append((self.command, self.path, auth, body))
                self.reply(*api.answer(self.command, self.path, body))

            do_GET = do_POST = do_PUT = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, method, path, body):
        route = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(route.query)
        if route.path.startswith("/api/v1/dashboards") and self.signoz == "current":
            return 501, {"status": "error", "error": {"code": "v1_deprecated", "message": "use /api/v2/dashboards"}}
        if route.path.startswith("/api/v2/dashboards") and self.signoz == "old":
            return 404, {"status": "error", "error": "page not found"}
        if route.path == "/api/v2/dashboards":
            if method == "GET":
                return 200, {"status": "success", "data": [{"id": k, "data": v} for k, v in self.store.items()]}
            uuid = f"0190c0de-0000-7000-8000-00000000000{len(self.store) + 1}"
            self.store[uuid] = json.loads(body)
            return 201, {"status": "success", "data": {"id": uuid}}
        if route.path.startswith("/api/v2/dashboards/") and method == "PUT":
            self.store[route.path.rsplit("/", 1)[1]] = json.loads(body)
            return 200, {"status": "success"}
        if route.path == "/api/v1/dashboards":
            if method == "GET":
                return 200, {"status": "success", "data": [{"uuid": k, "data": v} for k, v in self.store.items()]}
            uuid = f"uuid-{len(self.store) + 1}"
            self.store[uuid] = json.loads(body)
            return 200, {"status": "success", "data": {"uuid": uuid}}
        if route.path.startswith("/api/v1/dashboards/") and method == "PUT":
            self.store[route.path.rsplit("/", 1)[1]] = json.loads(body)
            return 200, {"status": "success"}
        if route.path.startswith("/servicesNS/"):
            name = route.path.rsplit("/", 1)[1]
            form = urllib.parse.parse_qs(body)
            if method == "GET":
                return (200, {"entry": [{"name": name}]}) if name in self.store else (404, {"messages": []})
            key = form["name"][0] if "name" in form else name
            self.store[key] = form["eai:data"][0]
            return 201, {"entry": [{"name": key}]}
        if route.path.startswith("/api/dashboards/uid/"):
            uid = route.path.rsplit("/", 1)[1]
            return (200, {"dashboard": self.store[uid], "meta": {}}) if uid in self.store else (404, {"message": "nf"})
        if route.path == "/api/dashboards/db" and method == "POST":
            document = json.loads(body)
            assert document["overwrite"] is True and document["dashboard"]["id"] is None
            self.store[document["dashboard"]["uid"]] = document["dashboard"]
            uid = document["dashboard"]["uid"]
            return 200, {"status": "success", "uid": uid, "url": f"/d/{uid}/tokens-per-watt", "version": 1}
        if route.path == "/v2/chart/validate":
            program = json.loads(body)["programText"]
            if "publish(" not in program:
                return 400, {"code": 400, "message": "SignalFlow: program publishes nothing"}
            return 204, {}
        if route.path in ("/v2/chart", "/v2/dashboard"):
            kind = route.path.rsplit("/", 1)[1]
            if method == "GET":
                results = [dict(v, id=k) for k, v in self.store.items()
                           if k.startswith(kind) and v.get("name") == query["name"][0]]
                return 200, {"count": len(results), "results": results}
            key = f"{kind}-{len(self.store) + 1}"
            self.store[key] = json.loads(body)
            return 200, dict(self.store[key], id=key)
        if route.path.startswith(("/v2/chart/", "/v2/dashboard/")) and method == "PUT":
            self.store[route.path.rsplit("/", 1)[1]] = json.loads(body)
            return 200, {}
        return 404, {"message": "no such route"}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    server = FakeApi()
    yield server
    server.stop()


def push(backend, api, *extra, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNOZ_", "SPLUNK_", "O11Y_"))}
    environment.update({"SIGNOZ_API_URL": api.url, "SIGNOZ_API_KEY": "sz-secret", "SPLUNK_REST_URL": api.url,
                        "SPLUNK_REST_TOKEN": "sp-secret", "O11Y_API_URL": api.url, "O11Y_API_TOKEN": "o11y-secret",
                        "GRAFANA_URL": api.url, "GRAFANA_TOKEN": "glsa_secret"})
    environment.update(env)
    return subprocess.run([sys.executable, os.path.join(DASH, "push.py"), backend, *extra], env=environment,
                          capture_output=True, text=True, timeout=60)


def test_push_signoz_creates_then_updates_in_place(api):
    first = push("signoz", api)
    assert first.returncode == 0 and "created" in first.stdout, first.stderr
    second = push("signoz", api)
    uuid = "0190c0de-0000-7000-8000-000000000001"
    assert second.returncode == 0 and f"updated SigNoz dashboard {uuid}" in second.stdout, second.stderr
    assert len(api.store) == 1
    methods = [(m, p) for m, p, _a, _b in api.requests]
    assert methods == [("GET", "/api/v2/dashboards?limit=1000"), ("POST", "/api/v2/dashboards"),
                       ("GET", "/api/v2/dashboards?limit=1000"), ("PUT", f"/api/v2/dashboards/{uuid}")]
    assert all(a == {"signoz-api-key": "sz-secret"} for _m, _p, a, _b in api.requests)
    assert json.loads(api.requests[1][3])["title"] == build.TITLE
    assert "sz-secret" not in first.stdout + second.stdout


def test_push_signoz_before_0_135_uses_the_v1_api():
    api = FakeApi(signoz="old")
    try:
        assert push("signoz", api).returncode == 0
        second = push("signoz", api)
    finally:
        api.stop()
    assert second.returncode == 0 and "updated SigNoz dashboard uuid-1 (v1 API" in second.stdout
    methods = [(m, p) for m, p, _a, _b in api.requests]
    assert methods == [("GET", "/api/v2/dashboards?limit=1000"), ("GET", "/api/v1/dashboards"),
                       ("POST", "/api/v1/dashboards"), ("GET", "/api/v2/dashboards?limit=1000"),
                       ("GET", "/api/v1/dashboards"), ("PUT", "/api/v1/dashboards/uuid-1")]


def test_push_splunk_creates_then_updates_the_view(api):
    assert push("splunk", api).returncode == 0
    second = push("splunk", api)
    assert second.returncode == 0 and "updated Splunk view search/tokens_per_watt" in second.stdout
    posts = [(p, b) for m, p, _a, b in api.requests if m == "POST"]
    assert posts[0][0] == "/servicesNS/nobody/search/data/ui/views?output_mode=json"
    assert posts[1][0] == "/servicesNS/nobody/search/data/ui/views/tokens_per_watt?output_mode=json"
    eai = urllib.parse.parse_qs(posts[0][1])["eai:data"][0]
    assert eai.startswith('<dashboard version="2"') and "<definition><![CDATA[" in eai
    json.loads(eai.split("<![CDATA[", 1)[1].rsplit("]]>", 1)[0])  # the definition survives the wrapping
    assert all(a == {"authorization": "Bearer sp-secret"} for _m, _p, a, _b in api.requests)


def test_push_o11y_stops_at_a_chart_the_api_refuses(api, tmp_path):
    bundle = load("splunk-o11y/tokens-per-watt.json")
    bundle["charts"][0]["programText"] = "data('gpu.energy')"  # publishes nothing
    (tmp_path / "dashboards" / "splunk-o11y").mkdir(parents=True)
    (tmp_path / "dashboards" / "splunk-o11y" / "tokens-per-watt.json").write_text(json.dumps(bundle))
    shutil.copy(os.path.join(DASH, "push.py"), tmp_path / "dashboards" / "push.py")
    environment = dict(os.environ, O11Y_API_URL=api.url, O11Y_API_TOKEN="o11y-secret")
    result = subprocess.run([sys.executable, str(tmp_path / "dashboards" / "push.py"), "o11y"], env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "program publishes nothing" in result.stderr
    assert not api.store  # nothing created


def test_push_o11y_charts_then_dashboard_and_price(api):
    first = push("o11y", api, PRICE_PER_KWH="0.42", API_PRICE_PER_1M="2.5")
    assert first.returncode == 0, first.stderr
    charts = [k for k in api.store if k.startswith("chart")]
    assert len(charts) == len(load("splunk-o11y/tokens-per-watt.json")["charts"])
    cost = [v for k, v in api.store.items() if k.startswith("chart") and "cost_per_1k" in v["programText"]]
    assert cost and all("price_per_kwh = 0.42" in c["programText"] for c in cost)
    api_ratio = [v for k, v in api.store.items() if k.startswith("chart") and "api_over_onprem" in v["programText"]]
    assert len(api_ratio) == 2 and all("api_price_per_1m = 2.5" in c["programText"] for c in api_ratio)
    validated = [b for m, p, _a, b in api.requests if p == "/v2/chart/validate"]
    assert len(validated) == len(charts)  # every chart checked by the API before it is created
    assert push("o11y", api, API_PRICE_PER_1M="cheap").stderr.strip() == \
        "push: API_PRICE_PER_1M='cheap' is not a number"
    dashboard = next(v for k, v in api.store.items() if k.startswith("dashboard"))
    assert {c["chartId"] for c in dashboard["charts"]} == set(charts)
    before = len(api.store)
    second = push("o11y", api)
    assert second.returncode == 0 and "updated O11y dashboard" in second.stdout
    assert len(api.store) == before  # found by name: updated, not duplicated
    assert all(a == {"x-sf-token": "o11y-secret"} for _m, _p, a, _b in api.requests)


def test_push_grafana_creates_then_updates_in_place(api):
    first = push("grafana", api)
    assert first.returncode == 0 and "created Grafana dashboard tokens-per-watt" in first.stdout, first.stderr
    second = push("grafana", api)
    assert second.returncode == 0 and "updated Grafana dashboard tokens-per-watt" in second.stdout
    assert list(api.store) == ["tokens-per-watt"]
    assert api.store["tokens-per-watt"]["title"] == build.TITLE
    assert all(a == {"authorization": "Bearer glsa_secret"} for _m, _p, a, _b in api.requests)
    assert "glsa_secret" not in first.stdout + second.stdout


def test_grafana_dashboard_shape():
    dash = load("grafana/tokens-per-watt.json")
    assert dash["uid"] == "tokens-per-watt" and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("cluster", "host", "model"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"]["uid"] == "${datasource}"
    for name in ("price_per_kwh", "api_price_per_1m", "currency"):
        assert variables[name]["type"] == "textbox"
    for panel in dash["panels"]:
        assert panel["type"] in ("stat", "timeseries", "table") and panel["targets"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dry_run_prints_requests_and_sends_none(api):
    result = push("signoz", api, "--dry-run")
    assert result.returncode == 0
    assert "GET " + api.url + "/api/v2/dashboards" in result.stdout and "POST " in result.stdout
    assert "'SIGNOZ-API-KEY': '***'" in result.stdout and "sz-secret" not in result.stdout
    assert api.requests == []


def test_missing_token_is_a_clear_error(api):
    result = push("o11y", api, O11Y_API_TOKEN="")
    assert result.returncode == 2 and "set O11Y_API_URL and O11Y_API_TOKEN" in result.stderr


def test_splunk_never_splits_mac_series_by_gpu_or_rapl_dimensions():
    """mstats drops points that lack a BY field: a Mac series split by gpu.uuid would vanish."""
    for ds in load("splunk-enterprise/tokens-per-watt.json")["dataSources"].values():
        for segment in re.findall(r"\| mstats ([^|\]]*)", ds["options"]["query"]):
            metrics = re.findall(r'\("([^"]+)"\)', segment)
            by = segment.split(" BY ", 1)[1] if " BY " in segment else ""
            if any(m.startswith("mac.") for m in metrics):
                assert not re.search(r"gpu\.uuid|gpu\.index|rapl\.zone", by), (ds["name"], segment)


def rectangles():
    """Every panel's (x, y, w, h) as each backend's generated file places it."""
    signoz = [(g["x"], g["y"], g["w"], g["h"]) for g in load("signoz/tokens-per-watt.json")["layout"]]
    splunk = [tuple(s["position"][k] for k in ("x", "y", "w", "h"))
              for s in load("splunk-enterprise/tokens-per-watt.json")["layout"]["structure"]]
    o11y = [(c["column"], c["row"], c["width"], c["height"])
            for c in load("splunk-o11y/tokens-per-watt.json")["dashboard"]["charts"]]
    grafana = [tuple(p["gridPos"][k] for k in ("x", "y", "w", "h"))
               for p in load("grafana/tokens-per-watt.json")["panels"]]
    return {"signoz": signoz, "splunk": splunk, "o11y": o11y, "grafana": grafana}


@pytest.mark.parametrize("backend", ["signoz", "splunk", "o11y", "grafana"])
def test_no_two_panels_overlap(backend):
    placed = rectangles()[backend]
    width = {"signoz": 12, "splunk": 1440, "o11y": 12, "grafana": 24}[backend]
    for i, (x, y, w, h) in enumerate(placed):
        assert 0 <= x and x + w <= width, (backend, i)
        for j, (x2, y2, w2, h2) in enumerate(placed[:i]):
            apart = x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y
            assert apart, f"{backend}: panel {i} overlaps panel {j}"


def test_every_litellm_metric_and_attribute_a_dashboard_uses_is_what_litellm_sends():
    """Held to what the real LiteLLM sent (tests/fixtures/litellm/metrics.json, test_litellm.py)."""
    with open(os.path.join(ROOT, "tests", "fixtures", "litellm", "metrics.json")) as fh:
        sent = json.load(fh)["metrics"]
    known = known_units()
    used = {base_name(name, known) for _b, _t, name in queried_metrics()}
    litellm = {name for name in used if name.startswith("gen_ai.")}
    assert litellm == {"gen_ai.client.token.usage", "gen_ai.client.operation.duration",
                       "gen_ai.server.time_to_first_token"}
    for name in litellm:
        assert name in sent, name
        assert sent[name]["unit"] == known[name] and sent[name]["kind"] == "histogram", name
        # the Splunk and O11y queries take rates of the _sum/_count counters: cumulative, as sent
        assert sent[name]["temporality"] == "cumulative", name
    text = json.dumps([load(f) for f in ("signoz/tokens-per-watt.json", "splunk-enterprise/tokens-per-watt.json",
                                          "splunk-o11y/tokens-per-watt.json")])
    for attribute in ("gen_ai.token.type", "gen_ai.request.model"):
        assert attribute in text and attribute in sent["gen_ai.client.token.usage"]["point_attributes"]
    # `cluster` on tokens is the gateway's: transform/genai_cluster sets it (tests/test_collector.py)
    assert "cluster" not in sent["gen_ai.client.token.usage"]["point_attributes"]


# ---- held to the facts of the review (../shared/reference/audit-dashboards.md) where a backend cannot run here

def signoz_builder_queries():
    for widget in load("signoz/tokens-per-watt.json")["widgets"]:
        for q in widget["query"]["builder"]["queryData"]:
            yield widget, q


def test_signoz_builder_leaves_temporality_to_signoz_and_takes_percentiles_from_buckets():
    percentiles = 0
    for widget, q in signoz_builder_queries():
        for a in q["aggregations"]:
            assert a["temporality"] == "", (widget["title"], a)  # pinned, it filters out the other kind
            assert a["timeAggregation"] in ("", "latest", "sum", "avg", "min", "max", "count", "count_distinct",
                                            "rate", "increase"), (widget["title"], a)
            if a["spaceAggregation"] in ("p50", "p90", "p95", "p99"):
                percentiles += 1
                assert a["metricName"].endswith(".bucket") and a["timeAggregation"] == "", (widget["title"], a)
    assert percentiles == 3  # latency p50, p95; TTFT p95


def splunk_queries():
    return {ds["name"]: ds["options"]["query"]
            for ds in load("splunk-enterprise/tokens-per-watt.json")["dataSources"].values()}


def test_splunk_counts_cumulative_counters_per_series():
    for title, spl in splunk_queries().items():
        # never an aggregate of running totals: rate_sum per series
        assert not re.search(r'\b(?:sum|avg|max|latest)\("gen_ai[^"]*_(?:sum|count|bucket)"', spl), title
        assert "streamstats" not in spl, title  # HEC buckets are cumulative in le already
        assert not re.search(r'\b(?:sum|avg|earliest|latest)\("[a-z.]*energy', spl), title  # energy: rate_sum only
        assert '"gen_ai.token.type"' not in spl and '"rapl.zone"=' not in spl, title  # dotted names unquoted
        if "host.energy.cpu" in spl or "host.power.cpu" in spl:
            assert 'NOT rapl.zone="*/*" NOT rapl.zone="psys"' in spl, title
    power = splunk_queries()["Power per host (W)"]
    assert "BY host gpu.uuid" in power and "stats sum(w) AS w BY _time host" in power  # GPUs summed


def o11y_programs():
    return {c["name"]: c["programText"] for c in load("splunk-o11y/tokens-per-watt.json")["charts"]}


def test_o11y_token_streams_are_the_clusters_and_means_are_windowed():
    for name, program in o11y_programs().items():
        assert "rollup='sum'" not in program, name  # a lifetime mean on cumulative counters
        assert "(T == 0)" not in program, name
        if name.startswith(("mac-exo:", "nvidia:")) and "gen_ai.client.token.usage_sum" in program:
            cluster = name.split(":")[0]
            assert f"filter('cluster', '{cluster}')" in program.split("gen_ai.client.token.usage_sum")[1], name
        if "host.energy.cpu" in program:
            assert "filter('rapl.zone', 'package-*')" in program, name
    assert "T.below(0, inclusive=True)" in o11y_programs()["Idle power (W, while no tokens are generated)"]
