"""The SVSM side: CORE QUERY_PROTOCOL, the vTPM protocol and the attestation protocol, served
for one instance's backend on a unix socket (framing and result codes: docs/svsm.md).

Each connection is one guest vCPU making SVSM calls: a call carries its registers and the
guest pages it refers to; the handlers read the guest's GPA-based structures from those
pages exactly as an SVSM reads guest memory, and the reply carries the result registers and
the pages the SVSM wrote. Nothing a guest sends can stop the daemon: a bad call gets its RAX
code, bytes that are not a frame close that connection.
"""
import logging
import struct
from dataclasses import dataclass

import trio

from ..transport.framing import MessageReader, Truncated, check_command
from . import protocol as p
from .protocol import SvsmCallError

log = logging.getLogger("ctpm.svsm")


class GuestMemory:
    """The guest pages one call brought: {4 KiB-aligned GPA: bytearray(4096)}.

    A GPA the guest did not send is not guest memory the SVSM may touch: INVALID_ADDRESS.
    Writes are recorded so that the reply carries every page written."""

    def __init__(self, pages: dict):
        self._pages = {gpa: bytearray(data) for gpa, data in pages.items()}
        self._written = set()

    def _spans(self, gpa: int, size: int):
        end = gpa + size
        if gpa < 0 or end > p.GPA_LIMIT:
            raise SvsmCallError(p.INVALID_ADDRESS, f"{gpa:#x}+{size:#x} is beyond 2^52")
        while gpa < end:
            page = gpa - gpa % p.PAGE_SIZE
            if page not in self._pages:
                raise SvsmCallError(p.INVALID_ADDRESS, f"GPA {page:#x} is not guest memory "
                                                       "of this call")
            n = min(end, page + p.PAGE_SIZE) - gpa
            yield page, gpa - page, n
            gpa += n

    def check(self, gpa: int, size: int):
        """Raise INVALID_ADDRESS unless all of [gpa, gpa + size) is present."""
        for _ in self._spans(gpa, size):
            pass

    def read(self, gpa: int, size: int) -> bytes:
        off = gpa % p.PAGE_SIZE
        page = self._pages.get(gpa - off)
        if page is not None and off + size <= p.PAGE_SIZE:        # the common case
            return bytes(page[off:off + size])
        return b"".join(bytes(self._pages[page][off:off + n])
                        for page, off, n in list(self._spans(gpa, size)))

    def write(self, gpa: int, data: bytes):
        spans = list(self._spans(gpa, len(data)))       # all present, or nothing written
        pos = 0
        for page, off, n in spans:
            self._pages[page][off:off + n] = data[pos:pos + n]
            self._written.add(page)
            pos += n

    def written(self) -> dict:
        return {gpa: bytes(self._pages[gpa]) for gpa in sorted(self._written)}


@dataclass
class Params:
    """A call's in/out registers (RAX is the result): handlers set the outputs they define;
    the others go back as they came, as in coconut-svsm's request loop."""

    rcx: int
    rdx: int
    r8: int
    r9: int


def _region(gpa: int, size: int, what: str, *, aligned: bool):
    if aligned and gpa % p.PAGE_SIZE:
        raise SvsmCallError(p.INVALID_PARAMETER, f"the {what} buffer {gpa:#x} is not page "
                                                 "aligned")
    return (gpa, gpa + size, what)


def _no_overlap(regions):
    regions = sorted(r for r in regions if r[1] > r[0])
    for (s1, e1, w1), (s2, e2, w2) in zip(regions, regions[1:]):
        if s2 < e1:
            raise SvsmCallError(p.INVALID_PARAMETER, f"the {w1} and {w2} buffers overlap")


class SvsmService:
    """The SVSM calls for one instance: `host` is its TpmHost (commands go through the
    instance's backend and counters), the backend's `anchor` signs the attestation."""

    def __init__(self, host):
        self.host = host
        self.anchor = host.backend.anchor

    async def call(self, registers, memory: GuestMemory):
        """(RAX, RCX, RDX, R8) for a call's (RAX, RCX, RDX, R8, R9)."""
        rax, rcx, rdx, r8, r9 = registers
        params = Params(rcx, rdx, r8, r9)
        protocol, call_id = rax >> 32, rax & 0xFFFF_FFFF
        handlers = {p.PROTOCOL_CORE: self._core, p.PROTOCOL_VTPM: self._vtpm,
                    p.PROTOCOL_ATTEST: self._attest}
        try:
            if protocol not in handlers:
                raise SvsmCallError(p.UNSUPPORTED_PROTOCOL, f"protocol {protocol}")
            await handlers[protocol](call_id, params, memory)
            result = p.SUCCESS
        except SvsmCallError as e:
            log.debug("SVSM call %#x: %s", rax, e)
            result = e.code
        return result, params.rcx, params.rdx, params.r8

    # -- CORE -------------------------------------------------------------------------------

    async def _core(self, call_id, params, memory):
        if call_id != p.CORE_QUERY_PROTOCOL:
            raise SvsmCallError(p.UNSUPPORTED_CALL, f"CORE call {call_id} is not served")
        protocol, version = params.rcx >> 32, params.rcx & 0xFFFF_FFFF
        low, high = p.PROTOCOL_VERSIONS.get(protocol, (1, 0))
        params.rcx = (high << 32 | low) if low <= version <= high else 0

    # -- vTPM -------------------------------------------------------------------------------

    async def _vtpm(self, call_id, params, memory):
        if call_id == p.VTPM_QUERY:
            params.rcx = p.platform_bitmap()
            params.rdx = p.VTPM_FEATURES
            return
        if call_id != p.VTPM_CMD:
            raise SvsmCallError(p.UNSUPPORTED_CALL, f"vTPM call {call_id}")
        gpa = params.rcx
        if gpa == 0:
            raise SvsmCallError(p.INVALID_PARAMETER, "null vTPM buffer")
        command = struct.unpack("<I", memory.read(gpa, 4))[0]
        if command not in p.KNOWN_PLATFORM_COMMANDS:
            raise SvsmCallError(p.INVALID_PARAMETER, f"platform command {command}")
        if command not in p.SUPPORTED_PLATFORM_COMMANDS:
            raise SvsmCallError(p.UNSUPPORTED_CALL, f"platform command {command} not served")
        buffer = bytearray(memory.read(gpa, p.PAGE_SIZE))   # one page, any alignment
        _, locality, size = p.SEND_COMMAND_HEAD.unpack_from(buffer)
        if locality != 0:
            raise SvsmCallError(p.INVALID_PARAMETER, f"locality {locality}")
        if size > p.MAX_TPM_COMMAND:
            raise SvsmCallError(p.INVALID_PARAMETER, f"command size {size}")
        tpm_command = bytes(buffer[p.REQUEST_HEADER:p.REQUEST_HEADER + size])
        response = check_command(tpm_command, self.host.max_command_size)
        if response is None:
            response = await self.host.execute(tpm_command, 0)
        if len(response) > p.MAX_TPM_RESPONSE:
            raise SvsmCallError(p.INVALID_REQUEST, f"a {len(response)}-byte response does "
                                                   "not fit the vTPM buffer")
        buffer[:p.RESPONSE_HEADER + len(response)] = \
            struct.pack("<I", len(response)) + response
        memory.write(gpa, bytes(buffer))

    # -- ATTEST -----------------------------------------------------------------------------

    async def _attest(self, call_id, params, memory):
        if call_id == p.ATTEST_SERVICES:
            raw = memory.read(params.rcx, p.ATTEST_SERVICES_OP_SIZE)
            op = p.ATTEST_SERVICES_OP.parse(raw)
            self._check_reserved(op)
            manifest = p.encode_services_manifest(
                [(p.VTPM_SERVICE_GUID, self.anchor.manifest(0))])
            await self._report(op, params, memory, manifest, None, params.rcx, len(raw))
        elif call_id == p.ATTEST_SINGLE_SERVICE:
            raw = memory.read(params.rcx, p.ATTEST_SINGLE_SERVICE_OP_SIZE)
            single = p.ATTEST_SINGLE_SERVICE_OP.parse(raw)
            self._check_reserved(single.op)
            if any(single.reserved_54):
                raise SvsmCallError(p.INVALID_PARAMETER, "reserved field at 0x54 is not zero")
            if p.guid_from_wire(single.guid) != p.VTPM_SERVICE_GUID:
                # coconut-svsm: a service it does not have is an unsupported protocol
                raise SvsmCallError(p.UNSUPPORTED_PROTOCOL,
                                    f"service {p.guid_from_wire(single.guid)}")
            version = single.manifest_version
            if version not in self.anchor.manifest_versions:
                raise SvsmCallError(p.INVALID_PARAMETER, f"manifest version {version}")
            await self._report(single.op, params, memory, self.anchor.manifest(version),
                               version, params.rcx, len(raw))
        else:
            raise SvsmCallError(p.UNSUPPORTED_CALL, f"ATTEST call {call_id}")

    @staticmethod
    def _check_reserved(op):
        for name in p.RESERVED_FIELDS:
            if any(op[name]):
                raise SvsmCallError(p.INVALID_PARAMETER, f"{name} is not zero")

    async def _report(self, op, params, memory, manifest, version, op_gpa, op_size):
        """Check the operation's buffers, get the report, write report, manifest and
        certificates, or answer 'too small' with the sizes in RCX, RDX and R8."""
        if op.nonce_size != p.NONCE_SIZE:
            raise SvsmCallError(p.INVALID_PARAMETER, f"nonce size {op.nonce_size}")
        if op.nonce_gpa // p.PAGE_SIZE != (op.nonce_gpa + p.NONCE_SIZE - 1) // p.PAGE_SIZE:
            raise SvsmCallError(p.INVALID_PARAMETER, "the nonce crosses a page boundary")
        outputs = [_region(op.report_gpa, op.report_size, "report", aligned=True),
                   _region(op.manifest_gpa, op.manifest_size, "manifest", aligned=True)]
        if op.certificate_size:
            outputs.append(_region(op.certificate_gpa, op.certificate_size, "certificate",
                                   aligned=True))
        _no_overlap(outputs + [(op.nonce_gpa, op.nonce_gpa + p.NONCE_SIZE, "nonce"),
                               (op_gpa, op_gpa + op_size, "operation")])
        nonce = memory.read(op.nonce_gpa, p.NONCE_SIZE)
        for start, end, _ in outputs:
            memory.check(start, end - start)
        evidence = await self._evidence(nonce, manifest, version)
        certs = (evidence.cert_table or b"") if op.certificate_size else b""
        params.rcx, params.rdx, params.r8 = len(manifest), len(certs), len(evidence.report)
        if (len(manifest) > op.manifest_size or len(evidence.report) > op.report_size
                or len(certs) > op.certificate_size):
            raise SvsmCallError(p.INVALID_PARAMETER, "buffers too small")
        memory.write(op.report_gpa, evidence.report)
        memory.write(op.manifest_gpa, manifest)
        if certs:
            memory.write(op.certificate_gpa, certs)

    async def _evidence(self, nonce, manifest, version):
        """A VMPL 0 report with REPORT_DATA = SHA-512(nonce || manifest), from a worker
        thread (the provider blocks). A provider failure is the SVSM's failed guest request:
        INVALID_REQUEST."""
        from ..modes.identity import report_data

        def get():
            if version is None:         # the services manifest is not one of the anchor's
                return self.anchor.provider.report(report_data(nonce, manifest), vmpl=0)
            return self.anchor.attest(nonce, version, vmpl=0)[0]
        try:
            return await trio.to_thread.run_sync(get)
        except Exception as e:
            log.warning("SVSM attestation: the report provider failed: %s", e)
            raise SvsmCallError(p.INVALID_REQUEST, "no report") from None


class SvsmPort:
    """One guest connection on an SVSM socket: frames in, frames out (docs/svsm.md)."""

    def __init__(self, host):
        self.host = host
        self.service = SvsmService(host)

    async def __call__(self, stream):
        reader = MessageReader(stream, self.host.stall_timeout)
        try:
            while await reader.begin():
                registers, pages = await read_request(reader)
                memory = GuestMemory(pages)
                result = await self.service.call(registers, memory)
                await stream.send_all(p.encode_frame(p.REPLY_HEAD, result, memory.written()))
        except (Truncated, p.FrameError) as e:
            log.debug("SVSM connection closed: %s", e)


async def read_request(reader):
    """((RAX, RCX, RDX, R8, R9), {gpa: page}) of the next request frame, or FrameError."""
    magic, count, *registers = p.REQUEST_HEAD.unpack(await reader.read(p.REQUEST_HEAD.size))
    p.check_head(magic, count)
    pages = {}
    for _ in range(count):
        (gpa,) = p.PAGE_ENTRY.unpack(await reader.read(p.PAGE_ENTRY.size))
        p.check_page(gpa, pages)
        pages[gpa] = await reader.read(p.PAGE_SIZE)
    return tuple(registers), pages
