//! What every vision-language composition offers to generation, whatever its family.
//!
//! A family's processor produces its own [`MediaInputs`] (pixel tensors and whatever metadata
//! its model needs: patch grids, tile masks, image sizes); its model turns a prompt's ids and
//! those inputs into input embeddings, creates the per-sequence state ([`SequenceState`]) and
//! advances it. Generation holds a `dyn VisionLanguageModel` and never asks which family it is.

use std::any::Any;
use std::fmt::Debug;

use candle_core::{Device, Tensor};

use crate::text::{Decoder, DecoderSequence, RopePositions};
use crate::{Error, Result};

/// The preprocessed media of one prompt, in the form of one model family.
pub trait MediaInputs: Any + Debug + Send + Sync {}

/// The decoding state of one sequence: a KV cache today, a recurrent state for linear-attention
/// decoders. Created by [`VisionLanguageModel::new_sequence`], advanced by its `prefill` and
/// `step`.
pub trait SequenceState: Any + Debug + Send {
    /// Tokens run so far.
    fn len(&self) -> usize;

    /// True before the prompt has run.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SequenceState for DecoderSequence {
    fn len(&self) -> usize {
        DecoderSequence::len(self)
    }
}

/// A vision tower, a projector and a decoder wired together.
///
/// The provided methods fit an attention decoder with [`DecoderSequence`] state; a family with
/// another decoder state overrides `new_sequence`, `prefill` and `step` together.
pub trait VisionLanguageModel: Any + Debug + Send + Sync {
    /// The `model_type` this model was loaded as (`llava`, `qwen2_5_vl`, ...).
    fn architecture(&self) -> &'static str;

    /// The language model.
    fn decoder(&self) -> &Decoder;

    /// The language model, mutably (e.g. to quantize it).
    fn decoder_mut(&mut self) -> &mut Decoder;

    /// Id of the image placeholder token.
    fn image_token_id(&self) -> u32;

    /// Id of the video placeholder token; `None` for models that take no videos.
    fn video_token_id(&self) -> Option<u32> {
        None
    }

    /// Input embeddings `(1, s, hidden)` of `ids` with the features of `media` spliced in at
    /// the placeholders (vision tower and projector run here). The placeholder count is
    /// checked against the features before anything is merged.
    fn embed(&self, ids: &[u32], media: &dyn MediaInputs) -> Result<Tensor>;

    /// The empty decoding state of a sequence whose prompt is `ids` with `media`. A family
    /// whose positions depend on the media (Qwen2-VL's 3-D positions) computes and checks
    /// them here, before any vision work.
    fn new_sequence(&self, ids: &[u32], media: &dyn MediaInputs) -> Result<Box<dyn SequenceState>> {
        let _ = (ids, media);
        Ok(Box::new(DecoderSequence::new(
            self.decoder(),
            RopePositions::Sequential,
        )))
    }

    /// Runs the prompt's embeddings `(1, s, hidden)` into a fresh `sequence`; the final
    /// hidden states `(1, s, hidden)`.
    fn prefill(&self, sequence: &mut dyn SequenceState, embeds: &Tensor) -> Result<Tensor> {
        let sequence = decoder_sequence(sequence, self.architecture())?;
        Ok(self.decoder().run_sequence(sequence, embeds)?)
    }

    /// Runs one new token; its final hidden state `(1, 1, hidden)`.
    fn step(&self, sequence: &mut dyn SequenceState, token: u32) -> Result<Tensor> {
        let decoder = self.decoder();
        let embeds = decoder.embed(&Tensor::new(&[[token]], decoder.device())?)?;
        let sequence = decoder_sequence(sequence, self.architecture())?;
        Ok(decoder.run_sequence(sequence, &embeds)?)
    }

    /// Vocabulary logits of hidden states.
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.decoder().logits(hidden)?)
    }

    /// The longest sequence the decoder's positions cover.
    fn context_length(&self) -> usize {
        self.decoder().config().max_position_embeddings
    }

    /// The device the weights live on.
    fn device(&self) -> &Device {
        self.decoder().device()
    }
}

impl dyn VisionLanguageModel {
    /// The concrete model, when it is a `T` (for family-specific inspection, e.g. tests that
    /// compare a vision tower's output with the reference).
    pub fn downcast_ref<T: VisionLanguageModel>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref()
    }
}

impl dyn MediaInputs {
    /// The concrete inputs, when they are a `T`.
    pub fn downcast_ref<T: MediaInputs>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref()
    }
}

/// `media` as the inputs of `architecture`'s family, `T`; prepared inputs of another family are
/// an error.
pub fn media_of<'a, T: MediaInputs>(
    media: &'a dyn MediaInputs,
    architecture: &str,
) -> Result<&'a T> {
    media.downcast_ref().ok_or_else(|| {
        Error::Shape(format!(
            "{architecture} expects prepared media of type {}, found another family's",
            std::any::type_name::<T>()
        ))
    })
}

fn decoder_sequence<'a>(
    sequence: &'a mut dyn SequenceState,
    architecture: &str,
) -> Result<&'a mut DecoderSequence> {
    (sequence as &mut dyn Any).downcast_mut().ok_or_else(|| {
        Error::Shape(format!(
            "{architecture} runs an attention decoder sequence; this state belongs to \
                 another model"
        ))
    })
}
