"""The state key sealed to a TPM reached through a TCTI (`--state-key-tpm TCTI`): the host's
TPM (or swtpm standing in for it) keeps a random 256-bit state key that it releases only
while chosen PCRs hold the values they had when it was sealed.

Why: a key file next to the state protects nothing against whoever can read the host's
disk; a key the host's TPM releases only in a measured state (secure boot on, the expected
kernel) ties the vTPM states to that host and its boot. The TPM never holds the key in a
persistent slot: `DIR/state-key.tpm` keeps the sealed object (public and private parts,
useless without that TPM), re-created under the owner hierarchy's primary storage key (ECC
P-256, the well-known template, empty owner authorization) at every start.

Sealed object: KEYEDHASH, fixedTPM/fixedParent/noDA, no userWithAuth, authPolicy =
PolicyPCR(selection, the PCRs' digest at sealing time). Unsealing runs a policy session
salted by the primary key with response encryption (AES-128-CFB), so the key does not cross
the TPM's bus in clear. A PCR that changed makes Unseal fail (TPM_RC_POLICY_FAIL): one line
saying so. Before a planned change (firmware or kernel update, other PCR values), move the
state to another key (`ctpm state rekey --state-key-tpm TCTI --new-state-key FILE`), and
back afterwards (`--new-state-key-tpm TCTI`, which seals against the new values).
"""
import json
import os

from .errors import StoreError

SEALED = "state-key.tpm"
DEFAULT_PCRS = "sha256:7"
FORMAT = "ctpm-sealed-state-key"


def _esapi(tcti: str):
    # the TSS logs its errors on stderr; the StoreError says what went wrong, in one line
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
    try:
        ctx = TCTILdr.parse(tcti)
        esapi = ESAPI(ctx)
    except (TSS2_Exception, ValueError, RuntimeError, OSError) as e:
        raise StoreError(f"state key TPM {tcti} is unreachable ({_why(e)})") from None
    return esapi


def _policy_failed(code: int) -> bool:
    """TPM_RC_POLICY_FAIL (format 1: for the session) or TPM_RC_PCR_CHANGED."""
    if code & 0x80:
        return code & 0x3F == 0x1D
    return code & 0x17F == 0x167


def _why(e) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _selection(pcrs: str):
    from tpm2_pytss.types import TPML_PCR_SELECTION
    try:
        sel = TPML_PCR_SELECTION.parse(pcrs)
    except (ValueError, TypeError, RuntimeError) as e:
        raise StoreError(f"state key PCR selection {pcrs!r}: {_why(e)}") from None
    if not sel.count:
        raise StoreError(f"state key PCR selection {pcrs!r} selects nothing")
    return sel


def _primary(esapi):
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE
    public = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=(
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt|noda"))
    return esapi.create_primary(TPM2B_SENSITIVE_CREATE(), public, ESYS_TR.OWNER)[0]


def _policy_session(esapi, primary, selection, trial):
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_SESSION
    from tpm2_pytss.types import TPM2B_DIGEST, TPMT_SYM_DEF
    sym = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
    sym.keyBits.aes = 128
    sym.mode.aes = TPM2_ALG.CFB
    session = esapi.start_auth_session(
        tpm_key=ESYS_TR.NONE if trial else primary, bind=ESYS_TR.NONE,
        session_type=TPM2_SE.TRIAL if trial else TPM2_SE.POLICY, symmetric=sym,
        auth_hash=TPM2_ALG.SHA256)
    if not trial:
        esapi.trsess_set_attributes(session, TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION)
    esapi.policy_pcr(session, TPM2B_DIGEST(), selection)
    return session


def seal(tcti: str, pcrs: str, key: bytes) -> dict:
    """Seal `key` to the TPM at `tcti` under PolicyPCR(pcrs, their values now)."""
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import TPMA_OBJECT, TPM2_ALG
    from tpm2_pytss.types import (TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE,
                                  TPM2B_SENSITIVE_DATA, TPMS_SENSITIVE_CREATE, TPMT_PUBLIC)
    selection = _selection(pcrs)
    esapi = _esapi(tcti)
    loaded = []
    try:
        primary = _primary(esapi)
        loaded.append(primary)
        trial = _policy_session(esapi, primary, selection, trial=True)
        loaded.append(trial)
        policy = esapi.policy_get_digest(trial)
        public = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC(
            type=TPM2_ALG.KEYEDHASH, nameAlg=TPM2_ALG.SHA256,
            objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.NODA,
            authPolicy=policy))
        public.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
        sensitive = TPM2B_SENSITIVE_CREATE(sensitive=TPMS_SENSITIVE_CREATE(
            data=TPM2B_SENSITIVE_DATA(key)))
        private, public_out = esapi.create(primary, sensitive, public)[:2]
    except TSS2_Exception as e:
        raise StoreError(f"cannot seal the state key to TPM {tcti}: {_why(e)}") from None
    finally:
        _flush(esapi, loaded)
        esapi.close()
    return {"format": FORMAT, "version": 1, "pcrs": pcrs,
            "public": bytes(public_out.marshal()).hex(), "private": bytes(private.marshal()).hex()}


def unseal(tcti: str, sealed: dict, where: str) -> bytes:
    """The key, or StoreError: TPM unreachable, PCRs changed, another TPM, damaged file."""
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.types import TPM2B_PRIVATE, TPM2B_PUBLIC
    try:
        if sealed.get("format") != FORMAT or sealed.get("version") != 1:
            raise ValueError
        pcrs = sealed["pcrs"]
        public = TPM2B_PUBLIC.unmarshal(bytes.fromhex(sealed["public"]))[0]
        private = TPM2B_PRIVATE.unmarshal(bytes.fromhex(sealed["private"]))[0]
    except (KeyError, TypeError, ValueError, RuntimeError, TSS2_Exception):
        raise StoreError(f"sealed state key {where} is damaged") from None
    selection = _selection(pcrs)
    esapi = _esapi(tcti)
    loaded = []                     # flushed whatever happens: a TPM has few object slots
    try:
        primary = _primary(esapi)
        loaded.append(primary)
        try:
            sealed_key = esapi.load(primary, private, public)
        except TSS2_Exception as e:
            raise StoreError(f"sealed state key {where} does not load on TPM {tcti} (another "
                             f"TPM, or its owner hierarchy was cleared): {_why(e)}") from None
        loaded.append(sealed_key)
        session = _policy_session(esapi, primary, selection, trial=False)
        loaded.append(session)
        try:
            key = bytes(esapi.unseal(sealed_key, session1=session))
        except TSS2_Exception as e:
            if _policy_failed(e.rc):
                raise StoreError(f"TPM {tcti} refuses the state key: PCRs {pcrs} changed since "
                                 f"it was sealed (README: recovering the state key)") from None
            raise StoreError(f"TPM {tcti} cannot unseal the state key: {_why(e)}") from None
    except TSS2_Exception as e:
        raise StoreError(f"TPM {tcti} cannot unseal the state key: {_why(e)}") from None
    finally:
        _flush(esapi, loaded)
        esapi.close()
    return key


def _flush(esapi, handles):
    from tpm2_pytss import TSS2_Exception
    for h in reversed(handles):
        try:
            esapi.flush_context(h)
        except TSS2_Exception:
            pass


def read_sealed(path: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(1 << 16))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"sealed state key {path}: {e.strerror}") from None
    except ValueError:
        raise StoreError(f"sealed state key {path} is damaged") from None


def write_sealed(path: str, sealed: dict):
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(sealed).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise StoreError(f"cannot write the sealed state key {path}: {e.strerror}") from None
