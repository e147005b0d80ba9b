"""Entry point: `python -m infra up|down|status|provision|stop-node|kill-node|start-node|logs`."""

import sys

from infra.cli import main

if __name__ == "__main__":
    sys.exit(main())
