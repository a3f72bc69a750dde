"""``python -m otus_operator.crd``: write the CaptureTask CRD (``otus.control.kubernetes.crd``)."""

from __future__ import annotations

import sys

from otus.control.kubernetes.crd import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
