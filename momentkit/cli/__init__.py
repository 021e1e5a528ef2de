"""The ``momentkit`` command line. One module per subcommand; see :mod:`momentkit.cli.main`."""
