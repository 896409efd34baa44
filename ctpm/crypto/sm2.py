"""The SM2 digital signature (GM/T 0003.2-2012 §6.1 and §7.1; the reference's
TpmEcc_SignEcSm2 / TpmEcc_ValidateSignatureEcSm2) over the digest it is given.

A TPM signs e as given: the SM2 message preparation e = H(Z_A || M), with Z_A the hash of
the signer's identity and key, is the caller's. Any curve of ecmath will do (SM2_P256 in
practice). The scalars are Python integers, as for the curves ecmath computes in Python.
"""
from . import ecmath


def sign_with(c: ecmath.Curve, d: int, digest: bytes, k: int):
    """(r, s) for the private scalar d and the nonce k, or None when this k must be
    replaced (r = 0, r + k = n, s = 0; steps A5 and A6 of the standard)."""
    n = c.n
    e = int.from_bytes(digest, "big")
    r = (e + ecmath.mul_base(c, k)[0]) % n
    if not r or r + k == n:
        return None
    s = pow(1 + d, -1, n) * (k - r * d) % n
    return (r, s) if s else None


def verify(c: ecmath.Curve, q, digest: bytes, r: int, s: int) -> bool:
    """B1-B7: r, s in [1, n - 1], t = (r + s) mod n not 0, (x1, y1) = [s]G + [t]Q and
    (e + x1) mod n = r."""
    n = c.n
    if not (0 < r < n and 0 < s < n):
        return False
    t = (r + s) % n
    if not t:
        return False
    point = ecmath.mul_add(c, s, t, q)
    return point is not None and (int.from_bytes(digest, "big") + point[0]) % n == r


__all__ = ["sign_with", "verify"]
