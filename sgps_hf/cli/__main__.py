"""``python -m sgps_hf.cli``: the same as the ``sgps`` command."""

from . import main

raise SystemExit(main())
