//! `stagformer-bench-report`: turns the kernel benchmarks' output into `report.md` and a
//! roofline plot. See the library documentation for the inputs.

use std::path::PathBuf;
use std::process::ExitCode;

use stagformer_bench_report::{run, Paths};

const USAGE: &str = "\
usage: stagformer-bench-report [options]

  --criterion DIR   criterion's output directory (default: target/criterion)
  --roofline FILE   ceilings and per-bench work (default: DIR/roofline.json, if present)
  --torch FILE      PyTorch comparison from python/torch_compare.py (optional)
  --decode FILE     our decode numbers, {\"decode\": [...]} (optional)
  --out FILE        markdown report to write (default: report.md)
  --png FILE        roofline plot to write (default: roofline.png beside --out; needs the
                    roofline file)
  --no-png          do not draw the plot
  --font FILE       TrueType font for the plot's text (default: $STAGFORMER_FONT, then a search
                    of the usual font directories)
  --note TEXT       a line to add under the title (repeatable)
";

fn parse(args: &[String]) -> Result<(Paths, Vec<String>), String> {
    let mut criterion = PathBuf::from("target/criterion");
    let (mut roofline, mut torch, mut decode, mut png, mut font) = (None, None, None, None, None);
    let mut out = PathBuf::from("report.md");
    let mut no_png = false;
    let mut notes = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--criterion" => criterion = value(arg)?.into(),
            "--roofline" => roofline = Some(value(arg)?.into()),
            "--torch" => torch = Some(value(arg)?.into()),
            "--decode" => decode = Some(value(arg)?.into()),
            "--out" => out = value(arg)?.into(),
            "--png" => png = Some(PathBuf::from(value(arg)?)),
            "--no-png" => no_png = true,
            "--font" => font = Some(value(arg)?.into()),
            "--note" => notes.push(value(arg)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let png = if no_png {
        None
    } else {
        Some(png.unwrap_or_else(|| out.with_file_name("roofline.png")))
    };
    Ok((
        Paths {
            criterion,
            roofline,
            torch,
            decode,
            markdown: out,
            png,
            font,
        },
        notes,
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (paths, notes) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("stagformer-bench-report: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&paths, &notes) {
        Ok(w) => {
            println!("wrote {} ({} benches)", paths.markdown.display(), w.rows);
            if let Some((png, points)) = &w.png {
                println!("wrote {} ({points} points)", png.display());
            }
            if let Some(why) = w.plot_without_text {
                println!("plot drawn without text: {why}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stagformer-bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}
