"""A listener with default settings passes Mozilla's "intermediate" profile as sslyze checks it.

sslyze (from PyPI, its own OpenSSL through nassl) scans every protocol version, cipher suite
and group the listener accepts, the known vulnerabilities and the certificate (trusted here
through the test CA), compares all of it with Mozilla's profile, and tells whether TLS 1.2
sessions resume by session id and by ticket. It runs from its own virtual environment: it pins
cryptography below 47, which this package's pyOpenSSL (26.4) does not accept. `YUNETA_SSLYZE`
names its executable (`python -m venv /tmp/sslyze && /tmp/sslyze/bin/pip install sslyze`);
else `sslyze` is looked up on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import TestCA

from yuneta.netio import IOLoop, TcpServer
from yuneta.tls_material import DEFAULT_ECDH_CURVE, ORIGINAL_CIPHERS
from yuneta.ytls import Ytls

SSLYZE = os.environ.get("YUNETA_SSLYZE") or shutil.which("sslyze")

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        SSLYZE is None, reason="sslyze not installed (its own venv; set YUNETA_SSLYZE)"
    ),
]


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def ioloop() -> Iterator[IOLoop]:
    loop = IOLoop()
    loop.start()
    yield loop
    loop.stop()


def sslyze(port: int, ca_file: Path, tmp_path: Path) -> tuple[int, str, dict[str, Any]]:
    """Scan srv.test (at 127.0.0.1) against Mozilla intermediate; (exit code, text, result)."""
    out = tmp_path / "sslyze.json"
    proc = subprocess.run(
        [
            str(SSLYZE),
            "--mozilla_config=intermediate",
            "--resum",
            f"--certinfo_ca_file={ca_file}",
            f"--json_out={out}",
            f"srv.test:{port}{{127.0.0.1}}",
        ],
        capture_output=True,
        text=True,
        timeout=200,
    )
    (server,) = json.loads(out.read_text())["server_scan_results"]
    assert server["scan_status"] == "COMPLETED", proc.stdout[-2000:]
    return proc.returncode, proc.stdout, server["scan_result"]


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_default_settings_pass_mozilla_intermediate_and_resume_by_id_and_ticket(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path, key_type: str
) -> None:
    issued = ca.issue(tmp_path, "srv", key_type=key_type)
    server = TcpServer(ioloop, tls=Ytls(issued.crypto()).get_context)
    code, text, result = sslyze(
        server.start_listening(), ca.write_ca(tmp_path / "ca.pem"), tmp_path
    )

    assert code == 0 and f"srv.test:{server.port}: OK - Compliant." in text, text[-3000:]
    resumption = result["session_resumption"]["result"]
    assert resumption["session_id_attempted_resumptions_count"] == 5
    assert resumption["session_id_successful_resumptions_count"] == 5
    assert resumption["tls_ticket_successful_resumptions_count"] == 5
    # One group: X25519, or P-256 where this Python's ssl cannot set X25519 (Debian's 3.11.2).
    assert [c["name"] for c in result["elliptic_curves"]["result"]["supported_curves"]] == [
        {"X25519": "X25519", "prime256v1": "secp256r1"}[DEFAULT_ECDH_CURVE]
    ]


def test_the_originals_cipher_string_can_still_be_set_and_sslyze_sees_its_extras(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    issued = ca.issue(tmp_path, "srv")
    crypto = issued.crypto(ssl_ciphers=ORIGINAL_CIPHERS, ssl_ecdh_curve="secp521r1")
    server = TcpServer(ioloop, tls=Ytls(crypto).get_context)
    code, text, _ = sslyze(server.start_listening(), ca.write_ca(tmp_path / "ca.pem"), tmp_path)
    # What the defaults removed is what the scan catches here.
    assert code != 0 and "FAILED - Not compliant." in text
    assert "ciphers:" in text and "tls_curves:" in text, text[-3000:]
