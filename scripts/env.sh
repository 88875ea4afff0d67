# Source this file: it makes sure a Python virtual environment with PyPI's torch==2.11.0
# exists (libtorch for tch 0.24) and exports what the build needs.
#
#   SCOREFLOW_VENV   where the environment lives (default: ~/.cache/scoreflow/venv-torch-2.11.0,
#                    shared between clones so CI and later checkouts reuse it)
#   SCOREFLOW_PYTHON the python3 used to create it (default: python3)

SCOREFLOW_TORCH_VERSION="2.11.0"
: "${SCOREFLOW_VENV:=${XDG_CACHE_HOME:-$HOME/.cache}/scoreflow/venv-torch-${SCOREFLOW_TORCH_VERSION}}"
: "${SCOREFLOW_PYTHON:=python3}"

scoreflow_venv_ok() {
  [ -x "$SCOREFLOW_VENV/bin/python" ] &&
    "$SCOREFLOW_VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$SCOREFLOW_TORCH_VERSION' else 1)" 2>/dev/null
}

if ! scoreflow_venv_ok; then
  echo "scoreflow: installing torch==$SCOREFLOW_TORCH_VERSION into $SCOREFLOW_VENV (once; a few GB)" >&2
  mkdir -p "$(dirname "$SCOREFLOW_VENV")"
  rm -rf "$SCOREFLOW_VENV.partial"
  "$SCOREFLOW_PYTHON" -m venv "$SCOREFLOW_VENV.partial" &&
    "$SCOREFLOW_VENV.partial/bin/python" -m pip install --quiet --disable-pip-version-check \
      "torch==$SCOREFLOW_TORCH_VERSION" numpy &&
    rm -rf "$SCOREFLOW_VENV" && mv "$SCOREFLOW_VENV.partial" "$SCOREFLOW_VENV" ||
    { echo "scoreflow: could not install torch==$SCOREFLOW_TORCH_VERSION" >&2; return 2 2>/dev/null || exit 2; }
fi

export LIBTORCH_USE_PYTORCH=1
export PATH="$SCOREFLOW_VENV/bin:$PATH"
export SCOREFLOW_TORCH_LIB="$("$SCOREFLOW_VENV/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
