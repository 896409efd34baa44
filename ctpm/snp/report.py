"""The SEV-SNP ATTESTATION_REPORT (SNP ABI 56860, report versions 2 to 5) and its wrappers.

The report is kept as the exact bytes received: the signature is checked over
`raw[:SIGNED_SIZE]`, never over a re-serialization. Parsing only reads; nothing here decides
whether a report is acceptable (that is `verify.py`), except that a report of the wrong size or
an unknown version cannot be parsed at all.
"""
import enum
import uuid
from dataclasses import dataclass

from construct import Bytes, Int8ul, Int32ul, Int64ul, Struct

from .errors import SnpError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0             # the signature covers bytes 0x000-0x29F
SIG_COMPONENT_SIZE = 72         # R and S: little-endian, zero-padded from 48 bytes (P-384)
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
VERSIONS = (2, 3, 4, 5)

_LAYOUT = Struct(
    "version" / Int32ul,                # 0x000
    "guest_svn" / Int32ul,              # 0x004
    "policy" / Int64ul,                 # 0x008
    "family_id" / Bytes(16),            # 0x010
    "image_id" / Bytes(16),             # 0x020
    "vmpl" / Int32ul,                   # 0x030
    "signature_algo" / Int32ul,         # 0x034
    "current_tcb" / Bytes(8),           # 0x038
    "platform_info" / Int64ul,          # 0x040
    "key_info" / Int32ul,               # 0x048
    "reserved_04c" / Bytes(4),          # 0x04C
    "report_data" / Bytes(64),          # 0x050
    "measurement" / Bytes(48),          # 0x090
    "host_data" / Bytes(32),            # 0x0C0
    "id_key_digest" / Bytes(48),        # 0x0E0
    "author_key_digest" / Bytes(48),    # 0x110
    "report_id" / Bytes(32),            # 0x140
    "report_id_ma" / Bytes(32),         # 0x160
    "reported_tcb" / Bytes(8),          # 0x180
    "cpuid_fam_id" / Int8ul,            # 0x188 (v3+)
    "cpuid_mod_id" / Int8ul,            # 0x189
    "cpuid_step" / Int8ul,              # 0x18A
    "reserved_18b" / Bytes(0x1A0 - 0x18B),
    "chip_id" / Bytes(64),              # 0x1A0
    "committed_tcb" / Bytes(8),         # 0x1E0
    "current_build" / Int8ul,           # 0x1E8
    "current_minor" / Int8ul,
    "current_major" / Int8ul,
    "reserved_1eb" / Bytes(1),
    "committed_build" / Int8ul,         # 0x1EC
    "committed_minor" / Int8ul,
    "committed_major" / Int8ul,
    "reserved_1ef" / Bytes(1),
    "launch_tcb" / Bytes(8),            # 0x1F0
    "launch_mit_vector" / Int64ul,      # 0x1F8 (v5+)
    "current_mit_vector" / Int64ul,     # 0x200 (v5+)
    "reserved_208" / Bytes(SIGNED_SIZE - 0x208),
    "signature_r" / Bytes(SIG_COMPONENT_SIZE),   # 0x2A0
    "signature_s" / Bytes(SIG_COMPONENT_SIZE),   # 0x2E8
    "reserved_330" / Bytes(REPORT_SIZE - 0x330),
)
REPORT = _LAYOUT.compile()


class Product(enum.Enum):
    """AMD EPYC generations with SEV-SNP; the value is the KDS product name."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @classmethod
    def parse(cls, name: str) -> "Product":
        """'milan', 'Milan', 'Milan-B0' -> MILAN (the VCEK's productName carries a stepping)."""
        base = name.split("-", 1)[0].strip().lower()
        for p in cls:
            if p.value.lower() == base:
                return p
        raise SnpError("product", f"unknown SEV-SNP product {name!r} (Milan, Genoa, Turin)")


def product_from_cpuid(family: int, model: int) -> Product | None:
    """The product of a v3+ report's CPUID_FAM_ID/CPUID_MOD_ID, or None if unknown.

    Family 19h is Zen 3/4: models 00h-0Fh Milan, 10h-1Fh and A0h-AFh Genoa (Genoa-X, Bergamo,
    Siena share Genoa's keys); family 1Ah is Zen 5: models 00h-1Fh Turin.
    """
    if family == 0x19:
        if model >> 4 == 0:
            return Product.MILAN
        if model >> 4 in (0x1, 0xA):
            return Product.GENOA
    elif family == 0x1A and model >> 4 in (0x0, 0x1):
        return Product.TURIN
    return None


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION decoded for one product (the byte order differs from Turin on).

    Milan/Genoa: [0] bootloader, [1] TEE, [2:6] reserved, [6] SNP, [7] microcode.
    Turin:       [0] FMC, [1] bootloader, [2] TEE, [3] SNP, [4:7] reserved, [7] microcode.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None      # Turin and later only
    raw: bytes = b""

    @classmethod
    def decode(cls, raw: bytes, product: Product) -> "TcbVersion":
        raw = bytes(raw)
        if product is Product.TURIN:
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0],
                       raw=raw)
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7], raw=raw)

    @staticmethod
    def encode(product: Product, *, bootloader=0, tee=0, snp=0, microcode=0, fmc=0) -> bytes:
        if product is Product.TURIN:
            return bytes([fmc, bootloader, tee, snp, 0, 0, 0, microcode])
        return bytes([bootloader, tee, 0, 0, 0, 0, snp, microcode])

    def components(self) -> dict:
        """Component name -> SPL, as the VCEK extensions and `--min-tcb` name them."""
        parts = {"bl": self.bootloader, "tee": self.tee, "snp": self.snp,
                 "ucode": self.microcode}
        if self.fmc is not None:
            parts["fmc"] = self.fmc
        return parts

    def __str__(self):
        return " ".join(f"{k}={v}" for k, v in self.components().items())


class PolicyBit(enum.IntEnum):
    """Guest POLICY bits (bits 7:0 ABI minor, 15:8 ABI major)."""

    SMT = 16
    RESERVED_1 = 17             # must be 1
    MIGRATE_MA = 18
    DEBUG = 19
    SINGLE_SOCKET = 20
    CXL_ALLOW = 21
    MEM_AES_256_XTS = 22
    RAPL_DIS = 23
    CIPHERTEXT_HIDING = 24
    PAGE_SWAP_DISABLE = 25


POLICY_KNOWN_MASK = (1 << 26) - 1


@dataclass(frozen=True)
class GuestPolicy:
    """The guest policy the VM was launched with (POLICY at 0x008)."""

    value: int

    @property
    def abi_minor(self) -> int:
        return self.value & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.value >> 8) & 0xFF

    def has(self, bit: PolicyBit) -> bool:
        return bool(self.value >> bit & 1)

    @property
    def unknown_bits(self) -> int:
        """Bits 63:26, which the ABI reserves (must be zero)."""
        return self.value & ~POLICY_KNOWN_MASK

    def names(self) -> list[str]:
        return [b.name for b in PolicyBit if b is not PolicyBit.RESERVED_1 and self.has(b)]


PLATFORM_INFO_BITS = {0: "SMT_EN", 1: "TSME_EN", 2: "ECC_EN", 3: "RAPL_DIS",
                      4: "CIPHERTEXT_HIDING_EN", 5: "ALIAS_CHECK_COMPLETE", 7: "TIO_EN"}


def platform_info_names(value: int) -> list[str]:
    """Named PLATFORM_INFO bits; bits this code does not know are kept as 'BIT_n' (a newer
    firmware sets bits older verifiers have never seen, e.g. Turin's bit 6: never refused)."""
    return [PLATFORM_INFO_BITS.get(i, f"BIT_{i}") for i in range(64) if value >> i & 1]


class SigningKey(enum.IntEnum):
    """Key-info SIGNING_KEY (bits 4:2 of the word at 0x048)."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class KeyInfo:
    value: int

    @property
    def author_key_en(self) -> bool:
        return bool(self.value & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.value >> 1 & 1)

    @property
    def signing_key(self) -> int:
        return self.value >> 2 & 7

    @property
    def signing_key_name(self) -> str:
        try:
            return SigningKey(self.signing_key).name
        except ValueError:
            return f"RESERVED_{self.signing_key}"

    @property
    def reserved_bits(self) -> int:
        return self.value >> 5


@dataclass(frozen=True, eq=False)
class AttestationReport:
    """One report: the bytes received and the fields read from them."""

    raw: bytes
    fields: object      # the construct Container: field name -> value

    @classmethod
    def parse(cls, data: bytes) -> "AttestationReport":
        data = bytes(data)
        if len(data) != REPORT_SIZE:
            raise SnpError("report_size", f"a report is {REPORT_SIZE} bytes, got {len(data)}")
        fields = REPORT.parse(data)
        if fields.version not in VERSIONS:
            raise SnpError("report_version",
                           f"report version {fields.version} is not one of 2, 3, 4, 5")
        return cls(raw=data, fields=fields)

    def __getattr__(self, name):
        # report.measurement, report.vmpl, ... read straight from the parsed fields
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def guest_policy(self) -> GuestPolicy:
        return GuestPolicy(self.fields.policy)

    @property
    def key(self) -> KeyInfo:
        return KeyInfo(self.fields.key_info)

    @property
    def cpuid(self) -> tuple[int, int, int] | None:
        """(family, model, stepping) of a v3+ report; None for v2, which has no CPUID."""
        if self.fields.version < 3:
            return None
        f = self.fields
        return f.cpuid_fam_id, f.cpuid_mod_id, f.cpuid_step

    @property
    def cpuid_product(self) -> Product | None:
        cpuid = self.cpuid
        return None if cpuid is None else product_from_cpuid(cpuid[0], cpuid[1])

    def tcb(self, which: str, product: Product) -> TcbVersion:
        """'reported', 'current', 'committed' or 'launch' TCB, decoded for `product`."""
        return TcbVersion.decode(self.fields[f"{which}_tcb"], product)

    @property
    def current_firmware(self) -> tuple[int, int, int]:
        f = self.fields
        return f.current_major, f.current_minor, f.current_build

    @property
    def committed_firmware(self) -> tuple[int, int, int]:
        f = self.fields
        return f.committed_major, f.committed_minor, f.committed_build

    @property
    def signature_rs(self) -> tuple[int, int]:
        return (int.from_bytes(self.fields.signature_r, "little"),
                int.from_bytes(self.fields.signature_s, "little"))

    def reserved_violations(self) -> list[str]:
        """Reserved (must-be-zero) areas that are not zero, by offset."""
        f = self.fields
        bad = []
        areas = [("0x04C", f.reserved_04c), ("0x18B", f.reserved_18b),
                 ("0x1EB", f.reserved_1eb), ("0x1EF", f.reserved_1ef),
                 ("0x208", f.reserved_208), ("0x330", f.reserved_330)]
        if f.version < 3:
            areas.append(("0x188", bytes([f.cpuid_fam_id, f.cpuid_mod_id, f.cpuid_step])))
        if f.version < 5:
            areas.append(("0x1F8", self.raw[0x1F8:0x208]))
        for where, value in areas:
            if any(value):
                bad.append(where)
        if any(f.signature_r[48:]) or any(f.signature_s[48:]):
            bad.append("signature padding")
        if KeyInfo(f.key_info).reserved_bits:
            bad.append("key-info bits 31:5")
        return bad


def build_report(**values) -> bytes:
    """Lay out a report from field values (unset fields zero): the simulator's firmware side."""
    fields = {}
    for sub in _LAYOUT.subcons:
        default = 0 if _is_int(sub) else bytes(sub.sizeof())
        fields[sub.name] = values.pop(sub.name, default)
    if values:
        raise TypeError(f"unknown report fields: {sorted(values)}")
    return REPORT.build(fields)


def _is_int(sub) -> bool:
    return type(sub.subcon).__name__ in ("FormatField", "BytesInteger")


# --- the firmware's response wrapper and the certificate table --------------------------------

MSG_REPORT_RSP_HEADER = 0x20
REPORT_RSP_STATUS = {0x0: "success", 0x16: "invalid parameters", 0x27: "invalid key"}


def parse_msg_report_rsp(data: bytes) -> bytes:
    """The report inside a MSG_REPORT_RSP (status u32, report_size u32, 24 reserved, report)."""
    data = bytes(data)
    if len(data) < MSG_REPORT_RSP_HEADER:
        raise SnpError("report_size", f"MSG_REPORT_RSP of {len(data)} bytes has no header")
    status = int.from_bytes(data[0:4], "little")
    size = int.from_bytes(data[4:8], "little")
    if status:
        what = REPORT_RSP_STATUS.get(status, "unknown status")
        raise SnpError("firmware_status", f"MSG_REPORT_RSP status {status:#x} ({what})")
    if size != REPORT_SIZE or len(data) < MSG_REPORT_RSP_HEADER + size:
        raise SnpError("report_size", f"MSG_REPORT_RSP says report_size {size}, buffer holds "
                                      f"{len(data) - MSG_REPORT_RSP_HEADER}")
    return data[MSG_REPORT_RSP_HEADER:MSG_REPORT_RSP_HEADER + size]


def build_msg_report_rsp(report: bytes, status: int = 0) -> bytes:
    return (status.to_bytes(4, "little") + len(report).to_bytes(4, "little") + bytes(24)
            + report)


GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
CERT_GUID_NAMES = {GUID_VCEK: "vcek", GUID_VLEK: "vlek", GUID_ASK: "ask", GUID_ARK: "ark"}
CERT_ENTRY_SIZE = 24


def parse_cert_table(data: bytes) -> dict[uuid.UUID, bytes]:
    """The extended report's certificate table: GUID -> certificate bytes.

    Entries are 16-byte GUIDs in RFC 4122 byte order, u32 offset and u32 length (offsets from
    the start of the table), ended by an all-zero entry. Unknown GUIDs are kept.
    """
    data = bytes(data)
    table = {}
    pos = 0
    while True:
        entry = data[pos:pos + CERT_ENTRY_SIZE]
        if len(entry) < CERT_ENTRY_SIZE:
            raise SnpError("cert_table", "certificate table has no terminating all-zero entry")
        if not any(entry):
            return table
        guid = uuid.UUID(bytes=entry[:16])
        offset = int.from_bytes(entry[16:20], "little")
        length = int.from_bytes(entry[20:24], "little")
        if offset + length > len(data) or offset < pos + CERT_ENTRY_SIZE:
            raise SnpError("cert_table", f"entry {guid} points outside the table "
                                         f"(offset {offset}, length {length}, "
                                         f"table {len(data)} bytes)")
        if guid in table:
            raise SnpError("cert_table", f"entry {guid} appears twice")
        table[guid] = data[offset:offset + length]
        pos += CERT_ENTRY_SIZE


def build_cert_table(entries: dict[uuid.UUID, bytes]) -> bytes:
    header_size = CERT_ENTRY_SIZE * (len(entries) + 1)
    header, body = b"", b""
    for guid, blob in entries.items():
        header += (guid.bytes + (header_size + len(body)).to_bytes(4, "little")
                   + len(blob).to_bytes(4, "little"))
        body += blob
    return header + bytes(CERT_ENTRY_SIZE) + body
