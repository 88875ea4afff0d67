//! Reading and writing `.npy` matrices, validated and written atomically.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Read a float32 or float64 `.npy` array as an f64 tensor on the CPU, checking the file fully
/// (header, dtype, length). Shape checks are the caller's.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = parse(path, &bytes)?;
    if npy.order() != npyz::Order::C {
        bail!(
            "{}: Fortran-ordered arrays are not supported",
            path.display()
        );
    }
    let shape: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    let dtype = npy.dtype().descr().trim_matches('\'').to_string();
    let data: Vec<f64> = match dtype.trim_start_matches(['<', '=', '|']) {
        "f8" => npy.into_vec::<f64>(),
        "f4" => npy
            .into_vec::<f32>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        other => bail!(
            "{}: expected float32 or float64 data, found dtype '{other}'",
            path.display()
        ),
    }
    .map_err(|e| anyhow::anyhow!("{} is corrupt or truncated: {e}", path.display()))?;
    let numel: i64 = shape.iter().product();
    if data.len() as i64 != numel {
        bail!(
            "{} is corrupt: {} values for shape {:?}",
            path.display(),
            data.len(),
            shape
        );
    }
    // The data must end where the header's shape says (trailing bytes mean a wrong header).
    let offset = match bytes.get(6) {
        Some(1) => 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
        _ => 12 + u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
    };
    let item = if dtype.ends_with("f8") { 8 } else { 4 };
    let expected = offset + numel as usize * item;
    if bytes.len() != expected {
        bail!(
            "{} is corrupt: {} bytes, but its header (shape {:?}) describes {}",
            path.display(),
            bytes.len(),
            shape,
            expected
        );
    }
    Ok(Tensor::from_slice(&data).view(shape.as_slice()))
}

/// Read class labels: an int32 or int64 `.npy` of shape `[N]` with values >= 0.
pub fn read_labels(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = parse(path, &bytes)?;
    if npy.shape().len() != 1 || npy.shape()[0] == 0 {
        bail!(
            "labels file {} has shape {:?}, expected [N]",
            path.display(),
            npy.shape()
        );
    }
    let dtype = npy.dtype().descr().trim_matches('\'').to_string();
    let v: Vec<i64> = match dtype.trim_start_matches(['<', '=', '|']) {
        "i8" => npy.into_vec::<i64>(),
        "i4" => npy
            .into_vec::<i32>()
            .map(|v| v.into_iter().map(i64::from).collect()),
        other => bail!(
            "{}: expected int32 or int64 labels, found dtype '{other}'",
            path.display()
        ),
    }
    .map_err(|e| anyhow::anyhow!("{} is corrupt or truncated: {e}", path.display()))?;
    if v.iter().any(|&l| l < 0) {
        bail!("labels file {} has negative labels", path.display());
    }
    Ok(Tensor::from_slice(&v))
}

/// Read an `[N, d]` matrix of finite values.
pub fn read_matrix(path: &Path, d: usize, what: &str) -> Result<Tensor> {
    let t = read(path)?;
    let size = t.size();
    if size.len() != 2 || size[1] != d as i64 || size[0] == 0 {
        bail!(
            "{what} {} has shape {:?}, expected [N, {d}] with N >= 1",
            path.display(),
            size
        );
    }
    if t.isfinite().all().int64_value(&[]) == 0 {
        bail!("{what} {} contains NaN or infinite values", path.display());
    }
    Ok(t)
}

/// Read `[N, ...shape]` of finite values.
pub fn read_shaped(path: &Path, shape: &[i64], what: &str) -> Result<Tensor> {
    if shape.len() == 1 {
        return read_matrix(path, shape[0] as usize, what);
    }
    let t = read(path)?;
    let size = t.size();
    if size.len() != shape.len() + 1 || size[1..] != shape[..] || size[0] == 0 {
        bail!(
            "{what} {} has shape {:?}, expected [N, {}]",
            path.display(),
            size,
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if t.isfinite().all().int64_value(&[]) == 0 {
        bail!("{what} {} contains NaN or infinite values", path.display());
    }
    Ok(t)
}

/// [`read_shaped`], or an exact-inversion sampler's latent pair as `sample --invert` writes it:
/// `[2, N, ...]`, the latents and their companion.
pub fn read_shaped_or_pair(
    path: &Path,
    shape: &[i64],
    what: &str,
) -> Result<(Tensor, Option<Tensor>)> {
    let t = read(path)?;
    let size = t.size();
    if size.len() == shape.len() + 2 && size[0] == 2 && size[1] > 0 && size[2..] == shape[..] {
        if t.isfinite().all().int64_value(&[]) == 0 {
            bail!("{what} {} contains NaN or infinite values", path.display());
        }
        return Ok((t.get(0), Some(t.get(1))));
    }
    Ok((read_shaped(path, shape, what)?, None))
}

/// `path` with its symbolic links followed to the last name (which need not exist yet).
fn resolve_links(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(t) if t.is_absolute() => p = t,
            Ok(t) => p = p.parent().unwrap_or(Path::new("")).join(t),
            Err(_) => break,
        }
    }
    p
}

/// An existing output that is neither a regular file nor a folder: a device (`/dev/null`) or a
/// named pipe, which is written into, not replaced.
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| !m.is_file() && !m.is_dir())
        .unwrap_or(false)
}

/// The `.npy` header of `bytes` (the contents of `path`), its parse error on one line.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<npyz::NpyFile<&'a [u8]>> {
    npyz::NpyFile::new(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid .npy file: {}",
            path.display(),
            one_line(&e.to_string())
        )
    })
}

/// A parser's multi-line message (a header's syntax error draws the line and a caret) as one
/// line: its first line and its `= ...` notes.
fn one_line(msg: &str) -> String {
    let mut lines = msg.lines().map(str::trim);
    let mut out = lines.next().unwrap_or_default().to_string();
    for note in lines.filter_map(|l| l.strip_prefix("= ")) {
        out.push_str("; ");
        out.push_str(note);
    }
    out
}

/// Check, before any work, that the output folder `dir` exists or could be created (its nearest
/// existing ancestor is a folder), without creating it: a command creates its folder only when
/// it has something to write, so a failure leaves no empty folder behind.
pub fn check_out_dir(dir: &Path) -> Result<()> {
    let mut p = dir;
    loop {
        if p.as_os_str().is_empty() {
            return Ok(()); // relative to the current folder
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => bail!(
                "cannot create output folder {}: {} is not a folder",
                dir.display(),
                p.display()
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match p.parent() {
                    Some(parent) => p = parent,
                    None => return Ok(()),
                }
            }
            Err(e) => bail!("cannot create output folder {}: {e}", dir.display()),
        }
    }
}

/// Create the output folder `dir` (and its parents) when a command first writes into it.
pub fn create_out_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Outputs `names` of the folder `dir` that are folders themselves cannot be written: an
/// error naming the first, checked before any work so that no other output is written.
pub fn check_out_files(dir: &Path, names: &[&str]) -> Result<()> {
    for n in names {
        let p = dir.join(n);
        if p.is_dir() {
            bail!("cannot write {}: it is a folder", p.display());
        }
    }
    Ok(())
}

/// An output file given as `flag` that is a folder is an error, checked before any work.
pub fn check_out_file(flag: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{flag} {} is a folder; give a file path", path.display());
    }
    Ok(())
}

/// Whether two paths name one existing file (through links and `..`).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A temporary sibling of `path` (of the file a symbolic link points to) that [`commit`] moves
/// over it once complete; in the temporary folder where `path` is a device or a pipe.
pub fn temp_path(path: &Path) -> PathBuf {
    let target = resolve_links(path);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Keep the extension last: some writers choose the format by it.
    let ext = target
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let tmp = format!(".{name}.{}.partial{ext}", std::process::id());
    if is_special(&target) {
        return std::env::temp_dir().join(format!(".scoreflow{tmp}"));
    }
    target.with_file_name(tmp)
}

/// Put the finished temporary file `tmp` (from [`temp_path`]) in place of `path`: a rename, so
/// a reader sees the old file or the new one, never part of one; a symbolic link keeps pointing
/// where it did (the file it points to is replaced); a device or a named pipe is written into,
/// as a shell redirection would.
pub fn commit(tmp: &Path, path: &Path) -> std::io::Result<()> {
    let target = resolve_links(path);
    if is_special(&target) {
        let copied = std::fs::File::open(tmp).and_then(|mut src| {
            let mut dst = std::fs::OpenOptions::new().write(true).open(&target)?;
            std::io::copy(&mut src, &mut dst).map(|_| ())
        });
        let _ = std::fs::remove_file(tmp);
        return copied;
    }
    std::fs::rename(tmp, &target)
}

/// Write `t` as a float32 `.npy` atomically: a temporary file in the same folder, then a rename,
/// so a reader never sees a half-written file.
pub fn write_f32(path: &Path, t: &Tensor) -> Result<()> {
    write_as(path, t, Kind::Float)
}

/// [`write_f32`] in another element type (`Kind::Double`: `<f8`).
pub fn write_as(path: &Path, t: &Tensor, kind: Kind) -> Result<()> {
    let cpu = t.to_device(tch::Device::Cpu);
    let out = cpu.to_kind(kind).contiguous();
    // Finite values that the narrower type cannot hold (a float64 run's |x| above 3.4e38)
    // would be written as infinities.
    let all_finite = |x: &Tensor| x.numel() == 0 || x.isfinite().all().int64_value(&[]) != 0;
    if cpu.kind() != kind && cpu.is_floating_point() && all_finite(&cpu) && !all_finite(&out) {
        bail!(
            "cannot write {}: its values (largest magnitude {:e}) are beyond the range of {kind:?}",
            path.display(),
            cpu.abs().max().double_value(&[])
        );
    }
    let tmp = temp_path(path);
    let result = out
        .write_npy(&tmp)
        .map_err(anyhow::Error::from)
        .and_then(|_| commit(&tmp, path).map_err(anyhow::Error::from));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}
