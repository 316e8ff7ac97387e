"""Single-server variants: TLS only (with throwaway certificates) and a unix socket."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import redis

from ..redis_server import RedisServer
from .common import _poll, _started

CertificateMaker = Literal["auto", "cryptography", "openssl"]


def make_test_certificates(
    directory: Path, *, maker: CertificateMaker = "auto", hosts: Sequence[str] = ("127.0.0.1",)
) -> tuple[Path, Path, Path]:
    """Write a throwaway CA and a server certificate for ``hosts`` into ``directory``.

    Returns ``(ca_path, cert_path, key_path)``. ``maker="auto"`` uses the ``cryptography``
    package when it is installed, else the ``openssl`` command. The certificates are valid for
    one day and carry the extensions strict verifiers ask for (SAN, key identifiers, usages).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if maker == "cryptography" or (maker == "auto" and _has_cryptography()):
        return _certificates_with_cryptography(directory, hosts)
    if shutil.which("openssl") is None:
        raise FileNotFoundError(
            "TLS test certificates need the Python package 'cryptography' or the 'openssl' command"
        )
    return _certificates_with_openssl(directory, hosts)


def _has_cryptography() -> bool:
    try:
        importlib.import_module("cryptography.x509")
    except ImportError:
        return False
    return True


def _san_entries(hosts: Sequence[str]) -> list[str]:
    import ipaddress

    entries = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            entries.append(f"DNS:{host}")
        else:
            entries.append(f"IP:{host}")
    return entries


def _certificates_with_openssl(directory: Path, hosts: Sequence[str]) -> tuple[Path, Path, Path]:
    ca_key, ca_path = directory / "ca.key", directory / "ca.crt"
    key_path, csr_path, cert_path = (
        directory / "server.key",
        directory / "server.csr",
        (directory / "server.crt"),
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "\n".join(
            [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage=serverAuth",
                "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid:always",
                "subjectAltName=" + ",".join(_san_entries(hosts)),
                "",
            ]
        )
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [
            "openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_path),
            "-days", "1", "-subj", "/CN=celery-fork-scheduler test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        ],
        [
            "openssl", "req", "-new", *ec, "-keyout", str(key_path), "-out", str(csr_path),
            "-subj", f"/CN={hosts[0]}",
        ],
        [
            "openssl", "x509", "-req", "-in", str(csr_path), "-CA", str(ca_path),
            "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert_path), "-days", "1",
            "-sha256", "-extfile", str(extensions),
        ],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run(command, capture_output=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command[:3])} failed: {done.stderr.decode(errors='replace')}"
            )
    return ca_path, cert_path, key_path


def _certificates_with_cryptography(
    directory: Path, hosts: Sequence[str]
) -> tuple[Path, Path, Path]:
    import ipaddress

    # Imported by name: the package is optional, and typed as Any when it is missing.
    x509: Any = importlib.import_module("cryptography.x509")
    oid: Any = importlib.import_module("cryptography.x509.oid")
    hashes: Any = importlib.import_module("cryptography.hazmat.primitives.hashes")
    ec: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ec")
    serialization: Any = importlib.import_module("cryptography.hazmat.primitives.serialization")

    now = datetime.now(timezone.utc)

    def name(common_name: str) -> Any:
        return x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, common_name)])

    def usage(*, sign_certs: bool) -> Any:
        return x509.KeyUsage(
            digital_signature=not sign_certs,
            content_commitment=False,
            key_encipherment=not sign_certs,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=sign_certs,
            crl_sign=sign_certs,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("celery-fork-scheduler test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(sign_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    alt_names = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = (
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(server_cert.public_bytes(pem))
    key_path.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


class TlsRedis(RedisServer):
    """A ``redis-server`` that speaks only TLS (``--port 0 --tls-port P``), with its own CA.

    :attr:`url` is ``rediss://127.0.0.1:P/0``; clients verify the server with
    ``ssl_ca_certs=server.ca_path``. Client certificates are not asked for.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        maker: CertificateMaker = "auto",
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        super().__init__(port, extra_args=extra_args, binary=binary)
        self.maker: CertificateMaker = maker
        self.ca_path = self.workdir / "tls" / "ca.crt"
        self.cert_path = self.workdir / "tls" / "server.crt"
        self.key_path = self.workdir / "tls" / "server.key"

    @property
    def url(self) -> str:
        """The ``rediss://`` URL of database 0 of this server."""
        return f"rediss://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> TlsRedis:
        """Make the certificates, then start the server with TLS only."""
        self.ca_path, self.cert_path, self.key_path = make_test_certificates(
            self.workdir / "tls", maker=self.maker
        )
        tls_args = [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.cert_path),
            "--tls-key-file", str(self.key_path),
            "--tls-ca-cert-file", str(self.ca_path),
            "--tls-auth-clients", "no",
        ]  # fmt: skip
        if tls_args[0] not in self.extra_args:
            self.extra_args = [*self.extra_args, *tls_args]
        super().start(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll ``PING`` over TLS until the server answers, or raise ``TimeoutError``."""
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.ca_path),
            socket_timeout=1,
        )

        def answered() -> bool | None:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.read_log()}")
            return True if client.ping() else None

        try:
            _poll(answered, timeout=timeout, what=f"TLS redis-server on port {self.port}")
        finally:
            client.close()

    def __enter__(self) -> TlsRedis:
        return _started(self)


# -- unix socket --------------------------------------------------------------------------------


class UnixSocketRedis(RedisServer):
    """A ``redis-server`` that also listens on a unix socket in its directory.

    :attr:`unix_url` is ``unix:///.../redis.sock?db=0``; :attr:`url` (TCP) keeps working.
    """

    def __init__(
        self, port: int | None = None, *, extra_args: Sequence[str] = (), binary: str | None = None
    ) -> None:
        super().__init__(port, extra_args=extra_args, binary=binary)
        self.socket_path = self.workdir / "redis.sock"
        self.extra_args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]

    @property
    def unix_url(self) -> str:
        """The ``unix://`` URL of database 0 of this server."""
        return f"unix://{self.socket_path}?db=0"

    def __enter__(self) -> UnixSocketRedis:
        return _started(self)
