"""TPM2_ContextSave / ContextLoad / FlushContext (Part 3 §28) byte by byte: objects and
sessions saved, flushed and loaded again, in memory and against swtpm (the same command
streams to both; every response code must agree). Sessions are driven by the independent
Part 1 client of test_sessions.py, so a session that comes back from a context must still
compute the HMACs that client expects."""
import dataclasses
import struct

import pytest

from ctpm.engine.subsystems import contexts as C
from ctpm.engine.config import EngineConfig
from ctpm.engine.tpm import Tpm
from ctpm.platform import Platform
from ctpm.state.store import DirStore
from tests.peers import Swtpm, needs_swtpm
from tests.test_sessions import Client, extend, start_session
from tests.tpmcmd import (SHUTDOWN_CLEAR, SHUTDOWN_STATE, STARTUP_CLEAR, STARTUP_STATE, b2, cmd,
                          params, pw_session, rc, u16, u32)

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tests.test_objects import (create, create_primary, load, sensitive_create,  # noqa: E402
                                split_create, template)

RH_OWNER, RH_ENDORSEMENT, RH_NULL = 0x40000001, 0x4000000B, 0x40000007
SE_POLICY = 1
STCLEAR = 0x00000004
CC_CONTEXT_SAVE, CC_CONTEXT_LOAD, CC_FLUSH = 0x162, 0x161, 0x165
SUCCESS, INTEGRITY_P1, HANDLE_P1, VALUE_P1 = 0, 0x1DF, 0x1CB, 0x1C4
SIZE_P1, INSUFFICIENT, OBJECT_MEMORY, SESSION_MEMORY = 0x1D5, 0x09A, 0x902, 0x903
REFERENCE_H0, REFERENCE_S0, HANDLE_H1, AUTH_CONTEXT = 0x910, 0x918, 0x18B, 0x145


def save(handle):
    return cmd(CC_CONTEXT_SAVE, handles=[handle])


def load_context(context):
    return cmd(CC_CONTEXT_LOAD, context)


def flush(handle):
    return cmd(CC_FLUSH, u32(handle))


def handle_of(rsp):
    return struct.unpack(">I", rsp[10:14])[0]


def split_context(ctx):
    """(sequence, savedHandle, hierarchy, blob) of a marshaled TPMS_CONTEXT."""
    seq, handle, hierarchy, size = struct.unpack(">QIIH", ctx[:18])
    assert len(ctx) == 18 + size
    return seq, handle, hierarchy, ctx[18:]


def with_template_attrs(tmpl, extra):
    attrs = struct.unpack(">I", tmpl[6:10])[0] | extra
    return tmpl[:6] + u32(attrs) + tmpl[10:]


def started(seed=b"context", store=None, **config):
    platform = Platform(store) if store is not None else None
    tpm = Tpm.manufacture(platform, seed=seed, config=EngineConfig(**config))
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    return tpm


def power_cycle(tpm):
    tpm.power_off()
    tpm.power_on()


def handles(execute, first):
    """GetCapability(HANDLES) from `first`."""
    body = params(execute(cmd(0x17A, u32(1) + u32(first) + u32(64))))
    count = struct.unpack(">I", body[5:9])[0]
    return [struct.unpack(">I", body[9 + 4 * i:13 + 4 * i])[0] for i in range(count)]


def primary(execute, hierarchy=RH_OWNER, spec="ecc256:aes128cfb", attrs=0):
    r = execute(create_primary(hierarchy, with_template_attrs(template(spec), attrs)))
    assert rc(r) == 0, hex(rc(r))
    return handle_of(r)


# -- objects --------------------------------------------------------------------------------------

def test_object_save_flush_load_round_trip():
    tpm = started()
    parent = primary(tpm.execute, spec="rsa2048:aes128cfb")
    secret = b"sealed through a context"
    r = tpm.execute(create(parent, template("keyedhash", objectAttributes=0x52),
                           sensitive_create(b"pw", secret)))
    assert rc(r) == 0
    private, public = split_create(r)
    item = handle_of(tpm.execute(load(parent, private, public)))
    read = params(tpm.execute(cmd(0x173, handles=[item])))

    contexts = {}
    for h in (parent, item):
        r = tpm.execute(save(h))
        assert rc(r) == SUCCESS
        contexts[h] = params(r)
        # saving an object leaves it loaded
        assert rc(tpm.execute(cmd(0x173, handles=[h]))) == SUCCESS
    seq, saved_handle, hierarchy, blob = split_context(contexts[item])
    assert (saved_handle, hierarchy) == (0x80000000, RH_OWNER)
    assert secret not in blob and public[2:] not in blob        # the blob is encrypted
    for h in (parent, item):
        assert rc(tpm.execute(flush(h))) == SUCCESS
    assert handles(tpm.execute, 0x80000000) == []

    new_parent = handle_of(tpm.execute(load_context(contexts[parent])))
    new_item = handle_of(tpm.execute(load_context(contexts[item])))
    assert handles(tpm.execute, 0x80000000) == [new_parent, new_item]
    assert params(tpm.execute(cmd(0x173, handles=[new_item]))) == read
    r = tpm.execute(cmd(0x15E, handles=[new_item], sessions=[pw_session(b"pw")]))
    assert rc(r) == SUCCESS and params(r) == b2(secret)
    assert rc(tpm.execute(cmd(0x15E, handles=[new_item], sessions=[pw_session(b"no")]))) == 0x98E
    # the reloaded parent still opens its children
    assert rc(tpm.execute(load(new_parent, private, public))) == SUCCESS


@pytest.mark.parametrize("spec", ["rsa2048:aes128cfb", "rsa2048:rsassa", "ecc384:aes256cfb",
                                  "ecc256:ecdsa", "hmac", "aes128cfb", "keyedhash"])
def test_every_object_field_survives_a_context(spec):
    tpm = started()
    h = primary(tpm.execute, RH_ENDORSEMENT, spec)
    before = tpm.state.objects[h]
    new = handle_of(tpm.execute(load_context(params(tpm.execute(save(h))))))
    after = tpm.state.objects[new]
    assert new != h
    for f in dataclasses.fields(before):
        if f.name != "key":                     # made again on first use
            assert getattr(after, f.name) == getattr(before, f.name), f.name
    assert after.key is None


@pytest.mark.parametrize("spec", ["rsa2048:rsassa", "ecc256:ecdsa"])
def test_reloaded_signing_key_signs(spec):
    tpm = started()
    h = primary(tpm.execute, RH_ENDORSEMENT, spec)
    new = handle_of(tpm.execute(load_context(params(tpm.execute(save(h))))))
    digest = b"\x5a" * 32
    scheme = u16(0x14 if spec.startswith("rsa") else 0x18) + u16(0x0B)
    ticket = u16(0x8024) + u32(RH_NULL) + u16(0)
    sigs = []
    for handle in (h, new):
        r = tpm.execute(cmd(0x15D, b2(digest) + scheme + ticket, handles=[handle],
                            sessions=[pw_session()]))
        assert rc(r) == SUCCESS, hex(rc(r))
        sigs.append(params(r))
    if spec.startswith("rsa"):                  # PKCS#1 v1.5 is deterministic
        assert sigs[0] == sigs[1]


def test_object_context_loads_as_often_as_presented():
    tpm = started()
    h = primary(tpm.execute)
    ctx = params(tpm.execute(save(h)))
    loaded = [handle_of(tpm.execute(load_context(ctx))) for _ in range(3)]
    assert loaded == [0x80000001, 0x80000002, 0x80000003]
    # each save has a new sequence number
    assert split_context(params(tpm.execute(save(h))))[0] == split_context(ctx)[0] + 1


def test_object_memory():
    tpm = started(max_objects=2)
    h = primary(tpm.execute)
    ctx = params(tpm.execute(save(h)))
    assert rc(tpm.execute(load_context(ctx))) == SUCCESS
    assert rc(tpm.execute(load_context(ctx))) == OBJECT_MEMORY
    assert rc(tpm.execute(flush(h))) == SUCCESS
    assert handle_of(tpm.execute(load_context(ctx))) == h


@pytest.mark.parametrize("where", ["integrity", "first-encrypted", "last", "sequence",
                                   "handle-stclear", "hierarchy", "truncated-blob"])
def test_tampered_context_is_integrity(where):
    tpm = started()
    ctx = bytearray(params(tpm.execute(save(primary(tpm.execute)))))
    if where == "integrity":
        ctx[18 + 2] ^= 0x01
    elif where == "first-encrypted":
        ctx[18 + 2 + 64] ^= 0x80
    elif where == "last":
        ctx[-1] ^= 0x01
    elif where == "sequence":
        ctx[7] ^= 0x01
    elif where == "handle-stclear":
        ctx[8:12] = u32(0x80000002)
    elif where == "hierarchy":
        ctx[12:16] = u32(RH_ENDORSEMENT)
    else:
        ctx[16:18] = u16(len(ctx) - 19)
        del ctx[-1]
    assert rc(tpm.execute(load_context(bytes(ctx)))) == INTEGRITY_P1


def test_context_of_another_tpm_is_integrity():
    a, b = started(seed=b"one"), started(seed=b"two")
    assert rc(b.execute(load_context(params(a.execute(save(primary(a.execute))))))) == INTEGRITY_P1


def test_contexts_and_the_tpm_life_cycle():
    """TPM Reset: every context is gone. TPM Restart: all but stClear objects' live on. TPM
    Resume: those of stClear objects saved since the last Restart live on as well."""
    tpm = started()
    ctx = {}
    for name, hierarchy, attrs in (("owner", RH_OWNER, 0), ("null", RH_NULL, 0),
                                   ("stclear", RH_OWNER, STCLEAR)):
        h = primary(tpm.execute, hierarchy, attrs=attrs)
        ctx[name] = params(tpm.execute(save(h)))
    assert split_context(ctx["stclear"])[1] == 0x80000002
    session = Client(tpm.execute)
    ctx["session"] = params(tpm.execute(save(session.handle)))

    def load_all():
        codes = {}
        for name, c in ctx.items():
            r = tpm.execute(load_context(c))
            codes[name] = rc(r)
            if rc(r) == 0 and name != "session":
                tpm.execute(flush(handle_of(r)))
        return codes

    tpm.execute(SHUTDOWN_STATE)                 # TPM Restart
    power_cycle(tpm)
    tpm.execute(STARTUP_CLEAR)
    assert load_all() == {"owner": 0, "null": 0, "stclear": INTEGRITY_P1, "session": 0}
    assert rc(session.command(0x182, [16], extend(16))) == SUCCESS
    ctx["session"] = params(tpm.execute(save(session.handle)))
    ctx["stclear"] = params(tpm.execute(save(primary(tpm.execute, attrs=STCLEAR))))
    tpm.execute(flush(0x80000000))

    tpm.execute(SHUTDOWN_STATE)                 # TPM Resume
    power_cycle(tpm)
    assert rc(tpm.execute(STARTUP_STATE)) == 0
    assert load_all() == {"owner": 0, "null": 0, "stclear": 0, "session": 0}
    ctx["session"] = params(tpm.execute(save(session.handle)))

    power_cycle(tpm)                            # TPM Reset
    tpm.execute(STARTUP_CLEAR)
    assert handles(tpm.execute, 0x03000000) == []
    assert load_all() == dict.fromkeys(ctx, INTEGRITY_P1)


def test_saved_sessions_survive_a_restart_of_the_process(tmp_path):
    first = started(store=DirStore(tmp_path))
    session = Client(first.execute)
    ctx = params(first.execute(save(session.handle)))
    assert rc(first.execute(SHUTDOWN_STATE)) == 0
    second = Tpm.manufacture(Platform(DirStore(tmp_path)))
    assert rc(second.execute(STARTUP_CLEAR)) == 0
    assert handles(second.execute, 0x03000000) == [session.handle]
    session.execute = second.execute
    assert handle_of(second.execute(load_context(ctx))) == session.handle
    assert rc(session.command(0x182, [16], extend(16))) == SUCCESS


# -- sequences ---------------------------------------------------------------------------------

HASH_SEQUENCE_START, SEQUENCE_UPDATE, SEQUENCE_COMPLETE, EVENT_COMPLETE = 0x186, 0x15C, 0x13E, 0x185
HMAC_START = 0x15B


def sequence_stream(execute):
    """Hash, HMAC and event sequences saved, flushed and loaded halfway: {step: result}."""
    out = {}

    def update(h, data):
        return rc(execute(cmd(SEQUENCE_UPDATE, b2(data), handles=[h],
                              sessions=[pw_session(b"seq")])))

    def complete(h, data):
        r = execute(cmd(SEQUENCE_COMPLETE, b2(data) + u32(RH_NULL), handles=[h],
                        sessions=[pw_session(b"seq")]))
        return rc(r), params(r)[:34]

    def reload(name, h):
        r = execute(save(h))
        ctx = params(r)
        out[name + ":save"] = (rc(r), split_context(ctx)[1:3])
        out[name + ":flush"] = rc(execute(flush(h)))
        r = execute(load_context(ctx))
        out[name + ":load"] = rc(r)
        return handle_of(r), ctx
    # a hash sequence; its context loaded twice
    h = handle_of(execute(cmd(HASH_SEQUENCE_START, b2(b"seq") + u16(0x0B))))
    out["hash:update"] = update(h, b"first half, ")
    h, ctx = reload("hash", h)
    out["hash:update2"] = update(h, b"second half")
    out["hash"] = complete(h, b"")
    out["hash:again"] = complete(handle_of(execute(load_context(ctx))), b"other half")
    # HMAC sequences keyed by a keyed-hash signing key, with and without a context
    key = primary(execute, spec="hmac")
    for name in ("hmac", "hmac:plain"):
        for _ in range(3):      # swtpm answers its first HMAC_Start with TPM_RC_RETRY
            r = execute(cmd(HMAC_START, b2(b"seq") + u16(0x0B), handles=[key],
                            sessions=[pw_session()]))
            if rc(r) != 0x922:
                break
        h = handle_of(r)
        if name == "hmac":
            h, _ = reload(name, h)
        out[name] = complete(h, b"mac me")
    execute(flush(key))
    # an event sequence, completed without a PCR
    h = handle_of(execute(cmd(HASH_SEQUENCE_START, b2(b"seq") + u16(0x10))))
    out["event:update"] = update(h, b"an event")
    h, _ = reload("event", h)
    r = execute(cmd(EVENT_COMPLETE, b2(b"!"), handles=[RH_NULL, h],
                    sessions=[pw_session(), pw_session(b"seq")]))
    out["event"] = (rc(r), params(r))
    out["left"] = handles(execute, 0x80000000)
    return out


def test_sequence_contexts():
    import hashlib
    out = sequence_stream(started().execute)
    assert out["hash:save"] == (0, (0x80000001, RH_NULL))
    assert out["hash"] == (0, b2(hashlib.sha256(b"first half, second half").digest()))
    assert out["hash:again"] == (0, b2(hashlib.sha256(b"first half, other half").digest()))
    assert out["hmac"][0] == 0 and out["hmac"] == out["hmac:plain"]
    assert out["event"][0] == 0
    assert u16(0x0B) + hashlib.sha256(b"an event!").digest() in out["event"][1]
    assert out["left"] == []


def test_sequence_state_kept_in_the_tpm_is_bounded(monkeypatch):
    monkeypatch.setattr(C, "MAX_SAVED_SEQUENCES", 2)
    tpm = started()
    h = handle_of(tpm.execute(cmd(HASH_SEQUENCE_START, b2(b"") + u16(0x0B))))
    contexts = [params(tpm.execute(save(h))) for _ in range(3)]
    assert rc(tpm.execute(load_context(contexts[0]))) == HANDLE_P1     # its state is gone
    for ctx in contexts[1:]:
        assert rc(tpm.execute(load_context(ctx))) == SUCCESS
    power_cycle(tpm)
    tpm.execute(STARTUP_CLEAR)
    assert rc(tpm.execute(load_context(contexts[2]))) == INTEGRITY_P1


# -- sessions ----------------------------------------------------------------------------------

def session_flow(execute):
    """An HMAC session saved and loaded between commands; the codes of every step."""
    codes = []
    c = Client(execute, bind=23)
    codes.append(rc(c.command(0x182, [16], extend(16))))
    r = execute(save(c.handle))
    codes.append(rc(r))
    ctx = params(r)
    seq, saved_handle, hierarchy, _ = split_context(ctx)
    assert (saved_handle, hierarchy) == (c.handle, RH_NULL)
    codes.append(handles(execute, 0x02000000))              # no longer loaded
    codes.append(handles(execute, 0x03000000))              # but saved
    codes.append(rc(c.command(0x182, [16], extend(16))))    # cannot be used while saved
    codes.append(rc(execute(save(c.handle))))               # nor saved again
    other = Client(execute)                                 # the saved handle stays taken
    codes.append(other.handle)
    r = execute(load_context(ctx))
    codes.append((rc(r), handle_of(r)))
    codes.append(rc(c.command(0x182, [16], extend(16))))    # HMACs and nonces go on
    codes.append(rc(execute(load_context(ctx))))            # loaded already
    ctx2 = params(execute(save(c.handle)))
    codes.append(rc(execute(load_context(ctx))))            # an older context of it
    codes.append(rc(execute(flush(c.handle))))              # flush the saved session
    codes.append(handles(execute, 0x03000000))
    codes.append(rc(execute(load_context(ctx2))))           # flushed while saved
    codes.append(rc(execute(flush(c.handle))))
    # a policy session, and the saved-session list by slot
    p = handle_of(execute(start_session(se=SE_POLICY)))
    codes.append(p)
    codes.append(rc(execute(save(p ^ 0x01000000))))          # its slot, the wrong type
    pctx = params(execute(save(p)))
    codes.append(handles(execute, 0x03000000))
    codes.append(handles(execute, 0x03000000 | (p & 0xFF) + 1))
    codes.append(handles(execute, 0x02000000))
    r = execute(load_context(pctx))
    codes.append((rc(r), handle_of(r)))
    # FlushContext finds a loaded or saved session by its slot, under either handle type
    for saved in (False, True):
        s = handle_of(execute(start_session()))
        if saved:
            execute(save(s))
        codes.append((s, rc(execute(flush(s | 0x01000000))), rc(execute(flush(s)))))
    for h in handles(execute, 0x02000000):
        execute(flush(h))
    return codes


def test_hmac_session_save_load_and_replay():
    codes = session_flow(started().execute)
    assert codes == [0, 0, [], [0x02000000], REFERENCE_S0, REFERENCE_H0, 0x02000001,
                     (0, 0x02000000), 0, HANDLE_P1, HANDLE_P1, 0, [], HANDLE_P1, HANDLE_P1,
                     0x03000000, HANDLE_H1, [0x02000000], [], [0x02000001],
                     (0, 0x03000000), (0x02000002, 0, HANDLE_P1), (0x02000002, 0, HANDLE_P1)]


def test_session_memory_and_active_sessions():
    tpm = started(max_sessions=2)
    a = Client(tpm.execute)
    ctx = params(tpm.execute(save(a.handle)))
    b, c = Client(tpm.execute), Client(tpm.execute)
    assert (b.handle, c.handle) == (0x02000001, 0x02000002)
    assert rc(tpm.execute(load_context(ctx))) == SESSION_MEMORY
    assert rc(tpm.execute(flush(c.handle))) == 0
    assert handle_of(tpm.execute(load_context(ctx))) == a.handle
    # 64 sessions may be active (loaded or saved) at once
    for h in (a.handle, b.handle):
        tpm.execute(save(h))
    for _ in range(62):
        s = Client(tpm.execute)
        assert rc(tpm.execute(save(s.handle))) == 0
    assert rc(tpm.execute(start_session())) == 0x905        # TPM_RC_SESSION_HANDLES
    props = params(tpm.execute(cmd(0x17A, u32(6) + u32(0x203) + u32(4))))
    values = dict(struct.unpack(">II", props[9 + 8 * i:17 + 8 * i]) for i in range(4))
    # HR_LOADED, HR_LOADED_AVAIL, HR_ACTIVE, HR_ACTIVE_AVAIL
    assert [values[p] for p in (0x203, 0x204, 0x205, 0x206)] == [0, 2, 64, 0]


def test_context_gap(monkeypatch):
    monkeypatch.setattr(C, "MAX_CONTEXT_GAP", 4)
    tpm = started(max_sessions=2)
    old = Client(tpm.execute)
    old_ctx = params(tpm.execute(save(old.handle)))
    busy = Client(tpm.execute)
    codes = []
    for _ in range(4):
        r = tpm.execute(save(busy.handle))
        codes.append(rc(r))
        if rc(r) == 0:
            tpm.execute(load_context(params(r)))
    assert codes == [0, 0, 0, 0x901]                        # TPM_RC_CONTEXT_GAP
    assert rc(tpm.execute(load_context(old_ctx))) == 0      # the oldest comes back
    assert rc(tpm.execute(save(old.handle))) == 0           # and the gap is closed


def test_every_session_field_survives_a_context():
    tpm = started()
    Client(tpm.execute, bind=23)
    before = dataclasses.replace(tpm.state.sessions[0x02000000])
    tpm.execute(load_context(params(tpm.execute(save(0x02000000)))))
    assert tpm.state.sessions[0x02000000] == before


def test_payload_codec_refuses_what_it_cannot_keep():
    tpm = started()
    h = primary(tpm.execute)
    tpm.state.objects[h].qualified_name = {"not": "bytes"}
    assert rc(tpm.execute(save(h))) == 0x101                # TPM_RC_FAILURE, nothing lost


# -- differential against swtpm --------------------------------------------------------------------

def error_stream(execute):
    """Context commands that fail, and a few that succeed, as one stream."""
    out = {}

    def x(name, c):
        r = execute(c)
        out[name] = rc(r)
        return r
    h = primary(execute)
    ctx = params(x("save-object", save(h)))
    x("save-unloaded-object", save(0x80000002))
    x("save-unloaded-session", save(0x02000005))
    x("save-pcr", save(1))
    x("save-persistent", save(0x81000000))
    x("save-with-sessions", cmd(CC_CONTEXT_SAVE, handles=[h], sessions=[pw_session()]))
    x("load-with-sessions", cmd(CC_CONTEXT_LOAD, ctx, sessions=[pw_session()]))
    head = ctx[:16]
    x("handle-not-saved", load_context(ctx[:8] + u32(0x40000001) + ctx[12:]))
    x("handle-persistent", load_context(ctx[:8] + u32(0x81000000) + ctx[12:]))
    x("hierarchy-not-one", load_context(ctx[:12] + u32(0x40000002) + ctx[16:]))
    x("other-hierarchy", load_context(ctx[:12] + u32(RH_ENDORSEMENT) + ctx[16:]))
    x("stclear-handle", load_context(ctx[:8] + u32(0x80000002) + ctx[12:]))
    seq = struct.unpack(">Q", ctx[:8])[0]
    x("other-sequence", load_context(struct.pack(">Q", seq + 1) + ctx[8:]))
    x("blob-empty", load_context(head + u16(0)))
    x("blob-1-byte", load_context(head + b2(b"\0")))
    x("blob-digest-over-64", load_context(head + b2(u16(65) + b"\0\0")))
    x("blob-digest-cut", load_context(head + b2(u16(64) + b"\0\0")))
    x("blob-digest-32", load_context(head + b2(u16(32) + bytes(38))))
    x("blob-no-fingerprint", load_context(head + b2(u16(64) + bytes(68))))
    x("blob-garbage", load_context(head + b2(u16(64) + bytes(198))))
    x("blob-too-big", load_context(head + b2(bytes(2117))))
    x("context-truncated", load_context(ctx[:-1]))
    x("context-trailing", load_context(ctx + b"\0"))
    bad = bytearray(ctx)
    bad[-1] ^= 1
    x("tampered", load_context(bytes(bad)))
    x("flush-object", flush(h))
    x("load-object", load_context(ctx))
    x("load-object-again", load_context(ctx))
    for h in handles(execute, 0x80000000):
        execute(flush(h))
    return out


def memory_stream(execute):
    """Three object slots and three loaded sessions, as swtpm has."""
    out = []
    objects = [primary(execute) for _ in range(3)]
    ctx = params(execute(save(objects[0])))
    out.append(rc(execute(load_context(ctx))))
    for h in objects:
        execute(flush(h))
    s = handle_of(execute(start_session()))
    sctx = params(execute(save(s)))
    started_ = [execute(start_session()) for _ in range(3)]
    out.append([rc(r) for r in started_])
    out.append(rc(execute(load_context(sctx))))
    out.append(rc(execute(start_session())))
    execute(flush(handle_of(started_[0])))
    r = execute(load_context(sctx))
    out.append((rc(r), handle_of(r)))
    return out


def life_cycle_stream(execute, cycle):
    out = []
    ctx = {}
    for name, hierarchy, attrs in (("owner", RH_OWNER, 0), ("null", RH_NULL, 0),
                                   ("stclear", RH_OWNER, STCLEAR)):
        h = primary(execute, hierarchy, attrs=attrs)
        ctx[name] = params(execute(save(h)))
        execute(flush(h))
    s = handle_of(execute(start_session()))
    ctx["session"] = params(execute(save(s)))

    def load_all(label):
        for name, c in ctx.items():
            r = execute(load_context(c))
            out.append((label, name, rc(r)))
            if rc(r) == 0 and name != "session":
                execute(flush(handle_of(r)))
    for shutdown, startup, label in ((SHUTDOWN_STATE, STARTUP_CLEAR, "restart"),
                                     (SHUTDOWN_STATE, STARTUP_STATE, "resume"),
                                     (SHUTDOWN_CLEAR, STARTUP_CLEAR, "reset")):
        out.append(rc(execute(shutdown)))
        cycle()
        out.append(rc(execute(startup)))
        out.append(handles(execute, 0x03000000))
        load_all(label)
        if label == "restart":
            ctx["session"] = params(execute(save(s)))
            h = primary(execute, attrs=STCLEAR)
            ctx["stclear"] = params(execute(save(h)))
            execute(flush(h))
        elif label == "resume":
            ctx["session"] = params(execute(save(s)))
    return out


@needs_swtpm
@pytest.mark.swtpm
def test_context_commands_as_swtpm():
    ctpm = started(seed=b"as swtpm", max_objects=3, max_sessions=3)
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        mine, theirs = error_stream(ctpm.execute), error_stream(sw.execute)
        assert mine == theirs
        assert mine["tampered"] == mine["other-hierarchy"] == INTEGRITY_P1
        assert mine["blob-digest-32"] == SIZE_P1 and mine["blob-empty"] == INSUFFICIENT
        assert mine["save-with-sessions"] == AUTH_CONTEXT
        assert memory_stream(ctpm.execute) == memory_stream(sw.execute) == [
            OBJECT_MEMORY, [0, 0, 0], SESSION_MEMORY, SESSION_MEMORY, (0, 0x02000000)]
        for h in handles(ctpm.execute, 0x02000000):
            ctpm.execute(flush(h))
            sw.execute(flush(h))
        assert session_flow(ctpm.execute) == session_flow(sw.execute)
        mine, theirs = sequence_stream(ctpm.execute), sequence_stream(sw.execute)
        for name in ("hmac", "hmac:plain"):     # the keys differ: primaries are per TPM
            mine[name], theirs[name] = mine[name][0], theirs[name][0]
        assert mine == theirs
        mine = life_cycle_stream(ctpm.execute, lambda: power_cycle(ctpm))
        theirs = life_cycle_stream(sw.execute, lambda: sw.ctrl(2, u32(0)))
        assert mine == theirs
        assert ("restart", "stclear", INTEGRITY_P1) in mine
        assert ("resume", "stclear", 0) in mine
        assert ("reset", "session", INTEGRITY_P1) in mine
    finally:
        sw.close()


def test_reported_context_algorithms_are_the_ones_used():
    tpm = started()
    body = params(tpm.execute(cmd(0x17A, u32(6) + u32(0x11A) + u32(3))))
    values = dict(struct.unpack(">II", body[9 + 8 * i:17 + 8 * i]) for i in range(3))
    # TPM_PT_CONTEXT_HASH, _SYM (AES), _SYM_SIZE
    assert values == {0x11A: C.CONTEXT_HASH, 0x11B: 0x0006, 0x11C: C.CONTEXT_SYM_BITS}
    ctx = params(tpm.execute(save(primary(tpm.execute))))
    assert struct.unpack(">H", split_context(ctx)[3][:2])[0] == 64     # SHA-512 integrity
