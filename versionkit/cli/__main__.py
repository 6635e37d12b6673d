"""``python -m versionkit.cli ...`` is the ``versionkit`` command too."""

from versionkit.cli import main

raise SystemExit(main())
