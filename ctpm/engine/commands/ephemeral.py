"""Part 3 §19: ephemeral EC keys - TPM2_Commit. The commit counter, r and ECDAA signing that it
shares with EC_Ephemeral, ZGen_2Phase and Sign are engine/subsystems/ecdaa.py."""
from construct import Container

from ...crypto import ecmath
from ...crypto.hashes import digest as hash_digest
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC
from ...wire.structures import HASH_SIZES
from ..subsystems import keyuse
from ..subsystems.ecdaa import commit, generate_r


def _point(c, pt):
    if pt is None:
        return Container(x=b"", y=b"")
    return Container(x=pt[0].to_bytes(c.size, "big"), y=pt[1].to_bytes(c.size, "big"))


def _empty():
    return Container(x=b"", y=b"")


def commit_(tpm, ctx, sign_handle, p1, s2, y2):
    """Part 3 §19.2 TPM2_Commit: the TPM's first phase of an anonymous (ECDAA) signature.
    With P2 = (H_nameAlg(s2) mod p, y2): K = [d]P2, L = [r]P2; E = [r]P1 if P1 is given,
    [r]G if neither P1 nor P2 is."""
    obj = tpm.state.object(sign_handle)
    public = obj.public
    if public.type != TPM_ALG.ECC:
        raise TpmError(TPM_RC.KEY, handle=1)
    if public.parameters.scheme.scheme != TPM_ALG.ECDAA:
        raise TpmError(TPM_RC.SCHEME, handle=1)
    if (len(s2) == 0) != (len(y2) == 0):
        raise TpmError(TPM_RC.SIZE, param=3)
    curve_id = public.parameters.curveID
    c = ecmath.curve(curve_id)
    r = generate_r(tpm, curve_id, obj.name)
    if r is None:
        raise TpmError(TPM_RC.NO_RESULT)
    p2 = None
    if s2:
        if public.nameAlg not in HASH_SIZES:
            raise TpmError(TPM_RC.HASH, handle=1)
        x2 = int.from_bytes(hash_digest(public.nameAlg, s2), "big") % c.p
        p2 = (x2, int.from_bytes(y2, "big"))
        if not ecmath.on_curve(c, *p2):
            raise TpmError(TPM_RC.ECC_POINT, param=2)
        if keyuse.is_public_only(obj):
            raise TpmError(TPM_RC.KEY, handle=1)
    pt1 = None
    if p1.x or p1.y:            # the reference: P1.size > 4
        pt1 = (int.from_bytes(p1.x, "big"), int.from_bytes(p1.y, "big"))
        if not ecmath.on_curve(c, *pt1):
            raise TpmError(TPM_RC.ECC_POINT, param=1)
    k = l = e = _empty()
    if p2 is not None:
        kp = ecmath.mul(c, keyuse.ecc_scalar(obj), p2)
        lp = ecmath.mul(c, r, p2)
        if kp is None or lp is None:
            raise TpmError(TPM_RC.NO_RESULT)
        k, l = _point(c, kp), _point(c, lp)
    if pt1 is not None or p2 is None:
        ep = ecmath.mul(c, r, pt1) if pt1 is not None else ecmath.mul_base(c, r)
        if ep is None:
            raise TpmError(TPM_RC.NO_RESULT)
        e = _point(c, ep)
    return (k, l, e, commit(tpm))
