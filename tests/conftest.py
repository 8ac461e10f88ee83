import os
import tempfile

# Demo models are built on first use under SPLATVLM_CACHE; keep test runs hermetic unless CI sets it.
os.environ.setdefault("SPLATVLM_CACHE", os.path.join(tempfile.gettempdir(), "splatvlm-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
