//! Load-time quantization keeps the model's predictions: on every fixture prompt, the Q8_0
//! model's next-token distribution stays close to the f32 one.
//!
//! Metrics over all prompt positions of all cases: the share of decisive positions (f32 top-1
//! ahead of the top-2 by >= 0.1 in log-probability) whose top-1 token is unchanged, and the
//! mean KL divergence KL(p_f32 || p_q8) over every position. The fixtures' widths (64, 128) are
//! multiples of Q8_0's 32-weight blocks but not of Q4_K's 256, so Q4_K is checked per layer in
//! `vlm-core` (relative output error) rather than here.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, D};
use vlm::{LoadOptions, ModelSource, Quantization, Request, Vlm};
use vlm_tests::{fixtures, request, Reference};

/// Positions whose f32 top-1 leads the top-2 by at least this (in log-probability) count for
/// the agreement; closer calls are left to the KL bound.
const DECISIVE_GAP: f32 = 0.1;
/// Top-1 agreement at decisive positions must stay at or above this (measured 0.987 to 1.0).
const MIN_TOP1_AGREEMENT: f64 = 0.97;
/// Mean KL(f32 || q8_0) in nats must stay at or below this (measured 1.2e-4 to 1.4e-3).
const MAX_MEAN_KL: f64 = 3e-3;

fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

#[test]
fn q8_0_keeps_the_next_token_distribution() -> Result<()> {
    for name in [
        "llava-clip-llama",
        "llava-siglip-qwen2",
        "qwen2-vl-tiny",
        "qwen2.5-vl-tiny",
    ] {
        let source = ModelSource::Local(fixtures().join(name));
        let dense = Vlm::load(&source, &LoadOptions::default())?;
        let quant = Vlm::load(
            &source,
            &LoadOptions {
                quantization: Some(Quantization::Q8_0),
                ..LoadOptions::default()
            },
        )?;
        let reference = Reference::load(name)?;
        let (mut agree, mut decisive, mut positions, mut kl_sum) = (0usize, 0usize, 0usize, 0f64);
        for case in reference.cases() {
            let prepared = dense.prepare(&request(&dense, &case)?)?;
            let p = log_softmax(&dense.prompt_logits(&prepared)?)?;
            let q = log_softmax(&quant.prompt_logits(&prepared)?)?;
            let top_p = p.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let top_q = q.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let rows = p.to_vec2::<f32>()?;
            for ((row, a), b) in rows.iter().zip(&top_p).zip(&top_q) {
                let mut sorted = row.clone();
                sorted.sort_by(|x, y| y.total_cmp(x));
                // Near-ties flip under any perturbation; count decisive positions only.
                if sorted[0] - sorted[1] >= DECISIVE_GAP {
                    decisive += 1;
                    agree += usize::from(a == b);
                }
            }
            positions += top_p.len();
            // KL(p || q) = sum p (log p - log q), per position.
            let kl = (p.exp()? * (&p - &q)?)?.sum(D::Minus1)?;
            kl_sum += kl.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        }
        let agreement = agree as f64 / decisive.max(1) as f64;
        let mean_kl = kl_sum / positions as f64;
        eprintln!(
            "{name}: q8_0 top-1 agreement {agreement:.4} over {decisive} decisive of {positions} \
             positions, mean KL {mean_kl:.2e}"
        );
        assert!(
            decisive * 2 > positions,
            "{name}: too few decisive positions"
        );
        assert!(
            agreement >= MIN_TOP1_AGREEMENT,
            "{name}: q8_0 top-1 agreement {agreement}"
        );
        assert!(mean_kl <= MAX_MEAN_KL, "{name}: q8_0 mean KL {mean_kl}");
    }
    Ok(())
}

#[test]
fn q8_0_generation_runs_and_quantizes_the_decoder() -> Result<()> {
    let source = ModelSource::Local(fixtures().join("qwen2-vl-tiny"));
    let quant = Vlm::load(
        &source,
        &LoadOptions {
            quantization: Some(Quantization::Q8_0),
            ..LoadOptions::default()
        },
    )?;
    // 2 layers x (q, k, v, o, gate, up, down) + the head; every width is a multiple of 32.
    let report = quant.quantize_report().context("quantization report")?;
    assert_eq!((report.quantized, report.kept_dense), (15, 0));
    let out = quant.generate(
        &Request::new("Describe the picture in one sentence.", vec![]),
        &vlm::GenerateParams {
            max_new_tokens: 5,
            ignore_eos: true,
            ..vlm::GenerateParams::default()
        },
        |_| true,
    )?;
    assert_eq!(out.token_ids.len(), 5);
    Ok(())
}
