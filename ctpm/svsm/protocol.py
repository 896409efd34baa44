"""The SVSM protocols ctpm serves, byte for byte: calling convention, result codes, the vTPM
command buffer, the attestation operations, GUIDs and the services manifest.

Facts from AMD's SVSM specification (58019) as coconut-svsm and Linux implement them
(../shared/specs/svsm-vtpm.md). Everything here is little-endian, as the SVSM ABI; only the
TPM command and response inside the vTPM buffer are the TPM's own big-endian stream.
No I/O here: the server (server.py) and the guest client (client.py) both use it.
"""
import struct
import uuid

from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

PAGE_SIZE = 4096

# -- calling convention: RAX = protocol << 32 | call id ------------------------------------
PROTOCOL_CORE, PROTOCOL_ATTEST, PROTOCOL_VTPM = 0, 1, 2
CORE_QUERY_PROTOCOL = 6
ATTEST_SERVICES, ATTEST_SINGLE_SERVICE = 0, 1
VTPM_QUERY, VTPM_CMD = 0, 1

# (min, max) version of each protocol served (CORE QUERY_PROTOCOL answers (max << 32) | min)
PROTOCOL_VERSIONS = {PROTOCOL_CORE: (1, 1), PROTOCOL_ATTEST: (1, 1), PROTOCOL_VTPM: (1, 1)}


def rax(protocol: int, call: int) -> int:
    return (protocol << 32) | call


# -- RAX result codes ----------------------------------------------------------------------
SUCCESS = 0x0000_0000
INCOMPLETE = 0x8000_0000
UNSUPPORTED_PROTOCOL = 0x8000_0001
UNSUPPORTED_CALL = 0x8000_0002
INVALID_ADDRESS = 0x8000_0003
INVALID_FORMAT = 0x8000_0004
INVALID_PARAMETER = 0x8000_0005
INVALID_REQUEST = 0x8000_0006
BUSY = 0x8000_0007
PROTOCOL_BASE = 0x8000_1000         # + n: protocol-specific

RESULT_NAMES = {SUCCESS: "SUCCESS", INCOMPLETE: "INCOMPLETE",
                UNSUPPORTED_PROTOCOL: "UNSUPPORTED_PROTOCOL",
                UNSUPPORTED_CALL: "UNSUPPORTED_CALL", INVALID_ADDRESS: "INVALID_ADDRESS",
                INVALID_FORMAT: "INVALID_FORMAT", INVALID_PARAMETER: "INVALID_PARAMETER",
                INVALID_REQUEST: "INVALID_REQUEST", BUSY: "BUSY"}


def result_name(code: int) -> str:
    if code in RESULT_NAMES:
        return RESULT_NAMES[code]
    if code >= PROTOCOL_BASE and code < PROTOCOL_BASE + 0x1000:
        return f"PROTOCOL+{code - PROTOCOL_BASE:#x}"
    return f"{code:#x}"


class SvsmCallError(Exception):
    """A call answered with a non-SUCCESS RAX (raised by the server's handlers, then turned
    into the reply; raised by the client for the caller). `registers` = (RCX, RDX, R8)."""

    def __init__(self, code: int, why: str = "", registers=(0, 0, 0)):
        super().__init__(f"{result_name(code)}{': ' + why if why else ''}")
        self.code = code
        self.why = why
        self.registers = registers


# -- vTPM: the platform commands (mssim numbers) and the one-page buffer --------------------
PLATFORM_SEND_COMMAND = 8
# the mssim platform commands (TpmTcpProtocol.h) other than SEND_COMMAND: known, not served
KNOWN_PLATFORM_COMMANDS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                     17, 18, 19, 20, 21})
SUPPORTED_PLATFORM_COMMANDS = (PLATFORM_SEND_COMMAND,)
VTPM_FEATURES = 0

# TPM_SEND_COMMAND request: command u32 @0, locality u8 @4, size u32 @5, command @9
SEND_COMMAND_REQUEST = Struct("command" / Int32ul, "locality" / Int8ul, "size" / Int32ul)
# the same 9 bytes with struct: every TPM command crosses them, and construct costs ~30 us
SEND_COMMAND_HEAD = struct.Struct("<IBI")
REQUEST_HEADER = SEND_COMMAND_REQUEST.sizeof()          # 9
MAX_TPM_COMMAND = PAGE_SIZE - REQUEST_HEADER            # 4087
# TPM_SEND_COMMAND response: size u32 @0, response @4
RESPONSE_HEADER = 4
MAX_TPM_RESPONSE = PAGE_SIZE - RESPONSE_HEADER          # 4092


def platform_bitmap(commands=SUPPORTED_PLATFORM_COMMANDS) -> int:
    """VTPM QUERY's RCX: bit n set = mssim platform command n served (coconut: 0x100)."""
    bitmap = 0
    for c in commands:
        bitmap |= 1 << c
    return bitmap


def encode_send_command(command: bytes, locality: int = 0) -> bytes:
    """The 4096-byte vTPM buffer a guest fills for TPM_SEND_COMMAND (tpm_svsm does this)."""
    if len(command) > MAX_TPM_COMMAND:
        raise ValueError(f"a TPM command of {len(command)} bytes does not fit the vTPM "
                         f"buffer ({MAX_TPM_COMMAND})")
    head = SEND_COMMAND_HEAD.pack(PLATFORM_SEND_COMMAND, locality, len(command))
    return (head + command).ljust(PAGE_SIZE, b"\0")


def decode_send_response(buffer: bytes) -> bytes:
    """The TPM response in a vTPM buffer after TPM_SEND_COMMAND; ValueError if its size
    field is impossible."""
    size = struct.unpack_from("<I", buffer)[0]
    if size > MAX_TPM_RESPONSE:
        raise ValueError(f"vTPM response size {size} exceeds the buffer ({MAX_TPM_RESPONSE})")
    return bytes(buffer[RESPONSE_HEADER:RESPONSE_HEADER + size])


# -- attestation: operations, GUIDs, the services manifest ---------------------------------
NONCE_SIZE = 64
VTPM_SERVICE_GUID = uuid.UUID("c476f1eb-0123-45a5-9641-b4e7dde5bfe3")
SERVICES_MANIFEST_GUID = uuid.UUID("63849ebb-3d92-4670-a1ff-58f9c94b87bb")


def guid_wire(guid: uuid.UUID) -> bytes:
    """A GUID as the SVSM ABI carries it: mixed-endian (the first three fields little-endian,
    as Microsoft GUIDs): c476f1eb-0123-45a5-... -> eb f1 76 c4 23 01 a5 45 ..."""
    return guid.bytes_le


def guid_from_wire(data: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=bytes(data))


# AttestServicesOp (0x40 bytes; reserved fields must be zero)
ATTEST_SERVICES_OP = Struct(
    "report_gpa" / Int64ul,             # 0x00
    "report_size" / Int32ul,            # 0x08
    "reserved_0c" / Bytes(4),           # 0x0C
    "nonce_gpa" / Int64ul,              # 0x10
    "nonce_size" / Int16ul,             # 0x18
    "reserved_1a" / Bytes(6),           # 0x1A
    "manifest_gpa" / Int64ul,           # 0x20
    "manifest_size" / Int32ul,          # 0x28
    "reserved_2c" / Bytes(4),           # 0x2C
    "certificate_gpa" / Int64ul,        # 0x30
    "certificate_size" / Int32ul,       # 0x38
    "reserved_3c" / Bytes(4),           # 0x3C
)
# AttestSingleServiceOp (0x58 bytes): the above + the service GUID + manifest version
ATTEST_SINGLE_SERVICE_OP = Struct(
    "op" / ATTEST_SERVICES_OP,          # 0x00
    "guid" / Bytes(16),                 # 0x40 (mixed-endian)
    "manifest_version" / Int32ul,       # 0x50
    "reserved_54" / Bytes(4),           # 0x54
)
ATTEST_SERVICES_OP_SIZE = ATTEST_SERVICES_OP.sizeof()               # 0x40
ATTEST_SINGLE_SERVICE_OP_SIZE = ATTEST_SINGLE_SERVICE_OP.sizeof()   # 0x58
RESERVED_FIELDS = ("reserved_0c", "reserved_1a", "reserved_2c", "reserved_3c")


def build_services_op(*, report_gpa, report_size, nonce_gpa, nonce_size=NONCE_SIZE,
                      manifest_gpa, manifest_size, certificate_gpa=0, certificate_size=0,
                      reserved=b"") -> dict:
    """The fields of an AttestServicesOp (`reserved`, if given, fills every reserved field:
    for tests of the server's check)."""
    fields = dict(report_gpa=report_gpa, report_size=report_size, nonce_gpa=nonce_gpa,
                  nonce_size=nonce_size, manifest_gpa=manifest_gpa,
                  manifest_size=manifest_size, certificate_gpa=certificate_gpa,
                  certificate_size=certificate_size)
    for name, size in zip(RESERVED_FIELDS, (4, 6, 4, 4)):
        fields[name] = (reserved * size)[:size] if reserved else bytes(size)
    return fields


def encode_services_op(**kwargs) -> bytes:
    return ATTEST_SERVICES_OP.build(build_services_op(**kwargs))


def encode_single_service_op(*, guid: uuid.UUID = VTPM_SERVICE_GUID, manifest_version: int = 0,
                             reserved_54: bytes = bytes(4), **kwargs) -> bytes:
    return ATTEST_SINGLE_SERVICE_OP.build(dict(op=build_services_op(**kwargs),
                                               guid=guid_wire(guid),
                                               manifest_version=manifest_version,
                                               reserved_54=reserved_54))


_MANIFEST_HEAD = struct.Struct("<16sII")        # GUID, total length, entry count
_MANIFEST_ENTRY = struct.Struct("<16sII")       # GUID, offset from the start, length


def encode_services_manifest(services) -> bytes:
    """The SERVICES call's manifest: a header (GUID 63849ebb-..., total length, count), one
    entry per service (GUID, offset from the manifest's start, length), then the services'
    own manifests in order. `services` is [(uuid.UUID, bytes)]."""
    services = list(services)
    offset = _MANIFEST_HEAD.size + _MANIFEST_ENTRY.size * len(services)
    total = offset + sum(len(data) for _, data in services)
    out = [_MANIFEST_HEAD.pack(guid_wire(SERVICES_MANIFEST_GUID), total, len(services))]
    for guid, data in services:
        out.append(_MANIFEST_ENTRY.pack(guid_wire(guid), offset, len(data)))
        offset += len(data)
    out.extend(data for _, data in services)
    return b"".join(out)


def decode_services_manifest(data: bytes) -> dict:
    """{uuid.UUID: manifest bytes} of a services manifest; ValueError if malformed."""
    data = bytes(data)
    if len(data) < _MANIFEST_HEAD.size:
        raise ValueError("services manifest shorter than its header")
    guid, total, count = _MANIFEST_HEAD.unpack_from(data)
    if guid_from_wire(guid) != SERVICES_MANIFEST_GUID:
        raise ValueError("services manifest: wrong header GUID")
    if total != len(data):
        raise ValueError(f"services manifest: length field {total}, {len(data)} bytes given")
    if _MANIFEST_HEAD.size + count * _MANIFEST_ENTRY.size > total:
        raise ValueError("services manifest: entries exceed its length")
    services = {}
    for i in range(count):
        g, offset, length = _MANIFEST_ENTRY.unpack_from(
            data, _MANIFEST_HEAD.size + i * _MANIFEST_ENTRY.size)
        if offset + length > total:
            raise ValueError("services manifest: an entry points outside it")
        services[guid_from_wire(g)] = data[offset:offset + length]
    return services


# -- the unix-socket framing (docs/svsm.md) -------------------------------------------------
FRAME_MAGIC = b"SVSM"
REQUEST_HEAD = struct.Struct("<4sI5Q")      # magic, page count, RAX RCX RDX R8 R9
REPLY_HEAD = struct.Struct("<4sI4Q")        # magic, page count, RAX RCX RDX R8
PAGE_ENTRY = struct.Struct("<Q")            # GPA, then PAGE_SIZE bytes
MAX_PAGES = 256                             # 1 MiB of guest memory per call
GPA_LIMIT = 1 << 52                         # the architectural guest-physical width


class FrameError(Exception):
    """Bytes that are not a frame: the connection is closed (no reply could be framed)."""


def encode_frame(head: struct.Struct, registers, pages) -> bytes:
    """A request (5 registers) or a reply (4 registers) with its pages {gpa: 4096 bytes}."""
    items = sorted(pages.items())
    out = [head.pack(FRAME_MAGIC, len(items), *registers)]
    for gpa, data in items:
        if gpa % PAGE_SIZE or not 0 <= gpa < GPA_LIMIT or len(data) != PAGE_SIZE:
            raise ValueError(f"page {gpa:#x}: GPAs are 4 KiB aligned, below 2^52, "
                             f"pages 4096 bytes")
        out.append(PAGE_ENTRY.pack(gpa))
        out.append(bytes(data))
    return b"".join(out)


def check_head(magic: bytes, count: int):
    if magic != FRAME_MAGIC:
        raise FrameError(f"bad magic {magic!r}")
    if count > MAX_PAGES:
        raise FrameError(f"{count} pages (at most {MAX_PAGES})")


def check_page(gpa: int, seen) -> None:
    if gpa % PAGE_SIZE or gpa >= GPA_LIMIT:
        raise FrameError(f"page GPA {gpa:#x} is not 4 KiB aligned below 2^52")
    if gpa in seen:
        raise FrameError(f"page GPA {gpa:#x} sent twice")
