//! The byte-level BPE tokenizer a GGUF file describes, rebuilt as a `tokenizer.json` document.

use serde_json::{json, Map, Value as Json};

use super::meta::{gguf_error, Meta};
use crate::Result;

/// GPT-2's byte-to-character table: printable bytes map to themselves, the rest to U+0100 on.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    table
}

/// The file's byte-level BPE tokenizer, as a `tokenizer.json` document.
///
/// Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added
/// tokens, as transformers and llama.cpp treat them. The pre-tokenizer splits digits one by one
/// for the `smollm` vocabulary (what llama.cpp does and what the model was trained with;
/// transformers' GGUF reader leaves that split out, which only changes text with digit runs) and
/// otherwise applies GPT-2's byte-level split.
pub(super) fn tokenizer_json(meta: &Meta) -> Result<Json> {
    let model = meta.string("tokenizer.ggml.model")?.unwrap_or("");
    if model != "gpt2" {
        return Err(gguf_error(
            meta.path,
            format!("tokenizer.ggml.model is `{model}`; only byte-level BPE (`gpt2`) is supported"),
        ));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types = meta.ints("tokenizer.ggml.token_type").unwrap_or_default();
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let alphabet = byte_alphabet();
    let spelled: std::collections::HashSet<char> = alphabet.iter().copied().collect();
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let in_alphabet = token.chars().all(|c| spelled.contains(&c));
        let key = if in_alphabet {
            (*token).to_string()
        } else {
            token.bytes().map(|b| alphabet[b as usize]).collect()
        };
        vocab.insert(key, json!(id));
        match types.get(id) {
            Some(3) if in_alphabet => added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true,
            })),
            Some(4) => added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": false,
            })),
            _ => {}
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                gguf_error(
                    meta.path,
                    format!("merge `{m}` is not two tokens separated by a space"),
                )
            })?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_>>()?;
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let pre_tokenizer = match meta.string("tokenizer.ggml.pre")? {
        Some("smollm") => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level],
        }),
        _ => byte_level,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[b' ' as usize], '\u{120}'); // "Ġ"
        assert_eq!(a[b'\n' as usize], '\u{10a}'); // "Ċ"
        let distinct: std::collections::HashSet<char> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
