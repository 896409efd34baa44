"""Part 3 §16: random number generator."""
from ...wire.structures import MAX_DIGEST_SIZE


def get_random(tpm, ctx, bytes_requested):
    """Part 3 §16.1: at most sizeof(TPMU_HA) bytes per call; more is silently truncated."""
    return (tpm.state.drbg.generate(min(bytes_requested, MAX_DIGEST_SIZE)),)


def stir_random(tpm, ctx, in_data):
    """Part 3 §16.2: mix caller data into the DRBG state."""
    tpm.state.drbg.reseed(in_data)
