"""Every command ctpm implements, through tpm2-pytss ESAPI, over the mssim and swtpm TCTIs.

Each scenario runs in a worker thread (ESAPI blocks) against the in-process daemon; the
results are checked against values computed independently with hashlib.
"""
import hashlib

import pytest

from ctpm.testing import blocking, with_esapi
from ctpm.wire.commands import COMMANDS as CTPM_COMMANDS
from ctpm.testing.plugin import tcti_string

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESAPI, ESYS_TR, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import (TPM2_ALG, TPM2_CAP, TPM2_PT, TPM2_PT_PCR, TPM2_RC,  # noqa: E402
                                  TPM2_SU)
from tpm2_pytss.types import (TPM2B_MAX_BUFFER, TPM2B_SENSITIVE_DATA, TPML_ALG,  # noqa: E402
                              TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA,
                              TPMT_PUBLIC, TPMT_PUBLIC_PARMS)

TCTIS = ["mssim", "swtpm"]


def parms(spec: str) -> TPMT_PUBLIC_PARMS:
    public = TPMT_PUBLIC.parse(spec)
    return TPMT_PUBLIC_PARMS(type=public.type, parameters=public.parameters)


def sha256_ha(data: bytes) -> TPMT_HA:
    ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
    ha.digest.sha256 = data
    return ha


@pytest.mark.parametrize("kind", TCTIS)
async def test_pcr_commands(ctpm_server, kind):
    def scenario(esapi):
        digest = hashlib.sha256(b"measurement").digest()
        esapi.pcr_extend(ESYS_TR.PCR10, TPML_DIGEST_VALUES([sha256_ha(digest)]))
        events = esapi.pcr_event(ESYS_TR.PCR11, b"event data")
        counter_before, _, _ = esapi.pcr_read(TPML_PCR_SELECTION.parse("sha256:0"))
        esapi.pcr_extend(ESYS_TR.PCR16, TPML_DIGEST_VALUES([sha256_ha(digest)]))
        esapi.pcr_reset(ESYS_TR.PCR16)
        counter, selection, values = esapi.pcr_read(
            TPML_PCR_SELECTION.parse("sha1:11+sha256:10,11,16"))
        with pytest.raises(TSS2_Exception) as e:
            esapi.pcr_reset(ESYS_TR.PCR0)
        return digest, events, counter_before, counter, selection, values, e.value.rc

    digest, events, counter_before, counter, selection, values, reset0 = \
        await with_esapi(ctpm_server, scenario, kind)
    zero32, zero20 = bytes(32), bytes(20)
    ev256 = hashlib.sha256(b"event data").digest()
    ev1 = hashlib.sha1(b"event data").digest()
    assert [(d.hashAlg, bytes(d.digest.sha256 if d.hashAlg == TPM2_ALG.SHA256 else b""))
            for d in events][1] == (TPM2_ALG.SHA256, ev256)
    assert len(events) == 4
    assert [bytes(v) for v in values] == [
        hashlib.sha1(zero20 + ev1).digest(),
        hashlib.sha256(zero32 + digest).digest(),
        hashlib.sha256(zero32 + ev256).digest(),
        zero32,
    ]
    assert selection.marshal() == TPML_PCR_SELECTION.parse("sha1:11+sha256:10,11,16").marshal()
    assert counter == counter_before          # PCR 16 changes do not count (PC Client)
    assert reset0 & 0xFFF == TPM2_RC.LOCALITY


@pytest.mark.parametrize("kind", TCTIS)
async def test_random_hash_clock_selftest(ctpm_server, kind):
    def scenario(esapi):
        r = [bytes(esapi.get_random(32)) for _ in range(2)]
        esapi.stir_random(TPM2B_SENSITIVE_DATA(b"more entropy"))
        out_hash, ticket = esapi.hash(TPM2B_MAX_BUFFER(b"abc"), TPM2_ALG.SHA384, ESYS_TR.OWNER)
        null_hash, null_ticket = esapi.hash(TPM2B_MAX_BUFFER(b"abc"), TPM2_ALG.SHA1,
                                            ESYS_TR.NULL)
        t1 = esapi.read_clock()
        esapi.self_test(True)
        todo = esapi.incremental_self_test(TPML_ALG([TPM2_ALG.SHA256, TPM2_ALG.AES]))
        out, result = esapi.get_test_result()
        t2 = esapi.read_clock()
        return r, out_hash, ticket, null_hash, null_ticket, t1, t2, todo, out, result

    r, out_hash, ticket, null_hash, null_ticket, t1, t2, todo, out, result = \
        await with_esapi(ctpm_server, scenario, kind)
    assert len(r[0]) == 32 and r[0] != r[1]
    assert bytes(out_hash) == hashlib.sha384(b"abc").digest()
    assert ticket.hierarchy == ESYS_TR.OWNER or ticket.hierarchy == 0x40000001
    assert len(bytes(ticket.digest)) > 0
    assert bytes(null_hash) == hashlib.sha1(b"abc").digest()
    assert null_ticket.hierarchy == 0x40000007 and len(bytes(null_ticket.digest)) == 0
    assert t2.clockInfo.clock >= t1.clockInfo.clock and t2.time >= t1.time
    assert t1.clockInfo.resetCount == t2.clockInfo.resetCount
    assert len(todo) == 0 and len(bytes(out)) == 0 and result == TPM2_RC.SUCCESS


@pytest.mark.parametrize("kind", TCTIS)
async def test_capabilities_and_testparms(ctpm_server, kind):
    def scenario(esapi):
        more, cmds = esapi.get_capability(TPM2_CAP.COMMANDS, 0, 256)
        _, pcrs = esapi.get_capability(TPM2_CAP.PCRS, 0, 1)
        _, fixed = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.FIXED, 200)
        _, algs = esapi.get_capability(TPM2_CAP.ALGS, 0, 200)
        _, handles = esapi.get_capability(TPM2_CAP.HANDLES, 0, 30)
        for spec in ("rsa2048", "rsa3072:aes256cfb", "ecc256", "ecc384", "aes128cfb", "hmac"):
            esapi.test_parms(parms(spec))
        rsa768 = parms("rsa2048")
        rsa768.parameters.rsaDetail.keyBits = 768
        with pytest.raises(TSS2_Exception) as e:
            esapi.test_parms(rsa768)
        return more, cmds, pcrs, fixed, algs, handles, e.value.rc

    more, cmds, pcrs, fixed, algs, handles, bad = await with_esapi(ctpm_server, scenario, kind)
    codes = {c & 0xFFFF for c in cmds.data.command}
    assert not more and codes == {int(c.code) for c in CTPM_COMMANDS}
    assert {0x144, 0x17E, 0x182, 0x176, 0x131} <= codes
    banks = {s.hash: bytes(s.pcrSelect)[:s.sizeofSelect] for s in pcrs.data.assignedPCR}
    assert banks == {alg: b"\xff\xff\xff" for alg in (TPM2_ALG.SHA1, TPM2_ALG.SHA256,
                                                      TPM2_ALG.SHA384, TPM2_ALG.SHA512)}
    props = {p.property: p.value for p in fixed.data.tpmProperties}
    assert props[TPM2_PT.FAMILY_INDICATOR] == 0x322E3000
    assert props[TPM2_PT_PCR.COUNT] == 24
    assert props[TPM2_PT.MANUFACTURER] == int.from_bytes(b"CTPM", "big")
    assert {a.alg for a in algs.data.algorithms} >= {TPM2_ALG.SHA256, TPM2_ALG.RSA,
                                                     TPM2_ALG.ECC, TPM2_ALG.AES}
    assert list(handles.data.handles) == list(range(24))
    assert bad == TPM2_RC.VALUE + TPM2_RC.P + TPM2_RC.RC1    # keyBits 768: VALUE, parameter 1


@pytest.mark.parametrize("kind", TCTIS)
async def test_shutdown_state_then_resume(ctpm_server, ctpm_tpm, kind):
    def scenario(esapi):
        esapi.pcr_extend(ESYS_TR.PCR5, TPML_DIGEST_VALUES([sha256_ha(b"\x07" * 32)]))
        esapi.shutdown(TPM2_SU.STATE)
        return esapi.read_clock()

    before = await with_esapi(ctpm_server, scenario, kind)
    ctpm_tpm.power_off()
    ctpm_tpm.power_on()

    def resume():
        esapi = ESAPI(tcti_string(ctpm_server, kind))
        try:
            esapi.startup(TPM2_SU.STATE)
            _, _, values = esapi.pcr_read(TPML_PCR_SELECTION.parse("sha256:5"))
            return esapi.read_clock(), bytes(values[0])
        finally:
            esapi.close()

    after, pcr5 = await blocking(resume)
    assert pcr5 == hashlib.sha256(bytes(32) + b"\x07" * 32).digest()
    assert after.clockInfo.restartCount == before.clockInfo.restartCount + 1
    assert after.clockInfo.resetCount == before.clockInfo.resetCount
