"""The guest side of the SVSM protocols: what Linux's tpm_svsm driver and configfs-tsm do.

* `probe()`: CORE QUERY_PROTOCOL for vTPM v1 and ATTEST v1, then VTPM QUERY: bit 8
  (TPM_SEND_COMMAND) must be set and the features zero (tpm_svsm refuses otherwise);
* `send_command(command)`: TPM_SEND_COMMAND through one 4096-byte page whose GPA goes in RCX;
* `attest_vtpm(nonce, manifest_version)`: ATTEST SINGLE_SERVICE for the vTPM GUID, and
  `attest_services(nonce)`: ATTEST SERVICES; both start with guest buffers of a page each
  and, on INVALID_PARAMETER with larger sizes in RCX/RDX/R8, retry with buffers of those
  sizes (as the kernel's SVSM attestation path does).

The guest's memory is modelled by `GuestPages`: buffers at fixed, page-aligned GPAs; each
call sends the pages it refers to and takes back the pages the SVSM wrote (docs/svsm.md).
The protocol logic is written once as generators that yield request frames and receive
reply frames; `SvsmClient` drives them over a blocking socket, `AsyncSvsmClient` over trio.
"""
import socket
import struct
from dataclasses import dataclass

from . import protocol as p
from .protocol import SvsmCallError

# where the client places its buffers in its model of guest memory (any page-aligned GPAs do)
VTPM_BUFFER_GPA = 0x10_0000
OP_GPA = 0x20_0000
NONCE_GPA = 0x20_1000
REPORT_GPA = 0x30_0000
MANIFEST_GPA = 0x40_0000
CERTIFICATE_GPA = 0x50_0000
RETRIES = 3


class ProtocolError(Exception):
    """The SVSM answered something a guest cannot use (a malformed reply)."""


@dataclass(frozen=True)
class Reply:
    rax: int
    rcx: int
    rdx: int
    r8: int
    pages: dict


@dataclass(frozen=True)
class ServiceAttestation:
    """What configfs-tsm's outblob, manifestblob and auxblob give a guest."""

    report: bytes
    manifest: bytes
    cert_table: bytes
    manifest_version: int | None         # None: the services manifest (SERVICES call)
    nonce: bytes


class GuestPages:
    """A guest's buffers: {gpa: bytes}, each starting page-aligned and padded to whole
    pages when sent."""

    def __init__(self):
        self.pages = {}

    def place(self, gpa: int, data: bytes, size: int | None = None):
        size = len(data) if size is None else size
        data = bytes(data).ljust(size, b"\0")
        for off in range(0, max(size, 1), p.PAGE_SIZE):
            self.pages[gpa + off] = data[off:off + p.PAGE_SIZE].ljust(p.PAGE_SIZE, b"\0")

    def read(self, gpa: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            page = gpa - gpa % p.PAGE_SIZE
            off = gpa - page
            chunk = self.pages[page][off:off + size - len(out)]
            out += chunk
            gpa += len(chunk)
        return bytes(out)


def request_frame(rax, rcx=0, rdx=0, r8=0, r9=0, pages=None) -> bytes:
    return p.encode_frame(p.REQUEST_HEAD, (rax, rcx, rdx, r8, r9), pages or {})


def parse_reply(data: bytes, pages_in: dict) -> Reply:
    """A reply frame (complete) -> Reply; its pages must be pages the guest sent."""
    if len(data) < p.REPLY_HEAD.size:
        raise ProtocolError("short reply")
    magic, count, rax, rcx, rdx, r8 = p.REPLY_HEAD.unpack_from(data)
    if magic != p.FRAME_MAGIC:
        raise ProtocolError("bad reply magic")
    pages, pos = {}, p.REPLY_HEAD.size
    for _ in range(count):
        (gpa,) = p.PAGE_ENTRY.unpack_from(data, pos)
        pos += p.PAGE_ENTRY.size
        if gpa not in pages_in:
            raise ProtocolError(f"the SVSM wrote page {gpa:#x}, which was not sent")
        pages[gpa] = data[pos:pos + p.PAGE_SIZE]
        pos += p.PAGE_SIZE
    if pos != len(data):
        raise ProtocolError("reply length does not match its page count")
    return Reply(rax, rcx, rdx, r8, pages)


def reply_length(head: bytes) -> int:
    """The whole reply's length from its first REPLY_HEAD.size bytes."""
    count = struct.unpack_from("<I", head, 4)[0]
    if head[:4] != p.FRAME_MAGIC or count > p.MAX_PAGES:
        raise ProtocolError("bad reply header")
    return p.REPLY_HEAD.size + count * (p.PAGE_ENTRY.size + p.PAGE_SIZE)


# -- the protocol logic, as generators: yield (frame, pages sent), receive Reply ----------

def _call(rax, rcx=0, rdx=0, r8=0, r9=0, pages=None):
    reply = yield request_frame(rax, rcx, rdx, r8, r9, pages), (pages or {})
    return reply


def _checked(reply: Reply, what: str) -> Reply:
    if reply.rax != p.SUCCESS:
        raise SvsmCallError(reply.rax, what, (reply.rcx, reply.rdx, reply.r8))
    return reply


def query_protocol_gen(protocol: int, version: int):
    """(min, max) the SVSM serves of `protocol` if it serves `version`, else None."""
    reply = _checked((yield from _call(p.rax(p.PROTOCOL_CORE, p.CORE_QUERY_PROTOCOL),
                                       protocol << 32 | version)), "QUERY_PROTOCOL")
    if reply.rcx == 0:
        return None
    return reply.rcx & 0xFFFF_FFFF, reply.rcx >> 32


def vtpm_query_gen():
    """(platform command bitmap, features)."""
    reply = _checked((yield from _call(p.rax(p.PROTOCOL_VTPM, p.VTPM_QUERY))), "VTPM QUERY")
    return reply.rcx, reply.rdx


def probe_gen():
    """True if the SVSM offers what tpm_svsm and the SVSM attestation path need."""
    for protocol in (p.PROTOCOL_VTPM, p.PROTOCOL_ATTEST):
        if (yield from query_protocol_gen(protocol, 1)) is None:
            return False
    bitmap, features = yield from vtpm_query_gen()
    return bool(bitmap & (1 << p.PLATFORM_SEND_COMMAND)) and features == 0


def send_command_gen(command: bytes, gpa: int = VTPM_BUFFER_GPA):
    page = p.encode_send_command(command)
    reply = _checked((yield from _call(p.rax(p.PROTOCOL_VTPM, p.VTPM_CMD), gpa,
                                       pages={gpa: page})), "VTPM CMD")
    if gpa not in reply.pages:
        raise ProtocolError("the SVSM did not write the vTPM buffer")
    try:
        return p.decode_send_response(reply.pages[gpa])
    except ValueError as e:
        raise ProtocolError(str(e)) from None


def attest_gen(nonce: bytes, manifest_version: int | None = 0, *,
               report_size: int = p.PAGE_SIZE, manifest_size: int = p.PAGE_SIZE,
               certificate_size: int = p.PAGE_SIZE, retries: int = RETRIES):
    """ATTEST SINGLE_SERVICE (vTPM) for `manifest_version`, or SERVICES when it is None;
    retried with the sizes the SVSM names when the buffers are too small."""
    if len(nonce) != p.NONCE_SIZE:
        raise ValueError(f"the nonce is {p.NONCE_SIZE} bytes")
    for _ in range(retries + 1):
        fields = dict(report_gpa=REPORT_GPA, report_size=report_size, nonce_gpa=NONCE_GPA,
                      manifest_gpa=MANIFEST_GPA, manifest_size=manifest_size,
                      certificate_gpa=CERTIFICATE_GPA if certificate_size else 0,
                      certificate_size=certificate_size)
        if manifest_version is None:
            op, call = p.encode_services_op(**fields), p.ATTEST_SERVICES
        else:
            op = p.encode_single_service_op(manifest_version=manifest_version, **fields)
            call = p.ATTEST_SINGLE_SERVICE
        memory = GuestPages()
        memory.place(OP_GPA, op)
        memory.place(NONCE_GPA, nonce)
        memory.place(REPORT_GPA, b"", report_size)
        memory.place(MANIFEST_GPA, b"", manifest_size)
        if certificate_size:
            memory.place(CERTIFICATE_GPA, b"", certificate_size)
        reply = yield from _call(p.rax(p.PROTOCOL_ATTEST, call), OP_GPA, pages=memory.pages)
        if (reply.rax == p.INVALID_PARAMETER
                and (reply.rcx > manifest_size or reply.r8 > report_size
                     or (certificate_size and reply.rdx > certificate_size))):
            manifest_size = max(manifest_size, reply.rcx)
            report_size = max(report_size, reply.r8)
            if certificate_size:
                certificate_size = max(certificate_size, reply.rdx)
            continue
        _checked(reply, "ATTEST")
        memory.pages.update(reply.pages)
        if reply.rcx > manifest_size or reply.r8 > report_size or reply.rdx > certificate_size:
            raise ProtocolError("the SVSM claims more than the buffers hold")
        return ServiceAttestation(report=memory.read(REPORT_GPA, reply.r8),
                                  manifest=memory.read(MANIFEST_GPA, reply.rcx),
                                  cert_table=(memory.read(CERTIFICATE_GPA, reply.rdx)
                                              if reply.rdx else b""),
                                  manifest_version=manifest_version, nonce=bytes(nonce))
    raise ProtocolError(f"buffers still too small after {retries} retries")


# -- drivers ---------------------------------------------------------------------------------

class SvsmClient:
    """A guest's SVSM calls over a blocking unix socket (one connection = one vCPU)."""

    def __init__(self, path: str, timeout: float | None = 30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the SVSM closed the connection")
            data += chunk
        return bytes(data)

    def transact(self, frame: bytes) -> bytes:
        """Send one request frame, return the whole reply frame (raw: tests use it)."""
        self.sock.sendall(frame)
        head = self._recv_exact(p.REPLY_HEAD.size)
        return head + self._recv_exact(reply_length(head) - len(head))

    def _run(self, gen):
        try:
            frame, pages = next(gen)
            while True:
                frame, pages = gen.send(parse_reply(self.transact(frame), pages))
        except StopIteration as stop:
            return stop.value

    def call(self, rax, rcx=0, rdx=0, r8=0, r9=0, pages=None) -> Reply:
        """One raw call; the reply whatever its RAX."""
        return self._run(_call(rax, rcx, rdx, r8, r9, pages))

    def query_protocol(self, protocol, version):
        return self._run(query_protocol_gen(protocol, version))

    def vtpm_query(self):
        return self._run(vtpm_query_gen())

    def probe(self) -> bool:
        return self._run(probe_gen())

    def send_command(self, command: bytes) -> bytes:
        return self._run(send_command_gen(command))

    def attest_vtpm(self, nonce: bytes, manifest_version: int = 0, **sizes):
        return self._run(attest_gen(nonce, manifest_version, **sizes))

    def attest_services(self, nonce: bytes, **sizes):
        return self._run(attest_gen(nonce, None, **sizes))


class AsyncSvsmClient:
    """The same calls over a trio unix-socket stream (the svsm-bridge uses this)."""

    def __init__(self, stream):
        self.stream = stream
        self._buf = bytearray()

    @classmethod
    async def connect(cls, path: str):
        import trio
        return cls(await trio.open_unix_socket(path))

    async def aclose(self):
        await self.stream.aclose()

    async def _recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("the SVSM closed the connection")
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def transact(self, frame: bytes) -> bytes:
        await self.stream.send_all(frame)
        head = await self._recv_exact(p.REPLY_HEAD.size)
        return head + await self._recv_exact(reply_length(head) - len(head))

    async def _run(self, gen):
        try:
            frame, pages = next(gen)
            while True:
                frame, pages = gen.send(parse_reply(await self.transact(frame), pages))
        except StopIteration as stop:
            return stop.value

    async def probe(self) -> bool:
        return await self._run(probe_gen())

    async def send_command(self, command: bytes) -> bytes:
        return await self._run(send_command_gen(command))

    async def attest_vtpm(self, nonce: bytes, manifest_version: int = 0, **sizes):
        return await self._run(attest_gen(nonce, manifest_version, **sizes))
