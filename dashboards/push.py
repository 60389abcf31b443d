#!/usr/bin/env python3
"""Push the tokens-per-watt dashboard to a backend, idempotently: found by its title and updated in
place, created only when it is not there. Standard library only.

    python3 dashboards/push.py signoz   [--dry-run]   # SIGNOZ_API_URL, SIGNOZ_API_KEY
    python3 dashboards/push.py splunk   [--dry-run]   # SPLUNK_REST_URL, SPLUNK_REST_TOKEN [, SPLUNK_APP, SPLUNK_OWNER]
    python3 dashboards/push.py o11y     [--dry-run]   # O11Y_API_URL, O11Y_API_TOKEN [, PRICE_PER_KWH, API_PRICE_PER_1M]
    python3 dashboards/push.py grafana  [--dry-run]   # GRAFANA_URL, GRAFANA_TOKEN [, GRAFANA_FOLDER_UID]

Tokens come from the environment only (an API token, not an ingest token) and are never printed.
--dry-run prints every request it would make and makes none. Exit codes: 0 pushed, 1 the backend
refused (its message is printed), 2 a setting is missing.
"""
import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {"signoz": "signoz/tokens-per-watt.json", "splunk": "splunk-enterprise/tokens-per-watt.json",
         "o11y": "splunk-o11y/tokens-per-watt.json", "grafana": "grafana/tokens-per-watt.json"}
SETTINGS = {"signoz": ("SIGNOZ_API_URL", "SIGNOZ_API_KEY"), "splunk": ("SPLUNK_REST_URL", "SPLUNK_REST_TOKEN"),
            "o11y": ("O11Y_API_URL", "O11Y_API_TOKEN"), "grafana": ("GRAFANA_URL", "GRAFANA_TOKEN")}


class Api:
    """JSON-over-HTTP with one auth header; in dry-run mode it prints instead of sending."""

    def __init__(self, base, auth_header, token, dry_run):
        self.base = base.rstrip("/")
        self.auth = {auth_header: token}
        self.dry_run = dry_run

    def call(self, method, path, body=None, form=None):
        url = self.base + path
        headers = dict(self.auth)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.dry_run:
            shown = {k: ("***" if k in self.auth else v) for k, v in headers.items()}
            print(f"{method} {url}\n  headers: {shown}")
            if data is not None:
                text = data.decode()
                print(f"  body ({len(text)} bytes): {text[:300]}{'...' if len(text) > 300 else ''}")
            return None
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                return None
            raise SystemExit(f"push: {method} {url} answered HTTP {exc.code}: {exc.read().decode()[:300]}") from None
        except OSError as exc:
            raise SystemExit(f"push: cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
        return json.loads(text) if text.strip() else {}


def signoz_items(listing):
    """The dashboards in a SigNoz list answer: {"data": [...]} or {"data": {"dashboards": [...]}}."""
    data = listing.get("data") if isinstance(listing, dict) else listing
    if isinstance(data, dict):
        data = data.get("dashboards") or data.get("items") or []
    return [d for d in data or [] if isinstance(d, dict)]


def signoz_title(item):
    """A listed dashboard's title: classic `data.title`, or the v2 (Perses) display name."""
    data = item.get("data") or {}
    spec = item.get("spec") or data.get("spec") or {}
    return (data.get("title") or item.get("title") or (spec.get("display") or {}).get("name")
            or (item.get("metadata") or {}).get("name") or item.get("name"))


def push_signoz(api, dashboard):
    """SigNoz 0.135+ answers 501 on the v1 dashboards API: use v2, whose POST and PUT take the
    classic JSON and migrate it. A SigNoz without v2 (404) gets the same calls on v1."""
    listing = api.call("GET", "/api/v2/dashboards?limit=1000")
    if listing is None and not api.dry_run:
        listing = api.call("GET", "/api/v1/dashboards") or {}
        # v1 lists a numeric id beside the uuid its paths take
        return push_signoz_to(api, dashboard, listing, "/api/v1/dashboards", ("uuid", "id"),
                              " (v1 API, SigNoz before 0.135)")
    return push_signoz_to(api, dashboard, listing or {}, "/api/v2/dashboards", ("id", "uuid"), "")


def push_signoz_to(api, dashboard, listing, path, id_keys, which):
    """Update the dashboard with this title in place, or create it."""
    found = [d for d in signoz_items(listing) if signoz_title(d) == dashboard["title"]]
    if found:
        uuid = next((found[0][key] for key in id_keys if found[0].get(key)), None)
        api.call("PUT", f"{path}/{uuid}", body=dashboard)
        return f"updated SigNoz dashboard {uuid}{which}"
    api.call("POST", path, body=dashboard)
    return f"created the SigNoz dashboard{which}"


def push_splunk(api, definition):
    app, owner = os.environ.get("SPLUNK_APP", "search"), os.environ.get("SPLUNK_OWNER", "nobody")
    name = re.sub(r"[^a-z0-9_]+", "_", definition["title"].split(":")[0].lower()).strip("_")
    eai = (f'<dashboard version="2" theme="dark"><label>{definition["title"]}</label>'
           f"<definition><![CDATA[{json.dumps(definition)}]]></definition></dashboard>")
    views = f"/servicesNS/{owner}/{app}/data/ui/views"
    existing = api.call("GET", f"{views}/{name}?output_mode=json")
    if existing:
        api.call("POST", f"{views}/{name}?output_mode=json", form={"eai:data": eai})
        return f"updated Splunk view {app}/{name}"
    api.call("POST", f"{views}?output_mode=json", form={"name": name, "eai:data": eai})
    return f"created Splunk view {app}/{name}"


def o11y_prices():
    """O11y has no numeric dashboard input: the prices are written into each program."""
    prices = {}
    for env, line in (("PRICE_PER_KWH", "price_per_kwh = 0.30"), ("API_PRICE_PER_1M", "api_price_per_1m = 0.60")):
        value = os.environ.get(env)
        if value:
            try:
                prices[line] = f"{line.split(' = ')[0]} = {float(value)}"
            except ValueError:
                raise SystemExit(f"push: {env}={value!r} is not a number") from None
    return prices


def push_o11y(api, bundle):
    prices = o11y_prices()
    placements, chart_ids = [], {}
    for chart in bundle["charts"]:
        program = chart["programText"]
        for default, wanted in prices.items():
            program = program.replace(default, wanted)
        chart = dict(chart, programText=program)
        # The API's own check of the SignalFlow program, before anything is created or changed.
        api.call("POST", "/v2/chart/validate", body=chart)
        query = urllib.parse.urlencode({"name": chart["name"], "limit": 50})
        found = [c for c in ((api.call("GET", f"/v2/chart?{query}") or {}).get("results") or [])
                 if c.get("name") == chart["name"] and "tokens-per-watt" in (c.get("tags") or [])]
        if found:
            chart_ids[chart["name"]] = found[0]["id"]
            api.call("PUT", f"/v2/chart/{found[0]['id']}", body=chart)
        else:
            created = api.call("POST", "/v2/chart", body=chart) or {}
            chart_ids[chart["name"]] = created.get("id", "<new chart id>")
    for place in bundle["dashboard"]["charts"]:
        placements.append({"chartId": chart_ids[place["chart"]], "row": place["row"], "column": place["column"],
                           "width": place["width"], "height": place["height"]})
    dashboard = dict(bundle["dashboard"], charts=placements)
    query = urllib.parse.urlencode({"name": dashboard["name"], "limit": 10})
    found = [d for d in ((api.call("GET", f"/v2/dashboard?{query}") or {}).get("results") or [])
             if d.get("name") == dashboard["name"]]
    if found:
        api.call("PUT", f"/v2/dashboard/{found[0]['id']}", body=dict(dashboard, groupId=found[0].get("groupId")))
        return f"updated O11y dashboard {found[0]['id']} and {len(placements)} charts"
    api.call("POST", "/v2/dashboard", body=dashboard)
    return f"created the O11y dashboard with {len(placements)} charts"


def push_grafana(api, dashboard):
    """Grafana keeps a dashboard by its uid: POST /api/dashboards/db with overwrite replaces it in
    place. GRAFANA_TOKEN is a service-account token."""
    uid = dashboard["uid"]
    existing = api.call("GET", f"/api/dashboards/uid/{uid}")
    body = {"dashboard": dict(dashboard, id=None), "overwrite": True, "message": "tokens-per-watt: dashboards/push.py"}
    if os.environ.get("GRAFANA_FOLDER_UID"):
        body["folderUid"] = os.environ["GRAFANA_FOLDER_UID"]
    answer = api.call("POST", "/api/dashboards/db", body=body) or {}
    where = answer.get("url") or f"/d/{uid}"
    return f"{'updated' if existing else 'created'} Grafana dashboard {uid} ({where})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backend", choices=sorted(FILES))
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send none")
    args = parser.parse_args()
    url_var, token_var = SETTINGS[args.backend]
    url, token = os.environ.get(url_var), os.environ.get(token_var)
    if not url or (not token and not args.dry_run):
        print(f"push: set {url_var} and {token_var} (an API token, from the environment)", file=sys.stderr)
        return 2
    with open(os.path.join(HERE, FILES[args.backend])) as fh:
        document = json.load(fh)
    header = {"signoz": "SIGNOZ-API-KEY", "splunk": "Authorization", "o11y": "X-SF-Token",
              "grafana": "Authorization"}[args.backend]
    value = f"Bearer {token}" if args.backend in ("splunk", "grafana") else (token or "")
    api = Api(url, header, value, args.dry_run)
    pushers = {"signoz": push_signoz, "splunk": push_splunk, "o11y": push_o11y, "grafana": push_grafana}
    result = pushers[args.backend](api, document)
    print(("dry run: " if args.dry_run else "") + result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
