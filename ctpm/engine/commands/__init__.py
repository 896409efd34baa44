"""The Part 3 command chapters: the handler functions that `engine/handlers.py` maps to the
command table. They use the subsystems; the pipeline (dispatch, tpm) calls them."""
