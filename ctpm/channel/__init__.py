"""The TEE<->TPM trusted channel (docs/channel.md): mutual attestation through the verifier's
tokens, a TPM session salted to the TPM's certified channel key K with the TEE's attested key
Q_T, and secrets that the TPM releases only over that session, under a policy that needs the
platform state and the authority's signature."""
