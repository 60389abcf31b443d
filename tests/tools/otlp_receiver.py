#!/usr/bin/env python3
"""A small OTLP/HTTP JSON receiver on loopback, for `make demo` and the tests.

It decodes what arrives (plain or gzip), keeps every data point, and answers the way the test
asks: accept, hang, 429 with Retry-After, 503, 400 with a message, 413 over a size, a 200 with
partialSuccess; `stop()` closes the port so connections are refused, `start()` opens it again.

    python3 tests/tools/otlp_receiver.py --port 4318          # print each data point as it arrives
    curl http://127.0.0.1:4318/metrics                         # the latest of each, as Prometheus names it
"""
import argparse
import collections
import gzip
import http.server
import json
import select
import socket
import sys
import threading
import time

from standin_http import start_server, wait_for_ctrl_c


class Point:
    """One decoded data point with what identifies its series."""

    __slots__ = ("metric", "unit", "kind", "monotonic", "temporality", "attributes", "resource",
                 "time_ns", "start_ns", "value", "request", "count", "bucket_counts", "bounds")

    def __repr__(self):
        return f"<{self.metric} {self.value} {self.unit} {self.attributes} @{self.time_ns}>"


def any_value(value):
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    return value


def attributes(items):
    return {item["key"]: any_value(item["value"]) for item in items or []}


def decode_request(document, request_number=0):
    """ExportMetricsServiceRequest JSON -> [Point]."""
    points = []
    for rm in document.get("resourceMetrics", []):
        resource = attributes(rm.get("resource", {}).get("attributes"))
        for sm in rm.get("scopeMetrics", []):
            for metric in sm.get("metrics", []):
                kind = next((k for k in ("sum", "gauge", "histogram") if k in metric), None)
                if kind is None:
                    raise ValueError(f"metric {metric.get('name')!r}: no sum, gauge or histogram")
                body = metric[kind]
                for dp in body.get("dataPoints", []):
                    p = Point()
                    p.metric, p.unit, p.kind = metric["name"], metric.get("unit", ""), kind
                    p.monotonic = bool(body.get("isMonotonic"))
                    p.temporality = body.get("aggregationTemporality", 0)
                    p.attributes = attributes(dp.get("attributes"))
                    p.resource = resource
                    p.time_ns = int(dp["timeUnixNano"])
                    p.start_ns = int(dp.get("startTimeUnixNano", 0))
                    p.request = request_number
                    if kind == "histogram":  # value: the sum; count and buckets beside it
                        p.value = float(dp.get("sum", 0.0))
                        p.count = int(dp.get("count", 0))
                        p.bucket_counts = [int(c) for c in dp.get("bucketCounts", [])]
                        p.bounds = [float(b) for b in dp.get("explicitBounds", [])]
                    else:
                        p.value = float(dp["asDouble"]) if "asDouble" in dp else int(dp["asInt"])
                    points.append(p)
    return points


def protobuf_to_json(body):
    """Binary OTLP (what the OpenTelemetry SDK sends by default), decoded with the official
    definitions when they are installed (make bench, tests); the demo never needs this."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    message = ExportMetricsServiceRequest()
    message.ParseFromString(body)
    return json_format.MessageToDict(message)


class Receiver:
    """Start on a free loopback port; set .mode (and friends) to change how it answers."""

    def __init__(self, port=0, host="127.0.0.1", keep=True, tls=None):
        self.host = host
        self.tls = tls  # (certificate file, key file): serve https
        self.port = port
        self.lock = threading.Lock()
        # keep=False (make bench): count, keep nothing. Kept documents and points grow without end,
        # and so do this process's garbage-collector pauses: the answers would then stall for the
        # exporter under test, which is the receiver's cost, not the exporter's.
        self.keep = keep
        self.points = []
        self.requests = []      # (headers dict, raw body bytes, decoded document or None, status)
        self.request_count = 0  # every request, answered or not, kept or not
        self.wire_bytes = 0     # their bodies as sent (compressed or not)
        self.point_counts = collections.Counter()  # metric name -> accepted data points
        self.arrivals = []      # monotonic time of every metrics request, answered or not
        self.other_signals = collections.Counter()  # /v1/traces and /v1/logs requests
        self.paths = []         # the path (and query) of every metrics request
        # accept | hang | 429 | 503 | 400 | 413 | partial | slow (store, then answer after hang_s)
        self.mode = "accept"
        self.retry_after = None
        self.hang_s = 5.0
        self.max_body = None    # answer 413 above this many bytes
        self.on_point = None
        self.server = None
        self.connections = set()
        self.start()

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per response and no Nagle: otherwise delayed ACKs add 40 ms to every request.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with receiver.lock:
                    receiver.connections.add(self.connection)

            def do_POST(self):
                receiver.handle(self)

            def do_GET(self):
                if self.path.split("?")[0] != "/metrics":
                    receiver.send(self, 404, b'{"message": "GET /metrics, or POST OTLP"}', None)
                    return
                data = receiver.prometheus_text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        context = None
        if self.tls:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
        self.server = start_server(Handler, self.host, self.port, context)
        self.port = self.server.server_address[1]

    def stop(self):
        """Close the port: new connections are refused until start()."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.lock:
            # A collector that goes away takes its kept-alive connections with it.
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.connections.clear()

    def reply(self, handler, status, body, headers=None):
        """False when the answer could not be delivered (the exporter gave up waiting, or stop()
        cut the connection): the exporter then never learns the request was accepted."""
        data = json.dumps(body).encode()
        if self.client_gone(handler):
            return False
        try:
            self.send(handler, status, data, headers)
            return True
        except OSError:
            return False

    @staticmethod
    def client_gone(handler):
        """The exporter closed the connection before its answer (it gave up waiting). Writing the
        answer now would still succeed, into a socket nobody reads, and the request would count
        as delivered although the exporter sends it again."""
        try:
            if not select.select([handler.connection], [], [], 0)[0]:
                return False
            return handler.connection.recv(1, socket.MSG_PEEK) == b""
        except ValueError:  # a TLS socket takes no flags: then it cannot be told, as before
            return False
        except OSError:
            return True

    @staticmethod
    def send(handler, status, data, headers):
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()  # here, so that a failed answer is seen by reply()

    def handle(self, handler):
        length = int(handler.headers.get("Content-Length", 0))
        raw = handler.rfile.read(length)
        signal = handler.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        if signal in ("traces", "logs"):
            # A sender of every signal (LiteLLM) posts traces and logs here too: counted, not decoded.
            with self.lock:
                self.other_signals[signal] += 1
            self.reply(handler, 200, {})
            return
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.arrivals.append(time.monotonic())
        with self.lock:
            self.paths.append(handler.path)
            self.request_count += 1
            self.wire_bytes += len(raw)
        mode = self.mode
        if mode == "hang":
            time.sleep(self.hang_s)
            self.reply(handler, 503, {"code": 14, "message": "was hanging"})
            return
        if mode in ("429", "503"):
            extra = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
            with self.lock:
                self.requests.append((headers, raw, None, int(mode)))
            self.reply(handler, int(mode), {"code": 8 if mode == "429" else 14, "message": "try later"}, extra)
            return
        if mode == "400":
            with self.lock:
                self.requests.append((headers, raw, None, 400))
            self.reply(handler, 400, {"code": 3, "message": "unmarshal: bad metric data"})
            return
        if mode == "413" or (self.max_body is not None and length > self.max_body):
            with self.lock:
                self.requests.append((headers, raw, None, 413))
            self.reply(handler, 413, {"code": 8, "message": "request body too large"})
            return
        content_type = headers.get("content-type", "").split(";")[0].strip()
        if content_type not in ("application/json", "application/x-protobuf"):
            self.reply(handler, 415, {"code": 3, "message": "unsupported content type"})
            return
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        try:
            document = json.loads(body) if content_type == "application/json" else protobuf_to_json(body)
            with self.lock:
                points = decode_request(document, len(self.requests))
                self.point_counts.update(p.metric for p in points)
                if self.keep:
                    self.requests.append((headers, raw, document, 200))
                    self.points.extend(points)
        except (ValueError, KeyError) as exc:
            self.reply(handler, 400, {"code": 3, "message": f"bad request: {exc}"})
            return
        if self.on_point:
            for p in points:
                self.on_point(p)
        if mode == "slow":
            # A collector that stored the request and answers late: if the exporter has given up
            # by then, it sends the request again and this copy stays (at least once).
            time.sleep(self.hang_s)
            self.reply(handler, 200, {"partialSuccess": {}})
            return
        if mode == "partial":
            answered = self.reply(handler, 200, {"partialSuccess": {"rejectedDataPoints": "3",
                                                                    "errorMessage": "3 points had unknown units"}})
        else:
            answered = self.reply(handler, 200, {"partialSuccess": {}})
        if not answered:
            self.forget(points)

    def forget(self, points):
        """Like a collector that stopped before it acknowledged (and so before it kept anything):
        a request whose answer never reached the exporter is not counted as delivered, since the
        exporter will rightly send it again. Kept, it would read as a duplicate."""
        gone = {id(p) for p in points}
        with self.lock:
            self.point_counts.subtract(p.metric for p in points)
            if self.keep:
                self.points = [p for p in self.points if id(p) not in gone]

    def prometheus_text(self):
        """The latest point of every series, as the gateway's Prometheus endpoint would serve it
        (the collector's names, resource attributes as labels, the sample's own timestamp), so
        Grafana queries and tpw-ab can be tried with no collector (GET /metrics)."""
        namer = prometheus_namer()
        latest = {}
        with self.lock:
            for p in self.points:
                key = (p.metric, tuple(sorted(p.resource.items())), tuple(sorted(p.attributes.items())))
                if key not in latest or p.time_ns >= latest[key].time_ns:
                    latest[key] = p
        families = {}
        for p in latest.values():
            kind = "histogram" if p.kind == "histogram" else ("counter" if p.kind == "sum" and p.monotonic else "gauge")
            name = namer.prom_metric_name(p.metric, p.unit, kind)
            families.setdefault((name, kind), []).append(p)
        lines = []
        for (name, kind), points in sorted(families.items()):
            lines.append(f"# HELP {name} {points[0].metric} ({points[0].unit or 'no unit'})")
            lines.append(f"# TYPE {name} {kind}")
            for p in points:
                labels = {namer.prom_label(k): v for k, v in {**p.resource, **p.attributes}.items()}
                stamp = p.time_ns // 1_000_000
                if kind != "histogram":
                    lines.append(f"{name}{prom_labels(labels)} {float(p.value)!r} {stamp}")
                    continue
                running = 0
                for bound, count in zip([*p.bounds, float("inf")], p.bucket_counts):
                    running += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f"{name}_bucket{prom_labels(dict(labels, le=le))} {float(running)!r} {stamp}")
                lines.append(f"{name}_sum{prom_labels(labels)} {float(p.value)!r} {stamp}")
                lines.append(f"{name}_count{prom_labels(labels)} {float(p.count)!r} {stamp}")
        return "\n".join(lines) + "\n"

    def count(self, name):
        """Accepted data points of one metric (kept or not)."""
        with self.lock:
            return self.point_counts[name]

    def series(self, name):
        with self.lock:
            return [p for p in self.points if p.metric == name]

    def wait_for(self, predicate, timeout=30.0):
        """Poll until predicate() is true; a bounded loop, never forever."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


def prom_labels(labels):
    escaped = {k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(escaped.items())) + "}"


def prometheus_namer():
    """dashboards/build.py: the one place the collector's Prometheus naming is written down."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "dashboards", "build.py")
    spec = importlib.util.spec_from_file_location("tpw_dashboard_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    receiver = Receiver(args.port)
    receiver.on_point = lambda p: print(f"{p.metric:<32} {p.value!s:>22} {p.unit:<10} "
                                        f"{p.resource.get('host.name', '')} {p.attributes or ''}", flush=True)
    return wait_for_ctrl_c(f"listening on {receiver.url}/v1/metrics (Ctrl-C to stop)")


if __name__ == "__main__":
    sys.exit(main())
