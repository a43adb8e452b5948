//! The sampling settings of a run: each one from its flag when given, else from the model's
//! `generation_config.json`, else the CLI's default.

use stagformer_ref::sample::SamplingParams;
use stagformer_ref::GenerationConfig;

/// The CLI's defaults, used where neither a flag nor the model's file says.
pub const DEFAULT_TEMPERATURE: f32 = 0.8;
pub const DEFAULT_TOP_K: usize = 40;
pub const DEFAULT_TOP_P: f32 = 0.95;

/// The flags as given (`None`: not on the command line).
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
}

/// The settings to use, and a note saying which came from `generation_config.json` (`None`
/// when none did).
pub fn resolve(
    flags: Flags,
    seed: u64,
    file: &GenerationConfig,
) -> (SamplingParams, Option<String>) {
    let any_flag = flags.temperature.is_some() || flags.top_k.is_some() || flags.top_p.is_some();
    // Hugging Face: `do_sample: false` is greedy whatever else the file sets. A flag is an
    // explicit request and wins; an absent do_sample is not taken as false, so a file that only
    // lists token ids keeps the CLI's defaults.
    if !any_flag && file.do_sample == Some(false) {
        let params = SamplingParams {
            temperature: 0.0,
            top_k: DEFAULT_TOP_K,
            top_p: DEFAULT_TOP_P,
            seed,
        };
        let note = "note: greedy decoding: generation_config.json sets do_sample false".into();
        return (params, Some(note));
    }
    let mut from_file = Vec::new();
    let temperature = match (flags.temperature, file.temperature) {
        (Some(t), _) => t,
        (None, Some(t)) => {
            from_file.push(format!("temperature {t}"));
            t as f32
        }
        (None, None) => DEFAULT_TEMPERATURE,
    };
    let top_k = match (flags.top_k, file.top_k) {
        (Some(k), _) => k,
        (None, Some(k)) => {
            from_file.push(format!("top_k {k}"));
            k
        }
        (None, None) => DEFAULT_TOP_K,
    };
    let top_p = match (flags.top_p, file.top_p) {
        (Some(p), _) => p,
        (None, Some(p)) => {
            from_file.push(format!("top_p {p}"));
            p as f32
        }
        (None, None) => DEFAULT_TOP_P,
    };
    let params = SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
    };
    let note = (!from_file.is_empty()).then(|| {
        format!(
            "note: sampling settings from generation_config.json: {}",
            from_file.join(", ")
        )
    });
    (params, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str) -> GenerationConfig {
        let obj = serde_json::from_str(json).unwrap();
        GenerationConfig::from_json(std::path::Path::new("g.json"), &obj).unwrap()
    }

    #[test]
    fn defaults_when_nothing_says() {
        let (p, note) = resolve(Flags::default(), 3, &GenerationConfig::default());
        assert_eq!(
            (p.temperature, p.top_k, p.top_p, p.seed),
            (DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, 3)
        );
        assert_eq!(note, None);
        // A file with ids only changes nothing either.
        let (q, note) = resolve(Flags::default(), 3, &file(r#"{"eos_token_id": 2}"#));
        assert_eq!((p, note), (q, None));
    }

    #[test]
    fn file_fills_what_flags_leave_out() {
        let f = file(r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9}"#);
        let (p, note) = resolve(Flags::default(), 0, &f);
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.6, DEFAULT_TOP_K, 0.9));
        assert_eq!(
            note.as_deref(),
            Some("note: sampling settings from generation_config.json: temperature 0.6, top_p 0.9")
        );
        let flags = Flags {
            temperature: Some(0.3),
            ..Flags::default()
        };
        let (p, note) = resolve(flags, 0, &f);
        assert_eq!((p.temperature, p.top_p), (0.3, 0.9));
        assert_eq!(
            note.as_deref(),
            Some("note: sampling settings from generation_config.json: top_p 0.9")
        );
    }

    #[test]
    fn do_sample_false_is_greedy_unless_a_flag_asks_otherwise() {
        let f = file(r#"{"do_sample": false, "temperature": 0.6, "top_k": 5}"#);
        let (p, note) = resolve(Flags::default(), 0, &f);
        assert!(p.is_greedy());
        assert!(note.unwrap().contains("do_sample false"));
        let flags = Flags {
            top_p: Some(0.5),
            ..Flags::default()
        };
        let (p, _) = resolve(flags, 0, &f);
        assert!(!p.is_greedy());
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.6, 5, 0.5));
    }
}
