"""Every payload the exporters send parses strictly with the official OTLP protobuf definitions,
and follows the OTLP/JSON rules that a lenient parser would let slip (64-bit integers as strings,
no NaN, camelCase keys, integer enums)."""
import gzip

from conftest import start_macmon_exporter
from otlp_check import check_payload


def test_real_exporter_payloads_parse_strictly(receiver):
    exporter = start_macmon_exporter(receiver.url, "--compression", "gzip", "--environment", "lab",
                                     fake_env={"FAKE_MACMON_VERSION": "0.6.1"})
    try:
        assert receiver.wait_for(lambda: len(receiver.series("mac.power.total")) >= 3, 20)
    finally:
        assert exporter.stop() == 0
    assert receiver.requests
    for headers, raw, _doc, status in receiver.requests:
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert headers["content-encoding"] == "gzip"
        message = check_payload(gzip.decompress(raw).decode())
        resource = {kv.key: kv.value.string_value for kv in message.resource_metrics[0].resource.attributes}
        assert resource["service.name"] == "macmon-otel-exporter"
        assert resource["deployment.environment.name"] == "lab"
        assert resource["deployment.environment"] == "lab"
        assert resource["cluster"] == "mac-exo"
        assert resource["os.type"] and resource["host.arch"] and resource["service.instance.id"]


def test_batch_of_many_samples_groups_by_metric(macmon_mod):
    table = macmon_mod.MetricTable(macmon_mod.SOURCE_METRICS + macmon_mod.SELF_METRICS)
    samples = []
    for i in range(5):
        t = 1_700_000_000_000_000_000 + i * 1_000_000_000
        samples.append(macmon_mod.make_sample(t, [
            ("mac.power.total", 1.5 + i, (), 0),
            ("mac.memory.ram_used", 2**40 + i, (), 0),
            ("mac.energy.total", 0.0, (), t - 10),
            ("exporter.datapoints.dropped", 0, (("reason", "buffer_full"),), t - 10),
        ], table)[0])
    resource = macmon_mod.encode_attributes([("service.name", "x"), ("n", 3), ("f", 1.5), ("b", True)])
    message = check_payload(macmon_mod.encode_request(table, resource, samples)[0])
    metrics = message.resource_metrics[0].scope_metrics[0].metrics
    assert [m.name for m in metrics] == ["mac.power.total", "mac.memory.ram_used", "mac.energy.total",
                                         "exporter.datapoints.dropped"]
    assert len(metrics[0].gauge.data_points) == 5
    assert metrics[1].gauge.data_points[4].as_int == 2**40 + 4
    assert metrics[2].sum.data_points[0].as_double == 0.0  # a real zero is still present
    assert metrics[2].sum.aggregation_temporality == 2


def test_unicode_and_quotes_in_attributes_survive(macmon_mod):
    table = macmon_mod.MetricTable(macmon_mod.SOURCE_METRICS)
    t = 1_700_000_000_000_000_000
    sample = macmon_mod.make_sample(t, [("mac.power.total", 1.0, (("host", 'Büro "Mac"\n'),), 0)], table)[0]
    message = check_payload(macmon_mod.encode_request(table, macmon_mod.encode_attributes([("k", "ü")]), [sample])[0])
    dp = message.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
    assert dp.attributes[0].value.string_value == 'Büro "Mac"\n'
