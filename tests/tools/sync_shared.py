#!/usr/bin/env python3
"""make sync: copy the shared core of macmon-otel-exporter.py into nvsmi-otel-exporter.py.

The exporters are single files on purpose (scp one file to a bare machine), so the OTLP code they
share is a verbatim copy between two marker lines. Edit it in the macmon exporter, run this, and
tests/test_shared_core.py confirms the copies match.
"""
import os
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SOURCE = os.path.join(ROOT, "exporters", "macmon-otel-exporter.py")
TARGETS = [os.path.join(ROOT, "exporters", "nvsmi-otel-exporter.py")]
BEGIN = "# ===== BEGIN SHARED CORE"
END = "# ===== END SHARED CORE ====="


def shared_core(text):
    start = text.index(BEGIN)
    end = text.index(END) + len(END)
    return start, end


def main():
    with open(SOURCE) as fh:
        source = fh.read()
    start, end = shared_core(source)
    core = source[start:end]
    for target in TARGETS:
        with open(target) as fh:
            text = fh.read()
        t_start, t_end = shared_core(text)
        updated = text[:t_start] + core + text[t_end:]
        if updated != text:
            with open(target, "w") as fh:
                fh.write(updated)
            print(f"synced the shared core into {os.path.relpath(target, ROOT)}")
        else:
            print(f"{os.path.relpath(target, ROOT)} already matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
