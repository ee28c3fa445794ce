"""TLS for zerobatch's HTTP servers: the check that a certificate chain and its private key
(PEM files, TorchServe's certificate_file and private_key_file) load, with a message naming
the file at fault, and the uvicorn options that serve them.

Stdlib only (ssl), so that `zerobatch start` can refuse a bad pair before anything starts
without importing the servers. A private key must be unencrypted: uvicorn would otherwise
ask for its passphrase on the terminal (TorchServe reads no passphrase for these files
either).
"""

from __future__ import annotations

import ssl
from typing import Any

from zerobatch.errors import ConfigError

__all__ = ["check_certificate", "tls_options"]


class _Encrypted(Exception):
    """The private key asked for a passphrase."""


def _no_passphrase() -> bytes:
    raise _Encrypted


def check_certificate(certificate_file: str, private_key_file: str) -> None:
    """Raise ConfigError, naming the file, unless the certificate chain and the private key
    can serve TLS together (ssl.SSLContext.load_cert_chain)."""
    if not certificate_file or not private_key_file:
        raise ConfigError("TLS needs both certificate_file and private_key_file "
                          "(--certificate-file and --private-key-file)")
    for what, path in (("certificate_file", certificate_file),
                       ("private_key_file", private_key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"TLS: {what} {path} cannot be read: "
                              f"{exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certificate_file, private_key_file, _no_passphrase)
    except _Encrypted:
        raise ConfigError(f"TLS: private_key_file {private_key_file} is encrypted; give it "
                          "unencrypted (`openssl pkey -in KEY -out PLAIN_KEY`)") from None
    except ssl.SSLError as exc:
        raise ConfigError(_diagnose(certificate_file, private_key_file, exc)) from None
    except OSError as exc:  # gone or unreadable since it was opened above
        raise ConfigError(f"TLS: {certificate_file} and {private_key_file} cannot be "
                          f"loaded: {exc.strerror or exc}") from None


def _diagnose(certificate_file: str, private_key_file: str, exc: ssl.SSLError) -> str:
    """Which file load_cert_chain failed on: its error does not say."""
    if exc.reason == "KEY_VALUES_MISMATCH":
        return (f"TLS: private_key_file {private_key_file} is not the key of the certificate "
                f"in certificate_file {certificate_file}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certificate_file)
    except ssl.SSLError:
        return (f"TLS: certificate_file {certificate_file} holds no PEM certificate "
                "(-----BEGIN CERTIFICATE-----)")
    return (f"TLS: private_key_file {private_key_file} holds no PEM private key "
            "(-----BEGIN PRIVATE KEY-----) for the certificate")


def tls_options(certificate_file: str, private_key_file: str) -> dict[str, Any]:
    """uvicorn.Config keyword arguments that serve TLS with this certificate chain and key
    (checked first: ConfigError naming the file at fault); {} when both are "" (plain
    HTTP)."""
    if not certificate_file and not private_key_file:
        return {}
    check_certificate(certificate_file, private_key_file)
    return {"ssl_certfile": certificate_file, "ssl_keyfile": private_key_file}
