"""`python -m bench [CASE...]`: print rates for the hot paths on this interpreter."""

from __future__ import annotations

import importlib
import platform
import sys

CASES = {"offline": "bench.offline"}


def main(argv: list[str]) -> int:
    """Run the named cases (default: all that need no root)."""
    names = argv or ["offline"]
    impl = f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"
    print(f"# otus bench on {impl}, single core")
    for name in names:
        mod = importlib.import_module(CASES[name])
        for label, rate, unit in mod.main():
            print(f"{label:<60} {rate:>12,.0f} {unit}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
