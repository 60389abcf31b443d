"""The official OTLP protobuf definitions as a strict judge of a payload, plus the OTLP/JSON rules a
lenient parser would let slip (64-bit integers as strings, no NaN, camelCase keys, integer enums)."""
import json

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

INT64_KEYS = {"timeUnixNano", "startTimeUnixNano", "asInt", "intValue"}


def reject_constant(name):
    raise AssertionError(f"payload holds a bare {name}")


def check_payload(raw_text):
    message = ExportMetricsServiceRequest()
    json_format.Parse(raw_text, message, ignore_unknown_fields=False)
    document = json.loads(raw_text, parse_constant=reject_constant)
    problems = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if "_" in key:
                    problems.append(f"{path}.{key}: snake_case key")
                if key in INT64_KEYS and not isinstance(value, str):
                    problems.append(f"{path}.{key}: 64-bit integer not a string")
                if key == "aggregationTemporality" and value != 2:
                    problems.append(f"{path}: temporality {value!r}")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
        elif node is None:
            problems.append(f"{path}: null")

    walk(document, "$")
    assert not problems, problems[:5]
    for rm in message.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = metric.gauge.data_points or metric.sum.data_points
                assert points, f"{metric.name} has no data points"
                for dp in points:
                    assert dp.WhichOneof("value") is not None, metric.name
                    assert dp.time_unix_nano > 0
                if metric.HasField("sum"):
                    assert metric.sum.is_monotonic
                    assert all(dp.start_time_unix_nano for dp in metric.sum.data_points)
    return message
