//! `res-multistep`: the second-order multistep exponential integrator of RES (Zhang, Song & Chen
//! 2023, "Improved Order Analysis and Design of Exponential Integrator for Diffusion Models
//! Sampling", arXiv 2308.02157), as ComfyUI's `res_multistep` (`sample_res_multistep`, and with
//! `eta > 0` `sample_res_multistep_ancestral`) writes it. With `lambda = -log sigma`, a step from
//! `sigma` to `sigma_down` (k-diffusion's ancestral split of the step to `sigma'`; `sigma_down =
//! sigma'` at `eta = 0`) has `h = lambda(sigma_down) - lambda(sigma)` and
//!
//! `x' = e^{-h} x + h (b1 D_i + b2 D_{i-1}) + s_noise sigma_up z`,
//! `b2 = phi2(-h) / c2`, `b1 = phi1(-h) - b2`, `c2 = (lambda(sigma_{i-1}) - lambda(sigma_down,i-1)) / h`,
//!
//! `phi1(z) = (e^z - 1) / z`, `phi2(z) = (phi1(z) - 1) / z`. At `eta = 0`, `c2 = -h_prev / h` and
//! this is the exact integral of `D` interpolated linearly in lambda through the last two outputs:
//! `x' = (sigma' / sigma) x + (1 - sigma' / sigma) D_i + h^2 phi2(-h) (D_i - D_{i-1}) / h_prev`,
//! which is diffusers' multistep DPM-Solver++(2M) with `solver_type = "heun"` (`dpm-multistep`).
//! The first step and the step to 0 are Euler's (the latter returns `D_i`). `z` is the step
//! stream's normal on `[sigma', sigma]`. One evaluation per step.

use super::dpmpp_2m::lambda;
use super::euler_ancestral::ancestral_step;
use super::{add_step_noise, check_nonneg};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct ResMultistep {
    pub eta: f64,
    pub s_noise: f64,
    /// CFG++'s renoising (`res-multistep-cfgpp`, ComfyUI's `res_multistep` with `cfg_pp`): the
    /// unconditional estimate `D_u` in the steps' interpolation and history, the guided `D` as
    /// the offset `x + (D - D_u)` and the Euler steps' target (see [`super::cfgpp`]).
    pub cfg_pp: bool,
}

impl ResMultistep {
    pub fn new(eta: f64, s_noise: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(ResMultistep {
            eta,
            s_noise,
            cfg_pp: false,
        })
    }

    /// The CFG++ form.
    pub fn cfg_pp(eta: f64, s_noise: f64) -> Result<Self> {
        Ok(ResMultistep {
            cfg_pp: true,
            ..Self::new(eta, s_noise)?
        })
    }
}

/// `(phi1(-h), phi2(-h))`.
fn phis(h: f64) -> (f64, f64) {
    let phi1 = (-h).exp_m1() / -h;
    (phi1, (phi1 - 1.0) / -h)
}

impl Sampler for ResMultistep {
    fn name(&self) -> &'static str {
        if self.cfg_pp {
            "res-multistep-cfgpp"
        } else {
            "res-multistep"
        }
    }
    fn invertible(&self) -> bool {
        self.eta == 0.0 && !self.cfg_pp
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next, i) = (ctx.sigma(), ctx.sigma_next(), ctx.index);
        // (D, D_u): D_u = D without CFG++ (or without guidance), where the formulas below are
        // the plain ones.
        let (d, u) = if self.cfg_pp {
            ctx.denoise_guided(&x, s)?
        } else {
            let d = ctx.denoise(&x, s)?;
            (d.shallow_clone(), d)
        };
        let (down, up) = ancestral_step(s, s_next, self.eta);
        // history: [D_{i-1}]; the previous step's sigma_down follows from the grid and eta.
        let prev = if i > 0 { ctx.history.first() } else { None };
        let out = match prev {
            Some(old) if down > 0.0 => {
                let old_down = ancestral_step(ctx.sigmas[i - 1], s, self.eta).0;
                let h = lambda(down) - lambda(s);
                let c2 = (lambda(ctx.sigmas[i - 1]) - lambda(old_down)) / h;
                let (phi1, phi2) = phis(h);
                let b2 = phi2 / c2;
                let b1 = phi1 - b2;
                let (b1, b2) = if b1.is_finite() && b2.is_finite() {
                    (b1, b2)
                } else {
                    (0.0, 0.0)
                };
                let x = if self.cfg_pp { &x + (&d - &u) } else { x };
                x * (-h).exp() + &u * (h * b1) + old * (h * b2)
            }
            // Euler to sigma_down (D itself at sigma_down = 0).
            _ => &d + (&x - &u) * (down / s),
        };
        let out = add_step_noise(ctx, out, s_next, s, up * self.s_noise)?;
        ctx.history.clear();
        ctx.history.push(u);
        Ok(out)
    }
}
