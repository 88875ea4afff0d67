//! Image grids as PNG.

use crate::npy::temp_path;
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Write images `[N, C, H, W]` with values in [-1, 1] as a PNG grid `cols` wide (grayscale for
/// C = 1, RGB for C = 3), one pixel of border between images, each pixel drawn as a square of
/// `64 / H` pixels (at least 1) so small images are visible. Written atomically.
pub fn write_grid(path: &Path, x: &Tensor, cols: usize) -> Result<()> {
    let size = x.size();
    if size.len() != 4 || !(size[1] == 1 || size[1] == 3) {
        bail!("an image grid needs [N, 1 or 3, H, W], got {size:?}");
    }
    let scale = (64 / size[2]).max(1);
    let x = x
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .upsample_nearest2d([size[2] * scale, size[3] * scale], None, None);
    let size = x.size();
    let (n, c, h, w) = (
        size[0] as usize,
        size[1] as usize,
        size[2] as usize,
        size[3] as usize,
    );
    let cols = cols.min(n).max(1);
    let rows = n.div_ceil(cols);
    let (gw, gh) = (cols * (w + 1) + 1, rows * (h + 1) + 1);
    let px: Vec<f32> = Vec::try_from(
        (x.to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0)
            .multiply_scalar(127.5)
            .contiguous()
            .view([-1]),
    )?;
    let mut buf = vec![40u8; gw * gh * c];
    for i in 0..n {
        let (r0, c0) = ((i / cols) * (h + 1) + 1, (i % cols) * (w + 1) + 1);
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    let v = px[((i * c + ch) * h + y) * w + xx];
                    buf[((r0 + y) * gw + c0 + xx) * c + ch] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    let tmp = temp_path(path);
    let res = (|| -> Result<()> {
        let f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut enc = png::Encoder::new(f, gw as u32, gh as u32);
        enc.set_color(if c == 1 {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&buf)?;
        wr.finish()?;
        crate::npy::commit(&tmp, path)?;
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("cannot write {}", path.display()))
}
