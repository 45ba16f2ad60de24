"""``python -m sdsl_jax.cli.main``: the ``sdsl`` command line, for scripts that run it this way.

Import ``main`` from :mod:`sdsl_jax.cli`, not from here: importing this
module as ``sdsl_jax.cli.main`` makes that name the module rather than the
function.
"""

import sys

from sdsl_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
