"""`python -m ctpm`: the same as the `ctpm` command."""
import sys

from .cli import main

sys.exit(main())
