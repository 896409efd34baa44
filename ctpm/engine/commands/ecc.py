"""Part 3 §14.6 TPM2_ECC_Parameters: the parameters of an implemented curve.

TPMS_ALGORITHM_DETAIL_ECC as the reference's CryptEccGetParameters fills it: keySize in
bits, the curve's default KDF (KDF1_SP800_56A with the hash of the curve's size, the
reference's curve table) and no signing scheme, then p, a, b, gX, gY, n, h big-endian: p,
a, b, gX and gY as long as p, n and h in as few bytes as they need. That is what swtpm
(libtpms) answers - P-521's b is 66 bytes with a leading zero; the 1.83 reference would
send a and b in as few bytes as they need (65 for that b).
a goes in as few bytes as it needs but at least one (libtpms: BN_P256's a = 0 is one zero
byte; every NIST curve's a is as long as p anyway).
An unimplemented curve is refused by TPMI_ECC_CURVE (TPM_RC_CURVE) before this runs.
"""
from construct import Container

from ...crypto import ecmath
from ...wire.constants import TPM_ALG, TPM_ECC_CURVE

_KDF_HASH = {TPM_ECC_CURVE.NIST_P256: TPM_ALG.SHA256,
             TPM_ECC_CURVE.NIST_P384: TPM_ALG.SHA384,
             TPM_ECC_CURVE.NIST_P521: TPM_ALG.SHA512,
             TPM_ECC_CURVE.SM2_P256: TPM_ALG.SM3_256}
_COFACTOR = 1                           # every NIST prime curve, BN_P256 and SM2_P256
# BN_P256 has no default KDF (the reference's curve table: TPM_ALG_NULL)


def _minimal(v: int) -> bytes:
    return v.to_bytes((v.bit_length() + 7) // 8, "big")


def curve_details(curve_id) -> Container:
    c = ecmath.curve(curve_id)
    size = len(_minimal(c.p))
    return Container(
        curveID=int(curve_id), keySize=c.p.bit_length(),
        kdf=(Container(scheme=TPM_ALG.KDF1_SP800_56A,
                       details=Container(hashAlg=_KDF_HASH[curve_id]))
             if curve_id in _KDF_HASH else Container(scheme=TPM_ALG.NULL, details=Container())),
        sign=Container(scheme=TPM_ALG.NULL, details=Container()),
        p=c.p.to_bytes(size, "big"), a=_minimal(c.a) or b"\0", b=c.b.to_bytes(size, "big"),
        gX=c.gx.to_bytes(size, "big"), gY=c.gy.to_bytes(size, "big"),
        n=_minimal(c.n), h=_minimal(_COFACTOR))


def ecc_parameters(tpm, ctx, curve_id):
    """Part 3 §14.6."""
    return (curve_details(curve_id),)
