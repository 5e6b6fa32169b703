"""``python -m tokencompose ARGS`` is ``tokencompose ARGS``."""
import sys

from tokencompose.cli import main

sys.exit(main())
