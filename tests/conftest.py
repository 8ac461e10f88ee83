import os
import tempfile

# Demo models are built on first use under SPLATVLM_CACHE; keep test runs hermetic unless CI sets it.
os.environ.setdefault("SPLATVLM_CACHE", os.path.join(tempfile.gettempdir(), "splatvlm-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Quiet as the CLI is by default (splatvlm.cli.quiet_libraries): read when transformers/diffusers are imported.
from splatvlm.hub import QUIET_ENV  # noqa: E402 (imports torch only, not the model libraries)

for _name, _value in QUIET_ENV:
    os.environ.setdefault(_name, _value)
