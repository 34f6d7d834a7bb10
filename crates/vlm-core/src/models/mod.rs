//! Vision-language compositions: a vision tower, a projector and a decoder wired together.

pub mod idefics3;
mod llava;
mod llava_next;
mod merge;
pub mod qwen2vl;

pub use idefics3::{Idefics3, Idefics3Config, Idefics3Connector};
pub use llava::{FeatureLayer, FeatureSelect, Llava, LlavaConfig};
pub use llava_next::{
    llava_onevision_pinpoints, AnyresVariant, LlavaNext, LlavaNextConfig, LlavaOnevisionConfig,
    LLAVA_NEXT_PINPOINTS,
};
pub use merge::merge_image_features;
pub use qwen2vl::{Qwen2Vl, Qwen2VlConfig, QwenVlVersion};
