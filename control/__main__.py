"""``python -m control``: the same as the ``meshcontrol`` command."""

import sys

from control.cli import main

sys.exit(main())
