"""Report providers: one interface over the ways a guest obtains an SEV-SNP attestation report.

- `ConfigfsTsmProvider`: Linux 6.7+ configfs-tsm (`/sys/kernel/config/tsm/report`), including
  the SVSM service attributes of Linux 6.10+.
- `SevGuestProvider`: the `/dev/sev-guest` ioctls SNP_GET_REPORT and SNP_GET_EXT_REPORT, with
  the structures laid out exactly as include/uapi/linux/sev-guest.h.
- `open_provider("simulated", directory=...)`: the simulated AMD-SP of `ctpm.snp.simulator`.

Every provider returns `Evidence` that names the provider which produced it, so a simulated
report can never pass for a real one. The kernel-facing parts (file system calls, `open` and
`ioctl`) are injectable: the tests play the kernel's role byte for byte without SNP hardware.
"""
import ctypes
import errno
import mmap
import os
import secrets
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol

from .errors import ProviderError, SnpError
from .evidence import Evidence
from .report import CERT_ENTRY_SIZE, REPORT_SIZE, parse_cert_table, parse_msg_report_rsp

REPORT_DATA_SIZE = 64
MAX_VMPL = 3                      # TSM_REPORT_PRIVLEVEL_MAX; SNP has VMPL 0-3
TSM_ROOT = "/sys/kernel/config/tsm/report"
SEV_GUEST_DEVICE = "/dev/sev-guest"


def certificates(evidence: Evidence) -> dict[uuid.UUID, bytes]:
    """The evidence's certificate table parsed (GUID -> DER); empty without a table."""
    return parse_cert_table(evidence.cert_table) if evidence.cert_table else {}


@dataclass(frozen=True)
class ServiceRequest:
    """A configfs-tsm service report (SVSM attestation, Linux 6.10+): the provider, a service
    GUID (None: the kernel's default, all services) and the manifest version (None: default).

    The SVSM asks the firmware for a VMPL 0 report whose REPORT_DATA is
    SHA-512(report_data || manifest) (SVSM spec 58019, section 7): a verifier checks that, not
    report_data itself."""

    provider: str = "svsm"
    guid: str | None = None
    manifest_version: int | None = None


class ReportProvider(Protocol):
    name: str

    def report(self, report_data: bytes, *, vmpl: int | None = None,
               service: ServiceRequest | None = None) -> Evidence: ...


def check_report_data(report_data) -> bytes:
    """REPORT_DATA is exactly 64 bytes: padding silently would bind something else."""
    if not isinstance(report_data, (bytes, bytearray, memoryview)):
        raise TypeError(f"report_data must be bytes, not {type(report_data).__name__}")
    data = bytes(report_data)
    if len(data) != REPORT_DATA_SIZE:
        raise ValueError(f"report_data must be exactly {REPORT_DATA_SIZE} bytes, "
                         f"got {len(data)}")
    return data


def _check_vmpl(vmpl):
    if vmpl is not None and (isinstance(vmpl, bool) or not isinstance(vmpl, int)
                             or not 0 <= vmpl <= MAX_VMPL):
        raise ValueError(f"vmpl must be an integer 0..{MAX_VMPL}, got {vmpl!r}")


def _report_from_blob(blob: bytes, where: str) -> bytes:
    """The 1184-byte report in what the kernel returned.

    The sev_guest driver hands over exactly MSG_REPORT_RSP's report_size bytes. An SVSM's
    service report is what the SVSM copied: COCONUT-SVSM gives the firmware's response buffer
    without its 32-byte header, i.e. the report followed by zeros. So a longer blob is accepted
    only when the rest is zero; anything else is not a report this package understands.
    """
    if len(blob) == REPORT_SIZE or (len(blob) > REPORT_SIZE and not any(blob[REPORT_SIZE:])):
        return bytes(blob[:REPORT_SIZE])
    raise ProviderError(f"{where} holds {len(blob)} bytes, not a {REPORT_SIZE}-byte "
                        f"SEV-SNP attestation report")


def _cert_table_extent(buf: bytes) -> int:
    """How much of a certificate buffer the table uses (entries, terminator and blobs), as the
    kernel's configfs path measures it; 0 when the first entry is already the terminator."""
    end = 0
    count = 0
    for pos in range(0, len(buf) - CERT_ENTRY_SIZE + 1, CERT_ENTRY_SIZE):
        entry = buf[pos:pos + CERT_ENTRY_SIZE]
        if not any(entry):
            break
        count += 1
        offset = int.from_bytes(entry[16:20], "little")
        length = int.from_bytes(entry[20:24], "little")
        end = max(end, offset + length)
    if not count:
        return 0
    return min(len(buf), max(end, (count + 1) * CERT_ENTRY_SIZE))


# --- configfs-tsm -----------------------------------------------------------------------------

class ConfigfsFiles:
    """The file system calls configfs-tsm needs; tests substitute a fake kernel."""

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def mkdir(self, path: str):
        os.mkdir(path)

    def rmdir(self, path: str):
        os.rmdir(path)

    def read(self, path: str) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes):
        # One write(2) then close(2): configfs commits a binary attribute on release, and the
        # kernel counts each committed write in `generation`. No O_TRUNC on kernel attributes.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")


class _Conflict(Exception):
    """Another writer changed our report entry between our writes and our reads."""


def _errno_text(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)


class ConfigfsTsmProvider:
    """configfs-tsm: one uniquely named report entry per request, always removed again.

    The sequence follows Documentation/ABI/testing/configfs-tsm-report: mkdir the entry, check
    `provider` is sev_guest, read `generation`, write privlevel / service attributes / inblob,
    read outblob, auxblob (and manifestblob), read `generation` again. If it moved by more than
    our own writes, someone else wrote to the entry and the report may not be ours: the request
    is repeated in a fresh entry, `attempts` times at most.
    """

    name = "configfs-tsm"

    def __init__(self, root: str = TSM_ROOT, *, files: ConfigfsFiles | None = None,
                 attempts: int = 3):
        self.root = root
        self.files = files or ConfigfsFiles()
        self.attempts = attempts

    def _missing(self) -> ProviderError:
        return ProviderError(
            f"no SEV-SNP guest interface: {self.root} does not exist (configfs-tsm needs "
            f"Linux 6.7+ inside an SEV-SNP guest, and configfs mounted)")

    def available(self) -> bool:
        return self.files.isdir(self.root)

    def report(self, report_data: bytes, *, vmpl: int | None = None,
               service: ServiceRequest | None = None) -> Evidence:
        data = check_report_data(report_data)
        _check_vmpl(vmpl)
        if not self.available():
            raise self._missing()
        conflict = None
        for _ in range(self.attempts):
            try:
                return self._attempt(data, vmpl, service)
            except _Conflict as e:
                conflict = e
        raise ProviderError(f"configfs-tsm: another writer changed the report entry in each of "
                            f"{self.attempts} attempts ({conflict}); no report taken")

    def _make_entry(self) -> str:
        for _ in range(8):
            path = os.path.join(self.root, f"ctpm-{os.getpid()}-{secrets.token_hex(6)}")
            try:
                self.files.mkdir(path)
                return path
            except FileExistsError:
                continue
            except PermissionError:
                raise ProviderError(f"permission denied creating a report entry in {self.root} "
                                    f"(configfs-tsm reports need root)") from None
            except FileNotFoundError:
                raise self._missing() from None
            except OSError as e:
                if e.errno == errno.ENXIO:
                    raise ProviderError(f"configfs-tsm at {self.root} has no provider "
                                        f"registered (the sev-guest driver is not loaded, or "
                                        f"this is not an SEV-SNP guest)") from None
                raise ProviderError(f"cannot create a report entry in {self.root}: "
                                    f"{_errno_text(e)}") from None
        raise ProviderError(f"cannot find a free report entry name in {self.root}")

    def _attempt(self, data: bytes, vmpl, service) -> Evidence:
        entry = self._make_entry()
        try:
            return self._request(entry, data, vmpl, service)
        finally:
            try:
                self.files.rmdir(entry)
            except OSError:
                # The entry stays: harmless to the next request (ours are uniquely named),
                # and an error here must not hide the report or the error we already have.
                pass

    def _read(self, entry: str, attr: str) -> bytes:
        try:
            return self.files.read(os.path.join(entry, attr))
        except OSError as e:
            hint = {errno.EFBIG: " (the report exceeds configfs-tsm's maximum size)",
                    errno.EACCES: " (permission denied: needs root)"}.get(e.errno, "")
            raise ProviderError(f"configfs-tsm: reading {attr} failed: {_errno_text(e)}"
                                f"{hint}") from None

    def _request(self, entry: str, data: bytes, vmpl, service) -> Evidence:
        f = self.files
        provider = self._read(entry, "provider").decode(errors="replace").strip()
        if provider != "sev_guest":
            raise ProviderError(f"configfs-tsm provider is {provider!r}, not 'sev_guest' "
                                f"(this guest is not an SEV-SNP guest)")
        floor = None
        if f.exists(os.path.join(entry, "privlevel_floor")):
            text = self._read(entry, "privlevel_floor").decode(errors="replace").strip()
            try:
                floor = int(text)
            except ValueError:
                raise ProviderError(f"configfs-tsm: privlevel_floor reads {text!r}, not a "
                                    f"number") from None
        # No VMPL asked for: the floor, since a guest at VMPL 2 (under an SVSM) cannot obtain
        # a report for a more privileged level; on a floor of 0 the kernel's default stands.
        level = vmpl if vmpl is not None else (floor or None)
        writes = []
        if level is not None:
            if floor is not None and level < floor:
                raise ProviderError(f"VMPL {level} is below this guest's privlevel_floor "
                                    f"{floor}: the kernel only requests reports at VMPL "
                                    f"{floor}..{MAX_VMPL}")
            if not f.exists(os.path.join(entry, "privlevel")):
                raise ProviderError("configfs-tsm: this provider has no privlevel attribute, "
                                    f"cannot request VMPL {level}")
            writes.append(("privlevel", f"{level}\n".encode()))
        if service is not None:
            attrs = [("service_provider", service.provider)]
            if service.guid is not None:
                attrs.append(("service_guid", str(uuid.UUID(service.guid))))
            if service.manifest_version is not None:
                attrs.append(("service_manifest_version", str(int(service.manifest_version))))
            for attr, value in attrs:
                if not f.exists(os.path.join(entry, attr)):
                    raise ProviderError(f"configfs-tsm has no {attr} attribute (service "
                                        f"reports need Linux 6.10+ in a guest under an SVSM)")
                writes.append((attr, f"{value}\n".encode()))
        writes.append(("inblob", data))

        before = self._generation(entry)
        for attr, value in writes:
            try:
                f.write(os.path.join(entry, attr), value)
            except OSError as e:
                if attr == "privlevel" and e.errno == errno.EINVAL:
                    raise ProviderError(f"configfs-tsm refused privlevel {level} (allowed: "
                                        f"privlevel_floor..{MAX_VMPL})") from None
                raise ProviderError(f"configfs-tsm: writing {attr} failed: "
                                    f"{_errno_text(e)}") from None
        outblob = self._read(entry, "outblob")
        auxblob = self._read(entry, "auxblob") if f.exists(os.path.join(entry, "auxblob")) \
            else b""
        manifest = None
        if service is not None and f.exists(os.path.join(entry, "manifestblob")):
            manifest = self._read(entry, "manifestblob")
        after = self._generation(entry)
        if after != before + len(writes):
            raise _Conflict(f"generation {before} -> {after} after our {len(writes)} writes")
        return Evidence(report=_report_from_blob(outblob, "outblob"),
                        cert_table=auxblob or None, provider=self.name, manifest=manifest)

    def _generation(self, entry: str) -> int:
        text = self._read(entry, "generation").decode(errors="replace").strip()
        try:
            return int(text)
        except ValueError:
            raise ProviderError(f"configfs-tsm: generation reads {text!r}, not a "
                                f"number") from None


# --- /dev/sev-guest ---------------------------------------------------------------------------
# include/uapi/linux/sev-guest.h, field for field (natural C alignment, as the kernel builds it).

class SnpReportReq(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint8 * 64),
                ("vmpl", ctypes.c_uint32),
                ("rsvd", ctypes.c_uint8 * 28)]


class SnpReportResp(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint8 * 4000)]


class _ExitInfoErrors(ctypes.Structure):
    _fields_ = [("fw_error", ctypes.c_uint32), ("vmm_error", ctypes.c_uint32)]


class _ExitInfo(ctypes.Union):
    _anonymous_ = ("errors",)
    _fields_ = [("exitinfo2", ctypes.c_uint64), ("errors", _ExitInfoErrors)]


class SnpGuestRequestIoctl(ctypes.Structure):
    _anonymous_ = ("info",)
    _fields_ = [("msg_version", ctypes.c_uint8),
                ("req_data", ctypes.c_uint64),
                ("resp_data", ctypes.c_uint64),
                ("info", _ExitInfo)]


class SnpExtReportReq(ctypes.Structure):
    _fields_ = [("data", SnpReportReq),
                ("certs_address", ctypes.c_uint64),
                ("certs_len", ctypes.c_uint32)]


_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_WRITE, _IOC_READ = 1, 2


def _IOWR(kind: str, nr: int, struct) -> int:
    """asm-generic/ioctl.h _IOWR: direction, size, type and number packed into 32 bits."""
    size = ctypes.sizeof(struct)
    assert size < 1 << _IOC_SIZEBITS
    return (((_IOC_READ | _IOC_WRITE) << (_IOC_NRBITS + _IOC_TYPEBITS + _IOC_SIZEBITS))
            | (size << (_IOC_NRBITS + _IOC_TYPEBITS)) | (ord(kind) << _IOC_NRBITS) | nr)


SNP_GUEST_REQ_IOC_TYPE = "S"
SNP_GET_REPORT = _IOWR(SNP_GUEST_REQ_IOC_TYPE, 0x0, SnpGuestRequestIoctl)
SNP_GET_EXT_REPORT = _IOWR(SNP_GUEST_REQ_IOC_TYPE, 0x2, SnpGuestRequestIoctl)
MSG_VERSION = 1

SNP_GUEST_VMM_ERR_INVALID_LEN = 1
SNP_GUEST_VMM_ERR_BUSY = 2
VMM_ERRORS = {SNP_GUEST_VMM_ERR_INVALID_LEN: "certificate buffer too small",
              SNP_GUEST_VMM_ERR_BUSY: "host busy (request throttled)",
              0xFFFFFFFF: "generic host error"}
# SEV firmware status codes (include/uapi/linux/psp-sev.h, SNP ABI 56860 table "Status Codes");
# 0xff is the value the driver presets: the request never reached the firmware.
FW_ERRORS = {0x00: "SUCCESS", 0x01: "INVALID_PLATFORM_STATE", 0x02: "INVALID_GUEST_STATE",
             0x03: "INVALID_CONFIG", 0x04: "INVALID_LENGTH", 0x05: "ALREADY_OWNED",
             0x06: "INVALID_CERTIFICATE", 0x07: "POLICY_FAILURE", 0x08: "INACTIVE",
             0x09: "INVALID_ADDRESS", 0x0A: "BAD_SIGNATURE", 0x0B: "BAD_MEASUREMENT",
             0x0C: "ASID_OWNED", 0x0D: "INVALID_ASID", 0x0E: "WBINVD_REQUIRED",
             0x0F: "DFFLUSH_REQUIRED", 0x10: "INVALID_GUEST", 0x11: "INVALID_COMMAND",
             0x12: "ACTIVE", 0x13: "HWERROR_PLATFORM", 0x14: "HWERROR_UNSAFE",
             0x15: "UNSUPPORTED", 0x16: "INVALID_PARAM", 0x17: "RESOURCE_LIMIT",
             0x18: "SECURE_DATA_INVALID", 0x27: "INVALID_KEY",
             0xFF: "no firmware call (the request did not reach the firmware)"}

VMPCK_ID_PARAM = "/sys/module/sev_guest/parameters/vmpck_id"
PAGE_SIZE = mmap.PAGESIZE
SEV_FW_BLOB_MAX_SIZE = 0x4000     # the driver's largest certificate buffer


class FirmwareError(ProviderError):
    """An SNP guest request the firmware or the host refused; both codes kept by name."""

    def __init__(self, message: str, *, fw_error: int = 0, vmm_error: int = 0,
                 errno_: int | None = None):
        super().__init__(message)
        self.fw_error = fw_error
        self.vmm_error = vmm_error
        self.errno = errno_


def describe_exitinfo(fw_error: int, vmm_error: int) -> str:
    if not fw_error and not vmm_error:
        return "no error code from the firmware or the host"
    fw = FW_ERRORS.get(fw_error, "unknown")
    vmm = VMM_ERRORS.get(vmm_error, "unknown") if vmm_error else "none"
    return f"fw_error {fw_error:#x} {fw}, vmm_error {vmm_error:#x} {vmm}"


def _default_ioctl(fd: int, request: int, arg) -> int:
    """ioctl(2) through libc with a pointer to `arg` itself.

    Not fcntl.ioctl: for buffers of up to 1024 bytes CPython hands the kernel a copy and copies
    it back only when the call succeeds, but the driver reports fw_error/vmm_error in exitinfo2
    (and asks for a bigger certificate buffer) precisely when the call fails.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ioctl.restype = ctypes.c_int
    while True:
        ret = libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.byref(arg))
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


def _default_open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


class SevGuestProvider:
    """/dev/sev-guest: SNP_GET_EXT_REPORT (report and the host's certificate table) or, with
    `extended=False`, SNP_GET_REPORT (report only).

    The certificate buffer is page-aligned anonymous memory (the driver requires a multiple of
    the page size); when the host says it is too small (vmm_error INVALID_LEN, certs_len set to
    the size needed) the request is repeated once with a buffer of that size.

    The firmware answers only for VMPLs at or above the one whose key (VMPCK) the driver uses,
    and the driver publishes that key's number as its `vmpck_id` module parameter (the VMPL the
    guest kernel runs at: 0, or 2 under an SVSM). It is the default VMPL, and a lower one is
    refused here with that reason instead of the firmware's bare INVALID_PARAM.
    `open` and `ioctl` default to os.open and libc's ioctl; tests inject a fake kernel.
    """

    name = "sev-guest"

    def __init__(self, device: str = SEV_GUEST_DEVICE, *, extended: bool = True,
                 certs_len: int = SEV_FW_BLOB_MAX_SIZE, vmpck_id_path: str = VMPCK_ID_PARAM,
                 open: Callable[[str], int] | None = None,
                 ioctl: Callable[[int, int, object], int] | None = None,
                 close: Callable[[int], None] | None = None):
        if certs_len <= 0 or certs_len % PAGE_SIZE:
            raise ValueError(f"certs_len must be a positive multiple of {PAGE_SIZE}")
        self.device = device
        self.extended = extended
        self.certs_len = certs_len
        self.vmpck_id_path = vmpck_id_path
        self._open = open or _default_open
        self._ioctl = ioctl or _default_ioctl
        self._close = close or os.close

    def available(self) -> bool:
        return os.path.exists(self.device)

    def report(self, report_data: bytes, *, vmpl: int | None = None,
               service: ServiceRequest | None = None) -> Evidence:
        data = check_report_data(report_data)
        _check_vmpl(vmpl)
        if service is not None:
            raise ProviderError("service (SVSM) reports come only through configfs-tsm, "
                                "not /dev/sev-guest")
        key_vmpl = self._key_vmpl()
        if vmpl is None:
            vmpl = key_vmpl
        elif vmpl < key_vmpl:
            raise ProviderError(f"VMPL {vmpl} is below the VMPL of the sev-guest driver's key "
                                f"(VMPCK{key_vmpl}, {self.vmpck_id_path}): the firmware only "
                                f"reports VMPL {key_vmpl}..{MAX_VMPL}")
        fd = self._open_device()
        try:
            if self.extended:
                return self._ext_report(fd, data, vmpl)
            return self._report(fd, data, vmpl)
        finally:
            self._close(fd)

    def _key_vmpl(self) -> int:
        """The driver's vmpck_id (0 when unknown: kernels before 6.9 always use VMPCK0 unless
        told otherwise, and then the parameter says so)."""
        try:
            with open(self.vmpck_id_path) as f:
                value = int(f.read().strip())
        except (OSError, ValueError):
            return 0
        return value if 0 <= value <= MAX_VMPL else 0

    def _open_device(self) -> int:
        try:
            return self._open(self.device)
        except FileNotFoundError:
            raise ProviderError(f"no SEV-SNP guest interface: {self.device} does not exist "
                                f"(the sev-guest driver exists only inside an SEV-SNP "
                                f"guest)") from None
        except PermissionError:
            raise ProviderError(f"permission denied opening {self.device} (needs root, or "
                                f"the device's group)") from None
        except OSError as e:
            raise ProviderError(f"cannot open {self.device}: {_errno_text(e)}") from None

    @staticmethod
    def _request_block(data: bytes, vmpl: int) -> SnpReportReq:
        req = SnpReportReq()
        ctypes.memmove(req.user_data, data, REPORT_DATA_SIZE)
        req.vmpl = vmpl
        return req

    def _call(self, fd: int, name: str, request: int, req, resp: SnpReportResp):
        io = SnpGuestRequestIoctl(msg_version=MSG_VERSION, req_data=ctypes.addressof(req),
                                  resp_data=ctypes.addressof(resp))
        io.exitinfo2 = 0
        try:
            self._ioctl(fd, request, io)
        except OSError as e:
            raise FirmwareError(f"{name} failed: {_errno_text(e)} "
                                f"({describe_exitinfo(io.fw_error, io.vmm_error)})",
                                fw_error=io.fw_error, vmm_error=io.vmm_error,
                                errno_=e.errno) from None
        return io

    @staticmethod
    def _unwrap(resp: SnpReportResp) -> bytes:
        try:
            return _report_from_blob(parse_msg_report_rsp(bytes(resp.data)), "MSG_REPORT_RSP")
        except SnpError as e:
            raise ProviderError(f"the firmware's MSG_REPORT_RSP: {e.message}") from None

    def _report(self, fd: int, data: bytes, vmpl: int) -> Evidence:
        req = self._request_block(data, vmpl)
        resp = SnpReportResp()
        self._call(fd, "SNP_GET_REPORT", SNP_GET_REPORT, req, resp)
        return Evidence(report=self._unwrap(resp), cert_table=None, provider=self.name)

    def _ext_report(self, fd: int, data: bytes, vmpl: int) -> Evidence:
        certs_len = self.certs_len
        for attempt in range(2):
            buf = mmap.mmap(-1, certs_len)          # anonymous: page-aligned, zero-filled
            window = (ctypes.c_uint8 * certs_len).from_buffer(buf)
            try:
                req = SnpExtReportReq(data=self._request_block(data, vmpl),
                                      certs_address=ctypes.addressof(window),
                                      certs_len=certs_len)
                resp = SnpReportResp()
                try:
                    self._call(fd, "SNP_GET_EXT_REPORT", SNP_GET_EXT_REPORT, req, resp)
                except FirmwareError as e:
                    needed = req.certs_len
                    if (e.vmm_error == SNP_GUEST_VMM_ERR_INVALID_LEN and attempt == 0
                            and needed > certs_len):
                        certs_len = -(-needed // PAGE_SIZE) * PAGE_SIZE
                        continue
                    if e.vmm_error == SNP_GUEST_VMM_ERR_INVALID_LEN:
                        codes = describe_exitinfo(e.fw_error, e.vmm_error)
                        raise FirmwareError(f"SNP_GET_EXT_REPORT: the host needs a "
                                            f"{needed}-byte certificate buffer, {certs_len} "
                                            f"given ({codes})", fw_error=e.fw_error,
                                            vmm_error=e.vmm_error, errno_=e.errno) from None
                    raise
                table = bytes(window)
            finally:
                del window
                buf.close()
            extent = _cert_table_extent(table)
            return Evidence(report=self._unwrap(resp),
                            cert_table=table[:extent] if extent else None, provider=self.name)
        raise AssertionError("unreachable")


# --- choosing a provider ----------------------------------------------------------------------

PROVIDER_NAMES = ("configfs", "sev-guest", "simulated", "auto")


def open_provider(name: str, **options) -> ReportProvider:
    """The provider called `name` (configfs, sev-guest, simulated, auto).

    configfs takes root=, sev-guest device= (and extended=, certs_len=), simulated directory=
    and product= (further options become fixed report fields, e.g. measurement=). auto picks
    configfs-tsm if its directory exists, else /dev/sev-guest if it exists, else raises
    ProviderError naming both; it never falls back to the simulator.
    """
    if name in ("configfs", "configfs-tsm"):
        return ConfigfsTsmProvider(**options)
    if name == "sev-guest":
        return SevGuestProvider(**options)
    if name == "simulated":
        from .simulator import SimulatedProvider, SimulatedSP
        directory = options.pop("directory", None)
        if not directory:
            raise ValueError("the simulated provider keeps its AMD-SP in a directory: "
                             "give directory=")
        sp = SimulatedSP(directory, options.pop("product", None))
        return SimulatedProvider(sp, **options)
    if name == "auto":
        configfs = ConfigfsTsmProvider(options.get("root", TSM_ROOT))
        if configfs.available():
            return configfs
        device = SevGuestProvider(options.get("device", SEV_GUEST_DEVICE))
        if device.available():
            return device
        raise ProviderError(f"no SEV-SNP guest interface: neither {configfs.root} "
                            f"(configfs-tsm, Linux 6.7+) nor {device.device} (sev-guest "
                            f"driver) exists (not an SEV-SNP guest, or its sev-guest driver is not "
                            f"loaded)")
    raise ValueError(f"unknown report provider {name!r} (one of {', '.join(PROVIDER_NAMES)})")
