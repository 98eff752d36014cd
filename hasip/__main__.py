"""Allow ``python -m hasip``."""

from hasip.cli import main

raise SystemExit(main())
