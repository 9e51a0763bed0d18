"""Sub-commands of the ``saferl`` CLI.

Every module in this package that defines ``register(subparsers)`` adds one sub-command:
``register`` creates its parser with ``subparsers.add_parser(name, help=..., description=...)``
(help shows each option's default, so every option gets a help text) and sets
``func=<callable(args) -> int>`` as the parser default. ``saferl.cli`` discovers the modules
(names starting with ``_`` are helpers, not commands), so adding a command never means editing
the CLI itself.

``func`` first checks every input and output path (:mod:`saferl.commands._checks`) and raises
``UsageError`` for a bad one, before any work; the CLI prints it as one line, exit status 2.
"""
