"""ctpm against swtpm, side by side, through the same tpm2-pytss ESAPI client.

    python bench/bench.py [--seconds 2] [--rounds 3] [--only TEXT]

Both TPMs run as separate processes on loopback in the same run. Each workload is run for
a fixed time per round, alternating the TPMs, and the best round counts (the least disturbed
by the rest of the machine). The swtpm TCTI (a new TCP connection per command) is used for
both so the client and transport are the same; ctpm over the mssim TCTI (one persistent
connection) is reported too. Also: the time from `ctpm run` / `swtpm socket` to accepting
connections.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctpm.testing.process import run_daemon  # noqa: E402


def free_port_pair():
    """Two consecutive free TCP ports (swtpm cannot bind port 0 and report it). Drawn below
    the ephemeral range, as the daemon does: after a benchmark's connection churn, port + 1
    of a bind(0) port is usually held by a TIME_WAIT."""
    from ctpm.transport.bind import _pair_candidates
    for port in _pair_candidates():
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                port = a.getsockname()[1]
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def wait_listening(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.002)
    raise TimeoutError(f"nothing listens on {port}")


class SwtpmProcess:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ctpm-bench-swtpm-")
        self.port = free_port_pair()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.dir}",
             "--server", f"type=tcp,port={self.port}", "--ctrl", f"type=tcp,port={self.port + 1}",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port)
        self.startup_s = time.perf_counter() - t0

    def tcti(self):
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def ctpm_ready_time(rounds=5):
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        with run_daemon("--mssim", "127.0.0.1:0"):
            dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best


STORAGE = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt"
AK = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"


class Workloads:
    """The ESAPI calls measured, for one client. Keys are made on first use and flushed
    after each workload (swtpm holds only three loaded objects)."""

    def __init__(self, esapi):
        from tpm2_pytss import ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA
        from tpm2_pytss.types import TPM2B_MAX_BUFFER, TPM2B_SENSITIVE_CREATE
        self.esapi = esapi
        self.handles = {}
        self.counter = 0
        ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        ha.digest.sha256 = b"\x01" * 32
        digest = TPML_DIGEST_VALUES([ha])
        selection = TPML_PCR_SELECTION.parse("sha256:0,1,2,3")
        data = TPM2B_MAX_BUFFER(b"x" * 1024)
        self.empty = TPM2B_SENSITIVE_CREATE()
        self.calls = {
            "GetRandom(32)": lambda: esapi.get_random(32),
            "PCR_Extend(sha256)": lambda: esapi.pcr_extend(ESYS_TR.PCR16, digest),
            "PCR_Read(4 PCRs)": lambda: esapi.pcr_read(selection),
            "Hash(1 KiB, sha256)": lambda: esapi.hash(data, TPM2_ALG.SHA256, ESYS_TR.OWNER),
            "CreatePrimary RSA-2048": lambda: self.create_primary("rsa2048:aes128cfb"),
            "CreatePrimary ECC P-256": lambda: self.create_primary("ecc256:aes128cfb"),
            "Create RSA-2048": lambda: self.create("rsa2048"),
            "Create ECC P-256": lambda: self.create("ecc256"),
            "Sign RSASSA-2048": lambda: self.sign("rsa2048:rsassa-sha256:null"),
            "Sign ECDSA P-256": lambda: self.sign("ecc256:ecdsa-sha256:null"),
            "RSA_Decrypt OAEP-2048": self.rsa_decrypt,
            "ECDH_ZGen P-256": self.ecdh_zgen,
            "Quote RSASSA-2048": lambda: self.quote("rsa2048:rsassa-sha256:null"),
            "Quote ECDSA P-256": lambda: self.quote("ecc256:ecdsa-sha256:null"),
            "Certify ECDSA P-256": self.certify,
        }

    def key(self, name, template, attrs):
        from tpm2_pytss.types import TPM2B_PUBLIC
        if name not in self.handles:
            public = TPM2B_PUBLIC.parse(template, objectAttributes=attrs)
            self.handles[name] = self.esapi.create_primary(self.empty, public)[0:2]
        return self.handles[name]

    def flush(self):
        for handle, _public in self.handles.values():
            self.esapi.flush_context(handle)
        self.handles.clear()

    def create_primary(self, template):
        """A new template each time (unique = a counter): no TPM may reuse a key."""
        from tpm2_pytss.types import TPM2B_PUBLIC
        public = TPM2B_PUBLIC.parse(template, objectAttributes=STORAGE)
        self.counter += 1
        if template.startswith("rsa"):
            public.publicArea.unique.rsa = self.counter.to_bytes(4, "big")
        else:
            public.publicArea.unique.ecc.x = self.counter.to_bytes(4, "big")
        handle = self.esapi.create_primary(self.empty, public)[0]
        self.esapi.flush_context(handle)

    def create(self, template):
        parent, _ = self.key("parent", "ecc256:aes128cfb", STORAGE)
        self.esapi.create(parent, self.empty, template)

    def sign(self, template):
        from tpm2_pytss.constants import TPM2_ALG, TPM2_RH, TPM2_ST
        from tpm2_pytss.types import TPM2B_DIGEST, TPMT_SIG_SCHEME, TPMT_TK_HASHCHECK
        key, _ = self.key(template, template, "fixedtpm|fixedparent|sensitivedataorigin|"
                                              "userwithauth|sign")
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        self.esapi.sign(key, TPM2B_DIGEST(b"\x02" * 32),
                        TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket)

    def quote(self, template):
        """tpm2_quote's call: an AK (restricted signing key) quotes 4 SHA-256 PCRs."""
        from tpm2_pytss.constants import TPM2_ALG
        from tpm2_pytss.types import TPM2B_DATA, TPML_PCR_SELECTION, TPMT_SIG_SCHEME
        key, _ = self.key("ak " + template, template, AK)
        self.esapi.quote(key, TPML_PCR_SELECTION.parse("sha256:0,1,2,7"),
                         TPM2B_DATA(b"nonce"), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))

    def certify(self):
        from tpm2_pytss.constants import TPM2_ALG
        from tpm2_pytss.types import TPM2B_DATA, TPMT_SIG_SCHEME
        key, _ = self.key("ak ecc", "ecc256:ecdsa-sha256:null", AK)
        self.esapi.certify(key, key, TPM2B_DATA(b"nonce"), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))

    def rsa_decrypt(self):
        from tpm2_pytss.constants import TPM2_ALG
        from tpm2_pytss.types import TPM2B_DATA, TPM2B_PUBLIC_KEY_RSA, TPMT_RSA_DECRYPT
        key, _ = self.key("oaep", "rsa2048:oaep-sha256:null",
                          "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt")
        if "cipher" not in self.__dict__:
            self.cipher = self.esapi.rsa_encrypt(key, TPM2B_PUBLIC_KEY_RSA(b"secret"),
                                                 TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL),
                                                 TPM2B_DATA())
        self.esapi.rsa_decrypt(key, self.cipher, TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL),
                               TPM2B_DATA())

    def ecdh_zgen(self):
        key, _ = self.key("ecdh", "ecc256:ecdh-sha256:null",
                          "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt")
        if "point" not in self.__dict__:
            self.point = self.esapi.ecdh_key_gen(key)[1]
        self.esapi.ecdh_zgen(key, self.point)


def open_esapi(tcti, startup):
    from tpm2_pytss import ESAPI, TCTILdr, TPM2_SU
    esapi = ESAPI(TCTILdr.parse(tcti) if hasattr(TCTILdr, "parse") else TCTILdr(*tcti.split(":", 1)))
    if startup:
        esapi.startup(TPM2_SU.CLEAR)
    return esapi


def measure(fn, seconds):
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= end:
            return n / (now - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per workload per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", metavar="TEXT", default="",
                    help="run only the workloads whose name contains TEXT")
    args = ap.parse_args()
    names = [wl for wl in workloads_names() if args.only.lower() in wl.lower()]
    if not names:
        sys.exit(f"bench: no workload matches {args.only!r}")
    if not shutil.which("swtpm"):
        sys.exit("bench: swtpm is not installed (apt-get install swtpm)")

    sw = SwtpmProcess()
    with run_daemon("--mssim", "127.0.0.1:0", "--swtpm", "127.0.0.1:0") as d:
        clients = {
            "swtpm (swtpm TCTI)": open_esapi(sw.tcti(), startup=False),
            "ctpm (swtpm TCTI)": open_esapi(d.tcti("swtpm"), startup=True),
            "ctpm (mssim TCTI)": open_esapi(d.tcti("mssim"), startup=False),
        }
        loads = {name: Workloads(e) for name, e in clients.items()}
        best = {}
        for _ in range(args.rounds):
            for wl in names:
                for name in clients:
                    rate = measure(loads[name].calls[wl], args.seconds)
                    loads[name].flush()
                    loads[name].__dict__.pop("cipher", None)
                    loads[name].__dict__.pop("point", None)
                    best[name, wl] = max(best.get((name, wl), 0), rate)
        for e in clients.values():
            e.close()
    sw.close()

    print(f"{'workload':24} {'swtpm ops/s':>12} {'ctpm ops/s':>12} {'ratio':>7}   "
          f"{'ctpm mssim ops/s':>16}   {'swtpm ms/op':>11} {'ctpm ms/op':>10}")
    for wl in names:
        s = best["swtpm (swtpm TCTI)", wl]
        c = best["ctpm (swtpm TCTI)", wl]
        m = best["ctpm (mssim TCTI)", wl]
        print(f"{wl:24} {s:12.1f} {c:12.1f} {c / s:6.2f}x   {m:16.1f}   "
              f"{1000 / s:11.2f} {1000 / c:10.2f}")
    print(f"\nstart-up to accepting connections: ctpm {ctpm_ready_time() * 1000:.0f} ms "
          f"(ready line, python -m ctpm), swtpm {sw.startup_s * 1000:.0f} ms")


def workloads_names():
    return ["GetRandom(32)", "PCR_Extend(sha256)", "PCR_Read(4 PCRs)", "Hash(1 KiB, sha256)",
            "CreatePrimary RSA-2048", "CreatePrimary ECC P-256", "Create RSA-2048",
            "Create ECC P-256", "Sign RSASSA-2048", "Sign ECDSA P-256",
            "RSA_Decrypt OAEP-2048", "ECDH_ZGen P-256", "Quote RSASSA-2048",
            "Quote ECDSA P-256", "Certify ECDSA P-256"]


if __name__ == "__main__":
    os.environ.setdefault("TSS2_LOG", "all+none")
    main()
