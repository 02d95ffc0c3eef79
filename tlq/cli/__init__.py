"""The `tlq` command line. Nothing here imports torch or timm at import time, so `tlq --help` stays fast."""
