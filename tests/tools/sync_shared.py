#!/usr/bin/env python3
"""make sync: copy the shared core of macmon-otel-exporter.py into nvsmi-otel-exporter.py.

The exporters are single files on purpose (scp one file to a bare machine), so the OTLP code they
share is a verbatim copy between two marker lines. Edit it in the macmon exporter and run this.

shared-core.sha256 (beside this file) holds the hash of the core as last synced. A copy whose core
no longer matches it was edited by hand: syncing over it would lose that edit, so this refuses and
says how to carry the edit over. tests/test_shared_core.py holds both copies to the hash.

    python3 tests/tools/sync_shared.py            # sync (make sync)
    python3 tests/tools/sync_shared.py --check    # exit 1 if a copy differs, change nothing
"""
import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
SOURCE = os.path.join(ROOT, "exporters", "macmon-otel-exporter.py")
TARGETS = [os.path.join(ROOT, "exporters", "nvsmi-otel-exporter.py")]
STAMP = os.path.join(HERE, "shared-core.sha256")
BEGIN = "# ===== BEGIN SHARED CORE"
END = "# ===== END SHARED CORE ====="
EXIT_EDITED = 3


def shared_core(text):
    """(start, end) offsets of the core block, markers included."""
    start = text.index(BEGIN)
    end = text.index(END) + len(END)
    return start, end


def digest(core):
    return hashlib.sha256(core.encode("utf-8")).hexdigest()


def read(path):
    with open(path) as fh:
        return fh.read()


def last_synced():
    try:
        return read(STAMP).split()[0]
    except (OSError, IndexError):
        return None


def main(argv):
    check_only = "--check" in argv
    source = read(SOURCE)
    start, end = shared_core(source)
    core = source[start:end]
    stamp = last_synced()
    status = 0
    for target in TARGETS:
        name = os.path.relpath(target, ROOT)
        text = read(target)
        t_start, t_end = shared_core(text)
        theirs = text[t_start:t_end]
        if theirs == core:
            print(f"{name} already matches")
            continue
        if check_only:
            print(f"{name}: its shared core differs from the macmon exporter's; run `make sync`")
            status = 1
            continue
        if stamp is not None and digest(theirs) != stamp:
            sys.stderr.write(
                f"sync: the shared core in {name} was edited since the last sync; syncing would lose that "
                f"edit. Make the same edit in {os.path.relpath(SOURCE, ROOT)} (see `git diff {name}`), then "
                f"`git checkout {name}` and run `make sync` again\n")
            status = EXIT_EDITED
            continue
        with open(target, "w") as fh:
            fh.write(text[:t_start] + core + text[t_end:])
        print(f"synced the shared core into {name}")
    if status == 0 and not check_only and stamp != digest(core):
        with open(STAMP, "w") as fh:
            fh.write(f"{digest(core)}  shared core of exporters/*.py as last synced (tests/tools/sync_shared.py)\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
