//! Opening safetensors checkpoints (single file or sharded) and mapping the checkpoint's key
//! layout onto the one the model code uses.
//!
//! Tensors are read with plain file reads, one at a time, not through a memory map: every weight
//! is converted or copied into the model's own buffers anyway, and a map keeps the file's pages
//! resident (and counted in the process's memory) until loading ends, which made peak memory
//! the converted weights plus the whole file.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::source::{read_json, Fetcher};
use crate::{Error, Result};

/// Finds the weight files: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub(crate) fn weight_files(fetcher: &Fetcher) -> Result<Vec<PathBuf>> {
    if let Some(index) = fetcher.get("model.safetensors.index.json")? {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::InvalidJson {
                path: index.clone(),
                message: "expected an object `weight_map` (tensor name -> shard file)".into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        if shards.is_empty() {
            return Err(Error::InvalidJson {
                path: index,
                message: "`weight_map` lists no shard files".into(),
            });
        }
        return shards.into_iter().map(|s| fetcher.require(s)).collect();
    }
    Ok(vec![fetcher.require("model.safetensors")?])
}

/// Checks every file parses as safetensors (naming the bad one) and returns all tensor names.
fn read_keys(files: &[PathBuf]) -> Result<BTreeSet<String>> {
    let mut keys = BTreeSet::new();
    for path in files {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the file is opened read-only and the map is dropped before we return (only the
        // header pages are touched); a concurrent writer could change what we read, but the
        // parser only reads bytes and checks every offset against the map's length.
        #[allow(unsafe_code)]
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| Error::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        keys.extend(st.names().into_iter().map(String::from));
    }
    Ok(keys)
}

/// One layout rule: a canonical key prefix and the prefixes it may be stored under (each
/// family lists its own, see `families`).
pub(crate) struct PrefixRule {
    canonical: &'static str,
    stored: &'static [&'static str],
}

impl PrefixRule {
    pub(crate) const fn new(canonical: &'static str, stored: &'static [&'static str]) -> Self {
        Self { canonical, stored }
    }
}

/// Maps each canonical key to the key actually present in the files. Keys already canonical are
/// kept; keys absent in every layout are left as-is so the loader reports the canonical name.
pub(crate) fn canonical_to_stored(
    keys: &BTreeSet<String>,
    rules: &[PrefixRule],
) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for key in keys {
        for rule in rules {
            for stored in rule.stored {
                if let Some(rest) = key.strip_prefix(stored) {
                    let canonical = format!("{}{rest}", rule.canonical);
                    if !keys.contains(&canonical) {
                        map.entry(canonical).or_insert_with(|| key.clone());
                    }
                }
            }
        }
    }
    map
}

/// A `VarBuilder` over `files`, in `dtype`, whose names are canonical.
pub(crate) fn var_builder(
    files: &[PathBuf],
    rules: &[PrefixRule],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let keys = read_keys(files)?;
    let map = Arc::new(canonical_to_stored(&keys, rules));
    let backend = FileTensors::open(files)?;
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
    Ok(vb.rename_f(move |name: &str| map.get(name).cloned().unwrap_or_else(|| name.to_string())))
}

/// Where one tensor's bytes are.
#[derive(Debug)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    len: usize,
}

/// Safetensors files read tensor by tensor with positioned reads.
#[derive(Debug)]
struct FileTensors {
    files: Vec<(PathBuf, Mutex<std::fs::File>)>,
    entries: HashMap<String, Entry>,
}

fn safetensors_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

impl FileTensors {
    fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let io = |source| Error::Io {
                path: path.clone(),
                source,
            };
            let bad = |message: String| Error::Safetensors {
                path: path.clone(),
                message,
            };
            let mut file = std::fs::File::open(path).map_err(io)?;
            let mut len = [0u8; 8];
            file.read_exact(&mut len).map_err(io)?;
            let header_len = usize::try_from(u64::from_le_bytes(len))
                .map_err(|_| bad("header length does not fit in memory".into()))?;
            let mut header = vec![0u8; header_len];
            file.read_exact(&mut header).map_err(io)?;
            let header: serde_json::Value = serde_json::from_slice(&header)
                .map_err(|e| bad(format!("header is not JSON: {e}")))?;
            let obj = header
                .as_object()
                .ok_or_else(|| bad("header is not a JSON object".into()))?;
            let data_start = 8 + header_len as u64;
            for (name, info) in obj {
                if name == "__metadata__" {
                    continue;
                }
                let field = |key: &str| {
                    info.get(key)
                        .ok_or_else(|| bad(format!("tensor `{name}` has no `{key}`")))
                };
                let dtype_name = field("dtype")?.as_str().unwrap_or("?");
                let dtype = safetensors_dtype(dtype_name).ok_or_else(|| {
                    bad(format!(
                        "tensor `{name}` has dtype {dtype_name}, which candle cannot hold"
                    ))
                })?;
                let numbers = |key: &str| -> Result<Vec<usize>> {
                    field(key)?
                        .as_array()
                        .ok_or_else(|| bad(format!("tensor `{name}`: `{key}` is not a list")))?
                        .iter()
                        .map(|v| {
                            v.as_u64().map(|n| n as usize).ok_or_else(|| {
                                bad(format!("tensor `{name}`: `{key}` holds a non-integer"))
                            })
                        })
                        .collect()
                };
                let shape = numbers("shape")?;
                let offsets = numbers("data_offsets")?;
                let [begin, end] = offsets[..] else {
                    return Err(bad(format!(
                        "tensor `{name}`: data_offsets is not [begin, end]"
                    )));
                };
                let want = shape.iter().product::<usize>() * dtype.size_in_bytes();
                if end < begin || end - begin != want {
                    return Err(bad(format!(
                        "tensor `{name}`: {} bytes for shape {shape:?} in {dtype_name}, expected {want}",
                        end.saturating_sub(begin)
                    )));
                }
                entries.insert(
                    name.clone(),
                    Entry {
                        file: index,
                        dtype,
                        shape,
                        start: data_start + begin as u64,
                        len: want,
                    },
                );
            }
            files.push((path.clone(), Mutex::new(file)));
        }
        Ok(Self { files, entries })
    }

    fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let (path, file) = &self.files[entry.file];
        let mut bytes = vec![0u8; entry.len];
        {
            let mut file = file
                .lock()
                .map_err(|_| candle_core::Error::Msg("a weight reader panicked".into()))?;
            file.seek(SeekFrom::Start(entry.start))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "reading `{name}` from {}: {e}",
                        path.display()
                    ))
                })?;
        }
        Tensor::from_raw_buffer(&bytes, entry.dtype, &entry.shape, &Device::Cpu)
    }
}

impl SimpleBackend for FileTensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}
