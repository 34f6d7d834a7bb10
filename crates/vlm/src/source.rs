//! Where a checkpoint comes from: a local folder, or a Hub repository through hf-hub's cache.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A checkpoint location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder laid out like a Hub repository (`config.json`, `*.safetensors`, tokenizer files).
    Local(PathBuf),
    /// A Hub repository id (`owner/name`) at a revision (branch, tag or commit).
    Hub {
        /// `owner/name`.
        repo: String,
        /// Branch, tag or commit; `main` by default.
        revision: String,
    },
}

impl ModelSource {
    /// Interprets `spec` as a folder when one exists at that path, else as a Hub id.
    pub fn parse(spec: &str, revision: Option<&str>) -> Self {
        let path = Path::new(spec);
        if path.is_dir() {
            Self::Local(path.to_path_buf())
        } else {
            Self::Hub {
                repo: spec.to_string(),
                revision: revision.unwrap_or("main").to_string(),
            }
        }
    }

    /// A human-readable location for error messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::Hub { repo, revision } => format!("{repo}@{revision}"),
        }
    }
}

/// Fetches files of one checkpoint, locally or through the Hub cache.
pub(crate) enum Fetcher {
    Local(PathBuf),
    #[cfg(feature = "hub")]
    Hub {
        label: String,
        api: Option<Box<hf_hub::api::sync::ApiRepo>>,
        cache: hf_hub::CacheRepo,
    },
}

impl Fetcher {
    pub(crate) fn new(source: &ModelSource) -> Result<Self> {
        match source {
            ModelSource::Local(dir) => {
                if !dir.is_dir() {
                    return Err(Error::MissingFile {
                        file: String::new(),
                        location: format!("{} (not a folder)", dir.display()),
                    });
                }
                Ok(Self::Local(dir.clone()))
            }
            #[cfg(not(feature = "hub"))]
            ModelSource::Hub { repo, revision } => Err(Error::Hub {
                repo: format!("{repo}@{revision}"),
                message: "this build has no Hub support (the `hub` feature is off); pass a local \
                          folder"
                    .into(),
            }),
            #[cfg(feature = "hub")]
            ModelSource::Hub { repo, revision } => {
                let label = format!("{repo}@{revision}");
                let hf_repo = hf_hub::Repo::with_revision(
                    repo.clone(),
                    hf_hub::RepoType::Model,
                    revision.clone(),
                );
                // Python's HF_HUB_CACHE wins over HF_HOME/hub; hf-hub itself only reads HF_HOME.
                let cache_root = match std::env::var_os("HF_HUB_CACHE") {
                    Some(dir) => hf_hub::Cache::new(dir.into()),
                    None => hf_hub::Cache::from_env(),
                };
                let cache = cache_root.repo(hf_repo.clone());
                // HF_HUB_OFFLINE=1 means: answer from the cache only, as the Python libraries do.
                let offline = std::env::var("HF_HUB_OFFLINE")
                    .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
                    .unwrap_or(false);
                let api = if offline {
                    None
                } else {
                    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache_root.clone())
                        .with_progress(false);
                    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                        builder = builder.with_endpoint(endpoint);
                    }
                    if let Ok(token) = std::env::var("HF_TOKEN") {
                        builder = builder.with_token(Some(token));
                    }
                    let api = builder.build().map_err(|e| Error::Hub {
                        repo: label.clone(),
                        message: e.to_string(),
                    })?;
                    Some(Box::new(api.repo(hf_repo)))
                };
                Ok(Self::Hub { label, api, cache })
            }
        }
    }

    pub(crate) fn location(&self) -> String {
        match self {
            Self::Local(d) => d.display().to_string(),
            #[cfg(feature = "hub")]
            Self::Hub { label, .. } => format!("Hub repository {label}"),
        }
    }

    /// The local path of `file`, or `None` when the checkpoint has no such file.
    pub(crate) fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        match self {
            Self::Local(dir) => {
                let p = dir.join(file);
                Ok(p.is_file().then_some(p))
            }
            #[cfg(feature = "hub")]
            Self::Hub { label, api, cache } => {
                if let Some(p) = cache.get(file) {
                    return Ok(Some(p));
                }
                let Some(api) = api else {
                    return Ok(None);
                };
                match api.get(file) {
                    Ok(p) => Ok(Some(p)),
                    Err(hf_hub::api::sync::ApiError::RequestError(e))
                        if matches!(*e, ureq::Error::Status(404, _)) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(Error::Hub {
                        repo: label.clone(),
                        message: format!("fetching `{file}`: {e}"),
                    }),
                }
            }
        }
    }

    /// Like [`Fetcher::get`], but a missing file is an error naming it.
    pub(crate) fn require(&self, file: &str) -> Result<PathBuf> {
        self.get(file)?.ok_or_else(|| Error::MissingFile {
            file: file.to_string(),
            location: self.location(),
        })
    }
}

/// Reads and parses a JSON file, naming the file in any error.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::InvalidJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
