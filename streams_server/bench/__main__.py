"""``python -m streams_server.bench``: see `streams_server.bench.cli`."""

import sys

from streams_server.bench.cli import main

sys.exit(main())
