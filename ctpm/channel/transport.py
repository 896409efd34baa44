"""Transports for the channel's own TPM client: `execute(command) -> response` over a tpm2-tss
TCTI (tpm2-tools' TCTI strings, through tpm2-pytss's loader) or the SVSM vTPM protocol."""


class TctiTransport:
    """Raw commands through a TCTI: the bytes go out as built here, untouched by ESAPI."""

    def __init__(self, tcti, timeout_ms: int = 120_000):
        """`tcti`: a TCTI string, or an open tpm2-pytss TCTI (e.g. an ESAPI's, `esapi.tcti`,
        between its commands)."""
        if isinstance(tcti, str):
            from tpm2_pytss import TCTILdr
            tcti = TCTILdr.parse(tcti)
        self._tcti = tcti
        self._timeout = timeout_ms

    def __call__(self, command: bytes) -> bytes:
        self._tcti.transmit(bytes(command))
        return bytes(self._tcti.receive(-1, self._timeout))

    def close(self):
        tcti, self._tcti = self._tcti, None
        if tcti is not None:
            tcti.close()


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
