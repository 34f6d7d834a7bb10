//! Vision-language compositions: a vision tower, a projector and a decoder wired together.

mod llava;
mod merge;
pub mod qwen2vl;

pub use llava::{FeatureLayer, FeatureSelect, Llava, LlavaConfig};
pub use merge::merge_image_features;
pub use qwen2vl::{Qwen2Vl, Qwen2VlConfig, QwenVlVersion};
