//! `--device auto|cpu|cuda|cuda:N`.

use anyhow::{bail, Result};
use tch::{Cuda, Device};

pub fn parse(spec: &str) -> Result<Device> {
    let cuda = |i: usize| -> Result<Device> {
        if !Cuda::is_available() {
            bail!(
                "--device {spec}: CUDA is not available on this machine (use --device cpu or auto)"
            );
        }
        let n = Cuda::device_count() as usize;
        if i >= n {
            bail!("--device {spec}: only {n} CUDA device(s) present");
        }
        Ok(Device::Cuda(i))
    };
    match spec {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        s if s.starts_with("cuda:") => match s[5..].parse::<usize>() {
            Ok(i) => cuda(i),
            Err(_) => bail!("--device {spec}: expected cuda:N with N a device index"),
        },
        _ => bail!("unknown device '{spec}' (expected auto, cpu, cuda or cuda:N)"),
    }
}

/// Wait for the device's queued work (a no-op on the CPU); before reading a clock.
pub fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        Cuda::synchronize(i as i64);
    }
}

/// How a device is printed in results: `cpu`, `cuda:0`.
pub fn name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
