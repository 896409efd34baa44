"""The SVSM wire structures, byte for byte against the facts of AMD 58019 as coconut-svsm and
Linux use them (../shared/specs/svsm-vtpm.md)."""
import struct
import uuid

import pytest

from ctpm.svsm import protocol as p


def test_guids_travel_mixed_endian():
    assert p.guid_wire(p.VTPM_SERVICE_GUID).hex() == "ebf176c42301a5459641b4e7dde5bfe3"
    assert p.guid_wire(p.SERVICES_MANIFEST_GUID).hex() == "bb9e8463923d7046a1ff58f9c94b87bb"
    assert p.guid_from_wire(bytes.fromhex("ebf176c42301a5459641b4e7dde5bfe3")) == \
        p.VTPM_SERVICE_GUID


def test_result_codes():
    assert (p.SUCCESS, p.INCOMPLETE, p.UNSUPPORTED_PROTOCOL, p.UNSUPPORTED_CALL,
            p.INVALID_ADDRESS, p.INVALID_FORMAT, p.INVALID_PARAMETER, p.INVALID_REQUEST,
            p.BUSY) == (0, 0x80000000, 0x80000001, 0x80000002, 0x80000003, 0x80000004,
                        0x80000005, 0x80000006, 0x80000007)
    assert p.result_name(0x80001002) == "PROTOCOL+0x2"
    assert p.rax(p.PROTOCOL_VTPM, p.VTPM_CMD) == 0x2_0000_0001


def test_vtpm_buffer_layout():
    assert p.platform_bitmap() == 0x100
    page = p.encode_send_command(b"\x80\x01" + bytes(8))
    assert len(page) == 4096
    assert page[:9] == struct.pack("<IBI", 8, 0, 10)
    assert page[9:19] == b"\x80\x01" + bytes(8) and not any(page[19:])
    assert len(p.encode_send_command(bytes(4087))) == 4096
    with pytest.raises(ValueError):
        p.encode_send_command(bytes(4088))
    response = struct.pack("<I", 3) + b"abc"
    assert p.decode_send_response(response.ljust(4096, b"\0")) == b"abc"
    with pytest.raises(ValueError):
        p.decode_send_response(struct.pack("<I", 4093).ljust(4096, b"\0"))


def test_attest_operation_layouts():
    assert p.ATTEST_SERVICES_OP_SIZE == 0x40 and p.ATTEST_SINGLE_SERVICE_OP_SIZE == 0x58
    op = p.encode_single_service_op(report_gpa=0x1000, report_size=0x2000, nonce_gpa=0x3008,
                                     manifest_gpa=0x4000, manifest_size=0x5000,
                                     certificate_gpa=0x6000, certificate_size=0x7000,
                                     manifest_version=1)
    assert struct.unpack_from("<Q", op, 0x00)[0] == 0x1000
    assert struct.unpack_from("<I", op, 0x08)[0] == 0x2000
    assert struct.unpack_from("<Q", op, 0x10)[0] == 0x3008
    assert struct.unpack_from("<H", op, 0x18)[0] == 64
    assert struct.unpack_from("<Q", op, 0x20)[0] == 0x4000
    assert struct.unpack_from("<I", op, 0x28)[0] == 0x5000
    assert struct.unpack_from("<Q", op, 0x30)[0] == 0x6000
    assert struct.unpack_from("<I", op, 0x38)[0] == 0x7000
    assert op[0x40:0x50].hex() == "ebf176c42301a5459641b4e7dde5bfe3"
    assert struct.unpack_from("<I", op, 0x50)[0] == 1
    for offset, size in ((0x0C, 4), (0x1A, 6), (0x2C, 4), (0x3C, 4), (0x54, 4)):
        assert op[offset:offset + size] == bytes(size)
    poisoned = p.encode_services_op(report_gpa=0, report_size=0, nonce_gpa=0, manifest_gpa=0,
                                    manifest_size=0, reserved=b"\xff")
    assert [poisoned[o] for o in (0x0C, 0x1A, 0x1F, 0x2C, 0x3C)] == [0xFF] * 5


def test_services_manifest_layout():
    ek = bytes(range(256)) + bytes(58)             # 314 bytes, as a TPMT_PUBLIC of an RSA EK
    manifest = p.encode_services_manifest([(p.VTPM_SERVICE_GUID, ek)])
    assert len(manifest) == 24 + 24 + 314 == 362
    assert manifest[:16].hex() == "bb9e8463923d7046a1ff58f9c94b87bb"
    assert struct.unpack_from("<II", manifest, 16) == (362, 1)
    assert manifest[24:40].hex() == "ebf176c42301a5459641b4e7dde5bfe3"
    assert struct.unpack_from("<II", manifest, 40) == (48, 314)
    assert manifest[48:] == ek
    assert p.decode_services_manifest(manifest) == {p.VTPM_SERVICE_GUID: ek}
    other = uuid.UUID(int=1)
    two = p.encode_services_manifest([(p.VTPM_SERVICE_GUID, ek), (other, b"xy")])
    assert p.decode_services_manifest(two) == {p.VTPM_SERVICE_GUID: ek, other: b"xy"}
    for broken in (manifest[:-1], b"\0" * 16 + manifest[16:], manifest[:20]):
        with pytest.raises(ValueError):
            p.decode_services_manifest(broken)


def test_frames():
    frame = p.encode_frame(p.REQUEST_HEAD, (1, 2, 3, 4, 5), {0x2000: bytes(4096),
                                                             0x1000: b"\1" * 4096})
    assert frame[:4] == b"SVSM" and struct.unpack_from("<I5Q", frame, 4) == (2, 1, 2, 3, 4, 5)
    assert struct.unpack_from("<Q", frame, 48)[0] == 0x1000        # pages in GPA order
    assert len(frame) == 48 + 2 * (8 + 4096)
    for bad in ({0x1001: bytes(4096)}, {1 << 52: bytes(4096)}, {0x1000: bytes(10)}):
        with pytest.raises(ValueError):
            p.encode_frame(p.REQUEST_HEAD, (0,) * 5, bad)


def test_the_fast_vtpm_header_is_the_declared_layout():
    for values in ((8, 0, 10), (1, 4, 4087), (0xFFFFFFFF, 255, 0xFFFFFFFF)):
        fields = dict(zip(("command", "locality", "size"), values))
        assert p.SEND_COMMAND_HEAD.pack(*values) == p.SEND_COMMAND_REQUEST.build(fields)
