"""Errors that end a command, each with the exit code scripts can rely on.

Exit codes (README "Exit codes" lists the same):
  0  success (snapshot: a bundle is safe on local disk, even if some collectors failed)
  1  verification failed: a bundle or object does not match its hashes
  2  usage or bad input: unknown option, invalid incident ID, bad config
  3  capture failed: no bundle could be written (store unwritable, disk reserve reached)
  4  not found: no such bundle, incident or collector
  5  the daemon is not reachable (snapshot --via-daemon)
  10-19 object storage (see agent/upload.py): 10 no credentials, 11 access denied,
        12 endpoint unreachable, 13 no such bucket, 14 tampered object, 15 disk full while fetching,
        16 upload still pending
"""
from __future__ import annotations

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_CAPTURE, EXIT_NOT_FOUND, EXIT_DAEMON = 0, 1, 2, 3, 4, 5


class GoldenhourError(Exception):
    """An error with a one-line message and an exit code."""

    exit_code = EXIT_CAPTURE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(GoldenhourError):
    exit_code = EXIT_USAGE


class NotFoundError(GoldenhourError):
    exit_code = EXIT_NOT_FOUND
