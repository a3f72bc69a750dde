"""`python -m otus` runs the CLI."""

from otus.cli.main import main

raise SystemExit(main())
