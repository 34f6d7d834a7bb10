//! Typed access to a GGUF file's metadata, with errors that name the key and the file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use crate::{Error, Result};

pub(super) fn gguf_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Gguf {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Typed access to the metadata, with errors that name the key and the file.
pub(super) struct Meta<'a> {
    pub(super) path: &'a Path,
    pub(super) map: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    pub(super) fn get(&self, key: &str) -> Result<&Value> {
        self.map
            .get(key)
            .ok_or_else(|| gguf_error(self.path, format!("missing metadata key `{key}`")))
    }

    pub(super) fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = v
            .to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .map_err(|e| gguf_error(self.path, format!("`{key}`: expected an integer ({e})")))?;
        usize::try_from(n).map_err(|_| gguf_error(self.path, format!("`{key}`: {n} is too large")))
    }

    pub(super) fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => v
                .to_f32()
                .map(f64::from)
                .or_else(|_| v.to_f64())
                .map_err(|e| gguf_error(self.path, format!("`{key}`: expected a float ({e})"))),
        }
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_string()
                .map(|s| Some(s.as_str()))
                .map_err(|e| gguf_error(self.path, format!("`{key}`: expected a string ({e})"))),
        }
    }

    /// Every element of the array at `key`, through `item` (`what` names the element type).
    fn array<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        item: impl Fn(&'a Value) -> candle_core::Result<T>,
    ) -> Result<Vec<T>> {
        let items = self
            .get(key)?
            .to_vec()
            .map_err(|e| gguf_error(self.path, format!("`{key}`: expected an array ({e})")))?;
        items
            .iter()
            .map(|v| {
                item(v)
                    .map_err(|e| gguf_error(self.path, format!("`{key}`: expected {what} ({e})")))
            })
            .collect()
    }

    pub(super) fn strings(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key, "strings", |v| v.to_string().map(String::as_str))
    }

    pub(super) fn ints(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key, "integers", |v| {
            v.to_i32()
                .map(i64::from)
                .or_else(|_| v.to_u32().map(i64::from))
        })
    }

    pub(super) fn token_id(&self, key: &str) -> Result<Option<u32>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(_) => Ok(Some(self.usize(key)? as u32)),
        }
    }
}
