//! Opening safetensors checkpoints (single file or sharded, memory-mapped) and mapping the
//! checkpoint's key layout onto the one the model code uses.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
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
        // SAFETY: the file is opened read-only and the map is dropped before we return; a
        // concurrent writer could change what we read, but not break memory safety of a `&[u8]`
        // any more than the `candle` loader that maps it again below.
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

/// One layout rule: a canonical key prefix and the prefixes it may be stored under.
pub(crate) struct PrefixRule {
    canonical: &'static str,
    stored: &'static [&'static str],
}

/// Canonical (transformers 5) prefixes of a LLaVA checkpoint and the published-checkpoint
/// prefixes transformers' own conversion mapping accepts for them.
pub(crate) const LLAVA_RULES: &[PrefixRule] = &[
    PrefixRule {
        canonical: "model.language_model.",
        stored: &["language_model.model."],
    },
    PrefixRule {
        canonical: "lm_head.",
        stored: &["language_model.lm_head."],
    },
    PrefixRule {
        canonical: "model.vision_tower.",
        stored: &["vision_tower.vision_model.", "vision_tower."],
    },
    PrefixRule {
        canonical: "model.multi_modal_projector.",
        stored: &["multi_modal_projector."],
    },
];

/// LLaVA-NeXT / OneVision: the LLaVA layout plus the top-level `image_newline` parameter.
pub(crate) const LLAVA_NEXT_RULES: &[PrefixRule] = &[
    PrefixRule {
        canonical: "model.language_model.",
        stored: &["language_model.model."],
    },
    PrefixRule {
        canonical: "lm_head.",
        stored: &["language_model.lm_head."],
    },
    PrefixRule {
        canonical: "model.vision_tower.",
        stored: &["vision_tower.vision_model.", "vision_tower."],
    },
    PrefixRule {
        canonical: "model.multi_modal_projector.",
        stored: &["multi_modal_projector."],
    },
    PrefixRule {
        canonical: "model.image_newline",
        stored: &["image_newline"],
    },
];

/// Canonical prefixes of a Qwen2-VL / Qwen2.5-VL checkpoint and the published layout
/// (`visual.*`, `model.*`), as in transformers' conversion mapping for `qwen2_vl`.
pub(crate) const QWEN2_VL_RULES: &[PrefixRule] = &[
    PrefixRule {
        canonical: "model.visual.",
        stored: &["visual."],
    },
    PrefixRule {
        canonical: "model.language_model.",
        stored: &["model."],
    },
];

/// Maps each canonical key to the key actually present in the files. Keys already canonical are
/// kept; keys absent in every layout are left as-is so the loader reports the canonical name.
fn canonical_to_stored(keys: &BTreeSet<String>, rules: &[PrefixRule]) -> HashMap<String, String> {
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

/// A memory-mapped `VarBuilder` over `files`, in `dtype`, whose names are canonical.
pub(crate) fn var_builder(
    files: &[PathBuf],
    rules: &[PrefixRule],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let keys = read_keys(files)?;
    let map = Arc::new(canonical_to_stored(&keys, rules));
    // SAFETY: as above; candle keeps the maps alive for the VarBuilder's lifetime.
    #[allow(unsafe_code)]
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }
        .map_err(|e| Error::Weights(format!("{} ({})", e, describe_files(files))))?;
    Ok(vb.rename_f(move |name: &str| map.get(name).cloned().unwrap_or_else(|| name.to_string())))
}

fn describe_files(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|p| {
            p.file_name()
                .map(Path::new)
                .unwrap_or(p)
                .display()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_layout_maps_to_canonical() {
        let keys: BTreeSet<String> = [
            "language_model.model.embed_tokens.weight",
            "language_model.lm_head.weight",
            "vision_tower.vision_model.embeddings.class_embedding",
            "multi_modal_projector.linear_1.weight",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let m = canonical_to_stored(&keys, LLAVA_RULES);
        assert_eq!(
            m.get("model.language_model.embed_tokens.weight")
                .map(String::as_str),
            Some("language_model.model.embed_tokens.weight")
        );
        assert_eq!(
            m.get("lm_head.weight").map(String::as_str),
            Some("language_model.lm_head.weight")
        );
        assert_eq!(
            m.get("model.vision_tower.embeddings.class_embedding")
                .map(String::as_str),
            Some("vision_tower.vision_model.embeddings.class_embedding")
        );
        assert_eq!(
            m.get("model.multi_modal_projector.linear_1.weight")
                .map(String::as_str),
            Some("multi_modal_projector.linear_1.weight")
        );
    }

    #[test]
    fn qwen2_vl_published_layout_maps_to_canonical() {
        let keys: BTreeSet<String> = ["visual.blocks.0.attn.qkv.weight", "model.norm.weight"]
            .into_iter()
            .map(String::from)
            .collect();
        let m = canonical_to_stored(&keys, QWEN2_VL_RULES);
        assert_eq!(
            m.get("model.visual.blocks.0.attn.qkv.weight")
                .map(String::as_str),
            Some("visual.blocks.0.attn.qkv.weight")
        );
        assert_eq!(
            m.get("model.language_model.norm.weight")
                .map(String::as_str),
            Some("model.norm.weight")
        );
    }
}
