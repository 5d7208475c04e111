"""Run every benchmark and print the tables (`python -m bench.run`): the kernel's, then the TLS I/O layer's.

Each figure of `yuneta.netio` stands beside baselines measured in the same run: bare asyncio
(`start_server(ssl=ctx)` and a `create_server` Protocol) and, when installed, nginx's `stream`
module with one worker (handshake CPU only: nginx stream cannot echo). Servers and clients are
separate processes on 127.0.0.1; server CPU and RSS are read from the server process itself.

Handshake fairness: the same client, certificate, curve (X25519 key share, ECDSA P-256 or
RSA-2048 signature), TLS 1.3 suite and warm-up for every server; netio and nginx each send
two TLS 1.3 session tickets per full handshake (OpenSSL's default; checked with
`openssl s_client -sess_out`, and both resume); nginx also writes its one byte and a
close_notify, netio (echo) writes nothing. netio and nginx are measured in alternating
rounds and the medians compared, so drifting load on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
PY_MODES = ["netio", "asyncio-streams", "asyncio-proto"]
TARGET_IDLE_KIB = 30.0
TARGET_ECHO_US = 15.0
TARGET_HS_RATIO = 1.15
NGINX_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def make_cert(directory: Path, kind: str) -> tuple[str, str]:
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{kind}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{kind}.crt", directory / f"{kind}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


class PyServer:
    """A bench.server subprocess with its stdin/stdout control channel."""

    def __init__(self, mode: str, cert: tuple[str, str]) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.server",
                "--mode",
                mode,
                "--cert",
                cert[0],
                "--key",
                cert[1],
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.proc.stdout.readline())  # type: ignore[union-attr]

    def ask(self, cmd: str) -> str:
        self.proc.stdin.write(cmd + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.proc.stdout.readline().strip()  # type: ignore[union-attr]

    def cpu(self) -> float:
        return float(self.ask("cpu"))

    def rss(self) -> int:
        self.ask("gc")
        return int(self.ask("rss"))

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class NginxServer:
    """nginx (master + one worker) with a TLS `stream` server answering `return "x";`."""

    def __init__(self, cert: tuple[str, str], workdir: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        prefix = workdir / f"nginx-{self.port}"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"load_module {NGINX_MODULE};\n"
            f"daemon off; master_process on; worker_processes 1;\n"
            f"pid {prefix}/nginx.pid; error_log {prefix}/error.log error;\n"
            "events { worker_connections 4096; }\n"
            "stream { server {\n"
            f"  listen 127.0.0.1:{self.port} ssl backlog=4096;\n"
            f"  ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]};\n"
            "  ssl_protocols TLSv1.2 TLSv1.3;\n"
            '  return "x";\n'
            "} }\n"
        )
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", str(conf), "-e", f"{prefix}/error.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.worker = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.worker:
            time.sleep(0.05)
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
                self.worker = int(children.split()[0]) if children.split() else 0
            except (OSError, ValueError):
                pass
        if not self.worker:
            self.close()
            raise RuntimeError("nginx did not start (see its error.log)")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.worker}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def client(port: int, mode: str, **opts: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.client", "--port", str(port), "--mode", mode]
    for k, v in opts.items():
        argv += [f"--{k}", str(v)]
    return subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def expect(proc: subprocess.Popen[str], word: str) -> None:
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if line != word:
        proc.kill()
        raise RuntimeError(f"bench client: expected {word}, got {line!r}")


def idle_memory(mode: str, cert: tuple[str, str], n: int) -> float:
    """Server RSS KiB per idle TLS connection (after one 1-byte echo each)."""
    server = PyServer(mode, cert)
    try:
        warm = client(server.port, "idle", n=50)  # first-use allocations are not per conn
        expect(warm, "READY")
        warm.stdin.close()  # type: ignore[union-attr]
        warm.wait()
        time.sleep(0.3)
        before = server.rss()
        c = client(server.port, "idle", n=n)
        expect(c, "READY")
        time.sleep(0.5)
        after = server.rss()
        c.stdin.close()  # type: ignore[union-attr]
        c.wait()
        return (after - before) / n
    finally:
        server.close()


def handshake_cpu(server: PyServer | NginxServer, m: int) -> float:
    """Server CPU ms per full TLS handshake (connect, handshake, close)."""
    warm = client(server.port, "handshake", n=50)
    expect(warm, "DONE")
    warm.wait()
    time.sleep(0.2)
    t0 = server.cpu()
    c = client(server.port, "handshake", n=m, concurrency=8)
    expect(c, "DONE")
    c.wait()
    time.sleep(0.3)  # let the server finish closing
    return (server.cpu() - t0) / m * 1e3


def echo_cpu(mode: str, cert: tuple[str, str], conns: int, rounds: int) -> float:
    """Server CPU us per 100-byte echo round trip, `conns` connections x `rounds`."""
    server = PyServer(mode, cert)
    try:
        c = client(server.port, "echo", n=conns, rounds=rounds, size=100)
        expect(c, "READY")
        time.sleep(0.3)
        t0 = server.cpu()
        c.stdin.write("go\n")  # type: ignore[union-attr]
        c.stdin.flush()  # type: ignore[union-attr]
        expect(c, "DONE")
        used = server.cpu() - t0
        c.stdin.close()  # type: ignore[union-attr]
        c.wait()
        return used / (conns * rounds) * 1e6
    finally:
        server.close()


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--idle", type=int, default=10000, help="idle TLS connections (a)")
    ap.add_argument("--handshakes", type=int, default=2000, help="handshakes per figure (b)")
    ap.add_argument(
        "--hs-rounds",
        type=int,
        default=3,
        help="alternating netio/nginx rounds for (b); medians are reported",
    )
    ap.add_argument("--echo-conns", type=int, default=1000, help="connections for (c)")
    ap.add_argument("--echo-rounds", type=int, default=30, help="round trips per conn (c)")
    ap.add_argument("--kernel-calls", type=int, default=5000, help="calls per kernel figure")
    args = ap.parse_args()

    from bench import kernel

    print("[kernel] actor round trip and command dispatch...", flush=True)
    kernel_results = kernel.run(args.kernel_calls)

    have_nginx = shutil.which("nginx") is not None and os.path.exists(NGINX_MODULE)
    results: dict[str, dict[str, float | None]] = {}
    with tempfile.TemporaryDirectory(prefix="yuneta-bench-") as tmp:
        work = Path(tmp)
        certs = {"ec": make_cert(work, "ec"), "rsa": make_cert(work, "rsa")}
        for mode in PY_MODES:
            row = results.setdefault(mode, {})
            print(f"[{mode}] idle memory, {args.idle} connections...", flush=True)
            row["idle"] = idle_memory(mode, certs["ec"], args.idle)
            for kind in ("ec", "rsa"):
                if mode == "netio":
                    continue  # measured below, interleaved with nginx
                print(f"[{mode}] handshake CPU {kind}...", flush=True)
                server = PyServer(mode, certs[kind])
                try:
                    row[f"hs_{kind}"] = handshake_cpu(server, args.handshakes)
                finally:
                    server.close()
            print(f"[{mode}] echo CPU...", flush=True)
            row["echo"] = echo_cpu(mode, certs["ec"], args.echo_conns, args.echo_rounds)
        # The ratio that has a target: netio and nginx take turns, `--hs-rounds` times, so
        # both see the same machine (on a shared box the load drifts); medians are reported.
        row = results.setdefault("nginx", {"idle": None, "echo": None})
        for kind in ("ec", "rsa"):
            samples: dict[str, list[float]] = {"netio": [], "nginx": []}
            for rnd in range(args.hs_rounds):
                print(f"[netio/nginx] handshake CPU {kind}, round {rnd + 1}...", flush=True)
                server = PyServer("netio", certs[kind])
                try:
                    samples["netio"].append(handshake_cpu(server, args.handshakes))
                finally:
                    server.close()
                if have_nginx:
                    ng = NginxServer(certs[kind], work)
                    try:
                        samples["nginx"].append(handshake_cpu(ng, args.handshakes))
                    finally:
                        ng.close()
            for name, values in samples.items():
                results[name][f"hs_{kind}"] = statistics.median(values) if values else None

    ours = results["netio"]
    hs_note = f" (median/{args.hs_rounds})" if args.hs_rounds > 1 else ""
    metrics = [
        ("idle", f"idle TLS conn, server RSS KiB/conn (n={args.idle})", ".1f"),
        ("hs_ec", f"full handshake ECDSA P-256, server CPU ms{hs_note}", ".3f"),
        ("hs_rsa", f"full handshake RSA-2048, server CPU ms{hs_note}", ".3f"),
        ("echo", f"100 B echo round trip, server CPU us ({args.echo_conns} conns)", ".1f"),
    ]
    cols = ["netio", "asyncio-streams", "asyncio-proto", "nginx"]
    print()
    print(f"{'metric':58} " + " ".join(f"{c:>15}" for c in cols) + f" {'target':>14}  result")
    for key, label, spec in metrics:
        cells = " ".join(f"{fmt(results[c].get(key), spec):>15}" for c in cols)
        value = ours[key]
        if key == "idle":
            target, ok = f"<= {TARGET_IDLE_KIB:.0f} KiB", value <= TARGET_IDLE_KIB
        elif key == "echo":
            target, ok = f"<= {TARGET_ECHO_US:.0f} us", value <= TARGET_ECHO_US
        else:
            ref = results["nginx"].get(key)
            target = f"<= {TARGET_HS_RATIO}x nginx"
            ok = None if ref is None else value <= TARGET_HS_RATIO * ref
            if ref:
                target += f" ({value / ref:.2f}x)"
        verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
        print(f"{label:58} {cells} {target:>14}  {verdict}")
    kernel.print_table(kernel_results)


if __name__ == "__main__":
    main()
