"""Fixtures of the fleet tests: a real nats-server with JetStream and enrolled principals.

``fleet`` starts one nats-server per test on a random loopback port with its own store
directory and the users that ``agent.fleet.enroll`` generated (hosts ``web-1``, ``web-2``,
``db-1.example.com`` plus a relay and a commander, each with its own nkey and permissions),
and creates the buckets with the commander's credentials. ``moto`` is moto's S3 server on
loopback with a bucket. Nothing of NATS is mocked. Helpers are in fleetlib.py.
"""
from __future__ import annotations

import asyncio

import pytest

from fleetlib import S3_ENV, FleetEnv
from tests.helpers.moto import start_moto, stop


@pytest.fixture
def fleet(tmp_path):
    env = FleetEnv(tmp_path)
    env.server.start()

    async def init():
        nc, _ = await env.buckets("commander", create=True)
        await nc.close()
    asyncio.run(init())
    yield env
    env.server.stop()


@pytest.fixture(scope="module")
def moto():
    """(url, bucket) of moto's S3 server on loopback, one per test module."""
    import boto3
    proc, url = start_moto(S3_ENV)
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="evidence")
    yield url, "evidence"
    stop(proc)
