"""The `hald` commands: one module per command, each with `add_arguments(parser)` and `run(args)`.

A command reads its options and calls the library (hald_ext.labels, .train, .sweep); nothing in the
library imports a command. See hald_ext.cli for the dispatcher."""
