"""Part 3 §10: self-test commands.

Hashes, HMAC, AES/SM4, RSA and the NIST curves come from OpenSSL through `cryptography` and
hashlib, which test themselves. What ctpm computes itself - the BN_P256 and SM2_P256 curve
arithmetic (crypto/ecmath.py), the KDFs, ECDAA and ECSCHNORR - is checked by the test suite
against independent implementations and published vectors, not again at run time; so every
self test reports passed.
"""
from ...errors import TpmError
from ...wire.constants import TPM_RC
from .capability import ALGORITHMS


def self_test(tpm, ctx, full_test):
    """Part 3 §10.2."""


def incremental_self_test(tpm, ctx, to_test):
    """Part 3 §10.3: nothing remains to be tested; an algorithm ctpm lacks is TPM_RC_VALUE."""
    if any(alg not in ALGORITHMS for alg in to_test):
        raise TpmError(TPM_RC.VALUE, param=1)
    return ([],)


def get_test_result(tpm, ctx):
    """Part 3 §10.4."""
    return (b"", TPM_RC.SUCCESS)
