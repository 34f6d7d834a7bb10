//! Projectors: vision features in, text-embedding-sized features out.

mod llava;

pub use llava::LlavaProjector;
