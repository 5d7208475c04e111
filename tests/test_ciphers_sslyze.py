"""A listener with default settings passes Mozilla's "intermediate" profile as sslyze checks it.

sslyze (from PyPI, its own OpenSSL through nassl) scans every protocol version, cipher suite
and group the listener accepts, the known vulnerabilities and the certificate (trusted here
through the test CA), then compares all of it with Mozilla's profile; it also reports whether
TLS 1.2 sessions resume by session id and by ticket.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import TestCA

from yuneta.netio import IOLoop, TcpServer
from yuneta.tls_material import ORIGINAL_CIPHERS
from yuneta.ytls import Ytls

sslyze = pytest.importorskip("sslyze")  # in the test extras: installed wherever tests run
from sslyze.mozilla_tls_profile.tls_config_checker import (  # noqa: E402
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def ioloop() -> Iterator[IOLoop]:
    loop = IOLoop()
    loop.start()
    yield loop
    loop.stop()


def scan(port: int, ca_file: Path) -> object:
    location = sslyze.ServerNetworkLocation("srv.test", port, ip_address="127.0.0.1")
    request = sslyze.ServerScanRequest(
        server_location=location,
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER
        | {sslyze.ScanCommand.SESSION_RESUMPTION},
        scan_commands_extra_arguments=sslyze.ScanCommandsExtraArguments(
            certificate_info=sslyze.CertificateInfoExtraArgument(custom_ca_file=ca_file)
        ),
    )
    scanner = sslyze.Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    assert result.scan_status == sslyze.ServerScanStatusEnum.COMPLETED, (
        result.connectivity_error_trace
    )
    return result


def intermediate_issues(result: object) -> dict[str, str]:
    """The profile's complaints about the listener: protocol versions, suites, groups,
    vulnerabilities. Path validation of the test CA's certificates is left out: that is
    about how tests/certs.py issues them (sslyze's strict RFC 5280 checks), not the listener."""
    profile = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    try:
        check_server_against_tls_configuration(result, profile)  # type: ignore[arg-type]
    except ServerNotCompliantWithTlsConfiguration as exc:
        return {k: v for k, v in exc.issues.items() if k != "certificate_path_validation"}
    return {}


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_default_settings_pass_mozilla_intermediate_and_resume_by_id_and_ticket(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path, key_type: str
) -> None:
    issued = ca.issue(tmp_path, "srv", key_type=key_type)
    server = TcpServer(ioloop, tls=Ytls(issued.crypto()).get_context)
    port = server.start_listening()
    result = scan(port, ca.write_ca(tmp_path / "ca.pem"))

    assert intermediate_issues(result) == {}
    resumption = result.scan_result.session_resumption.result  # type: ignore[attr-defined]
    assert resumption.session_id_successful_resumptions_count == 5
    assert resumption.tls_ticket_successful_resumptions_count == 5
    assert resumption.session_id_attempted_resumptions_count == 5


def test_the_originals_cipher_string_can_still_be_set_and_sslyze_sees_its_extras(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    issued = ca.issue(tmp_path, "srv")
    crypto = issued.crypto(ssl_ciphers=ORIGINAL_CIPHERS, ssl_ecdh_curve="secp521r1")
    server = TcpServer(ioloop, tls=Ytls(crypto).get_context)
    issues = intermediate_issues(scan(server.start_listening(), ca.write_ca(tmp_path / "ca.pem")))
    assert set(issues) == {"ciphers", "tls_curves"}  # the scan would catch what we removed
