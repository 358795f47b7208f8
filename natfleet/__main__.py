"""Allow ``python -m natfleet``."""

from natfleet.cli import main

raise SystemExit(main())
