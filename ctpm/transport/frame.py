"""The TPM command framing rules and the swtpm control channel's locality rule, without I/O
and without trio: framing.py (trio streams) and the transports build on them, and early.py
serves with them before trio is imported (cold start). Importing this module must not
import trio (tests/transport/test_frame.py)."""
import struct

HEADER = struct.Struct(">HII")          # tag, size, command/response code
HEADER_SIZE = HEADER.size               # 10
U32 = struct.Struct(">I")

TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002
TPM_RC_COMMAND_SIZE = 0x142
DEFAULT_MAX_COMMAND_SIZE = 4096

CMD_SET_LOCALITY = 0x05         # swtpm control channel: one byte, the locality, follows
MAX_LOCALITY = 4                # swtpm's CMD_SET_LOCALITY: 0-4, else TPM_BAD_LOCALITY
CTRL_SUCCESS = U32.pack(0)      # a swtpm control command's result: TPM_SUCCESS


def error_response(rc: int) -> bytes:
    """A 10-byte TPM error response (Part 1 §18.2); kept here so framing needs no engine."""
    return HEADER.pack(TPM_ST_NO_SESSIONS, HEADER_SIZE, rc)


COMMAND_SIZE_ERROR = error_response(TPM_RC_COMMAND_SIZE)


def looks_like_tpm_command(first4: bytes) -> bool:
    """A TPM 2.0 command starts with tag 0x8001/0x8002; no protocol code does."""
    tag = first4[0] << 8 | first4[1]
    return tag in (TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS)


def command_size(header: bytes, max_size: int) -> int | None:
    """The size a raw TPM command's header (its first 10 bytes or more) announces, None when
    the bytes cannot be framed as one: not a TPM tag, or a size outside [10, max_size]."""
    if len(header) < HEADER_SIZE or not looks_like_tpm_command(header):
        return None
    size = HEADER.unpack_from(header)[1]
    return size if HEADER_SIZE <= size <= max_size else None


def check_command(command: bytes, max_size: int) -> bytes | None:
    """The transport's part of command validation: the header's size must be the length.

    Returns the error response to send, or None when the engine should see the command. Tag,
    command code and everything else are the engine's business (TPM_RC_BAD_TAG, ...).
    """
    if len(command) < HEADER_SIZE or len(command) > max_size:
        return COMMAND_SIZE_ERROR
    if HEADER.unpack_from(command)[1] != len(command):
        return COMMAND_SIZE_ERROR
    return None


def locality_allowed(locality: int) -> bool:
    """swtpm's CMD_SET_LOCALITY accepts localities 0-4 (TPM_BAD_LOCALITY otherwise)."""
    return 0 <= locality <= MAX_LOCALITY
