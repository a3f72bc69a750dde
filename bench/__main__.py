"""`python -m bench [CASE...]`: print rates for the hot paths on this interpreter."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import sys

# "live" needs root (network namespaces, AF_PACKET), tcpreplay and tcpdump.
# "kafka" starts the test suite's broker (Java; Maven or the cached jars).
CASES = {
    "offline": "bench.offline",
    "scaling": "bench.scaling",
    "live": "bench.afpacket",
    "kafka": "bench.kafka_reporter",
}


def _default_cases() -> list[str]:
    names = ["offline", "scaling"]
    if os.geteuid() == 0:
        names.append("live")
    if shutil.which("java"):
        names.append("kafka")
    else:
        print("# kafka case skipped: no java on PATH (the local broker needs Java 17+)")
    return names


def main(argv: list[str]) -> int:
    """Run the named cases (default: offline, live when root, kafka when Java is present)."""
    names = argv or _default_cases()
    impl = f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"
    print(f"# otus bench on {impl}; offline cases on a single core")
    for name in names:
        mod = importlib.import_module(CASES[name])
        for label, rate, unit in mod.main():
            print(f"{label:<60} {rate:>12,.0f} {unit}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
