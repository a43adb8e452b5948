//! The command line documents itself: every subcommand has an about line, every argument a
//! help text, every value of an enumerated argument a description, and clap's own consistency
//! checks pass (no short flag used twice in a command, defaults that parse, ...).

use clap::CommandFactory;
use stagformer_cli::Cli;

/// What lacks a help text in `cmd` and its subcommands, as `path --flag` (or `path VALUE`).
fn undocumented(cmd: &clap::Command, path: &str) -> Vec<String> {
    let mut missing = Vec::new();
    if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
        missing.push(format!("{path} (no about)"));
    }
    for arg in cmd.get_arguments() {
        let name = match (arg.get_long(), arg.get_short()) {
            (Some(long), _) => format!("--{long}"),
            (None, Some(short)) => format!("-{short}"),
            (None, None) => arg.get_id().to_string(),
        };
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            missing.push(format!("{path} {name}"));
        }
        // Flags list true/false as their values; only arguments taking values are enumerated.
        if arg.get_action().takes_values() && !arg.is_hide_possible_values_set() {
            for value in arg.get_possible_values() {
                if !value.is_hide_set() && value.get_help().is_none() {
                    missing.push(format!("{path} {name} {}", value.get_name()));
                }
            }
        }
    }
    for sub in cmd.get_subcommands() {
        missing.extend(undocumented(sub, &format!("{path} {}", sub.get_name())));
    }
    missing
}

#[test]
fn every_argument_of_every_subcommand_has_help() {
    let mut cli = Cli::command();
    // Builds the generated parts too (help and version flags, the help subcommand).
    cli.build();
    let missing = undocumented(&cli, "stagformer");
    assert!(
        missing.is_empty(),
        "undocumented:\n  {}",
        missing.join("\n  ")
    );
    let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
    for want in ["init", "inspect", "score", "generate", "bench"] {
        assert!(names.contains(&want), "{names:?}");
    }
}

#[test]
fn the_parser_passes_claps_consistency_checks() {
    Cli::command().debug_assert();
}

/// The walk above finds what it looks for: an argument, a value and a subcommand without help.
#[test]
fn the_help_walk_reports_what_lacks_help() {
    #[derive(clap::ValueEnum, Clone)]
    enum Pick {
        /// Documented.
        A,
        B,
    }
    let cmd = clap::Command::new("t").about("top").subcommand(
        clap::Command::new("sub")
            .arg(clap::Arg::new("quiet").long("quiet"))
            .arg(
                clap::Arg::new("pick")
                    .long("pick")
                    .help("which")
                    .value_parser(clap::builder::EnumValueParser::<Pick>::new()),
            )
            .arg(
                clap::Arg::new("flag")
                    .long("flag")
                    .help("a flag")
                    .action(clap::ArgAction::SetTrue),
            ),
    );
    let mut cmd = cmd;
    cmd.build();
    let missing = undocumented(&cmd, "t");
    assert!(
        missing.contains(&"t sub (no about)".to_string()),
        "{missing:?}"
    );
    assert!(
        missing.contains(&"t sub --quiet".to_string()),
        "{missing:?}"
    );
    assert!(
        missing.contains(&"t sub --pick b".to_string()),
        "{missing:?}"
    );
    assert!(!missing.iter().any(|m| m.contains("--flag")), "{missing:?}");
    assert!(
        !missing.iter().any(|m| m.contains("--pick a")),
        "{missing:?}"
    );
}

/// The sized presets are named by their parameter count to two significant digits, and the
/// former names still stand for them.
#[test]
fn preset_names_match_their_parameter_counts() {
    use stagformer_ref::init::{preset, ParamCounts, PRESETS, PRESET_ALIASES};
    for &name in PRESETS {
        let count = ParamCounts::of(&preset(name).unwrap()).total() as f64;
        let (digits, scale) = match name.strip_suffix('m') {
            Some(d) => (d, 1e6),
            None => match name.strip_suffix('b') {
                Some(d) => (d, 1e9),
                None => continue, // tiny, small: not sizes
            },
        };
        let named: f64 = digits.parse::<f64>().unwrap() * scale;
        // Two significant digits of the count.
        let magnitude = 10f64.powf(count.log10().floor() - 1.0);
        let rounded = (count / magnitude).round() * magnitude;
        assert!(
            (rounded - named).abs() < 1e-6 * named,
            "preset {name} has {count} parameters (≈ {rounded})"
        );
    }
    for &(old, new) in PRESET_ALIASES {
        assert!(PRESETS.contains(&new), "{old} -> {new}");
        assert_eq!(
            preset(old).unwrap().to_json(),
            preset(new).unwrap().to_json()
        );
    }
    assert!(preset("2b").is_none());
}
