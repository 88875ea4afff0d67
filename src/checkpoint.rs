//! Checkpoints: one safetensors file with the network weights (`net.*`), their EMA (`ema.*`),
//! Adam's moments (`adam_m.*`, `adam_v.*`) and, in its metadata, the whole training config
//! (JSON), the step and the data dimension. Written atomically: a temporary file, then a rename.

use crate::npy::temp_path;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const FORMAT: &str = "scoreflow-checkpoint-v1";

/// What a checkpoint holds, tensors on the CPU in float32.
pub struct Checkpoint {
    pub tensors: BTreeMap<String, Tensor>,
    pub meta: HashMap<String, String>,
}

impl Checkpoint {
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(|s| s.as_str())
            .ok_or_else(|| anyhow!("checkpoint metadata has no '{key}'"))
    }
    pub fn tensor(&self, key: &str) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .ok_or_else(|| anyhow!("checkpoint has no tensor '{key}'"))
    }
}

/// Write tensors and metadata to `path` atomically.
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    meta: HashMap<String, String>,
) -> Result<()> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * 4];
        t.f_copy_data_u8(&mut bytes, numel)?;
        buffers.push((name.clone(), shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let data = safetensors::serialize(views, Some(meta))?;
    let tmp = temp_path(path);
    let res = std::fs::write(&tmp, data).and_then(|_| crate::npy::commit(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write checkpoint {}: {e}", path.display());
    }
    Ok(())
}

/// Read and validate a checkpoint file.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let corrupt = |e: &dyn std::fmt::Display| {
        anyhow!(
            "checkpoint {} is corrupt or not a safetensors file: {e}",
            path.display()
        )
    };
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&e))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    if meta.get("format").map(|s| s.as_str()) != Some(FORMAT) {
        bail!(
            "{} is not a scoreflow checkpoint (metadata format is not {FORMAT})",
            path.display()
        );
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&e))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!(
                "checkpoint {}: tensor {name} is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, Kind::Float)?;
        tensors.insert(name, t);
    }
    Ok(Checkpoint { tensors, meta })
}
