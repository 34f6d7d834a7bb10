//! Turning logits into the next token: repetition penalty, temperature, top-k, top-p, and
//! seeded sampling, applied in the order transformers' `generate` applies its logits processors.

use crate::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// `0.0` means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`None` or 0: no limit).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` (`None` or 1.0: no limit).
    pub top_p: Option<f64>,
    /// CTRL-style penalty on tokens already in the prompt or output (`1.0`: none).
    pub repetition_penalty: f32,
    /// Seed of the sampling RNG; the same seed and inputs give the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 299792458,
        }
    }
}

impl SamplingParams {
    /// Rejects values transformers would also reject.
    pub fn validate(&self) -> Result<()> {
        if self.temperature.is_nan() || self.temperature < 0.0 || !self.temperature.is_finite() {
            return Err(Error::InvalidOption(format!(
                "temperature must be a finite number >= 0, found {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p {
            if p.is_nan() || p <= 0.0 || p > 1.0 {
                return Err(Error::InvalidOption(format!(
                    "top_p must be in (0, 1], found {p}"
                )));
            }
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return Err(Error::InvalidOption(format!(
                "repetition_penalty must be > 0, found {}",
                self.repetition_penalty
            )));
        }
        Ok(())
    }
}

/// SplitMix64: tiny, fast, and identical on every platform, so seeds reproduce everywhere.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Applies the repetition penalty in place (transformers' `RepetitionPenaltyLogitsProcessor`:
/// positive logits are divided by the penalty, negative ones multiplied).
pub(crate) fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::new();
    for &t in seen {
        if !done.insert(t) {
            continue;
        }
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest value; ties go to the lowest index, like `torch.argmax`.
pub(crate) fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax in f64 for stable log-probabilities.
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

/// The `k` best `(id, value)` pairs, best first (ties: lower id first).
pub(crate) fn top_k_pairs(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let k = k.min(idx.len());
    let cmp = |a: &u32, b: &u32| {
        values[*b as usize]
            .total_cmp(&values[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, values[i as usize])).collect()
}

/// Chooses the next token from already-penalized logits.
pub(crate) fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    if params.temperature == 0.0 {
        return argmax(logits);
    }
    let scaled: Vec<f32> = logits
        .iter()
        .map(|&l| (l as f64 / params.temperature) as f32)
        .collect();
    // Top-k, then top-p, over the sorted candidates (transformers' TopK then TopP warpers).
    let k = params.top_k.filter(|&k| k > 0).unwrap_or(scaled.len());
    let top_p = params.top_p.filter(|&p| p < 1.0);
    // Sorting the whole vocabulary every token is only needed when a filter will cut it.
    let mut cand = if k < scaled.len() || top_p.is_some() {
        top_k_pairs(&scaled, k)
    } else {
        (0u32..).zip(scaled.iter().copied()).collect()
    };
    let lp = log_softmax(&cand.iter().map(|c| c.1).collect::<Vec<_>>());
    let mut probs: Vec<f64> = lp.iter().map(|&l| (l as f64).exp()).collect();
    if let Some(p) = top_p {
        // Keep tokens until the cumulative probability reaches p; always keep the best one.
        let mut cum = 0.0;
        let mut keep = 0;
        for pr in &probs {
            keep += 1;
            cum += pr;
            if cum >= p {
                break;
            }
        }
        cand.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.next_f64() * total;
    for (c, p) in cand.iter().zip(&probs) {
        if u < *p {
            return c.0;
        }
        u -= p;
    }
    cand.last().map(|c| c.0).unwrap_or_else(|| argmax(logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_seeded_sampling_reproduces() {
        let logits = [0.1f32, 2.0, -1.0, 1.9];
        let greedy = SamplingParams::default();
        assert_eq!(sample(&logits, &greedy, &mut Rng::new(1)), 1);
        let p = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let a: Vec<u32> = {
            let mut r = Rng::new(7);
            (0..32).map(|_| sample(&logits, &p, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = Rng::new(7);
            (0..32).map(|_| sample(&logits, &p, &mut r)).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.contains(&3),
            "sampling at T=1 should sometimes pick the runner-up: {a:?}"
        );
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let logits = [0.0f32, 5.0, 4.9, -3.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(1),
            ..SamplingParams::default()
        };
        let mut r = Rng::new(3);
        assert!((0..20).all(|_| sample(&logits, &p, &mut r) == 1));
        let p = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.9),
            ..SamplingParams::default()
        };
        let picks: Vec<u32> = (0..200).map(|_| sample(&logits, &p, &mut r)).collect();
        assert!(picks.iter().all(|&t| t == 1 || t == 2), "{picks:?}");
    }

    #[test]
    fn repetition_penalty_matches_transformers_rule() {
        let mut l = [2.0f32, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }
}
