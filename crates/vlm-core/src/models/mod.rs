//! Vision-language compositions: a vision tower, a projector and a decoder wired together.

pub mod idefics3;
mod interface;
mod llava;
mod llava_next;
mod merge;
pub mod qwen2vl;

pub use idefics3::{Idefics3, Idefics3Config, Idefics3Connector, Idefics3Images};
pub use interface::{media_of, MediaInputs, SequenceState, VisionLanguageModel};
pub use llava::{FeatureLayer, FeatureSelect, Llava, LlavaConfig, LlavaImages};
pub use llava_next::{
    llava_onevision_pinpoints, AnyresImages, AnyresVariant, LlavaNext, LlavaNextConfig,
    LlavaOnevisionConfig, LLAVA_NEXT_PINPOINTS,
};
pub use merge::merge_image_features;
pub use qwen2vl::{Qwen2Vl, Qwen2VlConfig, QwenMedia, QwenVlVersion};
