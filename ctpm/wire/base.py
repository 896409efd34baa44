"""construct building blocks that fail the way a TPM's unmarshaling fails (Part 2 §4-§10).

Every failure raises `TpmError` with the code Part 2 gives for the type (the "#TPM_RC_x"
lines of its table); the dispatcher adds the handle/parameter/session number. Reading past the
end of the buffer is TPM_RC_INSUFFICIENT, a TPM2B longer than its type allows TPM_RC_SIZE, an
unknown union selector TPM_RC_SELECTOR.
"""
import struct

from construct import Construct, Container, SizeofError

from ..errors import TpmError
from .constants import TPM_RC

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def read_exact(stream, n):
    data = stream.read(n)
    if len(data) != n:
        raise TpmError(TPM_RC.INSUFFICIENT)
    return data


class Int(Construct):
    """Unsigned big-endian integer (UINT8/16/32/64) with an optional Part 2 value check.

    `valid` is a set (or a predicate) of accepted values; `null` is the value the "+" form of
    a TPMI type also accepts (use `.plus`); anything else raises `rc`.
    """

    _FMT = {1: struct.Struct(">B"), 2: _U16, 4: _U32, 8: _U64}

    def __init__(self, size, valid=None, rc=TPM_RC.VALUE, null=None, allow_null=False):
        super().__init__()
        self.size = size
        self._st = self._FMT[size]
        self.valid = valid
        self.rc = rc
        self.null = null
        self.allow_null = allow_null

    @property
    def plus(self):
        """The "+" variant of a TPMI type: the null value is accepted too."""
        return Int(self.size, self.valid, self.rc, self.null, allow_null=True)

    def check(self, v):
        valid = self.valid
        if valid is None:
            return v
        if self.null is not None and v == self.null:
            if self.allow_null:
                return v
            raise TpmError(self.rc)
        ok = valid(v) if callable(valid) else v in valid
        if not ok:
            raise TpmError(self.rc)
        return v

    def _parse(self, stream, context, path):
        data = stream.read(self.size)
        if len(data) != self.size:
            raise TpmError(TPM_RC.INSUFFICIENT)
        v = self._st.unpack(data)[0]
        if self.valid is not None:
            self.check(v)
        return v

    def _build(self, obj, stream, context, path):
        stream.write(self._st.pack(int(obj)))
        return obj

    def _sizeof(self, context, path):
        return self.size


class Tpm2b(Construct):
    """A sized buffer: UINT16 size then that many bytes; `maxsize` per Part 2 (TPM_RC_SIZE).
    `limit`: the name of a parse-context value that lowers `maxsize` where an engine's
    configuration sets the bound (TPM2B_MAX_NV_BUFFER: EngineConfig.nv_buffer_max)."""

    def __init__(self, maxsize, limit: str | None = None):
        super().__init__()
        self.maxsize = maxsize
        self.limit = limit

    def _parse(self, stream, context, path):
        hdr = stream.read(2)
        if len(hdr) != 2:
            raise TpmError(TPM_RC.INSUFFICIENT)
        n = (hdr[0] << 8) | hdr[1]
        if n > self.maxsize or self.limit is not None and n > context.get(self.limit, n):
            raise TpmError(TPM_RC.SIZE)
        data = stream.read(n)
        if len(data) != n:
            raise TpmError(TPM_RC.INSUFFICIENT)
        return data

    def _build(self, obj, stream, context, path):
        obj = bytes(obj)
        stream.write(_U16.pack(len(obj)) + obj)
        return obj

    def _sizeof(self, context, path):
        raise SizeofError("TPM2B is variable")


class Sized(Construct):
    """A TPM2B wrapping a structure (TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE...).

    The inner structure must take exactly the size (TPM_RC_SIZE otherwise), and a zero size
    is TPM_RC_SIZE unless `allow_empty` (Part 2 gives both forms).
    """

    def __init__(self, subcon, maxsize=0xFFFF, allow_empty=False):
        super().__init__()
        self.subcon = subcon
        self.maxsize = maxsize
        self.allow_empty = allow_empty

    def _parse(self, stream, context, path):
        n = _U16.unpack(read_exact(stream, 2))[0]
        if n == 0:
            if self.allow_empty:
                return None
            raise TpmError(TPM_RC.SIZE)
        if n > self.maxsize:
            raise TpmError(TPM_RC.SIZE)
        # As the reference TPM: the structure is read from the buffer itself (running out
        # is INSUFFICIENT), then what it took must be what the size said (else SIZE).
        start = stream.tell()
        obj = self.subcon._parsereport(stream, context, path)
        if stream.tell() - start != n:
            raise TpmError(TPM_RC.SIZE)
        return obj

    def _build(self, obj, stream, context, path):
        if obj is None:
            stream.write(b"\0\0")
            return obj
        # bytes are the structure already marshaled (an object's public area is kept so)
        data = bytes(obj) if isinstance(obj, (bytes, bytearray)) else self.subcon.build(obj)
        stream.write(_U16.pack(len(data)) + data)
        return obj

    def _sizeof(self, context, path):
        raise SizeofError("sized structure is variable")


class List(Construct):
    """A TPML_: UINT32 count then that many elements; a count outside mincount..maxcount is
    TPM_RC_SIZE when unmarshaling (a TPM may answer with fewer than mincount)."""

    def __init__(self, subcon, maxcount, mincount=0):
        super().__init__()
        self.subcon = subcon
        self.maxcount = maxcount
        self.mincount = mincount

    def _parse(self, stream, context, path):
        n = _U32.unpack(read_exact(stream, 4))[0]
        if n > self.maxcount or n < self.mincount:
            raise TpmError(TPM_RC.SIZE)
        sub = self.subcon
        return [sub._parsereport(stream, context, path) for _ in range(n)]

    def _build(self, obj, stream, context, path):
        stream.write(_U32.pack(len(obj)))
        for item in obj:
            self.subcon._build(item, stream, context, path)
        return obj

    def _sizeof(self, context, path):
        raise SizeofError("TPML is variable")


class Record(Construct):
    """A TPMS_/TPMT_ structure: named fields in wire order (`Record("a" / X, "b" / Y)`).

    construct's Struct, reduced to what Part 2 structures need - a union's selector may name
    an earlier field (`Switch(this.hashAlg, ...)`) - without the per-parse context
    bookkeeping that dominated the time to parse a command.
    """

    def __init__(self, *fields):
        super().__init__()
        self.fields = tuple((f.name, f.subcon) for f in fields)

    def _parse(self, stream, context, path):
        obj = Container()
        for name, sc in self.fields:
            obj[name] = sc._parsereport(stream, obj, path)
        return obj

    def _build(self, obj, stream, context, path):
        for name, sc in self.fields:
            sc._build(obj[name], stream, obj, path)
        return obj

    def _sizeof(self, context, path):
        raise SizeofError("TPM structures are measured when built")


class BadSelector(Construct):
    """Default arm of a TPMU_ union: the selector named no member (TPM_RC_SELECTOR)."""

    def __init__(self, rc=TPM_RC.SELECTOR):
        super().__init__()
        self.rc = rc

    def _parse(self, stream, context, path):
        raise TpmError(self.rc)

    def _build(self, obj, stream, context, path):
        raise TpmError(self.rc)


UINT8 = BYTE = Int(1)
UINT16 = Int(2)
UINT32 = Int(4)
UINT64 = Int(8)
