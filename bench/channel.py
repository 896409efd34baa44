"""The trusted channel's costs, side by side with their baselines, in one run.

    python bench/channel.py [--rounds 40] [--transfers 40]

Against a `ctpm run --mode ephemeral` (simulated AMD-SP) and a swtpm process, both over
loopback through tpm2-tss TCTIs with ctpm's own session client (ctpm/channel/tpm.py):

1. session set-up: TPM2_StartAuthSession salted to the channel key K with the TEE's key Q_T,
   plus the confirmation round (GetRandom with the session's response HMAC), against an
   unsalted StartAuthSession; and the channel establishment (Q_T generated, salted session,
   confirmation) against a plain P-256 ECDH + KDF in software;
2. the whole `get_secret` (both attestations, authorization, unseal, against a real
   `ctpm verifier serve`), and the share the key agreement takes of it (the paper: +2%);
3. sustained transfer: 4 KiB through TPM2_EncryptDecrypt2 (4 x 1 KiB) authorized by an HMAC
   session salted to K, with AES-CFB parameter encryption both ways against the same session
   without it (the paper: < 0.7% overall).
Medians of alternating rounds (the least-disturbed comparison on a shared machine).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TSS2_LOG", "all+NONE")

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from bench import SwtpmProcess  # noqa: E402  (bench/bench.py)
from ctpm.channel import protocol as P  # noqa: E402
from ctpm.channel.secrets import create_primary  # noqa: E402
from ctpm.channel.tpm import (A_CONTINUE, A_DECRYPT, A_ENCRYPT, SE_HMAC, SE_POLICY,  # noqa
                              TpmChannel, b2, ecc_salt, take_b2, u16)
from ctpm.channel.transport import TctiTransport  # noqa: E402
from ctpm.crypto.kdf import kdfa  # noqa: E402
from ctpm.testing.process import run_daemon  # noqa: E402

SYM_ATTRS = 0x00060472          # fixedTPM fixedParent SDO userWithAuth noDA decrypt sign
CHUNK = 1024


def med(xs):
    return statistics.median(xs) * 1e3


def sym_key(tpm):
    template = (u16(0x0025) + u16(0x000B) + P.u32(SYM_ATTRS) + b2(b"") + u16(0x0006)
                + u16(128) + u16(0x0043) + b2(b""))
    return create_primary(tpm, template)


def session_setup(tpm, k_handle, k_point, rounds):
    plain, salted, established, software = [], [], [], []
    for i in range(rounds):
        for kind in (("plain", "salted") if i % 2 else ("salted", "plain")):
            t0 = time.perf_counter()
            if kind == "plain":
                s = tpm.start_session(kind=SE_POLICY)
                plain.append(time.perf_counter() - t0)
            else:
                q_t = ec.generate_private_key(ec.SECP256R1())
                t1 = time.perf_counter()
                s = tpm.start_session(kind=SE_POLICY, tpm_key=k_handle, key_xy=k_point,
                                      ephemeral=q_t)
                tpm.confirm(s)
                t2 = time.perf_counter()
                salted.append(t2 - t1)
                established.append(t2 - t0)
            tpm.flush(s.handle)
        t0 = time.perf_counter()
        q = ec.generate_private_key(ec.SECP256R1())
        salt, _ = ecc_salt(*k_point, q)
        kdfa(0x000B, salt, b"ATH", os.urandom(32), os.urandom(32), 256)
        software.append(time.perf_counter() - t0)
    return {"unsalted": med(plain), "salted+confirm": med(salted),
            "establish": med(established), "software_ecdh": med(software)}


def transfer(tpm, k_handle, k_point, rounds):
    handle, public = sym_key(tpm)
    name = P.name_of(public)
    q_t = ec.generate_private_key(ec.SECP256R1())
    s = tpm.start_session(kind=SE_HMAC, tpm_key=k_handle, key_xy=k_point, ephemeral=q_t)
    data = os.urandom(4 * CHUNK)
    times = {"encrypted": [], "hmac only": []}
    try:
        for i in range(rounds):
            for mode in (("encrypted", "hmac only") if i % 2 else ("hmac only", "encrypted")):
                attrs = A_CONTINUE | (A_DECRYPT | A_ENCRYPT if mode == "encrypted" else 0)
                t0 = time.perf_counter()
                out = b""
                for off in range(0, len(data), CHUNK):
                    params = (b2(data[off:off + CHUNK]) + bytes([0]) + u16(0x0043)
                              + b2(bytes(16)))
                    _, rp = tpm.call("EncryptDecrypt2", params, handles=[handle],
                                     names=[name], auths=[s], session=s, session_attrs=attrs)
                    chunk, _ = take_b2(rp)
                    out += chunk
                times[mode].append(time.perf_counter() - t0)
                assert len(out) == len(data)
    finally:
        tpm.flush(s.handle)
        tpm.flush(handle)
    e, h = med(times["encrypted"]), med(times["hmac only"])
    return {"encrypted_ms": e, "plain_ms": h, "overhead_pct": (e - h) / h * 100,
            "MBps_encrypted": 4 * CHUNK / (e / 1e3) / 1e6}


def whole_flow(tmp, sp, tpm_tcti, rounds):
    from ctpm.attest.tpm import parse_selection
    from ctpm.channel.client import VerifierClient, get_secret
    from ctpm.channel.secrets import seal
    from ctpm.snp.simulator import SimulatedProvider
    from ctpm.testing.process import command, environment
    from tests.attest.service_helpers import AUDIENCE, make_key, run_service, write_policy
    policy = write_policy(tmp, sp, pcrs="sha256:0,1,2,3,4,5,6,7")
    akey = os.path.join(tmp, "authority.pem")
    subprocess.run(command("verifier", "keygen", akey), check=True, env=environment(),
                   capture_output=True)
    secrets = os.path.join(tmp, "secrets")
    os.makedirs(secrets, exist_ok=True)
    with run_service(policy, make_key(tmp), "--authority-key", akey, "--secrets",
                     secrets) as svc:
        public = bytes.fromhex(VerifierClient(svc.url).authority()["public"])
        t = TctiTransport(tpm_tcti)
        rec = seal(TpmChannel(t), "bench", os.urandom(32), parse_selection("sha256:0,7"),
                   public)
        t.close()
        import json
        with open(os.path.join(secrets, "bench.json"), "w") as f:
            json.dump(rec, f)
        totals, channel, commands = [], [], 0
        for i in range(rounds + 1):
            t = TctiTransport(tpm_tcti)
            timings = {}
            get_secret(t, "bench", svc.url, audience=AUDIENCE,
                       provider=SimulatedProvider(sp), timings=timings)
            t.close()
            if i:
                totals.append(timings["total"])
                commands = timings["tpm_commands"]
                http = timings["http_requests"]
        # the key agreement inside one get: measured in the same TPM, same state
        t = TctiTransport(tpm_tcti)
        tpm = TpmChannel(t)
        k, kpub = create_primary(tpm, P.channel_key_template())
        info = P.parse_ecc_public(kpub)
        ka = session_setup(tpm, k, (info["x"], info["y"]), rounds)
        tpm.flush(k)
        t.close()
        channel = ka["salted+confirm"]
    total = med(totals)
    return {"get_secret_ms": total, "tpm_commands": commands, "http_requests": http,
            "key_agreement_ms": channel, "key_agreement_share_pct": channel / total * 100,
            "over_unsalted_pct": (ka["salted+confirm"] - ka["unsalted"]) / total * 100}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--transfers", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from ctpm.snp.simulator import SimulatedSP
        sp = SimulatedSP(os.path.join(tmp, "sp"))
        swtpm = SwtpmProcess()
        try:
            with run_daemon("--mode", "ephemeral", "--snp-provider", "simulated",
                            "--snp-sim-dir", sp.directory, timeout=60) as d:
                results = {}
                for label, tcti in (("ctpm", d.tcti("mssim")), ("swtpm", swtpm.tcti())):
                    t = TctiTransport(tcti)
                    tpm = TpmChannel(t)
                    if label == "ctpm":
                        tpm.call("Startup", u16(0))
                    k, kpub = create_primary(tpm, P.channel_key_template())
                    info = P.parse_ecc_public(kpub)
                    point = (info["x"], info["y"])
                    results[label] = {"session": session_setup(tpm, k, point, args.rounds),
                                      "transfer": transfer(tpm, k, point, args.transfers)}
                    tpm.flush(k)
                    t.close()
                flow = whole_flow(tmp, sp, d.tcti("mssim"), max(5, args.rounds // 4))
        finally:
            swtpm.close()
    print("1. session set-up (median ms)")
    print(f"   {'TPM':6} {'unsalted':>9} {'salted+confirm':>15} {'ratio':>6} "
          f"{'establish':>10} {'software ECDH':>14}")
    for label, r in results.items():
        s = r["session"]
        print(f"   {label:6} {s['unsalted']:9.3f} {s['salted+confirm']:15.3f} "
              f"{s['salted+confirm'] / s['unsalted']:6.2f} {s['establish']:10.3f} "
              f"{s['software_ecdh']:14.3f}")
    print("2. whole get_secret against ctpm (both attestations, authorization, unseal)")
    print(f"   {flow['get_secret_ms']:.1f} ms, {flow['tpm_commands']} TPM commands, "
          f"{flow['http_requests']} HTTP requests; key agreement {flow['key_agreement_ms']:.2f}"
          f" ms = {flow['key_agreement_share_pct']:.1f}% of it; "
          f"+{flow['over_unsalted_pct']:.1f}% over an unsalted session")
    print("3. sustained transfer, 4 KiB through EncryptDecrypt2 in an HMAC session salted to K "
          "(median ms)")
    print(f"   {'TPM':6} {'hmac only':>10} {'encrypted':>10} {'overhead':>9} {'MB/s enc':>9}")
    for label, r in results.items():
        x = r["transfer"]
        print(f"   {label:6} {x['plain_ms']:10.3f} {x['encrypted_ms']:10.3f} "
              f"{x['overhead_pct']:8.1f}% {x['MBps_encrypted']:9.2f}")


if __name__ == "__main__":
    main()
