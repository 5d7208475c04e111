"""`yuneta check` validates every TLS listener's material as reload-certs would, its expiry
and the log handlers, and says per listener what it found (exit 2 on any failure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from certs import TestCA
from cryptography.hazmat.primitives.asymmetric import dsa
from test_ytls import BAD_CASES, _bad_inputs, _self_signed

from yuneta.cli import main


def config(tmp_path: Path, crypto: dict, **extra) -> str:
    path = tmp_path / "check.json"
    path.write_text(
        json.dumps(
            {
                "yuno": {"yuno_role": "echo", "yuno_name": "c", "cert_warn_days": 7},
                "services": [
                    {
                        "name": "plain",
                        "gclass": "C_TCP_S",
                        "kw": {"url": "tcp://127.0.0.1:0", "protocol": "echo"},
                    },
                    {
                        "name": "echo_tls",
                        "gclass": "C_TCP_S",
                        "kw": {"url": "tcps://127.0.0.1:0", "protocol": "echo", "crypto": crypto},
                    },
                ],
                **extra,
            }
        )
    )
    return str(path)


def check(capsys, path: str) -> tuple[int, str]:
    code = main(["check", "-f", path])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out + out.err


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def test_a_good_listener_is_reported_with_its_facts(capsys, tmp_path, ca):
    code, out = check(capsys, config(tmp_path, ca.issue(tmp_path, "good").crypto()))
    assert code == 0, out
    (line,) = [line for line in out.splitlines() if line.startswith("  listener")]
    assert line.strip().startswith("listener echo_tls (tcps://127.0.0.1:0): OK: /CN=good, EC P-256")
    assert "chain of 2" in line and "log handlers: OK: to_stderr (stderr)" in out


@pytest.mark.parametrize("case", BAD_CASES)
def test_each_bad_certificate_of_the_matrix_fails_the_check(capsys, tmp_path, ca, case):
    crypto, _exc, message = _bad_inputs(ca, tmp_path / "bad")[case]
    code, out = check(capsys, config(tmp_path, crypto))
    assert code == 2, out
    assert message in out, out


def test_dsa_is_refused(capsys, tmp_path):
    crypto = _self_signed(tmp_path, dsa.generate_private_key(key_size=2048), "dsa")
    code, out = check(capsys, config(tmp_path, crypto))
    assert code == 2 and "FAILED" in out and "cannot be used for a TLS handshake" in out, out


def test_a_chain_in_the_wrong_order_is_said_so(capsys, tmp_path, ca):
    issued = ca.issue(tmp_path, "leaf")
    pem = issued.cert_path.read_bytes()
    end = b"-----END CERTIFICATE-----\n"
    leaf, chain = pem.split(end, 1)
    issued.cert_path.write_bytes(chain + leaf + end)  # CA first, leaf second
    code, out = check(capsys, config(tmp_path, issued.crypto()))
    assert code == 2 and "chain in wrong order" in out, out
    assert "does not match" not in out


def test_an_oversized_certificate_file_is_refused_without_reading_it(capsys, tmp_path, ca):
    issued = ca.issue(tmp_path, "big")
    with open(issued.cert_path, "ab") as f:
        f.truncate(100 * 1024 * 1024)  # sparse: 100 MB on paper, nothing on disk
    code, out = check(capsys, config(tmp_path, issued.crypto()))
    assert code == 2 and "file too large" in out, out


@pytest.mark.parametrize(
    "days, code, word",
    [(-1, 2, "FAILED: expired on"), (1, 2, "FAILED: expires"), (5, 0, "WARNING: expires")],
)
def test_expiry_is_compared_with_the_thresholds(capsys, tmp_path, ca, days, code, word):
    issued = ca.issue(tmp_path, "soon", days=days, not_before_days=-30)
    got, out = check(capsys, config(tmp_path, issued.crypto()))
    assert got == code and word in out, out


def test_a_bad_log_handler_fails_the_check_in_one_line(capsys, tmp_path, ca):
    crypto = ca.issue(tmp_path, "good").crypto()
    bad = {
        "environment": {
            "log_handlers": {"f": {"handler_type": "file", "filename": "/no/such/x.log"}}
        }
    }
    code, out = check(capsys, config(tmp_path, crypto, **bad))
    assert code == 2
    assert out.strip().endswith(
        "environment.log_handlers.f.filename: directory /no/such does not exist"
    )
    assert len(out.strip().splitlines()) == 1


def test_cert_info_keeps_the_original_keys_and_types_beside_ours(tmp_path, ca):
    import subprocess

    from yuneta.tls_material import load_material

    issued = ca.issue(tmp_path, "host")
    info = load_material(issued.crypto()).info.as_dict()

    def openssl(what: str) -> str:  # the C tools print X509_NAME_oneline: OpenSSL's compat form
        out = subprocess.run(
            [
                "openssl",
                "x509",
                "-in",
                str(issued.cert_path),
                "-noout",
                f"-{what}",
                "-nameopt",
                "compat",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip().split("=", 1)[1]

    assert info["subject"] == openssl("subject") == "/CN=host"
    assert info["issuer"] == openssl("issuer") and info["issuer"].startswith("/O=Yuneta Test CA")
    assert type(info["not_before"]) is int and type(info["not_after"]) is int
    assert info["not_after"] == int(issued.cert.not_valid_after_utc.timestamp())
    assert info["not_after_iso"].endswith("Z") and info["subject_rfc4514"] == "CN=host"
    assert {"san", "fingerprint_sha256", "key_type", "chain_length", "issuer_rfc4514"} <= set(info)
