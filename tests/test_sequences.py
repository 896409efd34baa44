"""Hash, HMAC and event sequences (Part 3 §17), checked against hashlib/hmac and swtpm."""
import hashlib
import hmac
import struct

import pytest

from tests.peers import Swtpm, needs_swtpm
from tests.test_objects import create, load, primary_public, create_primary, split_create, started
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, params, pcr_select, pw_session, rc, u16, u32

SHA1, SHA256, NULL = 0x04, 0x0B, 0x10
PW = [pw_session()]


def start(alg=SHA256, auth=b""):
    return cmd(0x186, b2(auth) + u16(alg))


def update(seq, data, auth=b""):
    return cmd(0x15C, b2(data), handles=[seq], sessions=[pw_session(auth)])


def complete(seq, data, hierarchy=0x40000001, auth=b""):
    return cmd(0x13E, b2(data) + u32(hierarchy), handles=[seq], sessions=[pw_session(auth)])


def handle_of(rsp):
    assert rc(rsp) == 0, hex(rc(rsp))
    return struct.unpack(">I", rsp[10:14])[0]


def test_hash_sequence_with_ticket_and_auth():
    tpm = started()
    seq = handle_of(tpm.execute(start(auth=b"sequence pw")))
    assert rc(tpm.execute(update(seq, b"a" * 1024, b"sequence pw"))) == 0
    assert rc(tpm.execute(update(seq, b"b", b"wrong"))) == 0x9A2       # BAD_AUTH (noDA), S1
    r = tpm.execute(complete(seq, b"c" * 10, auth=b"sequence pw"))
    body = params(r)
    assert body[2:34] == hashlib.sha256(b"a" * 1024 + b"c" * 10).digest()
    assert struct.unpack(">HIH", body[34:42]) == (0x8024, 0x40000001, 64)
    assert rc(tpm.execute(update(seq, b"x"))) == 0x910                  # gone: REFERENCE_H0


def test_no_ticket_for_data_that_looks_tpm_generated():
    tpm = started()
    seq = handle_of(tpm.execute(start()))
    tpm.execute(update(seq, b"\xffTCG" + b"x" * 10))
    body = params(tpm.execute(complete(seq, b"")))
    assert struct.unpack(">HIH", body[34:42]) == (0x8024, 0x40000007, 0)


def test_hmac_sequence_matches_hmac():
    tpm = started()
    parent, _ = primary_public(tpm.execute(create_primary()))
    key = b"k" * 32
    # keyedhash HMAC key with the key material given: sign|userWithAuth|fixedTPM|fixedParent
    from tests.test_objects import template, sensitive_create
    tmpl = bytearray(template("hmac", objectAttributes=0x40052))
    private, public = split_create(tpm.execute(create(parent, bytes(tmpl),
                                                      sensitive_create(b"", key))))
    k = handle_of(tpm.execute(load(parent, private, public)))
    seq = handle_of(tpm.execute(cmd(0x15B, b2(b"") + u16(NULL), handles=[k], sessions=PW)))
    tpm.execute(update(seq, b"message "))
    body = params(tpm.execute(complete(seq, b"body")))
    assert body[2:34] == hmac.new(key, b"message body", "sha256").digest()
    assert struct.unpack(">HIH", body[34:42]) == (0x8024, 0x40000007, 0)
    assert rc(tpm.execute(cmd(0x15B, b2(b"") + u16(SHA1), handles=[k], sessions=PW))) == 0x2C4
    assert rc(tpm.execute(cmd(0x15B, b2(b"") + u16(NULL), handles=[parent],
                              sessions=PW))) == 0x18A                  # TYPE, handle 1


def test_event_sequence_extends_every_bank():
    tpm = started()
    seq = handle_of(tpm.execute(start(NULL)))
    tpm.execute(update(seq, b"event "))
    r = tpm.execute(cmd(0x185, b2(b"log"), handles=[14, seq], sessions=PW + PW))
    assert rc(r) == 0
    digests = params(r)
    assert struct.unpack(">I", digests[:4])[0] == 4
    assert digests[6:26] == hashlib.sha1(b"event log").digest()
    pcr = params(tpm.execute(cmd(0x17E, pcr_select((SHA256, [14])))))[-32:]
    assert pcr == hashlib.sha256(bytes(32) + hashlib.sha256(b"event log").digest()).digest()


@needs_swtpm
@pytest.mark.swtpm
def test_sequence_errors_as_swtpm():
    ours = started()
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        seqs = [handle_of(t(start())) for t in (ours.execute, sw.execute)]
        events = [handle_of(t(start(NULL))) for t in (ours.execute, sw.execute)]
        assert seqs[0] == seqs[1] and events[0] == events[1]
        steps = [cmd(0x185, b2(b""), handles=[14, seqs[0]], sessions=PW + PW),   # not event
                 complete(events[0], b""),                                       # not hash
                 start(0x27),                                                    # bad hash
                 update(seqs[0], b"x" * 1025),                                   # too long
                 complete(seqs[0], b"", hierarchy=0x40000002),                   # bad hierarchy
                 complete(seqs[0], b""),
                 complete(seqs[0], b"")]                                          # gone
        codes = [(rc(ours.execute(c)), rc(sw.execute(c))) for c in steps]
        assert [a for a, _ in codes] == [b for _, b in codes], [(hex(a), hex(b)) for a, b in codes]
    finally:
        sw.close()
