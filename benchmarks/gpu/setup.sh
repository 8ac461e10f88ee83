# Source me on the GPU machine: installs carried wheels (.whl/) and prepares gsplat's JIT build.
# Once per machine: a second install gives gsplat's sources new times, and its JIT build then starts again (~70 s).
if [ ! -f /tmp/site/.splatvlm-installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  touch /tmp/site/.splatvlm-installed
fi
export PYTHONPATH=/tmp/site:$PWD/src
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export SPLATVLM_CACHE=/tmp/splatvlm-cache
export PATH=/tmp/site/bin:$PATH
python3 - <<'PY'
import torch, time
t = time.time()
from gsplat.cuda._backend import _C  # triggers the JIT build
print(f"gsplat CUDA backend ready in {time.time() - t:.0f} s: {_C is not None}; torch {torch.__version__}, {torch.cuda.get_device_name()}")
PY
