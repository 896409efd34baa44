"""The SVSM-resident vTPM (mode svsm): the SVSM vTPM and attestation protocols carried over a
unix socket (protocol.py, server.py), the guest side that Linux's tpm_svsm and configfs-tsm
implement (client.py), and `ctpm svsm-bridge`, which serves an SVSM-reached vTPM as an mssim
TPM (bridge.py). The framing and every result code: docs/svsm.md."""
