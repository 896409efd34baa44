"""Real reports from Milan, Genoa and Turin machines: parsed as the vectors' README says, verified
with the right policy, refused with any single bit flipped."""
import warnings

import pytest
from cryptography import x509

from ctpm.snp import certs as C
from ctpm.snp.errors import SnpError
from ctpm.snp.report import AttestationReport, Product, TcbVersion, platform_info_names
from ctpm.snp.verify import CHECKS, Policy, Verifier

from .conftest import AT, AT_VLEK, vector

REAL = {
    "milan_v3": ("milan_v3_report.bin", "milan_v3_vcek.pem", Policy(at=AT)),
    "genoa_v3": ("genoa_v3_report.bin", "genoa_v3_vcek.pem", Policy(at=AT)),
    "turin_v5": ("turin_v5_report.bin", "turin_v5_vcek.pem", Policy(at=AT)),
    "milan_v2_debug": ("milan_v2_debug_report.bin", "milan_v2_debug_vcek.der",
                       Policy(at=AT, allow_debug=True)),
    "aws_vlek": ("aws_milan_v3_vlek_vmpl1_report.bin", "aws_milan_vlek.der",
                 Policy(at=AT_VLEK, vmpl=1, allow_provisional_firmware=True)),
}


@pytest.fixture(scope="module")
def verifier():
    return Verifier()


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_report_verifies(verifier, name):
    report, vek, policy = REAL[name]
    result = verifier.verify(vector(report), vek=vector(vek), policy=policy)
    assert result.root == "amd"
    assert result.report.raw == vector(report)


def test_parsed_facts_match_the_vectors_readme():
    milan2 = AttestationReport.parse(vector("milan_v2_debug_report.bin"))
    assert milan2.version == 2 and milan2.cpuid is None and milan2.policy == 0xB0000
    assert "DEBUG" in milan2.guest_policy.names()
    t = milan2.tcb("reported", Product.MILAN)
    assert (t.bootloader, t.snp, t.microcode) == (2, 5, 68)

    milan3 = AttestationReport.parse(vector("milan_v3_report.bin"))
    assert milan3.cpuid == (0x19, 0x01, 0x01) and milan3.cpuid_product is Product.MILAN
    assert milan3.policy == 0x3001F and milan3.current_firmware == (1, 55, 29)
    assert milan3.tcb("reported", Product.MILAN).components() == dict(bl=4, tee=0, snp=24,
                                                                      ucode=219)

    genoa = AttestationReport.parse(vector("genoa_v3_report.bin"))
    assert genoa.cpuid == (0x19, 0x11, 0x01) and genoa.cpuid_product is Product.GENOA
    assert genoa.tcb("reported", Product.GENOA).components() == dict(bl=10, tee=0, snp=23,
                                                                     ucode=84)
    assert C.Vek.load(vector("genoa_v3_vcek.pem")).product_name == "Genoa"

    turin = AttestationReport.parse(vector("turin_v5_report.bin"))
    assert turin.version == 5 and turin.cpuid == (0x1A, 0x02, 0x01)
    assert turin.cpuid_product is Product.TURIN
    tcb = turin.tcb("reported", Product.TURIN)
    assert tcb.components() == dict(fmc=1, bl=1, tee=1, snp=4, ucode=81)
    # decoding Turin's TCB with Milan's byte order gives other numbers: the product matters
    assert TcbVersion.decode(tcb.raw, Product.MILAN).components() != tcb.components()
    assert turin.launch_mit_vector == 0x3F and turin.current_mit_vector == 0x3F
    assert "BIT_6" in platform_info_names(turin.platform_info)     # kept, never refused
    vcek = C.Vek.load(vector("turin_v5_vcek.pem"))
    assert len(vcek.hwid) == 8 and vcek.hwid == turin.chip_id[:8]
    assert not any(turin.chip_id[8:]) and vcek.spl["fmc"] == 1

    aws = AttestationReport.parse(vector("aws_milan_v3_vlek_vmpl1_report.bin"))
    assert aws.key_info == 0x4 and aws.key.signing_key_name == "VLEK" and aws.vmpl == 1
    assert not any(aws.chip_id)
    assert (aws.tcb("reported", Product.MILAN).microcode,
            aws.tcb("committed", Product.MILAN).microcode,
            aws.tcb("current", Product.MILAN).microcode) == (217, 219, 220)
    vlek = C.Vek.load(vector("aws_milan_vlek.der"))
    assert vlek.kind == "vlek" and vlek.hwid is None
    assert vlek.csp_id == "CN=cc-us-east-2.amazonaws.com"


def test_serial_zero_veks_load_without_warnings():
    # cryptography warns about (and may one day refuse) serial 0: the loader must cope
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("milan_v3_vcek.pem", "milan_v2_debug_vcek.der", "aws_milan_vlek.der"):
            assert C.serial_number(C.load_cert(vector(name))) == 0


def test_policy_decisions_on_real_reports(verifier):
    with pytest.raises(SnpError) as e:      # DEBUG only when allowed
        verifier.verify(vector("milan_v2_debug_report.bin"),
                        vek=vector("milan_v2_debug_vcek.der"), policy=Policy(at=AT))
    assert e.value.check == "debug"
    aws, vlek = vector("aws_milan_v3_vlek_vmpl1_report.bin"), vector("aws_milan_vlek.der")
    with pytest.raises(SnpError) as e:      # the VLEK has expired by now
        verifier.verify(aws, vek=vlek, policy=Policy(at=AT, vmpl=1,
                                                     allow_provisional_firmware=True))
    assert e.value.check == "vek_validity"
    with pytest.raises(SnpError) as e:      # VMPL 1 only when VMPL 1 is expected
        verifier.verify(aws, vek=vlek, policy=Policy(at=AT_VLEK,
                                                     allow_provisional_firmware=True))
    assert e.value.check == "vmpl"
    with pytest.raises(SnpError) as e:      # current ucode 220 is not the committed 219
        verifier.verify(aws, vek=vlek, policy=Policy(at=AT_VLEK, vmpl=1))
    assert e.value.check == "provisional_firmware"
    with pytest.raises(SnpError) as e:
        verifier.verify(aws, vek=vlek, policy=Policy(at=AT_VLEK, vmpl=1, allow_vlek=False,
                                                     allow_provisional_firmware=True))
    assert e.value.check == "signing_key"
    # the chain as AMD's KDS serves it (ASVK, ARK) is accepted in either order
    chain = vector("milan_asvk_ark.pem")
    ok = Policy(at=AT_VLEK, vmpl=1, allow_provisional_firmware=True)
    verifier.verify(aws, vek=vlek, chain=[chain], policy=ok)
    certs = x509.load_pem_x509_certificates(chain)
    verifier.verify(aws, vek=vlek, chain=list(reversed(certs)), policy=ok)


def test_v2_report_product_comes_from_the_vek_or_the_option(verifier):
    report, vek = vector("milan_v2_debug_report.bin"), vector("milan_v2_debug_vcek.der")
    policy = Policy(at=AT, allow_debug=True)
    assert verifier.verify(report, vek=vek, policy=policy).product is Product.MILAN
    assert verifier.verify(report, vek=vek, product="milan", policy=policy).product \
        is Product.MILAN
    with pytest.raises(SnpError) as e:
        verifier.verify(report, vek=vek, product="Genoa", policy=policy)
    assert e.value.check == "product"


def test_refusals_on_real_material(verifier):
    milan, vcek = vector("milan_v3_report.bin"), vector("milan_v3_vcek.pem")
    cases = [
        (dict(report=milan[:-1], vek=vcek), "report_size"),
        (dict(report=milan + b"\0", vek=vcek), "report_size"),
        (dict(report=milan, vek=vector("genoa_v3_vcek.pem")), "product"),
        (dict(report=milan, vek=vector("milan_v2_debug_vcek.der")), "vek_tcb"),
        (dict(report=milan, vek=vector("aws_milan_vlek.der")), "vek_role"),
        (dict(report=milan), "vek_missing"),
        # a chain in the wrong order: the ASK handed over as the VEK, the VCEK as the chain
        (dict(report=milan, vek=C.der(C.builtin_roots(Product.MILAN).ask),
              chain=[vcek]), "vek_role"),
        # Genoa's ASK offered for a Milan chain
        (dict(report=milan, vek=vcek, chain=[C.der(C.builtin_roots(Product.GENOA).ask)]),
         "ask_signature"),
        # an ARK that is not AMD's
        (dict(report=milan, vek=vcek, chain=[vector("milan_v3_vcek.pem"),
                                             C.der(C.builtin_roots(Product.GENOA).ark)]),
         "ark_pinned"),
    ]
    for kwargs, check in cases:
        report = kwargs.pop("report")
        with pytest.raises(SnpError) as e:
            verifier.verify(report, policy=Policy(at=AT), **kwargs)
        assert e.value.check == check, (check, e.value)


def _flip_all(verifier, report, vek, policy, offsets):
    seen = set()
    for offset in offsets:
        for bit in range(8):
            bad = bytearray(report)
            bad[offset] ^= 1 << bit
            with pytest.raises(SnpError) as e:
                verifier.verify(bytes(bad), vek=vek, policy=policy)
            assert e.value.check in CHECKS
            seen.add(e.value.check)
    return seen


def test_every_single_bit_flip_is_refused(verifier):
    """Every bit of the signed area and of R and S of one report of each product."""
    for name in ("milan_v3", "genoa_v3", "turin_v5"):
        report_name, vek_name, policy = REAL[name]
        report, vek = vector(report_name), vector(vek_name)
        offsets = list(range(0x2A0)) + list(range(0x2A0, 0x2A0 + 144))
        seen = _flip_all(verifier, report, vek, policy, offsets)
        assert {"report_signature", "report_version", "vek_tcb", "chip_id", "reserved",
                "signature_algo"} <= seen


def test_bit_flips_in_the_v2_and_vlek_reports(verifier):
    # every byte of the signed area, one bit each (all eight bits are covered above)
    for name in ("milan_v2_debug", "aws_vlek"):
        report_name, vek_name, policy = REAL[name]
        report, vek = vector(report_name), vector(vek_name)
        for offset in range(0x2A0 + 144):
            bad = bytearray(report)
            bad[offset] ^= 1 << (offset % 8)
            with pytest.raises(SnpError):
                verifier.verify(bytes(bad), vek=vek, policy=policy)


def test_crl_from_amds_kds():
    genoa = C.builtin_roots(Product.GENOA)
    crl = C.load_crl(vector("genoa_crl_2024-10-23.der"))
    at = AT_VLEK.replace(year=2025, month=1)
    # the current Genoa ASK (serial 0x20002) is not revoked; the early one (0x20001) is
    C.check_crl(crl, genoa.ark, [genoa.ask], at)
    assert crl.get_revoked_certificate_by_serial_number(0x20001) is not None
    with pytest.raises(SnpError) as e:      # an expired CRL is no evidence
        C.check_crl(crl, genoa.ark, [genoa.ask], AT)
    assert e.value.check == "crl"
    with pytest.raises(SnpError) as e:      # Milan's ARK did not sign Genoa's CRL
        C.check_crl(crl, C.builtin_roots(Product.MILAN).ark, [genoa.ask], at)
    assert e.value.check == "crl"
    milan = C.builtin_roots(Product.MILAN)
    C.check_crl(C.load_crl(vector("milan_crl_2025-05-06.der")), milan.ark, [milan.ask],
                AT_VLEK)


def test_builtin_roots_are_amds():
    for product in Product:
        roots = C.builtin_roots(product)
        assert C.fingerprint(roots.ark) == C.ARK_SHA256[product]
        assert C.cert_role(roots.ask) == ("ask", product)
        assert C.cert_role(roots.asvk) == ("asvk", product)
        C.verify_signed_by(roots.ark, roots.ark, "ark_self_signed")
        C.verify_signed_by(roots.ask, roots.ark, "ask_signature")
        C.verify_signed_by(roots.asvk, roots.ark, "ask_signature")


def test_kds_urls():
    milan = AttestationReport.parse(vector("milan_v3_report.bin"))
    url = C.kds_vcek_url(Product.MILAN, milan.chip_id, milan.tcb("reported", Product.MILAN))
    assert url == ("https://kdsintf.amd.com/vcek/v1/Milan/" + milan.chip_id.hex()
                   + "?blSPL=4&teeSPL=0&snpSPL=24&ucodeSPL=219")
    turin = AttestationReport.parse(vector("turin_v5_report.bin"))
    url = C.kds_vcek_url(Product.TURIN, turin.chip_id, turin.tcb("reported", Product.TURIN))
    assert url == ("https://kdsintf.amd.com/vcek/v1/Turin/59790fb1c39f35c1"
                   "?fmcSPL=1&blSPL=1&teeSPL=1&snpSPL=4&ucodeSPL=81")
    assert C.kds_chain_url(Product.GENOA, "vlek") == \
        "https://kdsintf.amd.com/vlek/v1/Genoa/cert_chain"
