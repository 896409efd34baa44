"""What one TPM instance is built with: limits and identity, fixed at manufacture."""
from dataclasses import dataclass, field

from ..wire.constants import TPM_ALG


@dataclass(frozen=True)
class EngineConfig:
    # PCR banks allocated on a fresh TPM (swtpm/libtpms default: all four).
    pcr_banks: tuple = field(default=(TPM_ALG.SHA1, TPM_ALG.SHA256, TPM_ALG.SHA384,
                                      TPM_ALG.SHA512))
    # Identity reported by GetCapability(TPM_PROPERTIES): honest about what this TPM is.
    manufacturer: bytes = b"CTPM"
    vendor_string: bytes = b"ctpm-python-emu"
    firmware_version: tuple = (0, 1)          # (major << 16 | minor, build)
    max_command_size: int = 4096
    # Transient objects at once (libtpms: 3); past it TPM_RC_OBJECT_MEMORY.
    max_objects: int = 64
    # Persistent objects in NV (EvictControl); past it TPM_RC_NV_SPACE.
    max_persistent: int = 64
    # NV indices (NV_DefineSpace): at most this many, and this many data bytes in all;
    # past either TPM_RC_NV_SPACE.
    max_nv_indices: int = 64
    nv_space: int = 32768
    # Most bytes one NV_Read, NV_Write, NV_Extend or NV_Certify moves (MAX_NV_BUFFER_SIZE,
    # TPM_PT_NV_BUFFER_MAX; libtpms: 1024); 1024-2048 (tpm2-tss's TPM2B_MAX_NV_BUFFER). The
    # ephemeral mode raises it, so that its evidence index takes fewer reads.
    nv_buffer_max: int = 1024
    # Largest ordinary NV index (MAX_NV_INDEX_SIZE, TPM_PT_NV_INDEX_MAX; libtpms: 2048). The
    # ephemeral mode raises it for its evidence index (a report and its certificates).
    max_nv_index_size: int = 2048
    # Loaded sessions at once (libtpms: 3); StartAuthSession past it is TPM_RC_SESSION_MEMORY.
    max_sessions: int = 64
    # Persist the clock to NV when it ran this far ahead of the stored value (ms).
    clock_update_interval_ms: int = 4096

    def __post_init__(self):
        if not 1024 <= self.nv_buffer_max <= 2048:
            raise ValueError(f"nv_buffer_max {self.nv_buffer_max} is not between 1024 and 2048")

