"""TPM errors as exceptions carrying their wire code and locus (Part 2 §6.6)."""
from .wire.constants import TPM_RC

_RC_FMT1 = 0x080   # format-one codes carry a handle/parameter/session number
_RC_P = 0x040      # the number names a parameter
_RC_S = 0x800      # the number names a session (with _RC_P clear)


class TpmError(Exception):
    """A command failure: `raise TpmError(TPM_RC.VALUE, param=2)`.

    Only format-one codes (Part 2 §6.6.3) can name a handle, parameter or session;
    the locus is ignored for format-zero codes, as the reference TPM does.
    """

    __slots__ = ("rc", "handle", "param", "session")

    def __init__(self, rc, *, handle=None, param=None, session=None):
        super().__init__(rc)
        self.rc = int(rc)
        self.handle = handle
        self.param = param
        self.session = session

    def located(self, *, handle=None, param=None, session=None):
        """Fill in the locus if none was given yet (the dispatcher knows the position)."""
        if self.handle is None and self.param is None and self.session is None:
            self.handle, self.param, self.session = handle, param, session
        return self

    @property
    def code(self) -> int:
        rc = self.rc
        if not rc & _RC_FMT1 or rc & 0xF00:
            return rc
        if self.param is not None:
            return rc | _RC_P | ((self.param & 0xF) << 8)
        if self.handle is not None:
            return rc | ((self.handle & 0x7) << 8)
        if self.session is not None:
            return rc | _RC_S | ((self.session & 0x7) << 8)
        return rc

    def __str__(self):
        try:
            name = TPM_RC(self.rc).name
        except ValueError:
            name = hex(self.rc)
        where = ""
        for k in ("handle", "param", "session"):
            v = getattr(self, k)
            if v is not None:
                where = f" ({k} {v})"
        return f"TPM_RC_{name}{where} = 0x{self.code:03X}"


def find_exception(error, types):
    """The first exception of `types` in `error` or the exception groups nested in it (for a
    one-line message from what trio raised), None if there is none."""
    if isinstance(error, types):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = find_exception(inner, types)
        if found is not None:
            return found
    return None
