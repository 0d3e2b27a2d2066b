"""maild: email-driven case management."""

__version__ = "0.1.0"
