"""The simulated AMD-SP: its reports verify through the same code only when its ARK is trusted,
its chain is what AMD's looks like (checked by openssl too), and every named check of the
verifier is made to fail at least once with a crafted report."""
import datetime as dt
import os
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ctpm.snp import certs as C
from ctpm.snp.errors import SnpError
from ctpm.snp.report import (AttestationReport, PolicyBit, Product, build_report,
                             parse_cert_table, build_cert_table, GUID_VCEK, GUID_ARK,
                             GUID_ASK, parse_msg_report_rsp, build_msg_report_rsp)
from ctpm.snp.simulator import SimulatedSP
from ctpm.snp.verify import CHECKS, Policy, Trust, Verifier

RD = bytes(range(64))


def trusting(sp):
    return Verifier(Trust(extra_arks=(sp.ark,)))


@pytest.mark.parametrize("product", list(Product))
def test_simulated_reports_verify_only_with_the_ark_trusted(sims, product):
    sp = sims[product]
    report, table = sp.report(RD, measurement=os.urandom(48)), sp.cert_table()
    with pytest.raises(SnpError) as e:
        Verifier().verify(report, cert_table=table)
    assert e.value.check == "ark_pinned"
    result = trusting(sp).verify(report, cert_table=table, policy=Policy(report_data=RD))
    assert result.product is product and result.root == "trusted:" + C.fingerprint(sp.ark)
    assert result.report.version == (5 if product is Product.TURIN else 3)
    assert result.report.cpuid_product is product
    # another simulator's ARK is no help
    other = next(s for p, s in sims.items() if p is not product)
    with pytest.raises(SnpError):
        trusting(other).verify(report, cert_table=table)


def test_simulated_vlek(milan):
    report = milan.report(RD, signing_key="vlek")
    result = trusting(milan).verify(report, cert_table=milan.cert_table("vlek"))
    assert result.signing_key == "vlek" and result.chip_id_masked


def test_simulated_chain_verifies_with_openssl(milan, tmp_path):
    from cryptography.hazmat.primitives import serialization
    for name, cert in (("ark", milan.ark), ("ask", milan.ask), ("vcek", milan.vcek)):
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    r = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ark.pem"),
                        "-untrusted", str(tmp_path / "ask.pem"), str(tmp_path / "vcek.pem")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert C.serial_number(milan.vcek) == 0
    vek = C.Vek.from_cert(milan.vcek)
    assert vek.hwid == milan.chip_id and vek.product_name == "Milan-B0"
    assert C.check_pss_algorithm(C.der(milan.vcek)) and C.check_pss_algorithm(C.der(milan.ark))
    # the simulator says what it is
    assert "ctpm simulated AMD-SP" in milan.ark.subject.rfc4514_string()


def test_simulator_keeps_its_state(milan):
    again = SimulatedSP(milan.directory)
    assert again.product is Product.MILAN and again.chip_id == milan.chip_id
    assert C.der(again.ark) == C.der(milan.ark) and C.der(again.vcek) == C.der(milan.vcek)
    with pytest.raises(ValueError):
        SimulatedSP(milan.directory, Product.GENOA)


def test_cert_table_and_msg_report_rsp(milan):
    table = milan.cert_table()
    parsed = parse_cert_table(table)
    assert list(parsed) == [GUID_VCEK, GUID_ASK, GUID_ARK]
    assert build_cert_table(parsed) == table
    for bad in (table[:20], table[:24 * 3] + b"\x01" * 24):
        with pytest.raises(SnpError) as e:
            parse_cert_table(bad)
        assert e.value.check == "cert_table"
    report = milan.report(RD)
    assert parse_msg_report_rsp(build_msg_report_rsp(report) + bytes(100)) == report
    with pytest.raises(SnpError) as e:
        parse_msg_report_rsp(build_msg_report_rsp(report, status=0x16))
    assert e.value.check == "firmware_status"


# --- every named check fails at least once ---------------------------------------------------

def _resign(sp, raw, **fields):
    values = dict(AttestationReport.parse(raw).fields)
    values.pop("_io", None)
    values.update(fields)
    return sp.sign(build_report(**values))


def _case(check, sp, sims):
    """(report, verify kwargs, policy, verifier) that must fail with `check`."""
    v = trusting(sp)
    table = sp.cert_table()
    rep = sp.report(RD)
    p = Policy()
    kw = dict(cert_table=table)
    key = ec.generate_private_key(ec.SECP384R1())

    def with_vek(**issue):
        cert = sp.issue_vek(key=issue.pop("key", key), **issue)
        return sp.sign(rep, key=key if isinstance(key, ec.EllipticCurvePrivateKey) and
                       isinstance(key.curve, ec.SECP384R1) else sp.vcek_key), \
            dict(vek=C.der(cert), cert_table=table)

    if check == "report_size":
        return rep[:-8], kw, p, v
    if check == "report_version":
        return _resign(sp, rep, version=1), kw, p, v
    if check == "signing_key":
        return _resign(sp, rep, key_info=7 << 2), kw, p, v
    if check == "mask_chip_key":
        return _resign(sp, rep, key_info=0b10), kw, p, v
    if check == "vek_missing":
        return rep, {}, p, v
    if check == "vek_role":
        return rep, dict(vek=C.der(sp.ask)), p, v
    if check == "product":
        return rep, dict(vek=C.der(sims[Product.GENOA].vcek)), p, v
    if check == "ark_pinned":
        return rep, kw, p, Verifier()
    if check == "ark_self_signed":
        # an "ARK" the caller trusts that is not self-signed (signed by the ASK's key)
        fake = sp._ca_builder(sp.ark.subject, sp.ark.subject, 5, sp.ark_key, 1).sign(
            sp.ask_key, hashes.SHA384(), rsa_padding=padding.PSS(
                padding.MGF1(hashes.SHA384()), 48))
        return rep, dict(vek=C.der(sp.vcek), chain=[C.der(fake), C.der(sp.ask)]), p, \
            Verifier(Trust(extra_arks=(fake,)))
    if check == "ask_signature":
        other = SimulatedSP(sp.directory + "-other", Product.MILAN)
        return rep, dict(vek=C.der(sp.vcek), chain=[C.der(sp.ark), C.der(other.ask)]), p, v
    if check == "vek_signature":   # PSS with a 32-byte salt: AMD's parameters only
        return with_vek(rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 32)) + (p, v)
    if check == "chain_validity":
        return rep, kw, Policy(at=dt.datetime(2080, 1, 1, tzinfo=dt.timezone.utc)), v
    if check == "vek_validity":
        now = dt.datetime.now(dt.timezone.utc)
        return with_vek(not_before=now - dt.timedelta(days=30),
                        not_after=now - dt.timedelta(days=1)) + (p, v)
    if check == "crl":
        return rep, dict(kw, crls=[sp.crl(revoked=[sp.ask.serial_number])]), p, v
    if check == "vek_key":
        cert = sp.issue_vek(key=ec.generate_private_key(ec.SECP256R1()))
        return rep, dict(vek=C.der(cert), cert_table=table), p, v
    if check == "vek_tcb":
        return with_vek(tcb=dict(sp.tcb, snp=sp.tcb["snp"] + 1)) + (p, v)
    if check == "chip_id":
        return with_vek(hwid=os.urandom(64)) + (p, v)
    if check == "signature_algo":
        return _resign(sp, rep, signature_algo=2), kw, p, v
    if check == "reserved":
        return _resign(sp, rep, reserved_208=b"\x01" + bytes(0x2A0 - 0x209)), kw, p, v
    if check == "report_signature":
        bad = bytearray(rep)
        bad[0x50] ^= 1
        return bytes(bad), kw, p, v
    if check == "vmpl":
        return sp.report(RD, vmpl=2), kw, p, v
    if check == "policy_reserved":
        return sp.report(RD, policy=0x10000), kw, p, v
    if check == "debug":
        return sp.report(RD, policy=0x30000 | 1 << PolicyBit.DEBUG), kw, p, v
    if check == "migration_agent":
        return sp.report(RD, policy=0x30000 | 1 << PolicyBit.MIGRATE_MA), kw, p, v
    if check == "smt":
        return rep, kw, Policy(allow_smt=False), v
    if check == "required_policy":
        return rep, kw, Policy(required_policy_bits=1 << PolicyBit.SINGLE_SOCKET), v
    if check == "min_tcb":
        return rep, kw, Policy(min_tcb={"snp": sp.tcb["snp"] + 1}), v
    if check == "provisional_firmware":
        return sp.report(RD, current_major=2), kw, p, v
    if check == "min_firmware":
        return rep, kw, Policy(min_firmware=(1, 56)), v
    if check == "min_guest_svn":
        return rep, kw, Policy(min_guest_svn=1), v
    if check == "measurement":
        return rep, kw, Policy(measurements=[bytes(47) + b"\1"]), v
    if check == "report_data":
        return rep, kw, Policy(report_data=bytes(64)), v
    if check == "host_data":
        return rep, kw, Policy(host_data=b"\1" * 32), v
    if check == "family_id":
        return rep, kw, Policy(family_id=b"\1" * 16), v
    if check == "image_id":
        return rep, kw, Policy(image_id=b"\1" * 16), v
    if check == "id_key":
        return rep, kw, Policy(id_key_digests=[b"\2" * 48]), v
    if check == "author_key":
        return rep, kw, Policy(author_key_digests=[b"\2" * 48]), v
    raise AssertionError(f"no crafted case for {check}")


@pytest.mark.parametrize("check", CHECKS)
def test_each_named_check_fails_on_purpose(sims, check):
    sp = sims[Product.MILAN]
    report, kwargs, policy, verifier = _case(check, sp, sims)
    with pytest.raises(SnpError) as e:
        verifier.verify(report, policy=policy, **kwargs)
    assert e.value.check == check, str(e.value)


def test_the_same_crafted_material_passes_when_nothing_is_wrong(milan):
    """The crafted cases differ from a good one only in what they break."""
    v = trusting(milan)
    rep = milan.report(RD)
    key = ec.generate_private_key(ec.SECP384R1())
    good = milan.issue_vek(key=key)
    v.verify(milan.sign(rep, key=key), vek=C.der(good), cert_table=milan.cert_table())
    v.verify(_resign(milan, rep), cert_table=milan.cert_table())
    v.verify(rep, cert_table=milan.cert_table(), crls=[milan.crl()])
    v.verify(rep, cert_table=milan.cert_table(),
             policy=Policy(report_data=RD, min_tcb=milan.tcb, min_firmware=(1, 55),
                           measurements=[bytes(48)], host_data=bytes(32)))


def test_turin_and_genoa_checks_use_their_own_tcb_layout(sims):
    for product in (Product.GENOA, Product.TURIN):
        sp = sims[product]
        v = trusting(sp)
        key = ec.generate_private_key(ec.SECP384R1())
        rep = sp.sign(sp.report(RD), key=key)
        component = "fmc" if product is Product.TURIN else "bl"
        wrong = sp.issue_vek(key=key, tcb=dict(sp.tcb, **{component: sp.tcb[component] + 1}))
        with pytest.raises(SnpError) as e:
            v.verify(rep, vek=C.der(wrong), cert_table=sp.cert_table())
        assert e.value.check == "vek_tcb" and component in e.value.message


def test_two_processes_opening_a_new_directory_make_one_chain(tmp_path):
    """(`ctpm host` starting two ephemeral instances on one simulator directory at once.)"""
    import sys
    code = ("import sys; from ctpm.snp.simulator import SimulatedSP; "
            "from ctpm.snp.certs import fingerprint; "
            "print(fingerprint(SimulatedSP(sys.argv[1], 'milan').ark))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "sp")],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] == C.fingerprint(SimulatedSP(str(tmp_path / "sp")).ark)
