# Source this file: it makes sure PyPI's torch==2.11.0 (libtorch for tch 0.24) is installed in
# a cached environment and exports what the build needs.
#
#   SCOREFLOW_VENV   where the environment lives (default: ~/.cache/scoreflow/venv-torch-2.11.0,
#                    shared between clones so CI and later checkouts reuse it)
#   SCOREFLOW_PYTHON the python3 used to create it (default: python3)
#
# A virtual environment is used where python3 has the venv module; otherwise torch is
# installed with `pip install --target` into the same folder and found through PYTHONPATH.

SCOREFLOW_TORCH_VERSION="2.11.0"
: "${SCOREFLOW_VENV:=${XDG_CACHE_HOME:-$HOME/.cache}/scoreflow/venv-torch-${SCOREFLOW_TORCH_VERSION}}"
: "${SCOREFLOW_PYTHON:=python3}"

scoreflow_check_torch() { # $1: python, rest: env assignments
  local py="$1"; shift
  env "$@" "$py" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$SCOREFLOW_TORCH_VERSION' else 1)" 2>/dev/null
}

if [ -x "$SCOREFLOW_VENV/bin/python" ] && scoreflow_check_torch "$SCOREFLOW_VENV/bin/python"; then
  scoreflow_mode=venv
elif [ -d "$SCOREFLOW_VENV/site/torch" ] && scoreflow_check_torch "$SCOREFLOW_PYTHON" PYTHONPATH="$SCOREFLOW_VENV/site"; then
  scoreflow_mode=target
else
  echo "scoreflow: installing torch==$SCOREFLOW_TORCH_VERSION into $SCOREFLOW_VENV (once; about 4.6 GB)" >&2
  mkdir -p "$(dirname "$SCOREFLOW_VENV")"
  rm -rf "$SCOREFLOW_VENV.partial"
  if "$SCOREFLOW_PYTHON" -m venv "$SCOREFLOW_VENV.partial" 2>/dev/null &&
    "$SCOREFLOW_VENV.partial/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$SCOREFLOW_TORCH_VERSION" numpy; then
    scoreflow_mode=venv
  else
    rm -rf "$SCOREFLOW_VENV.partial"
    echo "scoreflow: no usable venv module; installing with pip --target" >&2
    "$SCOREFLOW_PYTHON" -m pip install --quiet --disable-pip-version-check --target "$SCOREFLOW_VENV.partial/site" \
      "torch==$SCOREFLOW_TORCH_VERSION" numpy &&
      scoreflow_mode=target ||
      { echo "scoreflow: could not install torch==$SCOREFLOW_TORCH_VERSION" >&2; return 2 2>/dev/null || exit 2; }
  fi
  rm -rf "$SCOREFLOW_VENV" && mv "$SCOREFLOW_VENV.partial" "$SCOREFLOW_VENV"
fi

export LIBTORCH_USE_PYTORCH=1
if [ "$scoreflow_mode" = venv ]; then
  # torch-sys asks `python` when VIRTUAL_ENV is set, `python3` otherwise.
  export VIRTUAL_ENV="$SCOREFLOW_VENV"
  export PATH="$SCOREFLOW_VENV/bin:$PATH"
  scoreflow_py="$SCOREFLOW_VENV/bin/python"
else
  unset VIRTUAL_ENV
  export PYTHONPATH="$SCOREFLOW_VENV/site${PYTHONPATH:+:$PYTHONPATH}"
  scoreflow_py="$SCOREFLOW_PYTHON"
fi
export SCOREFLOW_TORCH_LIB="$("$scoreflow_py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"

# The CUDA shim (src/shim/cuda.cpp: CUDA graphs, peak GPU memory) needs the CUDA runtime headers;
# torch brings cuda_runtime_api.h, PyPI's nvidia-cuda-crt brings crt/host_config.h. Copied into
# the same include folder once; without it the build leaves the shim out and says so.
scoreflow_cuda_inc="$SCOREFLOW_TORCH_LIB/../../nvidia/cu13/include"
if [ -f "$scoreflow_cuda_inc/cuda_runtime_api.h" ] && [ ! -f "$scoreflow_cuda_inc/crt/host_config.h" ]; then
  scoreflow_tmp="$(mktemp -d)"
  if "$scoreflow_py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$scoreflow_tmp" "nvidia-cuda-crt==13.0.*" 2>/dev/null &&
    [ -d "$scoreflow_tmp/nvidia/cu13/include/crt" ]; then
    cp -r "$scoreflow_tmp/nvidia/cu13/include/crt" "$scoreflow_cuda_inc/"
  else
    echo "scoreflow: could not install nvidia-cuda-crt; building without the CUDA shim" >&2
  fi
  rm -rf "$scoreflow_tmp"
fi
