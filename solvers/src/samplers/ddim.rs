//! DDIM (Song, Meng & Ermon 2021, eq. 12) with its `eta` parameter, written as published in
//! terms of `alpha_bar`, with the VP correspondence `alpha_bar = 1 / (1 + sigma^2)` and
//! `x_vp = sqrt(alpha_bar) x`:
//!
//! `x'_vp = sqrt(a') x0 + sqrt(1 - a' - s_eta^2) eps + s_eta z`,
//! `s_eta = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')`,
//!
//! where `x0 = D(x; sigma)` and `eps = (x - x0) / sigma`. With `eta = 0` it is Euler's method in
//! `(x / s, sigma)` (Karras et al. 2022, §4); with `eta = 1` it is DDPM's ancestral step.
//! One evaluation per step.

use super::check_nonneg;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use crate::noise::STREAM_STEP;
use crate::sde::alpha_bar_of_sigma;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct Ddim {
    pub eta: f64,
}

impl Ddim {
    pub fn new(eta: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        Ok(Ddim { eta })
    }
}

impl Sampler for Ddim {
    fn name(&self) -> &'static str {
        "ddim"
    }
    fn invertible(&self) -> bool {
        self.eta == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let (a, a_next) = (alpha_bar_of_sigma(s), alpha_bar_of_sigma(s_next));
        let x0 = ctx.denoise(&x, s)?;
        let eps = (&x - &x0) / s;
        // (At eta = 0 no noise, also upwards, where the square root below is of a negative.)
        let s_eta = if self.eta == 0.0 {
            0.0
        } else {
            self.eta * ((1.0 - a_next) / (1.0 - a)).sqrt() * (1.0 - a / a_next).sqrt()
        };
        let dir = (1.0 - a_next - s_eta * s_eta).max(0.0).sqrt();
        let mut x_vp = x0 * a_next.sqrt() + eps * dir;
        if s_eta > 0.0 {
            x_vp += ctx.noise.standard(STREAM_STEP, s_next, s)? * s_eta;
        }
        Ok(x_vp / a_next.sqrt())
    }
}
