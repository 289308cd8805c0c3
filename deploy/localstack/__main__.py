"""``python -m deploy.localstack``: see cli.py."""

import sys

from deploy.localstack.cli import main

sys.exit(main())
