"""`python -m agent_actors supervisor --help`"""

import sys

from agent_actors.cli import main

sys.exit(main())
