"""IMA log replay: crafted logs (binary with SHA-1 and SHA-256 template digests, ASCII,
ima-ng, ima-sig, violations) replayed against PCR 10 as a real ctpm extended it the way the
kernel does (one digest per bank); edited logs refused with `ima_log`."""
import hashlib
import os
import shutil
import subprocess

import pytest

from ctpm.attest import evidence as E
from ctpm.attest.ima import ImaLogError, entry, replay
from ctpm.attest.verify import verify_evidence

from .test_composite import ephemeral, member, policy, refused

TOOLS = shutil.which("tpm2_pcrextend") is not None


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    return SimulatedSP(str(tmp_path_factory.mktemp("sim") / "sp"), "milan")


FILES = [("boot_aggregate", hashlib.sha256(b"pcrs 0-9").digest(), None),
         ("/usr/bin/bash", hashlib.sha256(b"bash").digest(), None),
         ("/usr/lib/x86_64-linux-gnu/libc.so.6", hashlib.sha256(b"libc").digest(),
          bytes.fromhex("030204") + os.urandom(70)),          # ima-sig with a signature
         ("/etc/with space", hashlib.sha256(b"x").digest(), b"")]   # ima-sig, no signature


def logs(files=FILES, violation_at=None):
    """(binary log with SHA-1 digests, binary log with SHA-256 digests, ASCII SHA-1, ASCII
    SHA-256, the template data of each entry)."""
    b1 = b256 = b""
    a1 = a256 = ""
    datas = []
    for i, (path, digest, sig) in enumerate(files):
        e1, l1, data = entry(path, digest, sig=sig)
        e256, l256, _ = entry(path, digest, sig=sig, log_digest="sha256")
        if i == violation_at:          # the kernel logs a violation with a zero digest
            e1 = e1[:4] + bytes(20) + e1[24:]
            e256 = e256[:4] + bytes(32) + e256[36:]
            l1 = l1.replace(l1.split(" ")[1], "00" * 20)
            l256 = l256.replace(l256.split(" ")[1], "00" * 32)
            data = None
        b1, b256, a1, a256 = b1 + e1, b256 + e256, a1 + l1, a256 + l256
        datas.append(data)
    return b1, b256, a1.encode(), a256.encode(), datas


def with_log(doc, log):
    return dict(doc, **{"ima-log": [E.MEDIA["ima-log"], E.b64u(log)]})


def kernel_pcr10(datas, bank):
    value = bytes(hashlib.new(bank).digest_size)
    for data in datas:
        extend = b"\xff" * len(value) if data is None else hashlib.new(bank, data).digest()
        value = hashlib.new(bank, value + extend).digest()
    return value


def test_replay_of_every_format_matches_the_kernels_extends():
    for violation in (None, 1):
        b1, b256, a1, a256, datas = logs(violation_at=violation)
        want = {bank: kernel_pcr10(datas, bank) for bank in ("sha1", "sha256")}
        for log in (b1, b256):
            values, n = replay(log, ("sha1", "sha256"))
            assert n == len(FILES)
            assert values == {("sha1", 10): want["sha1"], ("sha256", 10): want["sha256"]}
        assert replay(a1, ("sha1", "sha256"))[0] == {("sha1", 10): want["sha1"]}
        assert replay(a256, ("sha1", "sha256"))[0] == {("sha256", 10): want["sha256"]}


def test_edited_and_malformed_logs_are_refused():
    b1, b256, a1, a256, _ = logs()
    for log in (b1, b256):
        edited = bytearray(log)
        edited[log.index(FILES[1][1]) + 5] ^= 1     # bash's file hash
        with pytest.raises(ImaLogError, match="edited"):
            replay(bytes(edited), ("sha256",))
        with pytest.raises(ImaLogError):
            replay(log[:-5], ("sha256",))       # truncated
    text = a256.decode().splitlines()
    # another file hash on a line whose template digest stays
    parts = text[1].split(" ")
    parts[3] = "sha256:" + "00" * 32
    for bad in ("\n".join(text[:1] + [" ".join(parts)] + text[2:]),
                text[0].replace("ima-ng", "ima"), "10 zz ima-ng sha256:00 /x", "10 00 ima-ng",
                "99 " + text[0][3:]):
        with pytest.raises(ImaLogError):
            replay(bad.encode(), ("sha256",))
    for bad in (b"", b"\x01\x02\x03", bytes(200)):
        with pytest.raises(ImaLogError):
            replay(bad, ("sha256",))


@pytest.mark.skipif(not TOOLS, reason="tpm2-tools not installed")
def test_ima_log_against_a_real_ctpm(sim, tmp_path):
    """The kernel's extends (sha1 and sha256 digests of each template in one PCR_Extend)
    into ctpm's PCR 10, a quote over sha256:10 and sha1:10, the log in the evidence."""
    from dataclasses import replace
    b1, b256, a1, a256, datas = logs(violation_at=2)
    pol = replace(policy(sim), pcrs="sha1:10+sha256:0,10")
    with ephemeral(sim) as d:
        tcti = d.tcti()
        subprocess.run(["tpm2_startup", "-c", "-T", tcti], check=True, capture_output=True)
        for data in datas:
            if data is None:
                digests = f"sha1={'ff' * 20},sha256={'ff' * 32}"
            else:
                digests = (f"sha1={hashlib.sha1(data).hexdigest()},"
                           f"sha256={hashlib.sha256(data).hexdigest()}")
            subprocess.run(["tpm2_pcrextend", "-T", tcti, f"10:{digests}"], check=True,
                           capture_output=True)
        nonce = os.urandom(64)
        doc = E.collect(tcti, nonce, pcrs="sha1:10+sha256:0,10", ima_log=b1)
        only256 = E.collect(tcti, nonce, pcrs="sha256:0,10")
        no10 = E.collect(tcti, nonce, pcrs="sha256:0")
    for log, covered in ((b1, ["sha1:10", "sha256:10"]), (b256, ["sha1:10", "sha256:10"]),
                         (a1, ["sha1:10"]), (a256, ["sha256:10"])):
        a = verify_evidence(member(doc, "ima-log", log), nonce, pol)
        assert a.claims()["vtpm"]["ima_log"] == {"pcrs": covered, "entries": len(FILES)}
    # one entry fewer: the replay falls short of the quoted PCR 10
    short = b256[:len(b256) - len(entry(*FILES[-1][:2], sig=b"", log_digest="sha256")[0])]
    refused("ima_log", member(doc, "ima-log", short), nonce, pol)
    edited = bytearray(b1)
    edited[b1.index(FILES[1][1]) + 5] ^= 1
    refused("ima_log", member(doc, "ima-log", bytes(edited)), nonce, pol)
    # an ASCII SHA-1 log when only sha256 is quoted cannot be checked: refused, not carried
    pol256 = replace(policy(sim), pcrs="sha256:0,10")
    refused("ima_log", with_log(only256, a1), nonce, pol256)
    verify_evidence(with_log(only256, a256), nonce, pol256)
    # PCR 10 not quoted at all
    refused("ima_log", with_log(no10, b256), nonce, replace(policy(sim), pcrs="sha256:0"))
