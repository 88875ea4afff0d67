"""Print NVlabs/edm2's post-hoc EMA numbers, computed by its own code.

Usage: python3 experiments/peers/edm2_posthoc.py EDM2_REPO

EDM2_REPO is a checkout of https://github.com/NVlabs/edm2. Its `training/phema.py` (imports only
numpy and torch) is loaded by file path and run as it stands: `std_to_exp` for a few widths,
`power_function_correlation` for a few pairs of profiles (samples seen, sigma_rel), and
`solve_posthoc_coefficients` for snapshots of sigma_rel 0.05 and 0.10 at 4 training lengths
(a well-conditioned system) and three targets. It prints one JSON line per quantity, with full
precision; scoreflow's test `posthoc_matches_edm2s_phema` (tests/train.rs) pins them.
"""
import importlib.util
import json
import os
import sys

import numpy as np

STDS = [0.05, 0.10, 0.15, 0.2]
PAIRS = [((1000.0, 0.05), (1000.0, 0.10)), ((250.0, 0.05), (1000.0, 0.10)), ((1000.0, 0.2), (400.0, 0.05))]
SNAP_OFS = [250.0, 500.0, 750.0, 1000.0]
SNAP_STDS = [0.05, 0.10]
TARGETS = [(1000.0, 0.07), (800.0, 0.12), (1000.0, 0.05)]


def main():
    path = os.path.join(sys.argv[1], "training", "phema.py")
    spec = importlib.util.spec_from_file_location("phema", path)
    phema = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(phema)
    r = lambda v: repr(float(v))
    print(json.dumps({"std_to_exp": {str(s): r(phema.std_to_exp(s)) for s in STDS}}))
    print(json.dumps({"correlation": [[a, b, r(phema.power_function_correlation(a[0], a[1], b[0], b[1]))]
                                      for a, b in PAIRS]}))
    in_ofs = np.array([o for o in SNAP_OFS for _ in SNAP_STDS])
    in_std = np.array([s for _ in SNAP_OFS for s in SNAP_STDS])
    for ofs, std in TARGETS:
        x = phema.solve_posthoc_coefficients(in_ofs, in_std, ofs, std)[:, 0]
        print(json.dumps({"target": [ofs, std], "coefficients": [r(v) for v in x]}))


if __name__ == "__main__":
    main()
