"""The TPM's subsystems: the state model and what the command chapters share (objects,
sessions, context blobs, NV RAM, PCR banks, dictionary-attack counters, clock, audit...).

Nothing here imports `ctpm.engine.commands` or the pipeline (tests/test_import_cycles.py)."""
