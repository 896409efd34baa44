"""AMD SEV-SNP attestation reports: parse (report.py), certificates and AMD's roots
(certs.py), strict verification with named checks (verify.py), report providers
(providers.py) and a simulated AMD secure processor for machines without SNP (simulator.py).

Independent of the TPM engine: the modes and composite attestation build on it.
"""
