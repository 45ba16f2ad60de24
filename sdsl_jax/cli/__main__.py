"""``python -m sdsl_jax.cli``: the ``sdsl`` command line."""

import sys

from sdsl_jax.cli import main

sys.exit(main())
