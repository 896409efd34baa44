"""Which function carries out which command: the command table joined to the engine."""
from ..wire.commands import COMMANDS
from ..wire.constants import TPM_CC
from . import ea
from . import (capability, clock, context, hash, object, pcr, persistent, random, sequence,
               sessions, startup, testing)
from . import asymmetric, external, signature, symmetric
from . import credential, duplication, ecc, ecdaa

_FUNCTIONS = {
    TPM_CC.Startup: startup.startup,
    TPM_CC.Shutdown: startup.shutdown,
    TPM_CC.SelfTest: testing.self_test,
    TPM_CC.IncrementalSelfTest: testing.incremental_self_test,
    TPM_CC.GetTestResult: testing.get_test_result,
    TPM_CC.GetRandom: random.get_random,
    TPM_CC.StirRandom: random.stir_random,
    TPM_CC.StartAuthSession: sessions.start_auth_session,
    TPM_CC.ContextSave: context.context_save,
    TPM_CC.ContextLoad: context.context_load,
    TPM_CC.FlushContext: context.flush_context,
    TPM_CC.EvictControl: persistent.evict_control,
    TPM_CC.Create: object.create_,
    TPM_CC.Load: object.load,
    TPM_CC.LoadExternal: external.load_external,
    TPM_CC.RSA_Encrypt: asymmetric.rsa_encrypt,
    TPM_CC.RSA_Decrypt: asymmetric.rsa_decrypt,
    TPM_CC.ECDH_KeyGen: asymmetric.ecdh_keygen,
    TPM_CC.ECDH_ZGen: asymmetric.ecdh_zgen,
    TPM_CC.ZGen_2Phase: asymmetric.zgen_2phase,
    TPM_CC.EC_Ephemeral: asymmetric.ec_ephemeral,
    TPM_CC.Commit: ecdaa.commit_,
    TPM_CC.EncryptDecrypt: symmetric.encrypt_decrypt,
    TPM_CC.EncryptDecrypt2: symmetric.encrypt_decrypt2,
    TPM_CC.HMAC: symmetric.hmac_,
    TPM_CC.VerifySignature: signature.verify_signature,
    TPM_CC.Sign: signature.sign,
    TPM_CC.ReadPublic: object.read_public,
    TPM_CC.Unseal: object.unseal,
    TPM_CC.MakeCredential: credential.make_credential,
    TPM_CC.ActivateCredential: credential.activate_credential,
    TPM_CC.Duplicate: duplication.duplicate,
    TPM_CC.Rewrap: duplication.rewrap,
    TPM_CC.Import: duplication.import_,
    TPM_CC.ECC_Parameters: ecc.ecc_parameters,
    TPM_CC.ObjectChangeAuth: object.object_change_auth,
    TPM_CC.CreateLoaded: object.create_loaded,
    TPM_CC.CreatePrimary: object.create_primary,
    TPM_CC.Hash: hash.hash_,
    TPM_CC.HMAC_Start: sequence.hmac_start,
    TPM_CC.HashSequenceStart: sequence.hash_sequence_start,
    TPM_CC.SequenceUpdate: sequence.sequence_update,
    TPM_CC.SequenceComplete: sequence.sequence_complete,
    TPM_CC.EventSequenceComplete: sequence.event_sequence_complete,
    TPM_CC.PolicySecret: ea.policy_secret,
    TPM_CC.PolicyOR: ea.policy_or,
    TPM_CC.PolicyPCR: ea.policy_pcr,
    TPM_CC.PolicyCommandCode: ea.policy_command_code,
    TPM_CC.PolicyCpHash: ea.policy_cp_hash,
    TPM_CC.PolicyNameHash: ea.policy_name_hash,
    TPM_CC.PolicyDuplicationSelect: ea.policy_duplication_select,
    TPM_CC.PolicyAuthValue: ea.policy_auth_value,
    TPM_CC.PolicyPassword: ea.policy_password,
    TPM_CC.PolicyGetDigest: ea.policy_get_digest,
    TPM_CC.PolicyRestart: ea.policy_restart,
    TPM_CC.PCR_Extend: pcr.pcr_extend,
    TPM_CC.PCR_Event: pcr.pcr_event,
    TPM_CC.PCR_Read: pcr.pcr_read,
    TPM_CC.PCR_Reset: pcr.pcr_reset,
    TPM_CC.ReadClock: clock.read_clock,
    TPM_CC.GetCapability: capability.get_capability,
    TPM_CC.TestParms: capability.test_parms,
}


def table():
    """{command code: (Command, function)} for every command in the wire table."""
    missing = [c.code.name for c in COMMANDS if c.code not in _FUNCTIONS]
    if missing:
        raise RuntimeError(f"commands without a handler: {missing}")
    return {int(c.code): (c, _FUNCTIONS[c.code]) for c in COMMANDS}
