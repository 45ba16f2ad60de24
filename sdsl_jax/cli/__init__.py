"""The ``sdsl`` command line: ``main(argv)`` runs it and returns the exit status.

One module per subcommand (plan, fit, train, measure, rule, plot,
reproduce), the options they share in :mod:`.options`, and the parser and
dispatch in :mod:`.app`. The modules below the command line never import
it; it only parses, calls the library and prints.

Call ``sdsl_jax.cli.main``; ``python -m sdsl_jax.cli`` runs the command
line too.
"""

from sdsl_jax.cli.app import main

__all__ = ["main"]
