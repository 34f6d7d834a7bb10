//! `weights-manifest/`: one JSON file per checkpoint the project supports.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// One supported checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ManifestEntry {
    /// Hub repository id (`owner/name`).
    pub hub_id: String,
    /// Pinned revision, when known.
    #[serde(default)]
    pub revision: Option<String>,
    /// `config.json` architecture (`LlavaForConditionalGeneration`, ...).
    pub architecture: String,
    /// Files the loader reads.
    pub files: Vec<String>,
    /// Approximate total size of the weight files, in bytes.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// The model `caption` uses when no `--model` is given.
    #[serde(default)]
    pub default: bool,
}

impl ManifestEntry {
    /// Where to load this entry from.
    pub fn source(&self) -> crate::ModelSource {
        crate::ModelSource::Hub {
            repo: self.hub_id.clone(),
            revision: self.revision.clone().unwrap_or_else(|| "main".into()),
        }
    }
}

/// Reads every `*.json` entry of a manifest folder, sorted by file name.
pub fn read_dir(dir: &Path) -> Result<Vec<ManifestEntry>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| Error::InvalidJson {
                path: p.clone(),
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_manifest_has_one_default_and_known_architectures() -> Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights-manifest");
        let entries = read_dir(&dir)?;
        let defaults: Vec<_> = entries.iter().filter(|e| e.default).collect();
        assert_eq!(defaults.len(), 1, "exactly one default entry");
        assert_eq!(defaults[0].hub_id, "HuggingFaceTB/SmolVLM-256M-Instruct");
        let known = [
            "LlavaForConditionalGeneration",
            "Qwen2VLForConditionalGeneration",
            "Qwen2_5_VLForConditionalGeneration",
            "Idefics3ForConditionalGeneration",
            "LlavaNextForConditionalGeneration",
            "LlavaOnevisionForConditionalGeneration",
        ];
        for e in &entries {
            assert!(
                known.contains(&e.architecture.as_str()),
                "{}: architecture {} is not one we load",
                e.hub_id,
                e.architecture
            );
        }
        Ok(())
    }
}
