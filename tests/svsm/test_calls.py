"""Every SVSM call and every result code, from the guest client and from raw frames, against
a real `ctpm run --mode svsm` process."""
import hashlib
import os
import socket
import struct

import pytest

from ctpm.svsm import client as c
from ctpm.svsm import protocol as p
from ctpm.svsm.client import SvsmClient, request_frame

STARTUP = bytes.fromhex("80010000000c000001440000")
GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")
VTPM_CMD = p.rax(p.PROTOCOL_VTPM, p.VTPM_CMD)
SINGLE = p.rax(p.PROTOCOL_ATTEST, p.ATTEST_SINGLE_SERVICE)
SERVICES = p.rax(p.PROTOCOL_ATTEST, p.ATTEST_SERVICES)
EK_MANIFEST_SIZE = 314          # TPMT_PUBLIC of an RSA-2048 EK (template L-1)


@pytest.fixture
def guest(svsm):
    with SvsmClient(svsm.path) as client:
        yield client


def rc_of(response: bytes) -> int:
    return struct.unpack(">I", response[6:10])[0]


# -- CORE and probing -------------------------------------------------------------------------

def test_probe_as_tpm_svsm_does(guest):
    assert guest.probe()
    assert guest.vtpm_query() == (0x100, 0)


@pytest.mark.parametrize("protocol", [p.PROTOCOL_CORE, p.PROTOCOL_ATTEST, p.PROTOCOL_VTPM])
def test_query_protocol(guest, protocol):
    assert guest.query_protocol(protocol, 1) == (1, 1)
    assert guest.query_protocol(protocol, 2) is None
    assert guest.query_protocol(protocol, 0) is None


def test_query_protocol_of_an_unknown_protocol_is_zero(guest):
    reply = guest.call(p.rax(p.PROTOCOL_CORE, p.CORE_QUERY_PROTOCOL), 9 << 32 | 1)
    assert (reply.rax, reply.rcx) == (p.SUCCESS, 0)


@pytest.mark.parametrize("rax, code", [
    (p.rax(3, 0), p.UNSUPPORTED_PROTOCOL),               # not a protocol ctpm serves
    (p.rax(0xFFFFFFFF, 1), p.UNSUPPORTED_PROTOCOL),
    (p.rax(p.PROTOCOL_CORE, 0), p.UNSUPPORTED_CALL),      # REMAP_CA: not modelled
    (p.rax(p.PROTOCOL_CORE, 99), p.UNSUPPORTED_CALL),
    (p.rax(p.PROTOCOL_VTPM, 2), p.UNSUPPORTED_CALL),
    (p.rax(p.PROTOCOL_ATTEST, 2), p.UNSUPPORTED_CALL),
])
def test_unknown_protocol_or_call(guest, rax, code):
    reply = guest.call(rax, 0x1234, 0x5678, 0x9ABC)
    assert reply.rax == code
    assert (reply.rcx, reply.rdx, reply.r8) == (0x1234, 0x5678, 0x9ABC)   # untouched
    assert reply.pages == {}


# -- vTPM CMD -----------------------------------------------------------------------------

def test_send_command(guest):
    assert rc_of(guest.send_command(STARTUP)) in (0, 0x100)      # 0x100: already started
    response = guest.send_command(GET_RANDOM_8)
    assert rc_of(response) == 0 and len(response) == 10 + 2 + 8


def test_the_svsm_writes_the_response_into_the_same_page(guest):
    page = p.encode_send_command(GET_RANDOM_8)
    reply = guest.call(VTPM_CMD, 0x7000, pages={0x7000: page, 0x8000: b"\xAA" * 4096})
    assert reply.rax == p.SUCCESS and set(reply.pages) == {0x7000}
    out = reply.pages[0x7000]
    size = struct.unpack_from("<I", out)[0]
    assert size == 20 and rc_of(out[4:4 + size]) == 0


def test_an_unaligned_buffer_may_span_two_pages(guest):
    gpa = 0x9000 + 0x800
    buffer = p.encode_send_command(GET_RANDOM_8)
    memory = c.GuestPages()
    memory.place(0x9000, bytes(0x800) + buffer[:0x800])
    memory.place(0xA000, buffer[0x800:])
    reply = guest.call(VTPM_CMD, gpa, pages=memory.pages)
    assert reply.rax == p.SUCCESS and set(reply.pages) == {0x9000, 0xA000}
    first = memory.pages[0x9000]
    memory.pages.update(reply.pages)
    assert rc_of(p.decode_send_response(memory.read(gpa, 4096))) == 0
    # the second page missing: not guest memory of this call
    reply = guest.call(VTPM_CMD, gpa, pages={0x9000: first})
    assert reply.rax == p.INVALID_ADDRESS and reply.pages == {}


def raw_buffer(command=8, locality=0, size=None, body=GET_RANDOM_8):
    head = struct.pack("<IBI", command, locality, len(body) if size is None else size)
    return (head + body).ljust(4096, b"\0")[:4096]


@pytest.mark.parametrize("buffer, code", [
    (raw_buffer(command=1), p.UNSUPPORTED_CALL),          # POWER_ON: known, not served
    (raw_buffer(command=2), p.UNSUPPORTED_CALL),          # POWER_OFF
    (raw_buffer(command=17), p.UNSUPPORTED_CALL),         # RESET
    (raw_buffer(command=0), p.INVALID_PARAMETER),         # no such platform command
    (raw_buffer(command=99), p.INVALID_PARAMETER),
    (raw_buffer(locality=1), p.INVALID_PARAMETER),        # locality must be 0
    (raw_buffer(locality=4), p.INVALID_PARAMETER),
    (raw_buffer(size=4088), p.INVALID_PARAMETER),         # more than the page holds
    (raw_buffer(size=0xFFFFFFFF), p.INVALID_PARAMETER),
])
def test_vtpm_cmd_refusals(guest, buffer, code):
    reply = guest.call(VTPM_CMD, 0x4000, pages={0x4000: buffer})
    assert reply.rax == code
    assert reply.pages == {}                              # nothing written


def test_vtpm_cmd_addresses(guest):
    buffer = raw_buffer()
    assert guest.call(VTPM_CMD, 0, pages={0: buffer}).rax == p.INVALID_PARAMETER   # null
    assert guest.call(VTPM_CMD, 0x5000, pages={0x4000: buffer}).rax == p.INVALID_ADDRESS
    assert guest.call(VTPM_CMD, 0x5000).rax == p.INVALID_ADDRESS
    assert guest.call(VTPM_CMD, (1 << 52) - 8).rax == p.INVALID_ADDRESS


def test_the_largest_command_reaches_the_tpm(guest):
    """4087 bytes fit; the TPM itself judges them (here: a header that lies about its
    size gets TPM_RC_COMMAND_SIZE back, in the buffer, with RAX SUCCESS)."""
    body = struct.pack(">HII", 0x8001, 12, 0x17B) + bytes(4077)
    reply = guest.call(VTPM_CMD, 0x4000, pages={0x4000: raw_buffer(body=body)})
    assert reply.rax == p.SUCCESS
    assert rc_of(p.decode_send_response(reply.pages[0x4000])) == 0x142


def test_an_empty_command_gets_a_tpm_error_not_a_crash(guest):
    reply = guest.call(VTPM_CMD, 0x4000, pages={0x4000: raw_buffer(body=b"")})
    assert reply.rax == p.SUCCESS
    assert rc_of(p.decode_send_response(reply.pages[0x4000])) == 0x142


# -- ATTEST ---------------------------------------------------------------------------------

NONCE = bytes(range(64))
OP, NONCE_GPA, REPORT, MANIFEST, CERTS = 0x1000, 0x2000, 0x10000, 0x20000, 0x30000


def attest_memory(op: bytes, *, report_size=4096, manifest_size=4096, cert_size=8192,
                  nonce_gpa=NONCE_GPA):
    memory = c.GuestPages()
    memory.place(OP, op)
    memory.place(nonce_gpa - nonce_gpa % 4096, bytes(nonce_gpa % 4096) + NONCE)
    memory.place(REPORT, b"", report_size)
    memory.place(MANIFEST, b"", manifest_size)
    if cert_size:
        memory.place(CERTS, b"", cert_size)
    return memory


def single_op(**overrides):
    fields = dict(report_gpa=REPORT, report_size=4096, nonce_gpa=NONCE_GPA,
                  manifest_gpa=MANIFEST, manifest_size=4096, certificate_gpa=CERTS,
                  certificate_size=8192, manifest_version=0)
    fields.update(overrides)
    return p.encode_single_service_op(**fields)


def test_single_service_success_writes_report_manifest_certificates(guest):
    memory = attest_memory(single_op())
    reply = guest.call(SINGLE, OP, pages=memory.pages)
    assert reply.rax == p.SUCCESS
    assert reply.rcx == EK_MANIFEST_SIZE and reply.r8 == 1184 and reply.rdx > 0
    memory.pages.update(reply.pages)
    report = memory.read(REPORT, reply.r8)
    assert struct.unpack_from("<I", report, 0x30)[0] == 0              # VMPL 0
    assert not any(memory.read(CERTS + reply.rdx, 16))                  # nothing beyond
    assert set(reply.pages) <= set(memory.pages)


def test_no_certificate_buffer_no_certificates(guest):
    memory = attest_memory(single_op(certificate_gpa=0, certificate_size=0), cert_size=0)
    reply = guest.call(SINGLE, OP, pages=memory.pages)
    assert reply.rax == p.SUCCESS and reply.rdx == 0


@pytest.mark.parametrize("sizes", [dict(report_size=1000), dict(manifest_size=100),
                                   dict(certificate_size=4096)])
def test_too_small_names_the_sizes_and_writes_nothing(guest, sizes):
    memory = attest_memory(single_op(**sizes))
    reply = guest.call(SINGLE, OP, pages=memory.pages)
    assert reply.rax == p.INVALID_PARAMETER
    assert reply.rcx == EK_MANIFEST_SIZE and reply.r8 == 1184 and reply.rdx > 4096
    assert reply.pages == {}


def test_the_client_retries_with_the_sizes_named(guest):
    got = guest.attest_vtpm(NONCE, 1, report_size=16, manifest_size=16, certificate_size=16)
    assert len(got.report) == 1184 and got.manifest.startswith(b"CTPMMANI")
    assert len(got.cert_table) > 4096
    with pytest.raises(c.ProtocolError):
        guest.attest_vtpm(NONCE, 0, report_size=16, retries=0)


@pytest.mark.parametrize("op, code", [
    (single_op(nonce_size=32), p.INVALID_PARAMETER),
    (single_op(nonce_size=0), p.INVALID_PARAMETER),
    (single_op(manifest_version=2), p.INVALID_PARAMETER),
    (single_op(manifest_version=0xFFFFFFFF), p.INVALID_PARAMETER),
    (single_op(reserved=b"\x01"), p.INVALID_PARAMETER),
    (single_op(reserved_54=b"\0\0\0\x01"), p.INVALID_PARAMETER),
    (single_op(guid=p.SERVICES_MANIFEST_GUID), p.UNSUPPORTED_PROTOCOL),   # no such service
    (single_op(report_gpa=REPORT + 8), p.INVALID_PARAMETER),            # not page aligned
    (single_op(manifest_gpa=MANIFEST + 0x100), p.INVALID_PARAMETER),
    (single_op(certificate_gpa=CERTS + 1), p.INVALID_PARAMETER),
    (single_op(manifest_gpa=REPORT), p.INVALID_PARAMETER),               # overlapping
    (single_op(certificate_gpa=MANIFEST - 4096), p.INVALID_PARAMETER),
    (single_op(report_gpa=OP), p.INVALID_PARAMETER),                    # over the operation
    (single_op(nonce_gpa=NONCE_GPA + 4096 - 32), p.INVALID_PARAMETER),  # nonce crosses a page
    (single_op(report_gpa=0x80000), p.INVALID_ADDRESS),                 # not sent
    (single_op(report_size=8192), p.INVALID_ADDRESS),                   # half of it not sent
    (single_op(nonce_gpa=0x90000), p.INVALID_ADDRESS),
])
def test_single_service_refusals(guest, op, code):
    reply = guest.call(SINGLE, OP, pages=attest_memory(op).pages)
    assert reply.rax == code, p.result_name(reply.rax)
    assert reply.pages == {}


def test_reserved_fields_each(guest):
    good = single_op()
    for offset in (0x0C, 0x0F, 0x1A, 0x1F, 0x2C, 0x3C, 0x54, 0x57):
        op = bytearray(good)
        op[offset] = 0x80
        reply = guest.call(SINGLE, OP, pages=attest_memory(bytes(op)).pages)
        assert reply.rax == p.INVALID_PARAMETER, hex(offset)


def test_operation_address(guest):
    memory = attest_memory(single_op())
    assert guest.call(SINGLE, 0x70000, pages=memory.pages).rax == p.INVALID_ADDRESS
    # the operation may straddle two pages when both are sent
    memory = attest_memory(b"")
    memory.place(0x70000, bytes(4096 - 0x20) + single_op()[:0x20])
    memory.place(0x71000, single_op()[0x20:])
    assert guest.call(SINGLE, 0x71000 - 0x20, pages=memory.pages).rax == p.SUCCESS
    del memory.pages[0x71000]
    assert guest.call(SINGLE, 0x71000 - 0x20, pages=memory.pages).rax == p.INVALID_ADDRESS


def test_services_call(guest):
    op = p.encode_services_op(report_gpa=REPORT, report_size=4096, nonce_gpa=NONCE_GPA,
                              manifest_gpa=MANIFEST, manifest_size=4096)
    memory = attest_memory(op, cert_size=0)
    reply = guest.call(SERVICES, OP, pages=memory.pages)
    assert reply.rax == p.SUCCESS and reply.rcx == 24 + 24 + EK_MANIFEST_SIZE
    bad = p.encode_services_op(report_gpa=REPORT, report_size=4096, nonce_gpa=NONCE_GPA,
                               nonce_size=63, manifest_gpa=MANIFEST, manifest_size=4096)
    assert guest.call(SERVICES, OP, pages=attest_memory(bad).pages).rax == p.INVALID_PARAMETER
    small = p.encode_services_op(report_gpa=REPORT, report_size=4096, nonce_gpa=NONCE_GPA,
                                 manifest_gpa=MANIFEST, manifest_size=300)
    reply = guest.call(SERVICES, OP, pages=attest_memory(small).pages)
    assert (reply.rax, reply.rcx) == (p.INVALID_PARAMETER, 362)


# -- malformed frames: the connection closes, the daemon serves on ---------------------------

def closed_after(path, data: bytes) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return s.recv(100) == b""


GOOD = request_frame(p.rax(p.PROTOCOL_VTPM, p.VTPM_QUERY))


@pytest.mark.parametrize("data", [
    b"MSSM" + GOOD[4:],                                               # bad magic
    b"\x00\x00\x00\x08" + bytes(60),                                  # an mssim client
    GOOD[:4] + struct.pack("<I", 257) + GOOD[8:],                     # too many pages
    GOOD[:4] + struct.pack("<I", 1) + GOOD[8:] + struct.pack("<Q", 0x1001) + bytes(4096),
    GOOD[:4] + struct.pack("<I", 1) + GOOD[8:] + struct.pack("<Q", 1 << 52) + bytes(4096),
    GOOD[:4] + struct.pack("<I", 2) + GOOD[8:] + (struct.pack("<Q", 0x1000) + bytes(4096)) * 2,
    GOOD[:20],                                                        # truncated header
    GOOD[:4] + struct.pack("<I", 1) + GOOD[8:] + struct.pack("<Q", 0x1000) + bytes(100),
    os.urandom(48),
])
def test_malformed_frames_close_the_connection(svsm, data):
    assert closed_after(svsm.path, data)
    with SvsmClient(svsm.path) as client:                            # still serving
        assert client.vtpm_query() == (0x100, 0)
    assert svsm.daemon.proc.poll() is None
    assert "Traceback" not in svsm.daemon.stderr()


def test_a_good_frame_after_a_bad_one_on_another_connection_and_pipelining(svsm):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(svsm.path)
        s.sendall(GOOD * 3)                  # three calls in one write: three replies
        data = b""
        while len(data) < 3 * p.REPLY_HEAD.size:
            data += s.recv(4096)
        for i in range(3):
            assert p.REPLY_HEAD.unpack_from(data, i * p.REPLY_HEAD.size)[2:4] == (0, 0x100)


# -- the listener --------------------------------------------------------------------------

def test_ready_line_and_socket_mode(svsm):
    assert f"svsm=unix:{svsm.path}" in svsm.daemon.ready_line.split()
    assert os.stat(svsm.path).st_mode & 0o777 == 0o600


def test_vcpus_in_parallel(svsm):
    """Several connections (vCPUs) at once: commands and attestations interleave, each
    answered whole and right."""
    from concurrent.futures import ThreadPoolExecutor

    def commands(_):
        with SvsmClient(svsm.path) as guest:
            return [rc_of(guest.send_command(GET_RANDOM_8)) for _ in range(50)]

    def attest(i):
        nonce = bytes([i]) * 64
        with SvsmClient(svsm.path) as guest:
            got = guest.attest_vtpm(nonce, i % 2)
        return got.report[0x50:0x90] == hashlib.sha512(nonce + got.manifest).digest()

    with SvsmClient(svsm.path) as guest:
        rc_of(guest.send_command(STARTUP))
    with ThreadPoolExecutor(6) as pool:
        rcs = list(pool.map(commands, range(3)))
        oks = list(pool.map(attest, range(6)))
    assert rcs == [[0] * 50] * 3 and all(oks)


def test_a_stalled_frame_is_given_up(svsm):
    """Half a frame, then silence: closed after the stall timeout (1 s here), not held."""
    import time
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(svsm.path)
        s.sendall(GOOD[:30])
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert 0.5 < time.monotonic() - t0 < 5
