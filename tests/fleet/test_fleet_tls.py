"""The fleet over TLS and mutual TLS, with a real nats-server and certificates made for the test.

A host with the CA and its client certificate watches and captures; without the client
certificate, or without the CA, it cannot connect, and says so in one line.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.fleet import conn, incidents, keys
from agent.fleet.records import Scope
from fleetlib import FLEET, FleetEnv, identity, until
from tests.helpers.fleet_stub import StubRunner
from tests.helpers.nats_server import NatsServer


def _cert(d: Path, name: str, ca=None, server: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1)))
    if ca is None:
        b = b.issuer_name(subject).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        cert = b.sign(key, hashes.SHA256())
    else:
        ca_cert, ca_key = ca
        b = b.issuer_name(ca_cert.subject).add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                             x509.DNSName("localhost")]), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
    (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return cert, key


@pytest.fixture
def tls_fleet(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = _cert(pki, "ca")
    _cert(pki, "server", ca, server=True)
    _cert(pki, "web-1", ca)
    env = FleetEnv(tmp_path / "env")
    env.server = NatsServer(tmp_path / "env" / "nats", (env.enroll_dir / "nats-users.conf").read_text(),
                            tls=(str(pki / "server.pem"), str(pki / "server.key")), tls_verify_ca=str(pki / "ca.pem"))
    env.server.start()
    yield env, pki
    env.server.stop()


def test_a_host_over_mutual_tls(tls_fleet, tmp_path):
    env, pki = tls_fleet
    assert env.server.url.startswith("tls://")

    def settings(who: str, **tls):
        return conn.Settings([env.server.url], FLEET, seed_file=env.seed(who), timeout_s=3, jitter_s=0.2, **tls)
    good = {"tls_ca": str(pki / "ca.pem"), "tls_cert": str(pki / "web-1.pem"), "tls_key": str(pki / "web-1.key")}

    async def body():
        nc = await conn.connect(settings("commander", **good), name="ic", forever=False,
                                inbox_prefix=conn.inbox_for(settings("commander", **good), "commander"))
        b = await conn.ensure_buckets(nc.jetstream(timeout=3))
        from agent.fleet.local import FleetState
        from agent.fleet.watcher import FleetAgent, Options
        agent = FleetAgent(settings("host-web-1", **good), "web-1", identity("web-1"), StubRunner(tmp_path / "b"),
                           FleetState(tmp_path / "w1"), Options(jitter_s=0.2))
        await agent.start()
        await until(lambda: agent.ready.is_set(), what="watching over TLS")
        await incidents.declare(b[keys.INCIDENTS], incidents.new_record(FLEET, "TLS-1", scope=Scope(all=True),
                                                                        profile="quick", deadline_s=600))
        await until(lambda: agent.counts.get("status_uploaded"))
        await agent.stop()
        await nc.close()
        # without a client certificate the server refuses; without the CA the host refuses the server
        for tls, why in (({"tls_ca": good["tls_ca"]}, "fleet.tls_cert_file"), ({}, "certificate verify failed")):
            with pytest.raises(conn.FleetError) as e:
                await conn.connect(settings("host-web-1", **tls), name="x", forever=False)
            assert "cannot connect" in str(e.value) and why in str(e.value), str(e.value)
    asyncio.run(body())
