"""ctpm: a confidential TPM 2.0 emulator daemon."""
__version__ = "0.1.0"
