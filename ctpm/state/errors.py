"""The one error of the state layer."""


class StoreError(Exception):
    """The state directory cannot be used (missing, not writable, locked, damaged, wrong
    key); str() is one line for the user."""
