"""The ``hasip`` command line and its subcommands."""
