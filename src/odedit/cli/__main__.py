"""``python -m odedit.cli`` (and ``accelerate launch -m odedit.cli``) runs the odedit command."""

import sys

from odedit.cli import main

sys.exit(main())
