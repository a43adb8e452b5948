//! Build script of `stagformer-kernels`: compiles the kernels in `cuda/*.cu` (top level only).
//!
//! * Every build: the sources are compiled as C++20 by the system C++ compiler against the host
//!   emulator in `cuda/emu/` (`emu/*.cpp`, `emu/selftest/*.cu`) into the static library
//!   `stagformer_kernels_emu`, so `Device::emulated()` runs every kernel in every build.
//!
//! * Feature `cuda` adds the GPU images: nvcc compiles every `cuda/<stem>.cu` into
//!   - `OUT_DIR/<stem>.fatbin`: native code for the requested GPUs plus PTX for the lowest one,
//!     loadable with `cuModuleLoadData`, and
//!   - `OUT_DIR/<stem>.ptx`: that PTX as text (its `.entry` lines name the kernels),
//!
//!   and writes `OUT_DIR/kernels.rs`, which embeds both (see `write_kernels_rs`).
//!   `CUDA_COMPUTE_CAP` (default "80,90") picks the targets: the lowest capability is embedded as
//!   PTX, which the driver JIT-compiles on that GPU and any newer one; every further capability
//!   becomes native code (SASS). Capabilities from 90 on are built arch-specific (90 -> sm_90a,
//!   100 -> sm_100a) unless written with an explicit suffix ("90a", "100f").
//!   nvcc comes from `NVCC`, then `CUDA_HOME`/`CUDA_PATH` + `/bin/nvcc`, then `PATH`, then the
//!   install made by `scripts/setup-cuda`. `NVCC_CCBIN` overrides nvcc's host compiler.
//!   Device flags live in `scripts/nvcc-flags` (shared with `scripts/ptxas-check`).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const DEFAULT_COMPUTE_CAP: &str = "80,90";
/// The CUDA release whose drivers run on the GPU machines; newer compilers emit PTX they reject.
const EXPECTED_CUDA_RELEASE: &str = "13.0";
const EMU_LIBRARY: &str = "stagformer_kernels_emu";

fn main() {
    let root =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cuda_dir = root.join("cuda");

    track_sources(&cuda_dir);

    let kernels = files_with_extension(&cuda_dir, "cu");
    // The emulator is in every build (the `cuda` feature is additive); the GPU images come on
    // top of it.
    build_emulated(&root, &kernels);
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build_cuda(&root, &out_dir, &kernels);
    }
}

/// Rebuild when anything under `cuda/` changes: the directories themselves (so that added or
/// removed files count; cargo scans a directory recursively) and every source file in them.
fn track_sources(cuda_dir: &Path) {
    println!("cargo::rerun-if-changed={}", cuda_dir.display());
    let mut stack = vec![cuda_dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("cu" | "cuh" | "h" | "hpp" | "cpp" | "inc")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    for file in files {
        println!("cargo::rerun-if-changed={}", file.display());
    }
}

/// Regular files `dir/*.<extension>` (not recursive), sorted; empty if `dir` does not exist.
fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| {
                    path.is_file() && path.extension().and_then(|e| e.to_str()) == Some(extension)
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn fail(message: &str) -> ! {
    eprintln!("\nerror: {}\n", message.trim_end());
    std::process::exit(1);
}

// ---------------------------------------------------------------------------------------------
// Host emulation (every build)

fn build_emulated(root: &Path, kernels: &[PathBuf]) {
    let emu_dir = root.join("cuda").join("emu");
    let mut sources = kernels.to_vec();
    sources.extend(files_with_extension(&emu_dir, "cpp"));
    sources.extend(files_with_extension(&emu_dir.join("selftest"), "cu"));
    if sources.is_empty() {
        return;
    }
    cc::Build::new()
        .cpp(true)
        .cpp_link_stdlib("stdc++")
        // `.cu` is not an extension g++ knows (it would take the file for linker input); `-x c++`
        // precedes the source file on the command line and applies to it.
        .flag("-x")
        .flag("c++")
        .flag("-std=c++20")
        .opt_level(2)
        .pic(true)
        .flag("-pthread")
        // One IEEE rounding per operation, like the CPU reference (no FMA contraction even when
        // CXXFLAGS enable FMA instructions).
        .flag("-ffp-contract=off")
        // Kernels reinterpret 16-byte vectors as bf16 pairs or floats, as CUDA code does; nvcc
        // allows it, so g++ must not optimise on type-based aliasing.
        .flag("-fno-strict-aliasing")
        // CUDA pragmas (`#pragma unroll`) mean nothing to g++.
        .flag("-Wno-unknown-pragmas")
        .include(root.join("cuda").join("include"))
        .include(&emu_dir)
        // Keep every object: kernels and self-tests may be reached only through registrations
        // made by static initialisers, which a plain static link would drop.
        .link_lib_modifier("+whole-archive")
        .files(&sources)
        .compile(EMU_LIBRARY);
    println!("cargo::rustc-link-lib=pthread");
}

// ---------------------------------------------------------------------------------------------
// CUDA (feature `cuda`)

/// What nvcc builds for each `.cu` file.
struct Targets {
    /// Virtual architecture embedded as PTX, e.g. `compute_80`.
    ptx: String,
    /// `(virtual, real)` pairs compiled to native code, e.g. `("compute_90a", "sm_90a")`.
    native: Vec<(String, String)>,
}

impl Targets {
    fn parse(spec: &str) -> Result<Targets, String> {
        let mut caps: Vec<(u32, String)> = Vec::new();
        for entry in spec
            .split([',', ' ', ';'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let entry_lower = entry.to_ascii_lowercase();
            let bare = entry_lower
                .trim_start_matches("sm_")
                .trim_start_matches("compute_");
            let digits: String = bare.chars().take_while(char::is_ascii_digit).collect();
            let suffix = &bare[digits.len()..];
            let number: u32 = digits
                .parse()
                .map_err(|_| format!("`{entry}` is not a compute capability like 80 or 90a"))?;
            if !matches!(suffix, "" | "a" | "f") {
                return Err(format!(
                    "`{entry}`: unknown suffix `{suffix}` (expected none, `a` or `f`)"
                ));
            }
            if number < 75 {
                return Err(format!(
                    "`{entry}`: CUDA 13 supports compute capability 7.5 and newer"
                ));
            }
            if !caps.iter().any(|(n, _)| *n == number) {
                caps.push((number, suffix.to_string()));
            }
        }
        caps.sort();
        let Some(((lowest, lowest_suffix), rest)) = caps.split_first() else {
            return Err("no compute capability given".to_string());
        };
        let native = rest
            .iter()
            .map(|(number, suffix)| {
                let suffix = if suffix.is_empty() && *number >= 90 {
                    "a"
                } else {
                    suffix.as_str()
                };
                (
                    format!("compute_{number}{suffix}"),
                    format!("sm_{number}{suffix}"),
                )
            })
            .collect();
        Ok(Targets {
            ptx: format!("compute_{lowest}{lowest_suffix}"),
            native,
        })
    }

    fn names(&self) -> Vec<String> {
        let mut names = vec![self.ptx.clone()];
        names.extend(self.native.iter().map(|(_, real)| real.clone()));
        names
    }
}

struct CompiledModule {
    stem: String,
    ptx: PathBuf,
    image: PathBuf,
    image_len: u64,
    kernels: Vec<String>,
}

fn build_cuda(root: &Path, out_dir: &Path, sources: &[PathBuf]) {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_COMPUTE_CAP",
        "NVCC_CCBIN",
        "STAGFORMER_CACHE",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let flags_file = root.join("scripts").join("nvcc-flags");
    println!("cargo::rerun-if-changed={}", flags_file.display());

    let spec = env::var("CUDA_COMPUTE_CAP").unwrap_or_default();
    let spec = if spec.trim().is_empty() {
        DEFAULT_COMPUTE_CAP.to_string()
    } else {
        spec
    };
    let targets = Targets::parse(&spec)
        .unwrap_or_else(|e| fail(&format!("CUDA_COMPUTE_CAP=\"{spec}\": {e}")));

    let nvcc = find_nvcc(root);
    let nvcc_version = check_nvcc_version(&nvcc);
    let mut flags = read_flags(&flags_file);
    flags.push(format!("-I{}", root.join("cuda").join("include").display()));
    if let Some(ccbin) = env::var_os("NVCC_CCBIN").filter(|v| !v.is_empty()) {
        flags.push("-ccbin".to_string());
        flags.push(ccbin.to_string_lossy().into_owned());
    }

    // Compile the files in parallel (each nvcc run is single-threaded).
    let jobs = env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .unwrap_or(1);
    let jobs = jobs.clamp(1, sources.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<CompiledModule, String>>>> =
        sources.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(source) = sources.get(index) else {
                    break;
                };
                let result = compile_module(&nvcc, &flags, &targets, source, out_dir);
                *results[index].lock().unwrap() = Some(result);
            });
        }
    });

    let mut modules = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        match result
            .into_inner()
            .unwrap()
            .expect("every source was compiled")
        {
            Ok(module) => modules.push(module),
            Err(error) => errors.push(error),
        }
    }
    if !errors.is_empty() {
        fail(&errors.join("\n\n"));
    }
    write_kernels_rs(out_dir, &targets, &nvcc_version, &modules);
}

/// Reads `scripts/nvcc-flags`: whitespace-separated flags, `#` starts a comment.
fn read_flags(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| {
        fail(&format!(
            "cannot read the nvcc flags file {}: {e}",
            path.display()
        ))
    });
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .map(str::to_string)
        .collect()
}

fn find_nvcc(root: &Path) -> PathBuf {
    let nonempty = |var: &str| env::var_os(var).filter(|v| !v.is_empty());
    if let Some(nvcc) = nonempty("NVCC") {
        let nvcc = PathBuf::from(nvcc);
        if nvcc.components().count() == 1 {
            if let Some(found) = search_path(nvcc.as_os_str()) {
                return found;
            }
        } else if nvcc.is_file() {
            return nvcc;
        }
        fail(&format!(
            "NVCC={} does not name an nvcc executable.\n{}",
            nvcc.display(),
            how_to_get_nvcc(root)
        ));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = nonempty(var) {
            let nvcc = Path::new(&home).join("bin").join("nvcc");
            if nvcc.is_file() {
                return nvcc;
            }
        }
    }
    println!("cargo::rerun-if-env-changed=PATH");
    if let Some(found) = search_path("nvcc".as_ref()) {
        return found;
    }
    let nvcc = setup_cuda_prefix(root).join("bin").join("nvcc");
    if nvcc.is_file() {
        return nvcc;
    }
    fail(&format!(
        "nvcc (the CUDA compiler) was not found; feature `cuda` needs it to compile cuda/*.cu.\n\
         Looked for: $NVCC, $CUDA_HOME/bin/nvcc, $CUDA_PATH/bin/nvcc, nvcc on PATH, {}.\n{}",
        nvcc.display(),
        how_to_get_nvcc(root)
    ))
}

/// Where `scripts/setup-cuda` installs the compiler.
fn setup_cuda_prefix(root: &Path) -> PathBuf {
    let cache = env::var_os("STAGFORMER_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache"));
    cache.join(format!("cuda-{EXPECTED_CUDA_RELEASE}"))
}

fn how_to_get_nvcc(root: &Path) -> String {
    let prefix = setup_cuda_prefix(root);
    format!(
        "To get nvcc {release}, either\n\
         \x20 * install the CUDA {release} toolkit and set CUDA_HOME (e.g. /usr/local/cuda-{release})\n\
         \x20   or put its bin/ directory on PATH, or\n\
         \x20 * run scripts/setup-cuda (installs nvcc {release} from PyPI wheels; no GPU needed), then\n\
         \x20     export NVCC={}\n\
         \x20   (or `. {}`).\n\
         Use CUDA {release}: the GPU machines' drivers cannot load PTX made by a newer nvcc.\n\
         Without `--features cuda` the kernels build for the CPU host emulator instead.",
        prefix.join("bin").join("nvcc").display(),
        prefix.join("env").display(),
        release = EXPECTED_CUDA_RELEASE,
    )
}

fn search_path(name: &std::ffi::OsStr) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Checks that nvcc is the expected CUDA release and returns its version (`13.0.88`, or the
/// whole release line when it has no `V<version>` part).
fn check_nvcc_version(nvcc: &Path) -> String {
    let output = Command::new(nvcc)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", nvcc.display())));
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        fail(&format!(
            "`{} --version` failed:\n{text}{}",
            nvcc.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let release = text
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown release")
        .trim();
    if !text.contains(&format!("release {EXPECTED_CUDA_RELEASE},")) {
        println!(
            "cargo::warning={} is not CUDA {EXPECTED_CUDA_RELEASE} ({release}); a CUDA {EXPECTED_CUDA_RELEASE} \
             driver cannot JIT PTX from a newer nvcc",
            nvcc.display()
        );
    }
    // "Cuda compilation tools, release 13.0, V13.0.88" -> "13.0.88"
    release
        .rsplit_once(", V")
        .map_or(release, |(_, version)| version.trim())
        .to_string()
}

fn run_nvcc(nvcc: &Path, args: &[String], what: &str) -> Result<Output, String> {
    let output = Command::new(nvcc)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let command_line = format!("{} {}", nvcc.display(), args.join(" "));
    if !output.status.success() {
        return Err(format!(
            "nvcc failed to compile {what} ({}):\n  {command_line}\n{stdout}{stderr}",
            output.status
        ));
    }
    // ptxas statistics (`-Xptxas -v`) show with `cargo build -vv`; warnings always show.
    eprintln!("{command_line}\n{stdout}{stderr}");
    for line in stderr.lines().chain(stdout.lines()) {
        if line.to_ascii_lowercase().contains("warning") {
            println!("cargo::warning={what}: {}", line.trim());
        }
    }
    Ok(output)
}

fn compile_module(
    nvcc: &Path,
    flags: &[String],
    targets: &Targets,
    source: &Path,
    out_dir: &Path,
) -> Result<CompiledModule, String> {
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{}: kernel file names must be valid UTF-8",
                source.display()
            )
        })?;
    let what = format!("cuda/{stem}.cu");
    let ptx = out_dir.join(format!("{stem}.ptx"));
    let image = out_dir.join(format!("{stem}.fatbin"));

    let mut args = flags.to_vec();
    args.extend(["-ptx".to_string(), format!("-arch={}", targets.ptx)]);
    args.extend([
        "-o".to_string(),
        ptx.display().to_string(),
        source.display().to_string(),
    ]);
    run_nvcc(nvcc, &args, &what)?;

    let mut args = flags.to_vec();
    args.push("-fatbin".to_string());
    args.extend([
        "-gencode".to_string(),
        format!("arch={0},code={0}", targets.ptx),
    ]);
    for (virtual_arch, real_arch) in &targets.native {
        args.extend([
            "-gencode".to_string(),
            format!("arch={virtual_arch},code={real_arch}"),
        ]);
    }
    args.extend([
        "-o".to_string(),
        image.display().to_string(),
        source.display().to_string(),
    ]);
    run_nvcc(nvcc, &args, &what)?;

    let text =
        fs::read_to_string(&ptx).map_err(|e| format!("cannot read {}: {e}", ptx.display()))?;
    let kernels = ptx_entries(&text);
    let image_len = fs::metadata(&image)
        .map_err(|e| format!("cannot read {}: {e}", image.display()))?
        .len();
    Ok(CompiledModule {
        stem,
        ptx,
        image,
        image_len,
        kernels,
    })
}

/// Kernel names from the `.entry` directives of PTX text (`.visible .entry name(`), sorted.
fn ptx_entries(ptx: &str) -> Vec<String> {
    let mut names: Vec<String> = ptx
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let at = line.find(".entry")?;
            // Only directives (`.visible`, `.weak`) may precede `.entry`.
            if !line[..at]
                .split_whitespace()
                .all(|token| token.starts_with('.'))
            {
                return None;
            }
            let rest = &line[at + ".entry".len()..];
            if !rest.starts_with(char::is_whitespace) {
                return None;
            }
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '(')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `rms-norm` -> `RMS_NORM`; a leading digit gets an underscore.
fn const_name(stem: &str) -> String {
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// Writes `OUT_DIR/kernels.rs`. For each `cuda/<stem>.cu`:
///
/// * `pub const <STEM>: &[u8]`: the fatbin (native code + PTX) for `cuModuleLoadData`, kept in a
///   64-byte aligned static (nvcc itself embeds fatbins 8-byte aligned).
/// * `pub const <STEM>_PTX: &str`: the PTX text (not NUL-terminated).
///
/// plus `MODULES: &[(&str, &[&str])]` (module name, kernel names), `IMAGES: &[(&str, &[u8])]`
/// (module name, fatbin), `TARGETS` (the architectures in every fatbin) and `NVCC_VERSION` (the
/// compiler's version).
fn write_kernels_rs(
    out_dir: &Path,
    targets: &Targets,
    nvcc_version: &str,
    modules: &[CompiledModule],
) {
    let mut code = String::new();
    let target_names = targets.names();
    let _ = writeln!(
        code,
        "// Generated by build.rs from cuda/*.cu; targets: {}.",
        target_names.join(", ")
    );
    code.push_str(
        "\n#[allow(dead_code)] // unused when cuda/ has no kernels\n#[repr(C, align(64))]\nstruct AlignedImage<const N: usize>([u8; N]);\n\n\
         /// Architectures in every image: the first is PTX (JIT-compiled by the driver on that and any\n\
         /// newer GPU), the rest are native code.\n",
    );
    let _ = writeln!(code, "pub const TARGETS: &[&str] = &{target_names:?};");
    let _ = writeln!(
        code,
        "/// The version of the nvcc that compiled the images.\npub const NVCC_VERSION: &str = {nvcc_version:?};"
    );
    for module in modules {
        let name = const_name(&module.stem);
        let source = format!("cuda/{}.cu", module.stem);
        let _ = writeln!(
            code,
            "\nstatic {name}_IMAGE: AlignedImage<{len}> = AlignedImage(*include_bytes!({path:?}));\n\
             /// `{source}` compiled for {targets} (a fatbin for `cuModuleLoadData`).\n\
             pub const {name}: &[u8] = &{name}_IMAGE.0;\n\
             /// `{source}` as {ptx_arch} PTX text.\n\
             pub const {name}_PTX: &str = include_str!({ptx:?});",
            len = module.image_len,
            path = module.image.display().to_string(),
            targets = target_names.join(" + "),
            ptx_arch = targets.ptx,
            ptx = module.ptx.display().to_string(),
        );
    }
    code.push_str("\n/// Every module (the stem of its `cuda/*.cu` file) with the kernels it exports, sorted.\n");
    code.push_str("pub const MODULES: &[(&str, &[&str])] = &[\n");
    for module in modules {
        let _ = writeln!(code, "    ({:?}, &{:?}),", module.stem, module.kernels);
    }
    code.push_str("];\n\n/// Every module with its image (the per-module constants).\n");
    code.push_str("pub const IMAGES: &[(&str, &[u8])] = &[\n");
    for module in modules {
        let _ = writeln!(
            code,
            "    ({:?}, {}),",
            module.stem,
            const_name(&module.stem)
        );
    }
    code.push_str("];\n");
    let path = out_dir.join("kernels.rs");
    fs::write(&path, code)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
}
