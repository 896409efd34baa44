"""Report providers against the kernel ABI they speak, without SNP hardware.

/dev/sev-guest: the ctypes structures and ioctl numbers are compared with the uapi header
compiled by the C compiler, and a fake driver (injected `open`/`ioctl`) plays the kernel's part
of drivers/virt/coco/sev-guest: it reads the request from the addresses in the ioctl block,
writes MSG_REPORT_RSP and the certificate table, and reports fw/vmm errors through exitinfo2.
configfs-tsm: a fake configfs (injected file calls) keeps the kernel's state per entry
(write/read generation, privlevel floor, visible attributes, report regenerated on read), and
one test runs the real os calls against a temporary directory.
"""
import ctypes
import errno
import hashlib
import mmap
import os
import shutil
import subprocess
import uuid
from importlib import resources

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ctpm import cli
from ctpm.snp import providers as P
from ctpm.snp.errors import ProviderError
from ctpm.snp.report import (GUID_ARK, GUID_ASK, GUID_VCEK, REPORT_SIZE, AttestationReport,
                             build_cert_table, build_msg_report_rsp, build_report,
                             parse_cert_table)

DATA = bytes(range(64))


def _amd_der(name):
    pem = resources.files("ctpm.snp").joinpath("amd", name).read_bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


# AMD's real Milan ASK and ARK (1.5 KiB each) and a VCEK-sized stand-in: a table of ~4.6 KiB,
# larger than one page, as hosts serve it.
CERTS = {GUID_VCEK: bytes([0x30]) + os.urandom(1370), GUID_ASK: _amd_der("milan_ask.pem"),
         GUID_ARK: _amd_der("milan_ark.pem")}
TABLE = build_cert_table(CERTS)


def firmware_report(report_data: bytes, vmpl: int) -> bytes:
    return build_report(version=3, policy=0x30000, vmpl=vmpl, signature_algo=1,
                        report_data=report_data, chip_id=b"\x11" * 64)


# --- /dev/sev-guest: layouts and ioctl numbers ----------------------------------------------

def test_struct_layouts_and_ioctl_numbers():
    """The numbers of include/uapi/linux/sev-guest.h (x86-64)."""
    S = ctypes.sizeof
    assert S(P.SnpGuestRequestIoctl) == 32
    assert [getattr(P.SnpGuestRequestIoctl, f).offset
            for f in ("msg_version", "req_data", "resp_data", "exitinfo2", "fw_error",
                      "vmm_error")] == [0, 8, 16, 24, 24, 28]
    assert S(P.SnpReportReq) == 96 and P.SnpReportReq.vmpl.offset == 64
    assert P.SnpReportReq.rsvd.offset == 68
    assert S(P.SnpReportResp) == 4000
    assert S(P.SnpExtReportReq) == 112
    assert (P.SnpExtReportReq.certs_address.offset, P.SnpExtReportReq.certs_len.offset) \
        == (96, 104)
    assert P.SNP_GET_REPORT == 0xC0205300
    assert P.SNP_GET_EXT_REPORT == 0xC0205302
    # exitinfo2 is the union of fw_error (bits 31:0) and vmm_error (bits 63:32)
    io = P.SnpGuestRequestIoctl()
    io.exitinfo2 = (2 << 32) | 0x16
    assert (io.fw_error, io.vmm_error) == (0x16, 2)


C_PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/ioctl.h>
#include <linux/sev-guest.h>
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f))
int main(void) {
    printf("SNP_GET_REPORT %lu\nSNP_GET_EXT_REPORT %lu\n",
           (unsigned long)SNP_GET_REPORT, (unsigned long)SNP_GET_EXT_REPORT);
    printf("sizeof.snp_guest_request_ioctl %zu\n", sizeof(struct snp_guest_request_ioctl));
    printf("sizeof.snp_report_req %zu\n", sizeof(struct snp_report_req));
    printf("sizeof.snp_report_resp %zu\n", sizeof(struct snp_report_resp));
    printf("sizeof.snp_ext_report_req %zu\n", sizeof(struct snp_ext_report_req));
    O(snp_guest_request_ioctl, msg_version); O(snp_guest_request_ioctl, req_data);
    O(snp_guest_request_ioctl, resp_data); O(snp_guest_request_ioctl, exitinfo2);
    O(snp_guest_request_ioctl, fw_error); O(snp_guest_request_ioctl, vmm_error);
    O(snp_report_req, user_data); O(snp_report_req, vmpl); O(snp_report_req, rsvd);
    O(snp_ext_report_req, data); O(snp_ext_report_req, certs_address);
    O(snp_ext_report_req, certs_len);
    return 0;
}
"""


@pytest.mark.skipif(not shutil.which("cc")
                    or not os.path.exists("/usr/include/linux/sev-guest.h"),
                    reason="needs a C compiler and the kernel's uapi header linux/sev-guest.h")
def test_layouts_equal_the_installed_uapi_header(tmp_path):
    """The C compiler's answer from the installed <linux/sev-guest.h>, not our transcription."""
    src = tmp_path / "probe.c"
    src.write_text(C_PROBE)
    subprocess.run(["cc", "-o", str(tmp_path / "probe"), str(src)], check=True, timeout=60)
    out = subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True,
                         text=True).stdout
    c = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    structs = {"snp_guest_request_ioctl": P.SnpGuestRequestIoctl,
               "snp_report_req": P.SnpReportReq, "snp_report_resp": P.SnpReportResp,
               "snp_ext_report_req": P.SnpExtReportReq}
    ours = {"SNP_GET_REPORT": P.SNP_GET_REPORT, "SNP_GET_EXT_REPORT": P.SNP_GET_EXT_REPORT}
    for name, struct in structs.items():
        ours[f"sizeof.{name}"] = ctypes.sizeof(struct)
    for key in c:
        if key.count(".") == 1 and not key.startswith("sizeof."):
            name, field = key.split(".")
            ours[key] = getattr(structs[name], field).offset
    assert ours == c


# --- /dev/sev-guest: a fake driver -----------------------------------------------------------

class FakeSevGuest:
    """drivers/virt/coco/sev-guest's ioctl path, seen from user space."""

    FD = 42

    def __init__(self, *, table=TABLE, fw_error=0, vmm_error=0, status=0, report_size=None,
                 lie_about_length=False):
        self.table = table
        self.fw_error, self.vmm_error = fw_error, vmm_error
        self.status, self.report_size = status, report_size
        self.lie_about_length = lie_about_length
        self.calls = []
        self.opened, self.closed = [], []

    def open(self, path):
        self.opened.append(path)
        return self.FD

    def close(self, fd):
        assert fd == self.FD
        self.closed.append(fd)

    def ioctl(self, fd, request, io):
        assert fd == self.FD
        wire = bytes(io)                                   # the 32-byte block as passed
        assert len(wire) == 32
        if not io.msg_version:
            raise OSError(errno.EINVAL, "msg_version 0")
        ext = request == P.SNP_GET_EXT_REPORT
        assert request in (P.SNP_GET_REPORT, P.SNP_GET_EXT_REPORT)
        req = ctypes.string_at(io.req_data, 112 if ext else 96)
        call = {"request": request, "wire": wire, "req": req}
        self.calls.append(call)
        certs_address = int.from_bytes(req[96:104], "little") if ext else 0
        certs_len = int.from_bytes(req[104:108], "little") if ext else 0
        call.update(certs_address=certs_address, certs_len=certs_len)
        io.exitinfo2 = 0xFF                                # the driver's preset
        if ext and certs_len and (certs_len % mmap.PAGESIZE or certs_len > 0x4000):
            raise OSError(errno.EINVAL, "bad certs_len")
        if self.fw_error or self.vmm_error:
            io.fw_error, io.vmm_error = self.fw_error, self.vmm_error
            raise OSError(errno.EIO, "guest request failed")
        if ext and self.table is not None and certs_len:
            needed = -(-len(self.table) // mmap.PAGESIZE) * mmap.PAGESIZE
            if self.lie_about_length:
                needed = certs_len + mmap.PAGESIZE
            if needed > certs_len:
                io.exitinfo2 = P.SNP_GUEST_VMM_ERR_INVALID_LEN << 32
                ctypes.memmove(io.req_data + 104, needed.to_bytes(4, "little"), 4)
                raise OSError(errno.EIO, "certificate buffer too small")
            ctypes.memmove(certs_address, self.table, len(self.table))
        report = firmware_report(req[:64], int.from_bytes(req[64:68], "little"))
        rsp = build_msg_report_rsp(report, status=self.status)
        if self.report_size is not None:
            rsp = rsp[:4] + self.report_size.to_bytes(4, "little") + rsp[8:]
        ctypes.memmove(io.resp_data, rsp.ljust(4000, b"\0"), 4000)
        io.exitinfo2 = 0
        return 0


def sev_provider(fake, **kw):
    kw.setdefault("vmpck_id_path", "/nonexistent/vmpck_id")
    return P.SevGuestProvider("/dev/fake-sev-guest", open=fake.open, ioctl=fake.ioctl,
                              close=fake.close, **kw)


def test_get_report_request_bytes_and_response():
    fake = FakeSevGuest()
    ev = sev_provider(fake, extended=False).report(DATA, vmpl=2)
    (call,) = fake.calls
    assert call["request"] == P.SNP_GET_REPORT
    assert call["wire"][0] == 1 and call["wire"][1:8] == bytes(7)       # msg_version, padding
    assert call["req"] == DATA + (2).to_bytes(4, "little") + bytes(28)
    assert call["wire"][24:32] == bytes(8)                               # exitinfo2 zeroed
    assert ev.report == firmware_report(DATA, 2) and len(ev.report) == REPORT_SIZE
    assert ev.cert_table is None and ev.provider == "sev-guest" and ev.manifest is None
    assert AttestationReport.parse(ev.report).report_data == DATA
    assert fake.opened == ["/dev/fake-sev-guest"] and fake.closed == [fake.FD]


def test_ext_report_page_aligned_buffer_and_table():
    fake = FakeSevGuest()
    ev = sev_provider(fake).report(DATA)
    (call,) = fake.calls
    assert call["request"] == P.SNP_GET_EXT_REPORT
    assert call["req"][:96] == DATA + bytes(32)                          # vmpl 0
    assert call["certs_address"] % mmap.PAGESIZE == 0
    assert call["certs_len"] == 0x4000
    assert ev.cert_table == TABLE                       # trimmed to the table's extent
    assert P.certificates(ev) == CERTS
    assert AttestationReport.parse(ev.report).vmpl == 0


def test_default_vmpl_is_the_drivers_key(tmp_path):
    """Under an SVSM the driver uses VMPCK2: VMPL 2 by default, VMPL 0/1 refused up front."""
    param = tmp_path / "vmpck_id"
    param.write_text("2\n")
    fake = FakeSevGuest()
    ev = sev_provider(fake, vmpck_id_path=str(param)).report(DATA)
    assert fake.calls[0]["req"][64:68] == (2).to_bytes(4, "little")
    assert AttestationReport.parse(ev.report).vmpl == 2
    sev_provider(fake, vmpck_id_path=str(param)).report(DATA, vmpl=3)
    assert fake.calls[1]["req"][64:68] == (3).to_bytes(4, "little")
    with pytest.raises(ProviderError, match=r"VMPL 1 is below the VMPL of the sev-guest "
                                            r"driver's key \(VMPCK2"):
        sev_provider(fake, vmpck_id_path=str(param)).report(DATA, vmpl=1)
    assert len(fake.calls) == 2 and fake.opened.count("/dev/fake-sev-guest") == 2
    for junk in ("-1\n", "x\n", ""):
        param.write_text(junk)
        sev_provider(fake, vmpck_id_path=str(param)).report(DATA)
        assert fake.calls[-1]["req"][64:68] == bytes(4)


def test_ext_report_retries_once_with_the_size_the_host_asks_for():
    fake = FakeSevGuest()
    ev = sev_provider(fake, certs_len=mmap.PAGESIZE).report(DATA, vmpl=1)
    assert [c["certs_len"] for c in fake.calls] == [mmap.PAGESIZE, 2 * mmap.PAGESIZE]
    assert all(c["req"][:96] == DATA + (1).to_bytes(4, "little") + bytes(28)
               for c in fake.calls)
    assert parse_cert_table(ev.cert_table) == CERTS
    assert fake.closed == [fake.FD]


def test_ext_report_gives_up_when_the_host_keeps_asking_for_more():
    fake = FakeSevGuest(lie_about_length=True)
    with pytest.raises(P.FirmwareError) as e:
        sev_provider(fake, certs_len=mmap.PAGESIZE).report(DATA)
    assert len(fake.calls) == 2
    assert e.value.vmm_error == P.SNP_GUEST_VMM_ERR_INVALID_LEN
    assert "certificate buffer" in str(e.value) and "\n" not in str(e.value)
    assert fake.closed == [fake.FD]


def test_ext_report_without_host_certificates():
    ev = sev_provider(FakeSevGuest(table=None)).report(DATA)
    assert ev.cert_table is None and P.certificates(ev) == {}


@pytest.mark.parametrize("fw, vmm, words", [
    (0x16, 0, ["fw_error 0x16 INVALID_PARAM", "vmm_error 0x0 none"]),
    (0, 2, ["vmm_error 0x2 host busy"]),
    (0xFF, 0, ["did not reach the firmware"]),
    (0x27, 0, ["INVALID_KEY"]),
    (0x99, 0, ["fw_error 0x99 unknown"]),
])
def test_firmware_and_host_errors_are_named(fw, vmm, words):
    fake = FakeSevGuest(fw_error=fw, vmm_error=vmm)
    with pytest.raises(P.FirmwareError) as e:
        sev_provider(fake).report(DATA)
    assert (e.value.fw_error, e.value.vmm_error, e.value.errno) == (fw, vmm, errno.EIO)
    assert isinstance(e.value, ProviderError)
    for w in words:
        assert w in str(e.value)
    assert str(e.value).startswith("SNP_GET_EXT_REPORT failed: Input/output error")
    assert fake.closed == [fake.FD]


def test_msg_report_rsp_status_and_size_are_checked():
    with pytest.raises(ProviderError, match=r"status 0x16 \(invalid parameters\)"):
        sev_provider(FakeSevGuest(status=0x16)).report(DATA)
    with pytest.raises(ProviderError, match="report_size 1000"):
        sev_provider(FakeSevGuest(report_size=1000), extended=False).report(DATA)


def test_sev_guest_missing_device_and_permission():
    with pytest.raises(ProviderError) as e:
        P.SevGuestProvider("/nonexistent/sev-guest").report(DATA)
    assert str(e.value) == ("no SEV-SNP guest interface: /nonexistent/sev-guest does not "
                            "exist (the sev-guest driver exists only inside an SEV-SNP guest)")

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    with pytest.raises(ProviderError, match="permission denied opening /dev/x"):
        P.SevGuestProvider("/dev/x", open=denied).report(DATA)


def test_default_ioctl_reaches_the_kernel(tmp_path):
    """The real ioctl with our block on a file that is no sev-guest: ENOTTY comes back named."""
    path = tmp_path / "not-a-device"
    path.write_bytes(b"")
    with pytest.raises(P.FirmwareError) as e:
        P.SevGuestProvider(str(path), extended=False,
                           vmpck_id_path=str(tmp_path / "none")).report(DATA)
    assert e.value.errno == errno.ENOTTY
    assert str(e.value) == ("SNP_GET_REPORT failed: Inappropriate ioctl for device (no error "
                            "code from the firmware or the host)")


def test_default_ioctl_passes_the_block_itself():
    """The kernel writes into our structure in place (FIONREAD on a pipe writes an int), so
    exitinfo2 written by a failing SNP ioctl reaches us too, unlike with fcntl.ioctl's copy."""
    import termios
    r, w = os.pipe()
    try:
        os.write(w, b"12345")
        count = ctypes.c_int(-1)
        assert P._default_ioctl(r, termios.FIONREAD, count) == 0
        assert count.value == 5
        with pytest.raises(OSError) as e:
            P._default_ioctl(r, P.SNP_GET_REPORT, P.SnpGuestRequestIoctl(msg_version=1))
        assert e.value.errno == errno.ENOTTY
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("bad", [b"", bytes(63), bytes(65), "x" * 64])
def test_report_data_must_be_64_bytes(bad):
    for provider in (sev_provider(FakeSevGuest()), P.ConfigfsTsmProvider("/nonexistent")):
        with pytest.raises((ValueError, TypeError), match="64 bytes|bytes, not str"):
            provider.report(bad)


def test_vmpl_range_and_no_service_on_sev_guest():
    with pytest.raises(ValueError, match="vmpl"):
        sev_provider(FakeSevGuest()).report(DATA, vmpl=4)
    with pytest.raises(ProviderError, match="configfs-tsm"):
        sev_provider(FakeSevGuest()).report(DATA, service=P.ServiceRequest())


# --- configfs-tsm: a fake configfs -----------------------------------------------------------

class FakeTsm:
    """drivers/virt/coco/guest/report.c with the sev_guest provider, as seen through files."""

    def __init__(self, root="/cfg/tsm/report", *, floor=0, provider="sev_guest", svsm=False,
                 table=TABLE, manifest=b"MANIFEST", intruder=None, outblob_pad=0):
        self.root, self.floor, self.provider, self.svsm = root, floor, provider, svsm
        self.table, self.manifest = table, manifest
        self.intruder = intruder            # called before outblob is generated
        self.outblob_pad = outblob_pad
        self.entries = {}
        self.log = []
        self.generated = []

    def _split(self, path):
        d, attr = os.path.split(path)
        assert os.path.dirname(d) == self.root, path
        return self.entries[os.path.basename(d)], attr

    def _visible(self, attr):
        svsm_attrs = {"service_provider", "service_guid", "service_manifest_version",
                      "manifestblob"}
        return attr in {"inblob", "outblob", "auxblob", "provider", "generation", "privlevel",
                        "privlevel_floor"} or (self.svsm and attr in svsm_attrs)

    def isdir(self, path):
        return path == self.root

    def exists(self, path):
        d, attr = os.path.split(path)
        return os.path.basename(d) in self.entries and self._visible(attr)

    def mkdir(self, path):
        self.log.append(("mkdir", path))
        name = os.path.basename(path)
        assert os.path.dirname(path) == self.root
        if name in self.entries:
            raise FileExistsError(errno.EEXIST, "exists", path)
        self.entries[name] = dict(write=0, read=0, privlevel=0, inblob=b"", sp=None,
                                  guid=None, mver=0, out=None)

    def rmdir(self, path):
        self.log.append(("rmdir", path))
        del self.entries[os.path.basename(path)]

    def write(self, path, data):
        e, attr = self._split(path)
        self.log.append(("write", attr, bytes(data)))
        if not self._visible(attr) or attr not in {
                "inblob", "privlevel", "service_provider", "service_guid",
                "service_manifest_version"}:
            raise PermissionError(errno.EACCES, "read-only", path)
        if attr == "privlevel":
            val = int(data.decode())
            if not self.floor <= val <= 3:
                raise OSError(errno.EINVAL, "Invalid argument", path)
            e["privlevel"] = val
        elif attr == "inblob":
            if len(data) > 64:
                raise OSError(errno.EFBIG, "File too large", path)
            e["inblob"] = bytes(data)
        elif attr == "service_provider":
            e["sp"] = data.decode().rstrip("\n")
        elif attr == "service_guid":
            e["guid"] = str(uuid.UUID(data.decode().strip()))
        else:
            e["mver"] = int(data.decode())
        e["write"] += 1

    def read(self, path):
        e, attr = self._split(path)
        self.log.append(("read", attr))
        if attr == "provider":
            return f"{self.provider}\n".encode()
        if attr == "generation":
            return f"{e['write']}\n".encode()
        if attr == "privlevel_floor":
            return f"{self.floor}\n".encode()
        if attr in ("outblob", "auxblob", "manifestblob"):
            if not e["inblob"]:
                raise OSError(errno.EINVAL, "Invalid argument", path)
            if e["out"] is None or e["read"] != e["write"]:
                if self.intruder:
                    self.intruder(self, e)
                self._report_new(e, path)
                e["read"] = e["write"]
            return e["out"][attr]
        raise PermissionError(errno.EACCES, "write-only", path)

    def _report_new(self, e, path):
        if len(e["inblob"]) != 64:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        if e["sp"] not in (None, "svsm"):
            raise OSError(errno.EINVAL, "Invalid argument", path)
        self.generated.append(dict(e))
        if e["sp"] == "svsm":
            # COCONUT-SVSM: a VMPL 0 report over SHA-512(nonce || manifest), copied out as the
            # firmware's 4000-byte response minus its 32-byte header (the report, then zeros)
            report = firmware_report(hashlib.sha512(e["inblob"] + self.manifest).digest(), 0)
            report = report.ljust(4000 - 32, b"\0")
        else:
            report = firmware_report(e["inblob"], e["privlevel"]) + bytes(self.outblob_pad)
        e["out"] = {"outblob": report, "auxblob": self.table or b"",
                    "manifestblob": self.manifest if e["sp"] else b""}


def test_configfs_sequence_of_writes_and_reads():
    fake = FakeTsm()
    ev = P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA)
    assert ev.report == firmware_report(DATA, 0) and ev.cert_table == TABLE
    assert ev.provider == "configfs-tsm" and ev.manifest is None
    (mk, *middle, rm) = fake.log
    assert mk[0] == "mkdir" and rm == ("rmdir", mk[1])
    assert os.path.basename(mk[1]).startswith(f"ctpm-{os.getpid()}-")
    assert middle == [("read", "provider"), ("read", "privlevel_floor"), ("read", "generation"),
                      ("write", "inblob", DATA), ("read", "outblob"), ("read", "auxblob"),
                      ("read", "generation")]
    assert fake.entries == {}
    assert len(fake.generated) == 1


def test_configfs_vmpl_and_privlevel_floor():
    fake = FakeTsm(floor=2)
    ev = P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA, vmpl=3)
    assert ("write", "privlevel", b"3\n") in fake.log
    assert AttestationReport.parse(ev.report).vmpl == 3
    # no VMPL asked: the floor, which is the only level this guest may ask for reports at
    fake.log.clear()
    ev = P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA)
    assert ("write", "privlevel", b"2\n") in fake.log
    assert AttestationReport.parse(ev.report).vmpl == 2
    # below the floor: refused before anything is written, and the entry is removed
    fake.log.clear()
    with pytest.raises(ProviderError, match="VMPL 1 is below this guest's privlevel_floor 2"):
        P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA, vmpl=1)
    assert not [op for op in fake.log if op[0] == "write"]
    assert fake.log[-1][0] == "rmdir" and fake.entries == {}


def test_configfs_kernel_refusing_privlevel_is_one_clear_line():
    class NoFloorFile(FakeTsm):            # a kernel whose floor we cannot read
        def _visible(self, attr):
            return attr != "privlevel_floor" and super()._visible(attr)
    fake = NoFloorFile(floor=2)
    with pytest.raises(ProviderError) as e:
        P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA, vmpl=0)
    assert str(e.value) == "configfs-tsm refused privlevel 0 (allowed: privlevel_floor..3)"
    assert fake.entries == {}


def test_configfs_service_request():
    fake = FakeTsm(svsm=True, floor=2)
    guid = "c476f1eb-0123-45a5-9641-b4e7dde5bfe3"
    ev = P.ConfigfsTsmProvider(fake.root, files=fake).report(
        DATA, service=P.ServiceRequest(guid=guid.upper(), manifest_version=1))
    writes = [op for op in fake.log if op[0] == "write"]
    assert writes == [("write", "privlevel", b"2\n"), ("write", "service_provider", b"svsm\n"),
                      ("write", "service_guid", f"{guid}\n".encode()),
                      ("write", "service_manifest_version", b"1\n"),
                      ("write", "inblob", DATA)]
    assert ev.manifest == b"MANIFEST"
    assert ev.report == firmware_report(hashlib.sha512(DATA + b"MANIFEST").digest(), 0)
    assert fake.generated[0]["sp"] == "svsm" and fake.generated[0]["guid"] == guid
    # a kernel without the service attributes (Linux < 6.10, or no SVSM)
    with pytest.raises(ProviderError, match="no service_provider attribute .*6.10"):
        P.ConfigfsTsmProvider(fake.root, files=FakeTsm()).report(
            DATA, service=P.ServiceRequest())


def test_configfs_generation_mismatch_retries_then_fails():
    def once(fake, entry):                 # a concurrent writer, the first time only
        if len(fake.generated) == 0:
            entry["write"] += 1
            entry["inblob"] = b"\xee" * 64
    fake = FakeTsm(intruder=once)
    ev = P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA)
    assert AttestationReport.parse(ev.report).report_data == DATA
    assert [op[0] for op in fake.log].count("mkdir") == 2      # a fresh entry the second time
    assert fake.entries == {}

    def always(fake, entry):
        entry["write"] += 1
    fake = FakeTsm(intruder=always)
    with pytest.raises(ProviderError, match="another writer changed the report entry in each "
                                            "of 3 attempts"):
        P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA)
    assert fake.entries == {} and [op[0] for op in fake.log].count("rmdir") == 3


def test_configfs_wrong_provider_and_failed_reads_clean_up():
    fake = FakeTsm(provider="tdx_guest")
    with pytest.raises(ProviderError, match="provider is 'tdx_guest', not 'sev_guest'"):
        P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA)
    assert fake.entries == {}

    class Failing(FakeTsm):
        def _report_new(self, e, path):
            raise OSError(errno.ENXIO, "No such device or address", path)
    fake = Failing()
    with pytest.raises(ProviderError, match="reading outblob failed: No such device or address"):
        P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA)
    assert fake.entries == {}


def test_configfs_outblob_size():
    fake = FakeTsm(outblob_pad=4096 - REPORT_SIZE)        # zero padding: the report is kept
    ev = P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA)
    assert ev.report == firmware_report(DATA, 0)

    class Short(FakeTsm):
        def _report_new(self, e, path):
            super()._report_new(e, path)
            e["out"]["outblob"] = e["out"]["outblob"][:1000]
    with pytest.raises(ProviderError, match="outblob holds 1000 bytes, not a 1184-byte"):
        P.ConfigfsTsmProvider(FakeTsm().root, files=Short()).report(DATA)

    class Trailing(FakeTsm):
        def _report_new(self, e, path):
            super()._report_new(e, path)
            e["out"]["outblob"] += b"\x01"
    with pytest.raises(ProviderError, match="outblob holds 1185 bytes"):
        P.ConfigfsTsmProvider(FakeTsm().root, files=Trailing()).report(DATA)


def test_configfs_no_certificates():
    fake = FakeTsm(table=None)
    ev = P.ConfigfsTsmProvider(fake.root, files=fake).report(DATA)
    assert ev.cert_table is None and P.certificates(ev) == {}


def test_configfs_missing_directory_and_permission():
    with pytest.raises(ProviderError) as e:
        P.ConfigfsTsmProvider("/nonexistent/tsm/report").report(DATA)
    assert str(e.value) == ("no SEV-SNP guest interface: /nonexistent/tsm/report does not "
                            "exist (configfs-tsm needs Linux 6.7+ inside an SEV-SNP guest, "
                            "and configfs mounted)")

    class Denied(FakeTsm):
        def mkdir(self, path):
            raise PermissionError(errno.EACCES, "Permission denied", path)
    with pytest.raises(ProviderError, match="permission denied creating a report entry"):
        P.ConfigfsTsmProvider("/cfg/tsm/report", files=Denied()).report(DATA)

    class NoProvider(FakeTsm):
        def mkdir(self, path):
            raise OSError(errno.ENXIO, "No such device or address", path)
    with pytest.raises(ProviderError, match="no provider registered"):
        P.ConfigfsTsmProvider("/cfg/tsm/report", files=NoProvider()).report(DATA)


def test_configfs_real_file_calls(tmp_path):
    """The default file calls on a real directory that plays configfs: mkdir makes the
    attribute files, each write bumps `generation`, rmdir removes what mkdir made."""
    root = tmp_path / "report"
    root.mkdir()
    report = firmware_report(DATA, 1)

    class DirKernel(P.ConfigfsFiles):
        def mkdir(self, path):
            super().mkdir(path)
            for name, content in [("provider", b"sev_guest\n"), ("generation", b"0\n"),
                                  ("privlevel_floor", b"0\n"), ("privlevel", b""),
                                  ("inblob", b""), ("outblob", report), ("auxblob", TABLE)]:
                with open(os.path.join(path, name), "wb") as f:
                    f.write(content)

        def write(self, path, data):
            super().write(path, data)
            gen = os.path.join(os.path.dirname(path), "generation")
            with open(gen, "r+") as f:
                n = int(f.read())
                f.seek(0)
                f.write(f"{n + 1}\n")
            written[os.path.basename(path)] = open(path, "rb").read()

        def rmdir(self, path):
            for name in os.listdir(path):
                os.unlink(os.path.join(path, name))
            super().rmdir(path)

    written = {}
    ev = P.ConfigfsTsmProvider(str(root), files=DirKernel()).report(DATA, vmpl=1)
    assert written == {"privlevel": b"1\n", "inblob": DATA}
    assert ev.report == report and ev.cert_table == TABLE
    assert list(root.iterdir()) == []


# --- open_provider and the CLI ---------------------------------------------------------------

def test_open_provider_names(tmp_path):
    assert isinstance(P.open_provider("configfs"), P.ConfigfsTsmProvider)
    assert isinstance(P.open_provider("sev-guest", device="/x"), P.SevGuestProvider)
    with pytest.raises(ValueError, match="unknown report provider 'tpm'"):
        P.open_provider("tpm")
    with pytest.raises(ProviderError) as e:
        P.open_provider("auto", root=str(tmp_path / "none"), device=str(tmp_path / "nodev"))
    assert "neither" in str(e.value) and "(configfs-tsm, Linux 6.7+)" in str(e.value)
    assert "simulat" not in str(e.value)
    (tmp_path / "dev").write_bytes(b"")
    chosen = P.open_provider("auto", root=str(tmp_path / "none"), device=str(tmp_path / "dev"))
    assert isinstance(chosen, P.SevGuestProvider)
    (tmp_path / "tsm").mkdir()
    chosen = P.open_provider("auto", root=str(tmp_path / "tsm"), device=str(tmp_path / "dev"))
    assert isinstance(chosen, P.ConfigfsTsmProvider) and chosen.root == str(tmp_path / "tsm")


def run_cli(capsys, *argv):
    code = cli.main(["snp", "report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_no_device_one_line(capsys, tmp_path):
    out_file = tmp_path / "r.bin"
    for provider, extra, expect in [
            ("configfs", ["--configfs-root", str(tmp_path / "tsm")], "configfs-tsm needs"),
            ("sev-guest", ["--device", str(tmp_path / "sev")], "sev-guest driver exists only"),
            ("auto", ["--configfs-root", str(tmp_path / "t"), "--device", str(tmp_path / "d")],
             "neither")]:
        code, out, err = run_cli(capsys, "--provider", provider, "--report-data", "00",
                                 "-o", str(out_file), *extra)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith("ctpm: snp report: no SEV-SNP guest")
        assert expect in err
    assert not out_file.exists()


@pytest.mark.skipif(os.path.exists(P.TSM_ROOT) or os.path.exists(P.SEV_GUEST_DEVICE),
                    reason="this machine has an SEV-SNP guest interface")
def test_cli_on_this_machine_without_snp():
    """The real command, default paths: this machine is no SEV-SNP guest."""
    from ctpm.testing.process import command, environment
    result = subprocess.run(command("snp", "report", "--report-data", "ab" * 64, "-o",
                                    os.devnull), capture_output=True, text=True, timeout=30,
                            env=environment(), stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "ctpm: snp report: no SEV-SNP guest interface: neither /sys/kernel/config/tsm/report "
        "(configfs-tsm, Linux 6.7+) nor /dev/sev-guest (sev-guest driver) exists (not an "
        "SEV-SNP guest, or its sev-guest driver is not loaded)\n")


@pytest.mark.parametrize("argv, message", [
    (["--report-data", "xyz"], "is not hex"),
    (["--report-data", "00" * 65], "is 65 bytes, at most 64"),
    (["--report-data", "00", "--provider", "simulated"], "needs --sim-dir"),
    (["--report-data", "00", "--provider", "sev-guest", "--sim-dir", "x"], "only to --provider"),
])
def test_cli_usage_errors(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *argv, "-o", str(tmp_path / "r.bin"))
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


def test_cli_argparse_usage_errors(capsys):
    for argv in (["snp", "report", "--report-data", "00"],               # no -o
                 ["snp", "report", "--report-data", "00", "-o", "f", "--vmpl", "4"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    assert cli.main(["snp"]) == 2
    capsys.readouterr()


def test_cli_writes_report_and_certificates(capsys, tmp_path, monkeypatch):
    """The CLI around a provider: report bytes, DER files by GUID, unknown GUIDs as .bin."""
    other = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    table = build_cert_table({**CERTS, other: b"extra"})
    fake = FakeSevGuest(table=table)

    def fake_open_provider(name, **options):
        assert name == "sev-guest" and options == {"device": "/dev/fake"}
        return sev_provider(fake)
    monkeypatch.setattr(P, "open_provider", fake_open_provider)
    code, out, err = run_cli(capsys, "--provider", "sev-guest", "--device", "/dev/fake",
                             "--report-data", "0xabcd", "--vmpl", "1",
                             "-o", str(tmp_path / "r.bin"), "--certs", str(tmp_path / "c"))
    assert code == 0, err
    padded = b"\xab\xcd" + bytes(62)
    assert (tmp_path / "r.bin").read_bytes() == firmware_report(padded, 1)
    files = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    assert files == {"vcek.der": CERTS[GUID_VCEK], "ask.der": CERTS[GUID_ASK],
                     "ark.der": CERTS[GUID_ARK], f"{other}.bin": b"extra"}
    assert out.splitlines()[0] == f"report: {tmp_path / 'r.bin'} (1184 bytes, provider sev-guest)"
    assert err == ""

    # a host without certificates: the report is written, a note says why no DER files
    fake.table = None
    code, out, err = run_cli(capsys, "--provider", "sev-guest", "--device", "/dev/fake",
                             "--report-data", "00", "-o", str(tmp_path / "r3.bin"),
                             "--certs", str(tmp_path / "c3"), "--cert-table",
                             str(tmp_path / "t3.bin"))
    assert code == 0 and (tmp_path / "r3.bin").stat().st_size == REPORT_SIZE
    assert list((tmp_path / "c3").iterdir()) == [] and not (tmp_path / "t3.bin").exists()
    assert err.count("\n") == 1 and "returned no certificate table" in err

    # a firmware error: one line, exit 1, no report file
    fake.fw_error = 0x16
    code, out, err = run_cli(capsys, "--provider", "sev-guest", "--device", "/dev/fake",
                             "--report-data", "00", "-o", str(tmp_path / "r2.bin"))
    assert code == 1 and err.count("\n") == 1 and "fw_error 0x16 INVALID_PARAM" in err
    assert not (tmp_path / "r2.bin").exists()


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sim") / "sp")


def test_cli_simulated(capsys, tmp_path, sim_dir):
    code, out, err = run_cli(capsys, "--provider", "simulated", "--sim-dir", sim_dir,
                             "--product", "milan", "--report-data", "11" * 64, "-o",
                             str(tmp_path / "r.bin"), "--certs", str(tmp_path / "c"),
                             "--cert-table", str(tmp_path / "t.bin"))
    assert code == 0, err
    report = AttestationReport.parse((tmp_path / "r.bin").read_bytes())
    assert report.report_data == b"\x11" * 64
    assert "provider simulated" in out
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ark.der", "ask.der",
                                                                 "vcek.der"]
    table = parse_cert_table((tmp_path / "t.bin").read_bytes())
    assert table[GUID_VCEK] == (tmp_path / "c" / "vcek.der").read_bytes()

    # what it wrote is what `ctpm verify-report` reads; the simulator's ARK only when trusted
    verify = ["verify-report", str(tmp_path / "r.bin"), "--cert-table", str(tmp_path / "t.bin"),
              "--report-data", "11" * 64]
    assert cli.main(verify) == 1
    assert "ark_pinned" in capsys.readouterr().err
    assert cli.main(verify + ["--trust-ark", str(tmp_path / "c" / "ark.der")]) == 0
    assert capsys.readouterr().out.startswith("verified: Milan report v3")

    # an output that cannot be written: one line naming it, exit 1, no stray temporary file
    code, out, err = run_cli(capsys, "--provider", "simulated", "--sim-dir", sim_dir,
                             "--report-data", "11", "-o", str(tmp_path / "no" / "r.bin"))
    assert code == 1 and err == (f"ctpm: snp report: cannot write {tmp_path / 'no' / 'r.bin'}: "
                                 f"No such file or directory\n")
    # the directory keeps its product: asking for another one is a usage mistake
    code, out, err = run_cli(capsys, "--provider", "simulated", "--sim-dir", sim_dir,
                             "--product", "turin", "--report-data", "11", "-o",
                             str(tmp_path / "r.bin"))
    assert code == 2 and err.count("\n") == 1 and "not a Turin" in err


def test_open_provider_simulated_is_explicit(sim_dir):
    provider = P.open_provider("simulated", directory=sim_dir)
    ev = provider.report(DATA, vmpl=1)
    assert type(ev) is P.Evidence and ev.provider == "simulated"
    assert AttestationReport.parse(ev.report).vmpl == 1
    assert set(P.certificates(ev)) == {GUID_VCEK, GUID_ASK, GUID_ARK}
    with pytest.raises(ValueError, match="directory"):
        P.open_provider("simulated")
