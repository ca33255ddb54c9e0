"""goldenhour: capture a Linux host's volatile state before anyone restarts anything."""
__version__ = "0.1.0"
