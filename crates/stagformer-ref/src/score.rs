//! Scoring a token sequence: the logits after every token, by one of three computations.

use crate::decode::{DecodeBatch, StepMode};
use crate::error::{Error, NonFiniteLogits, RequestError};
use crate::model::Model;
use crate::ops::Matrix;

/// How the logits of a sequence are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreMode {
    /// The definition: each section over the whole sequence.
    Forward,
    /// Prefill `prompt_len` tokens, then one decode step per remaining token.
    Decode {
        /// Tokens prefilled at once (1 ..= the sequence's length).
        prompt_len: usize,
    },
    /// Prefill `prompt_len` tokens, then recurrent steps (shared weights, p = 2).
    Recurrent {
        /// Tokens prefilled at once (1 ..= the sequence's length).
        prompt_len: usize,
    },
}

/// Logits [T, V]: row i holds the logits after token i. A NaN or infinite logit is an
/// [`Error::NonFiniteLogits`] naming its position (row) and token id (column).
pub fn score(model: &Model, tokens: &[u32], mode: ScoreMode) -> Result<Matrix, Error> {
    let logits = score_unchecked(model, tokens, mode)?;
    NonFiniteLogits::check(&logits.data, logits.cols, 0)?;
    Ok(logits)
}

fn score_unchecked(model: &Model, tokens: &[u32], mode: ScoreMode) -> Result<Matrix, Error> {
    let (prompt_len, step_mode) = match mode {
        ScoreMode::Forward => return model.forward(tokens),
        ScoreMode::Decode { prompt_len } => (prompt_len, StepMode::Staggered),
        ScoreMode::Recurrent { prompt_len } => (prompt_len, StepMode::Recurrent),
    };
    model.check_tokens(tokens, model.config.max_position_embeddings)?;
    if prompt_len == 0 || prompt_len > tokens.len() {
        return Err(RequestError::BadPromptLen {
            prompt_len,
            len: tokens.len(),
        }
        .into());
    }
    let mut batch = DecodeBatch::new(model, step_mode, 1, tokens.len())?;
    let (id, prompt_logits) = batch.prefill(&tokens[..prompt_len])?;
    let vocab = model.config.vocab_size;
    let mut logits = Matrix::zeros(tokens.len(), vocab);
    logits.data[..prompt_len * vocab].copy_from_slice(&prompt_logits.data);
    for (i, &t) in tokens.iter().enumerate().skip(prompt_len) {
        let row = batch.step(&[id], &[t])?;
        logits.row_mut(i).copy_from_slice(row.row(0));
    }
    Ok(logits)
}
