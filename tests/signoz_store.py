"""SigNoz's metric store in a real ClickHouse engine (chdb, in process), laid out and filled the way
signoz-otel-collector's clickhousemetrics exporter writes it, so the dashboard's SQL runs as SigNoz
would run it.

Schema (signoz-otel-collector, cmd/signozschemamigrator metrics migrations): samples_v4 holds every
point (env, temporality, metric_name, fingerprint, unix_milli, value, flags); time_series_v4 holds
each series' labels (resource and point attributes with __name__ and __temporality__, as JSON), one
row per series per hour with unix_milli floored to the hour; time_series_v4_6hrs and _1day the same
floored to 6 hours and a day. Histograms are stored as <name>.sum/.count/.bucket (le label). A
fingerprint hashes the labels only, so a restarted exporter continues its series. The distributed_*
tables of a cluster are views here (one node).
"""
import hashlib
import json
import re

HOUR_MS = 3_600_000
ROLLUPS = {"time_series_v4": HOUR_MS, "time_series_v4_6hrs": 6 * HOUR_MS, "time_series_v4_1day": 24 * HOUR_MS}


def fingerprint(labels):
    text = json.dumps(labels, sort_keys=True)
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") >> 1  # fits Int64 too


class SignozStore:
    def __init__(self):
        from chdb import session
        self.db = session.Session()
        self.db.query("CREATE DATABASE IF NOT EXISTS signoz_metrics")
        self.db.query("""CREATE TABLE signoz_metrics.samples_v4 (
            env LowCardinality(String) DEFAULT 'default', temporality LowCardinality(String) DEFAULT 'Unspecified',
            metric_name LowCardinality(String), fingerprint UInt64, unix_milli Int64, value Float64,
            flags UInt32 DEFAULT 0)
            ENGINE = MergeTree ORDER BY (env, temporality, metric_name, fingerprint, unix_milli)""")
        for table in ROLLUPS:
            self.db.query(f"""CREATE TABLE signoz_metrics.{table} (
                env LowCardinality(String) DEFAULT 'default', temporality LowCardinality(String) DEFAULT 'Unspecified',
                metric_name LowCardinality(String), description LowCardinality(String) DEFAULT '',
                unit LowCardinality(String) DEFAULT '', type LowCardinality(String) DEFAULT '',
                is_monotonic Bool DEFAULT false, fingerprint UInt64, unix_milli Int64, labels String,
                attrs Map(LowCardinality(String), String) DEFAULT map(),
                scope_attrs Map(LowCardinality(String), String) DEFAULT map(),
                resource_attrs Map(LowCardinality(String), String) DEFAULT map())
                ENGINE = ReplacingMergeTree ORDER BY (env, temporality, metric_name, fingerprint, unix_milli)""")
        for table in ["samples_v4", *ROLLUPS]:
            self.db.query(f"CREATE VIEW signoz_metrics.distributed_{table} AS SELECT * FROM signoz_metrics.{table}")
        self.series_rows = set()

    def add_series(self, metric, labels, points, temporality="Cumulative", kind="Sum"):
        """points: [(unix_milli, value)]. labels: resource and point attributes together."""
        full = dict(labels, __name__=metric, __temporality__=temporality)
        fp = fingerprint(full)
        rows = []
        for unix_milli, value in points:
            rows.append(f"('default', '{temporality}', '{metric}', {fp}, {int(unix_milli)}, {float(value)!r})")
            for table, floor in ROLLUPS.items():
                key = (table, fp, unix_milli // floor * floor)
                if key not in self.series_rows:
                    self.series_rows.add(key)
                    escaped = json.dumps(full).replace("\\", "\\\\").replace("'", "\\'")
                    self.db.query(f"INSERT INTO signoz_metrics.{table} (env, temporality, metric_name, type, "
                                  f"is_monotonic, fingerprint, unix_milli, labels) VALUES ('default', "
                                  f"'{temporality}', '{metric}', '{kind}', {str(kind == 'Sum').lower()}, {fp}, "
                                  f"{key[2]}, '{escaped}')")
        for i in range(0, len(rows), 5000):
            self.db.query("INSERT INTO signoz_metrics.samples_v4 (env, temporality, metric_name, fingerprint, "
                          "unix_milli, value) VALUES " + ", ".join(rows[i:i + 5000]))
        return fp

    def run(self, sql, start_ms, end_ms, variables=None):
        """Run a dashboard query as SigNoz does: its reserved time variables as numbers, every
        dashboard variable as a quoted string (a TEXTBOX value is a string). Rows as dicts."""
        values = {"start_timestamp_ms": str(int(start_ms)), "end_timestamp_ms": str(int(end_ms))}
        for name, value in (variables or {}).items():
            values[name] = "'" + str(value).replace("'", "\\'") + "'"

        def substitute(found):
            return values[found.group(1)]
        rendered = re.sub(r"\{\{\.(\w+)\}\}", substitute, sql)
        result = self.db.query(rendered, "JSONCompact")
        document = json.loads(result.bytes() or b'{"meta": [], "data": []}')
        names = [column["name"] for column in document["meta"]]
        self.last_types = {column["name"]: column["type"] for column in document["meta"]}
        return [dict(zip(names, row)) for row in document["data"]]
