//! Progress bars on stderr (indicatif) for the long parts of a command: drawing random
//! weights, loading or uploading a checkpoint, benchmark runs. indicatif draws nothing when
//! stderr is not a terminal, so pipes, log files and tests see none of them.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use stagformer_ref::{Config, Element, LoadError, TensorSource};

/// Work on fewer parameters than this is over before a bar would be worth drawing.
const MIN_PARAMS: u64 = 16 << 20;

/// A bar of `len` units on stderr, drawn with `template` (indicatif's template syntax).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    // Cleared when dropped, so a bar left by an error does not stay above the message.
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_finish(ProgressFinish::AndClear);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A bar counting `total` parameters, `what` in front of it; hidden for a small model.
pub fn params(total: u64, what: &str) -> ProgressBar {
    if total < MIN_PARAMS {
        return ProgressBar::hidden();
    }
    let bar = bar(
        total,
        "{msg} [{wide_bar}] {human_pos}/{human_len} parameters, {elapsed} (ETA {eta})",
    );
    bar.set_message(what.to_owned());
    bar
}

/// A spinner for a step whose length is not known in advance, hidden for a small model.
pub fn spinner(total_params: u64, what: String) -> ProgressBar {
    if total_params < MIN_PARAMS {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        .with_finish(ProgressFinish::AndClear);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A tensor source that advances a bar by the parameters of every tensor read from it: the
/// upload of a kernel decoder's weights, which reads each tensor once.
pub struct Tracked<'a, S> {
    inner: &'a S,
    bar: ProgressBar,
}

impl<'a, S: TensorSource> Tracked<'a, S> {
    pub fn new(inner: &'a S, what: &str) -> Self {
        let total = stagformer_ref::init::ParamCounts::of(inner.config()).total() as u64;
        Tracked {
            inner,
            bar: params(total, what),
        }
    }

    /// Removes the bar (the caller prints what follows).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl<S: TensorSource> TensorSource for Tracked<'_, S> {
    fn config(&self) -> &Config {
        self.inner.config()
    }

    fn read<E: Element>(&self, name: &str) -> Result<Vec<E>, LoadError> {
        let values = self.inner.read(name)?;
        self.bar.inc(values.len() as u64);
        Ok(values)
    }
}
