"""The SMTP transport against real TLS relays: STARTTLS and implicit TLS, with authentication."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from conftest import SmtpPeer, free_port, mail
from maild.config import SmtpRelayConfig
from maild.errors import TemporaryFailure
from maild.transport import Envelope, SmtpTransport

USER, PASSWORD = "maild", "s3cret-pw"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == USER.encode() and data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


def _relay(ca: trustme.CA, implicit_tls: bool) -> tuple[SmtpPeer, Controller]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    peer = SmtpPeer(port=free_port())
    kwargs: dict[str, Any] = {"authenticator": _authenticator, "auth_required": True}
    if implicit_tls:
        # Implicit TLS: the whole session is encrypted, which aiosmtpd cannot see, hence the flag.
        controller = Controller(peer, hostname="127.0.0.1", port=peer.port, ssl_context=context,
                                auth_require_tls=False, **kwargs)
    else:
        controller = Controller(peer, hostname="127.0.0.1", port=peer.port, tls_context=context,
                                require_starttls=True, **kwargs)
    controller.start()
    return peer, controller


@pytest.fixture(params=["starttls", "ssl"])
def relay(request: pytest.FixtureRequest, ca: tuple[trustme.CA, Path]) -> Iterator[tuple[SmtpPeer, str]]:
    peer, controller = _relay(ca[0], implicit_tls=request.param == "ssl")
    try:
        yield peer, request.param
    finally:
        controller.stop()


def _transport(port: int, security: str, ca_file: Path | None, password: str = PASSWORD) -> SmtpTransport:
    return SmtpTransport(SmtpRelayConfig(host="127.0.0.1", port=port, security=security,  # type: ignore[arg-type]
                                         user=USER, password=password, ca_file=ca_file, timeout=10))


ENVELOPE = Envelope("support@example.test", ["jane@customer.test"], mail())


def test_delivers_over_tls_with_authentication(relay: tuple[SmtpPeer, str], ca: tuple[trustme.CA, Path]) -> None:
    peer, security = relay
    _transport(peer.port, security, ca[1]).send(ENVELOPE)
    [got] = peer.wait_for(1)
    assert got.rcpt_tos == ["jane@customer.test"]


def test_wrong_password_is_retried_not_dropped(relay: tuple[SmtpPeer, str], ca: tuple[trustme.CA, Path]) -> None:
    peer, security = relay
    with pytest.raises(TemporaryFailure, match="refused the login: 535"):
        _transport(peer.port, security, ca[1], password="wrong").send(ENVELOPE)


def test_untrusted_certificate_is_refused(relay: tuple[SmtpPeer, str]) -> None:
    peer, security = relay
    with pytest.raises(TemporaryFailure, match="CERTIFICATE_VERIFY_FAILED"):
        _transport(peer.port, security, None).send(ENVELOPE)
    assert peer.received == []
