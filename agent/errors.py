"""Errors that end a command, each with the exit code scripts can rely on.

Exit codes (docs/cli.md "Exit codes" lists the same):
  0  success (snapshot: a bundle is safe on local disk, even if some collectors failed)
  1  verification failed: a bundle or object does not match its hashes
  2  usage or bad input: unknown option, invalid incident ID, bad config
  3  capture failed: no bundle could be written (store unwritable, disk reserve reached)
  4  not found: no such bundle, incident or collector
  5  the daemon is not reachable (snapshot --via-daemon)
  10-17 object storage (see agent/upload.py; ``upload.storage_error`` maps every boto error):
        10 no valid credentials (none found, unknown key, expired token, missing profile)
        11 access denied (the credentials lack a permission)
        12 endpoint unreachable (connection refused or timed out, 5xx, SlowDown)
        13 no such bucket
        14 tampered object or unsafe archive, refused (hashes differ, a member escapes the destination)
        15 disk full while fetching
        16 upload still pending (`upload --pending`: some bundles are not uploaded yet)
        17 the object store rejected the request (e.g. Object Lock not enabled on the bucket, bad KMS key)
  20-22 fleet (see agent/fleet/):
        20 the fleet's NATS servers are unreachable, refuse the credentials, or the buckets are missing
        21 `fleet status --wait`: every expected host is done, some failed (or expired, skipped, missed)
        22 `fleet status --wait`: the timeout passed with hosts still pending
"""
from __future__ import annotations

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_CAPTURE, EXIT_NOT_FOUND, EXIT_DAEMON = 0, 1, 2, 3, 4, 5
EXIT_NO_CREDENTIALS, EXIT_ACCESS_DENIED, EXIT_UNREACHABLE, EXIT_NO_BUCKET = 10, 11, 12, 13
EXIT_TAMPERED, EXIT_DISK_FULL, EXIT_PENDING, EXIT_REJECTED = 14, 15, 16, 17
EXIT_FLEET, EXIT_FLEET_FAILED, EXIT_FLEET_PENDING = 20, 21, 22


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
