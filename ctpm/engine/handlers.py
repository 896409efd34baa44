"""Which function carries out which command: the command table joined to the engine.

A handler is named here as "chapter.function" (a module of engine/commands/), and its
chapter is imported when a command of it first arrives, not at start: a TPM's first
commands (Startup, GetCapability, PCR_Read) then do not wait for the chapters that need
gmpy2 or the asymmetric key code (docs/architecture.md, "Start-up").
"""
from importlib import import_module

from ..wire.commands import COMMANDS
from ..wire.constants import TPM_CC

_FUNCTIONS = {
    TPM_CC.NV_DefineSpace: "nv.nv_define_space",
    TPM_CC.NV_UndefineSpace: "nv.nv_undefine_space",
    TPM_CC.NV_UndefineSpaceSpecial: "nv.nv_undefine_space_special",
    TPM_CC.NV_ReadPublic: "nv.nv_read_public",
    TPM_CC.NV_Write: "nv.nv_write",
    TPM_CC.NV_Increment: "nv.nv_increment",
    TPM_CC.NV_Extend: "nv.nv_extend",
    TPM_CC.NV_SetBits: "nv.nv_set_bits",
    TPM_CC.NV_WriteLock: "nv.nv_write_lock",
    TPM_CC.NV_GlobalWriteLock: "nv.nv_global_write_lock",
    TPM_CC.NV_Read: "nv.nv_read",
    TPM_CC.NV_ReadLock: "nv.nv_read_lock",
    TPM_CC.NV_ChangeAuth: "nv.nv_change_auth",
    TPM_CC.Startup: "startup.startup",
    TPM_CC.Shutdown: "startup.shutdown",
    TPM_CC.SelfTest: "testing.self_test",
    TPM_CC.IncrementalSelfTest: "testing.incremental_self_test",
    TPM_CC.GetTestResult: "testing.get_test_result",
    TPM_CC.GetRandom: "random.get_random",
    TPM_CC.StirRandom: "random.stir_random",
    TPM_CC.StartAuthSession: "session.start_auth_session",
    TPM_CC.ContextSave: "context.context_save",
    TPM_CC.ContextLoad: "context.context_load",
    TPM_CC.FlushContext: "context.flush_context",
    TPM_CC.EvictControl: "context.evict_control",
    TPM_CC.Create: "object.create_",
    TPM_CC.Load: "object.load",
    TPM_CC.LoadExternal: "external.load_external",
    TPM_CC.RSA_Encrypt: "asymmetric.rsa_encrypt",
    TPM_CC.RSA_Decrypt: "asymmetric.rsa_decrypt",
    TPM_CC.ECDH_KeyGen: "asymmetric.ecdh_keygen",
    TPM_CC.ECDH_ZGen: "asymmetric.ecdh_zgen",
    TPM_CC.ZGen_2Phase: "asymmetric.zgen_2phase",
    TPM_CC.EC_Ephemeral: "asymmetric.ec_ephemeral",
    TPM_CC.ECC_Encrypt: "asymmetric.ecc_encrypt",
    TPM_CC.ECC_Decrypt: "asymmetric.ecc_decrypt",
    TPM_CC.Commit: "ephemeral.commit_",
    TPM_CC.EncryptDecrypt: "symmetric.encrypt_decrypt",
    TPM_CC.EncryptDecrypt2: "symmetric.encrypt_decrypt2",
    TPM_CC.HMAC: "symmetric.hmac_",
    TPM_CC.VerifySignature: "signature.verify_signature",
    TPM_CC.Sign: "signature.sign",
    TPM_CC.Certify: "attest.certify",
    TPM_CC.CertifyCreation: "attest.certify_creation",
    TPM_CC.Quote: "attest.quote",
    TPM_CC.GetSessionAuditDigest: "attest.get_session_audit_digest",
    TPM_CC.GetCommandAuditDigest: "attest.get_command_audit_digest",
    TPM_CC.GetTime: "attest.get_time",
    TPM_CC.NV_Certify: "attest.nv_certify",
    TPM_CC.CertifyX509: "x509.certify_x509",
    TPM_CC.ReadPublic: "object.read_public",
    TPM_CC.Unseal: "object.unseal",
    TPM_CC.MakeCredential: "credential.make_credential",
    TPM_CC.ActivateCredential: "credential.activate_credential",
    TPM_CC.Duplicate: "duplication.duplicate",
    TPM_CC.Rewrap: "duplication.rewrap",
    TPM_CC.Import: "duplication.import_",
    TPM_CC.ECC_Parameters: "ecc.ecc_parameters",
    TPM_CC.ObjectChangeAuth: "object.object_change_auth",
    TPM_CC.CreateLoaded: "object.create_loaded",
    TPM_CC.CreatePrimary: "object.create_primary",
    TPM_CC.Clear: "hierarchy.clear",
    TPM_CC.ClearControl: "hierarchy.clear_control",
    TPM_CC.HierarchyChangeAuth: "hierarchy.hierarchy_change_auth",
    TPM_CC.DictionaryAttackLockReset: "da.dictionary_attack_lock_reset",
    TPM_CC.DictionaryAttackParameters: "da.dictionary_attack_parameters",
    TPM_CC.HierarchyControl: "hierarchy.hierarchy_control",
    TPM_CC.SetPrimaryPolicy: "hierarchy.set_primary_policy",
    TPM_CC.ChangePPS: "hierarchy.change_pps",
    TPM_CC.ChangeEPS: "hierarchy.change_eps",
    TPM_CC.Hash: "hash.hash_",
    TPM_CC.HMAC_Start: "sequence.hmac_start",
    TPM_CC.HashSequenceStart: "sequence.hash_sequence_start",
    TPM_CC.SequenceUpdate: "sequence.sequence_update",
    TPM_CC.SequenceComplete: "sequence.sequence_complete",
    TPM_CC.EventSequenceComplete: "sequence.event_sequence_complete",
    TPM_CC.PolicySecret: "ea.policy_secret",
    TPM_CC.PolicySigned: "ea.policy_signed",
    TPM_CC.PolicyTicket: "ea.policy_ticket",
    TPM_CC.PolicyAuthorize: "ea.policy_authorize",
    TPM_CC.PolicyLocality: "ea.policy_locality",
    TPM_CC.PolicyCounterTimer: "ea.policy_counter_timer",
    TPM_CC.PolicyNV: "ea.policy_nv",
    TPM_CC.PolicyAuthorizeNV: "ea.policy_authorize_nv",
    TPM_CC.PolicyNvWritten: "ea.policy_nv_written",
    TPM_CC.PolicyTemplate: "ea.policy_template",
    TPM_CC.PolicyPhysicalPresence: "ea.policy_physical_presence",
    TPM_CC.PolicyOR: "ea.policy_or",
    TPM_CC.PolicyPCR: "ea.policy_pcr",
    TPM_CC.PolicyCommandCode: "ea.policy_command_code",
    TPM_CC.PolicyCpHash: "ea.policy_cp_hash",
    TPM_CC.PolicyNameHash: "ea.policy_name_hash",
    TPM_CC.PolicyDuplicationSelect: "ea.policy_duplication_select",
    TPM_CC.PolicyAuthValue: "ea.policy_auth_value",
    TPM_CC.PolicyPassword: "ea.policy_password",
    TPM_CC.PolicyGetDigest: "ea.policy_get_digest",
    TPM_CC.PolicyRestart: "ea.policy_restart",
    TPM_CC.PolicyCapability: "ea.policy_capability",
    TPM_CC.PolicyParameters: "ea.policy_parameters",
    TPM_CC.PCR_Extend: "pcr.pcr_extend",
    TPM_CC.PCR_Event: "pcr.pcr_event",
    TPM_CC.PCR_Read: "pcr.pcr_read",
    TPM_CC.PCR_Reset: "pcr.pcr_reset",
    TPM_CC.PCR_Allocate: "pcr.pcr_allocate",
    TPM_CC.PCR_SetAuthPolicy: "pcr.pcr_set_auth_policy",
    TPM_CC.PCR_SetAuthValue: "pcr.pcr_set_auth_value",
    TPM_CC.SetCommandCodeAuditStatus: "audit.set_command_code_audit_status",
    TPM_CC.PP_Commands: "management.pp_commands",
    TPM_CC.SetAlgorithmSet: "management.set_algorithm_set",
    TPM_CC.ACT_SetTimeout: "act.act_set_timeout",
    TPM_CC.ReadClock: "clock.read_clock",
    TPM_CC.ClockSet: "clock.clock_set",
    TPM_CC.ClockRateAdjust: "clock.clock_rate_adjust",
    TPM_CC.GetCapability: "capability.get_capability",
    TPM_CC.TestParms: "capability.test_parms",
}


def table():
    """{command code: (Command, "chapter.function")} for every command in the wire table."""
    missing = [c.code.name for c in COMMANDS if c.code not in _FUNCTIONS]
    if missing:
        raise RuntimeError(f"commands without a handler: {missing}")
    return {int(c.code): (c, _FUNCTIONS[c.code]) for c in COMMANDS}


def function(name: str):
    """The handler function `name` ("chapter.function"), importing its chapter if needed."""
    chapter, _, function_name = name.partition(".")
    return getattr(import_module(f"{__package__}.commands.{chapter}"), function_name)


def chapters() -> set:
    """The engine/commands/ modules the table names (the import graph's lazy edges)."""
    return {f"{__package__}.commands.{name.partition('.')[0]}" for name in _FUNCTIONS.values()}
