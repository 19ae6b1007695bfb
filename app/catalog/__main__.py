"""``python -m app.catalog``: lint the criteria and mappings files (exit status 1 on a problem)."""

import sys

from app.catalog.loader import main

sys.exit(main())
