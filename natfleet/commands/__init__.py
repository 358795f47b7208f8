"""One module per sub-command; each has ``register(subparsers)`` setting ``func(args) -> int``."""
