//! DPM-Solver++(2S) ancestral, k-diffusion's `sample_dpmpp_2s_ancestral`: a singlestep
//! second-order data-prediction step (Lu et al. 2022b, Algorithm 1 with `r = 1/2`) down to
//! `sigma_down` of [`ancestral_step`](super::euler_ancestral::ancestral_step), then fresh noise of standard deviation
//! `s_noise sigma_up`. With `lambda = -log sigma` and `h = lambda(sigma_down) - lambda(sigma)`:
//!
//! `u = (sigma_mid / sigma) x - expm1(-h / 2) D(x; sigma)`, `sigma_mid = sqrt(sigma sigma_down)`,
//! `x' = (sigma_down / sigma) x - expm1(-h) D(u; sigma_mid) + s_noise sigma_up z`,
//!
//! `z` the step's standard normal from the Brownian path ([`crate::noise::STREAM_STEP`], the draw
//! `euler-ancestral` uses). The step to sigma = 0 is an Euler step (it returns `D(x; sigma)`),
//! so `n` steps cost `2n - 1` evaluations. `eta = 0` is the deterministic DPM-Solver++(2S).
//!
//! Three variants share the step (ComfyUI, `comfy/k_diffusion/sampling.py`):
//! - `dpmpp-2s-ancestral-rf`, `sample_dpmpp_2s_ancestral_RF` (what ComfyUI's
//!   `dpmpp_2s_ancestral` runs on a rectified-flow model): the split of
//!   [`rf_ancestral_step`](super::euler_ancestral::rf_ancestral_step). DPM-Solver++ is invariant under the scaling, so ComfyUI's step in
//!   the flow's `t` and `x_t` is this one in the scaled variable.
//! - `dpmpp-2s-ancestral-cfgpp`, `sample_dpmpp_2s_ancestral_cfg_pp` (CFG++, Chung et al. 2025):
//!   both evaluations are guided, the step is taken with their unconditional halves `D_u`
//!   (`u` and `x'` as above with `D_u` for `D`), and the first evaluation's guidance
//!   `D - D_u` is added after the noise; on the step to 0 the Euler step with `D_u` plus it
//!   returns `D`. Without guidance it is `dpmpp-2s-ancestral`.
//! - `dpmpp-2s-ancestral-cfgpp-rf`, `sample_dpmpp_2s_ancestral_RF_cfg_pp` (what the CFG++ one
//!   runs on a rectified-flow model): both changes; ComfyUI adds `(1 - t') (D - D_u)` to
//!   `x_t`, which is `D - D_u` in the scaled variable.

use super::euler_ancestral::{check_rf_eta, split};
use super::{add_step_noise, check_nonneg};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct DpmPp2SAncestral {
    pub eta: f64,
    pub s_noise: f64,
    /// The rectified-flow split ([`rf_ancestral_step`](super::euler_ancestral::rf_ancestral_step)).
    pub rf: bool,
    /// CFG++'s form: the step with the unconditional branch, the guidance added after it.
    pub cfgpp: bool,
}

impl DpmPp2SAncestral {
    pub fn new(eta: f64, s_noise: f64) -> Result<Self> {
        Self::variant(eta, s_noise, false, false)
    }

    /// The variant with the rectified-flow split (`rf`, `eta` in [0, 1]) and/or CFG++'s
    /// renoising (`cfgpp`).
    pub fn variant(eta: f64, s_noise: f64, rf: bool, cfgpp: bool) -> Result<Self> {
        if rf {
            check_rf_eta(eta)?;
        } else {
            check_nonneg("eta", eta)?;
        }
        check_nonneg("s_noise", s_noise)?;
        Ok(DpmPp2SAncestral {
            eta,
            s_noise,
            rf,
            cfgpp,
        })
    }

    /// `D` and the estimate the step is taken with (`D_u` for CFG++, else `D` itself).
    fn evaluate(&self, ctx: &mut StepCtx<'_>, x: &Tensor, sigma: f64) -> Result<(Tensor, Tensor)> {
        if self.cfgpp {
            ctx.denoise_guided(x, sigma)
        } else {
            let d = ctx.denoise(x, sigma)?;
            Ok((d.shallow_clone(), d))
        }
    }
}

impl Sampler for DpmPp2SAncestral {
    fn name(&self) -> &'static str {
        match (self.rf, self.cfgpp) {
            (false, false) => "dpmpp-2s-ancestral",
            (true, false) => "dpmpp-2s-ancestral-rf",
            (false, true) => "dpmpp-2s-ancestral-cfgpp",
            (true, true) => "dpmpp-2s-ancestral-cfgpp-rf",
        }
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let (down, up) = split(self.rf, s, s_next, self.eta);
        let (denoised, stepped) = self.evaluate(ctx, &x, s)?;
        let x = if down == 0.0 {
            // Euler's step to 0, as k-diffusion takes it: x + (x - D) / sigma * (0 - sigma).
            let d = (&x - &stepped) / s;
            x + d * (down - s)
        } else {
            let h = s.ln() - down.ln();
            let s_mid = (0.5 * (s.ln() + down.ln())).exp();
            let u = &x * (s_mid / s) - &stepped * (-0.5 * h).exp_m1();
            let (_, stepped_2) = self.evaluate(ctx, &u, s_mid)?;
            x * (down / s) - stepped_2 * (-h).exp_m1()
        };
        let x = add_step_noise(ctx, x, s_next, s, up * self.s_noise)?;
        Ok(if self.cfgpp {
            x + (denoised - stepped)
        } else {
            x
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::euler_ancestral::{ancestral_step, rf_ancestral_step};
    use super::*;

    #[test]
    fn the_rf_split_keeps_the_marginal_and_is_comfyuis() {
        // At t = sigma / (1 + sigma): ComfyUI's t_down = t' (1 + (t'/t - 1) eta) and its
        // renoising to t'; the scaled variable's sigma_down^2 + sigma_up^2 is sigma'^2.
        for (s, s_next, eta) in [(80.0, 20.0, 1.0), (3.0, 1.5, 0.5), (0.4, 0.1, 0.8)] {
            let (down, up) = rf_ancestral_step(s, s_next, eta);
            let (t, tn) = (s / (1.0 + s), s_next / (1.0 + s_next));
            let t_down = tn * (1.0 + (tn / t - 1.0) * eta);
            assert!((down / (1.0 + down) - t_down).abs() < 1e-14);
            assert!((down * down + up * up - s_next * s_next).abs() < 1e-12 * s_next * s_next);
            // ComfyUI's renoise coefficient in x_t, sqrt(t'^2 - t_down^2 (1-t')^2/(1-t_down)^2),
            // is (1 - t') sigma_up.
            let renoise =
                (tn * tn - t_down * t_down * (1.0 - tn).powi(2) / (1.0 - t_down).powi(2)).sqrt();
            assert!((renoise - (1.0 - tn) * up).abs() < 1e-14, "{renoise} {up}");
        }
        // At eta = 1 it stops above k-diffusion's sigma_down (less fresh noise): 11.25 against
        // 5 from 80 to 20; below 1 the two scale eta differently (3 -> 1.5 at 0.5: 1.17 against
        // 1.35).
        for (s, s_next) in [(80.0, 20.0), (3.0, 1.5), (0.4, 0.1)] {
            assert!(rf_ancestral_step(s, s_next, 1.0).0 > ancestral_step(s, s_next, 1.0).0);
        }
        assert!(rf_ancestral_step(3.0, 1.5, 0.5).0 < ancestral_step(3.0, 1.5, 0.5).0);
        assert_eq!(rf_ancestral_step(2.0, 1.0, 0.0), (1.0, 0.0));
        assert_eq!(rf_ancestral_step(2.0, 0.0, 1.0), (0.0, 0.0));
        assert!(DpmPp2SAncestral::variant(1.5, 1.0, true, false).is_err());
        assert!(DpmPp2SAncestral::variant(1.5, 1.0, false, false).is_ok());
    }
}
