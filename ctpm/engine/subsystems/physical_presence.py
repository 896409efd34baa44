"""Physical presence (Part 1 §34): which commands need it when platformAuth authorizes them,
and the platform's physical-presence signal.

The list lives in the NV image (the reference's gp.ppList); a new TPM requires physical
presence only for TPM2_PP_Commands itself, which can never be taken off the list. Only a
command the table marks `pp` (platformAuth may authorize it: the reference's PP_COMMAND) can
be put on it. The signal is volatile: `Tpm.physical_presence`, off at power-on.
"""
from ...wire.constants import TPM_CC

ALWAYS = int(TPM_CC.PP_Commands)         # the reference's PP_REQUIRED


def required_list(state) -> list:
    """The command codes that need physical presence, ascending."""
    return state.nv.get("pp_commands", [ALWAYS])


def is_required(state, code: int) -> bool:
    return code in required_list(state)


def change(state, table, set_list, clear_list):
    """PhysicalPresenceCommandSet/Clear over the lists: codes that are not implemented, or
    not PP-capable, are ignored, and PP_Commands stays."""
    codes = set(required_list(state))
    for cc in set_list:
        entry = table.get(int(cc))
        if entry is not None and entry[0].pp:
            codes.add(int(cc))
    for cc in clear_list:
        if int(cc) != ALWAYS:
            codes.discard(int(cc))
    state.nv["pp_commands"] = sorted(codes)
    state.dirty = True
