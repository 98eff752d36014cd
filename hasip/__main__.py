"""Allow ``python -m hasip``."""

from hasip.cli.main import main

raise SystemExit(main())
