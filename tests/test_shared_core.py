"""The OTLP core is copied on purpose into each single-file exporter; the copies must not drift."""
from conftest import MACMON_EXPORTER, NVSMI_EXPORTER

BEGIN = "# ===== BEGIN SHARED CORE"
END = "# ===== END SHARED CORE ====="


def core(path):
    with open(path) as fh:
        text = fh.read()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, path
    return text[text.index(BEGIN):text.index(END)]


def test_shared_core_is_identical():
    macmon, nvsmi = core(MACMON_EXPORTER), core(NVSMI_EXPORTER)
    if macmon != nvsmi:
        for number, (a, b) in enumerate(zip(macmon.splitlines(), nvsmi.splitlines()), 1):
            assert a == b, f"shared core differs at line {number} of the block; run `make sync`"
    assert macmon == nvsmi, "shared core lengths differ; run `make sync`"


def test_exporters_import_nothing_from_the_repository():
    for path in (MACMON_EXPORTER, NVSMI_EXPORTER):
        with open(path) as fh:
            imports = [line for line in fh if line.startswith(("import ", "from "))]
        local = [line for line in imports if "tests" in line or "exporters" in line or "otlp_receiver" in line]
        assert not local, local
