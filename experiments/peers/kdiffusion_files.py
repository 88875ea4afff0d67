"""k-diffusion's modules loaded by file path, for the peer scripts (peers.py, external_models.py).

k-diffusion's package `__init__` imports heavy training dependencies (accelerate, clip, wandb,
...), so only the modules the checks need are loaded, under their package names so that their
relative imports (`from . import sampling, utils`) resolve. Where `utils.py` cannot be imported
(no PIL or torchvision, say) the one helper sampling.py and external.py take from it,
`append_dims`, is provided here.
"""

import importlib.util
import os
import sys
import types


def load(fail, files=("sampling.py",)):
    """Load k_diffusion/utils.py (or the stand-in) and then `files` in order; returns
    (the package module with them as attributes, k-diffusion's folder, a note on utils).
    `fail(msg)` is called where k-diffusion is not installed."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        fail("k-diffusion is not installed (put .peers/site on PYTHONPATH; scripts/peers-setup.sh installs it)")
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [root]
    sys.modules["k_diffusion"] = pkg

    def load_file(name, file):
        s = importlib.util.spec_from_file_location(name, os.path.join(root, file))
        m = importlib.util.module_from_spec(s)
        sys.modules[name] = m
        s.loader.exec_module(m)
        return m

    try:
        utils = load_file("k_diffusion.utils", "utils.py")
        utils_note = "k_diffusion/utils.py"
    except ImportError as e:
        utils = types.ModuleType("k_diffusion.utils")

        def append_dims(x, target_dims):
            return x.reshape(tuple(x.shape) + (1,) * (target_dims - x.ndim))

        utils.append_dims = append_dims
        sys.modules["k_diffusion.utils"] = utils
        utils_note = f"stand-in append_dims ({e})"
    pkg.utils = utils
    for file in files:
        name = file.removesuffix(".py")
        setattr(pkg, name, load_file(f"k_diffusion.{name}", file))
    return pkg, root, utils_note
