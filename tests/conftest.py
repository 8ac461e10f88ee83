import os
import tempfile

# Demo models are built on first use under SPLATVLM_CACHE; keep test runs hermetic unless CI sets it.
os.environ.setdefault("SPLATVLM_CACHE", os.path.join(tempfile.gettempdir(), "splatvlm-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Quiet as the CLI is by default (splatvlm.cli.quiet_libraries): read when transformers/diffusers are imported.
for _name, _value in (
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    ("TRANSFORMERS_VERBOSITY", "error"),
    ("DIFFUSERS_VERBOSITY", "error"),
    ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
):
    os.environ.setdefault(_name, _value)
