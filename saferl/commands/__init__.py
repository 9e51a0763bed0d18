"""Sub-commands of the ``saferl`` CLI.

Every module in this package that defines ``register(subparsers)`` adds one sub-command:
``register`` creates its parser with ``subparsers.add_parser(name, help=...)`` and sets
``func=<callable(args) -> int>`` as the parser default. ``saferl.cli`` discovers the modules, so
adding a command never means editing the CLI itself.
"""
