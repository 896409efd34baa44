"""Transports for the channel's own TPM client: `execute(command) -> response` over a tpm2-tss
TCTI (tpm2-tools' TCTI strings, through tpm2-pytss's loader: `modes.tpmclient.TctiTransport`,
shared with the attester) or the SVSM vTPM protocol."""
from ..modes.tpmclient import TctiTransport

__all__ = ["SvsmTransport", "TctiTransport", "open_transport"]


class SvsmTransport:
    """Commands through the SVSM vTPM protocol (TPM_SEND_COMMAND) on a unix socket."""

    def __init__(self, path: str):
        from ..svsm.client import SvsmClient
        self.client = SvsmClient(path[5:] if path.startswith("unix:") else path)

    def __call__(self, command: bytes) -> bytes:
        return self.client.send_command(bytes(command))

    def close(self):
        self.client.close()


def open_transport(tcti: str | None = None, svsm: str | None = None):
    if (tcti is None) == (svsm is None):
        raise ValueError("give exactly one of a TCTI and an SVSM socket")
    return TctiTransport(tcti) if tcti else SvsmTransport(svsm)
