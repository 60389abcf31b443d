"""Property tests: whatever a source prints or a collector answers, no exception escapes."""
import argparse
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["all_power", "cpu_power", "sys_power", "temp", "cpu_temp_avg", "gpu_temp_avg", "memory",
                         "ram_total", "ram_usage", "gpu_usage", "gpu_scaled_ratio", "timestamp", "ecpu_usage",
                         "swap_total", "x"]), children, max_size=8),
    max_leaves=20)


def macmon_source(mod):
    return mod.Source(argparse.Namespace(interval=1.0, macmon=None))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_macmon_parser_survives_any_text(macmon_mod, text):
    try:
        result = macmon_source(macmon_mod).parse_line(text, 1)
    except ValueError:
        return
    assert result is None or isinstance(result[1], list)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=json_values)
def test_macmon_parser_survives_any_json(macmon_mod, document):
    line = json.dumps(document)
    try:
        result = macmon_source(macmon_mod).parse_line(line, 1)
    except ValueError:
        return
    if result is not None:
        table = macmon_mod.MetricTable(macmon_mod.SOURCE_METRICS)
        sample, _left_out = macmon_mod.make_sample(result[0], result[1], table)
        if sample is not None:
            body, unknown = macmon_mod.encode_request(table, "[]", [sample])
            decoded = json.loads(body, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))
            points = [p for m in decoded["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
                      for p in (m.get("gauge") or m["sum"])["dataPoints"]]
            assert unknown == 0 and points and all("asDouble" in p or "asInt" in p for p in points)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=st.integers(100, 599), retry_after=st.none() | st.text(max_size=40),
       body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_response_handling_survives_any_answer(macmon_mod, status, retry_after, body):
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    outcome = macmon_mod.classify_response(status, headers, body)
    assert outcome.kind in ("ok", "partial", "retry", "reject", "too_large")
    if status in (429, 502, 503, 504):
        assert outcome.kind == "retry"
    elif status >= 300 and status != 413:
        assert outcome.kind == "reject"
