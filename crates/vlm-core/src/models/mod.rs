//! Vision-language compositions: a vision tower, a projector and a decoder wired together.

mod llava;
mod merge;

pub use llava::{FeatureLayer, FeatureSelect, Llava, LlavaConfig};
pub use merge::merge_image_features;
