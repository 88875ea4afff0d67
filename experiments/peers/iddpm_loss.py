"""Run improved DDPM's own training loss on a case that scoreflow's hybrid loss computed.

Usage:
  SCOREFLOW_IDDPM_CASE=/tmp/iddpm-case cargo test --release --test learned_variance the_
  python3 experiments/peers/iddpm_loss.py /tmp/iddpm-case IMPROVED_DIFFUSION_REPO

IMPROVED_DIFFUSION_REPO is a checkout of https://github.com/openai/improved-diffusion. The test
writes the chain's betas, the data x_start (on the 8-bit grid in [-1, 1]), the steps t, the
noise, a network's outputs as an eps prediction and a variance output v, and scoreflow's
per-sample loss (`[loss] kind = "ddpm"`, decoder "discretized", a network with
`model.learned_sigmas`). This script builds improved-diffusion's GaussianDiffusion on the same
betas with ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE and LossType.RESCALED_MSE (the
hybrid objective of `--learn_sigma True`), calls its `training_losses` with a stand-in model
that returns those outputs, and prints the largest relative difference of the per-sample
losses, and of the parts ("mse", "vb"). The same for `objective = "vlb"` (LossType.RESCALED_KL),
and improved-diffusion's LossSecondMomentResampler fed the sequence of (step, loss) that
scoreflow's `step_sampler = "loss-second-moment"` saw, against its final probabilities.
"""
import os
import sys

import numpy as np
import torch


def main():
    case, repo = sys.argv[1], sys.argv[2]
    sys.path.insert(0, repo)
    from improved_diffusion import gaussian_diffusion as gd

    load = lambda name: np.load(os.path.join(case, name + ".npy"))
    betas = load("betas").astype(np.float64)
    x_start = torch.from_numpy(load("x_start"))
    noise = torch.from_numpy(load("noise"))
    t = torch.from_numpy(load("t")).long()
    out = torch.cat([torch.from_numpy(load("eps_hat")), torch.from_numpy(load("v"))], dim=1)
    ours = load("loss").astype(np.float64)

    def losses(loss_type):
        diffusion = gd.GaussianDiffusion(
            betas=betas,
            model_mean_type=gd.ModelMeanType.EPSILON,
            model_var_type=gd.ModelVarType.LEARNED_RANGE,
            loss_type=loss_type,
            rescale_timesteps=False,
        )
        return diffusion.training_losses(lambda x, ts: out, x_start, t, noise=noise)

    terms = losses(gd.LossType.RESCALED_MSE)
    theirs = terms["loss"].double().numpy()
    rel = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-2)
    worst = int(rel.argmax())
    print(
        f"{len(ours)} samples, steps {int(t.min())}..{int(t.max())} of {len(betas)}: "
        f"largest relative difference {rel.max():.2e} (sample {worst}, t = {int(t[worst])}: "
        f"scoreflow {ours[worst]:.6f}, improved-diffusion {theirs[worst]:.6f}); "
        f"at t = 0 (the discretized decoder) {rel[t.numpy() == 0].max():.2e}, "
        f"elsewhere {rel[t.numpy() > 0].max():.2e}"
    )
    print(
        f"their parts: mse {terms['mse'].mean():.6f}, vb {terms['vb'].mean():.6f} "
        f"(mean over samples; vb already times T / 1000)"
    )
    if rel.max() > 1e-4:
        sys.exit(f"scoreflow's hybrid loss differs from improved-diffusion's by {rel.max():.2e}")

    # objective = "vlb": LossType.RESCALED_KL on the same draws.
    if os.path.exists(os.path.join(case, "loss_kl.npy")):
        ours_kl = load("loss_kl").astype(np.float64)
        theirs_kl = losses(gd.LossType.RESCALED_KL)["loss"].double().numpy()
        rel_kl = np.abs(ours_kl - theirs_kl) / np.maximum(np.abs(theirs_kl), 1e-2)
        print(f"objective vlb (RESCALED_KL): largest relative difference {rel_kl.max():.2e}")
        if rel_kl.max() > 1e-4:
            sys.exit(f"scoreflow's vlb objective differs from improved-diffusion's by {rel_kl.max():.2e}")

    # step_sampler = "loss-second-moment": their LossSecondMomentResampler fed the same losses.
    if os.path.exists(os.path.join(case, "resample_t.npy")):
        from improved_diffusion import resample

        ts, losses = load("resample_t"), load("resample_loss").astype(np.float64)
        ours_p = load("resample_p").astype(np.float64)

        class Steps:
            num_timesteps = len(ours_p)

        if not hasattr(np, "int"):
            np.int = int  # resample.py uses the alias that numpy 1.24 removed
        sampler = resample.LossSecondMomentResampler(Steps())
        sampler.update_with_all_losses([int(x) for x in ts], [float(x) for x in losses])
        w = sampler.weights()
        theirs_p = w / w.sum()
        diff = np.abs(ours_p - theirs_p).max() / theirs_p.max()
        print(
            f"step sampler after {len(ts)} losses on {len(ours_p)} steps: "
            f"largest difference of the probabilities {diff:.2e} (relative to the largest)"
        )
        if diff > 1e-6:
            sys.exit(f"scoreflow's step sampler differs from improved-diffusion's by {diff:.2e}")


if __name__ == "__main__":
    main()
