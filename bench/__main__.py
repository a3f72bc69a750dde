"""`python -m bench [CASE...]`: print rates for the hot paths on this interpreter."""

from __future__ import annotations

import importlib
import os
import platform
import sys

# "live" needs root (network namespaces, AF_PACKET), tcpreplay and tcpdump.
# "kafka" starts the test suite's broker (Java; Maven or the cached jars).
CASES = {"offline": "bench.offline", "live": "bench.afpacket", "kafka": "bench.kafka_reporter"}


def main(argv: list[str]) -> int:
    """Run the named cases (default: offline, and live when root)."""
    names = argv or (["offline", "live"] if os.geteuid() == 0 else ["offline"])
    impl = f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"
    print(f"# otus bench on {impl}; offline cases on a single core")
    for name in names:
        mod = importlib.import_module(CASES[name])
        for label, rate, unit in mod.main():
            print(f"{label:<60} {rate:>12,.0f} {unit}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
