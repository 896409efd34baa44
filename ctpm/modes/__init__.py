"""CTPM modes: a mode is a backend (ctpm/backend.py) plus what it does at boot.

* standard: the engine with NV in memory or a state directory (a host-side vTPM, as swtpm;
  it cannot be anchored: only code inside the confidential VM can get that VM's report);
* ephemeral: a TPM that keeps nothing, its EKs and AK anchored to an SNP report
  (ephemeral.py; docs/modes.md);
* svsm: the same TPM behind the SVSM vTPM and attestation protocols (ctpm/svsm/).
* passthrough: a guarded path to a hardware TPM behind a TCTI (passthrough.py, guard.py).
"""


def build_backend(config):
    """The backend of `config.mode` (`mode` defaults to standard)."""
    mode = getattr(config, "mode", "standard")
    if mode == "standard":
        from ..backend import EngineBackend
        return EngineBackend.build(config)
    if mode == "passthrough":
        from .passthrough import PassthroughBackend
        return PassthroughBackend.build(config)
    from .ephemeral import EphemeralBackend, SvsmBackend
    return (SvsmBackend if mode == "svsm" else EphemeralBackend).build(config)
