//! Checkpoint files: `config.json` + `model.safetensors`, or shards
//! `model-0000N-of-0000M.safetensors` listed by `model.safetensors.index.json`.
//! f32, bf16 and f16 tensors are accepted.
//!
//! [`Checkpoint::open`] maps the files and validates the tensor directory (names, dtypes,
//! shapes, byte ranges) from the headers alone; tensor data is read only when a tensor is
//! converted ([`TensorSource::read`]), one tensor at a time, into the element type the caller
//! stores (f32 for the CPU reference, f32 or bf16 on a device). [`read_tensors`] is the older
//! eager path: every tensor widened to f32 at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{LoadError, LoadWarning};
use crate::header::{self, HeaderTensor};
use crate::weights::{expected_tensors, is_ignorable, TensorSpec};
use half::{bf16, f16};
use memmap2::Mmap;

/// The model's config in a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint: its `weight_map` names each tensor's shard.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor read from a checkpoint, widened to f32.
#[derive(Debug, Clone)]
pub struct LoadedTensor {
    /// Dimensions, outermost first (`[out, in]` for a linear weight).
    pub shape: Vec<usize>,
    /// The values, row-major: the product of `shape` of them.
    pub data: Vec<f32>,
    /// The file it came from, for error messages.
    pub file: PathBuf,
}

/// Storage dtype of a written checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    /// IEEE single precision, 4 bytes.
    F32,
    /// bfloat16 (f32's exponent, 8 significant bits), 2 bytes.
    Bf16,
    /// IEEE half precision, 2 bytes.
    F16,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::Bf16 | StorageDtype::F16 => 2,
        }
    }
}

impl StorageDtype {
    /// The lower-case name used in messages and on the command line (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "f32",
            StorageDtype::Bf16 => "bf16",
            StorageDtype::F16 => "f16",
        }
    }
}

/// An element type stored tensors convert into. Each conversion rounds at most once: bf16 to
/// bf16 is a copy, f16 to bf16 goes through f32 (exact) and rounds once.
pub trait Element: Copy + Send + Sync + 'static {
    /// `v` rounded to the nearest `Self`, ties to even (f32 keeps it as it is).
    fn from_f32(v: f32) -> Self;
    /// `v` exactly (bf16 widens into f32 and into itself without rounding).
    fn from_bf16(v: bf16) -> Self;
    /// `v` widened to f32 (exact), then rounded once to `Self` as [`Element::from_f32`] does.
    fn from_f16(v: f16) -> Self;
}

impl Element for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_bf16(v: bf16) -> Self {
        v.to_f32()
    }
    fn from_f16(v: f16) -> Self {
        v.to_f32()
    }
}

impl Element for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn from_bf16(v: bf16) -> Self {
        v
    }
    fn from_f16(v: f16) -> Self {
        bf16::from_f32(v.to_f32())
    }
}

/// Where a model's tensors come from: a mapped [`Checkpoint`], a loaded [`crate::Model`], or
/// seeded random weights ([`crate::init::RandomWeights`]). Loaders ask for one tensor at a
/// time, so only one converted tensor needs to exist on the host at once.
pub trait TensorSource {
    /// The validated config the tensors belong to.
    fn config(&self) -> &Config;
    /// Tensor `name` (one that [`expected_tensors`] lists for [`TensorSource::config`]),
    /// row-major, converted to `E`: exactly the values its expected shape calls for. A
    /// non-finite value is an error naming the tensor.
    fn read<E: Element>(&self, name: &str) -> Result<Vec<E>, LoadError>;
}

/// One memory-mapped safetensors file.
struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

/// Where one tensor of a [`Checkpoint`] lies.
#[derive(Debug, Clone)]
struct Entry {
    /// Index into `Checkpoint::files`.
    file: usize,
    dtype: StorageDtype,
    shape: Vec<usize>,
    /// Byte range within the file (validated to lie inside it).
    bytes: Range<usize>,
}

/// What the directory says about one tensor (no data is read).
#[derive(Debug, Clone, Copy)]
pub struct TensorInfo<'a> {
    /// The tensor's checkpoint name.
    pub name: &'a str,
    /// The safetensors file storing it.
    pub file: &'a Path,
    /// Its stored dtype.
    pub dtype: StorageDtype,
    /// Its dimensions, outermost first.
    pub shape: &'a [usize],
    /// Bytes of data in the file.
    pub bytes: usize,
}

/// A checkpoint directory with its safetensors files memory-mapped and its tensor directory
/// validated against the config; tensors are converted on demand.
///
/// Opening reads only `config.json`, the index and the safetensors headers (plus, for a tied
/// model that also stores `lm_head.weight`, the two tensors compared, see
/// [`Checkpoint::warnings`]). The files must not be modified while a `Checkpoint` maps them.
pub struct Checkpoint {
    dir: PathBuf,
    /// `model.safetensors`, or the index of a sharded checkpoint: where a missing tensor
    /// should have been.
    listing: PathBuf,
    config: Config,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, Entry>,
    warnings: Vec<LoadWarning>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field(
                "files",
                &self.files.iter().map(|m| &m.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Checkpoint {
    /// Opens `dir` strictly: the config, then every file's header. Missing, unexpected,
    /// misshapen or duplicated tensors, unsupported dtypes, truncated or corrupt files and a
    /// broken index are errors naming the file and tensor. Non-finite values are found when a
    /// tensor is converted ([`TensorSource::read`]).
    pub fn open(dir: &Path) -> Result<Self, crate::Error> {
        let config = Config::from_file(&dir.join(CONFIG_FILE))?;
        let weights = weight_files(dir)?;
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        for path in &weights.files {
            let map = map_file(path)?;
            index_file(files.len(), path, &map, &mut tensors, &weights.files)?;
            files.push(MappedFile {
                path: path.clone(),
                map,
            });
        }
        if let Some(index) = &weights.index {
            let found = tensors.iter().map(|(n, e)| (n.as_str(), e.file)).collect();
            index.check(&found, &weights.files)?;
        }
        let mut ckpt = Checkpoint {
            dir: dir.to_owned(),
            listing: weights.listing(),
            config,
            files,
            tensors,
            warnings: Vec::new(),
        };
        ckpt.validate()?;
        Ok(ckpt)
    }

    /// Checks the directory against the config's tensor list (in the list's order, so the first
    /// problem reported is deterministic), then a tied model's stored `lm_head`.
    fn validate(&mut self) -> Result<(), LoadError> {
        let specs = expected_tensors(&self.config);
        for spec in &specs {
            let entry =
                self.tensors
                    .get(&spec.name)
                    .ok_or_else(|| LoadError::MissingStoredTensor {
                        path: self.listing.clone(),
                        name: spec.name.clone(),
                    })?;
            self.check_shape(&spec.name, entry, &spec.shape)?;
        }
        let tied_head = tied_lm_head_spec(&self.config);
        if let Some(spec) = &tied_head {
            if let Some(entry) = self.tensors.get(&spec.name) {
                self.check_shape(&spec.name, entry, &spec.shape)?;
            }
        }
        self.tensors.retain(|name, _| !is_ignorable(name));
        let known = |name: &str| {
            specs.iter().any(|s| s.name == name)
                || tied_head.as_ref().is_some_and(|s| s.name == name)
        };
        if let Some((name, entry)) = self.tensors.iter().find(|(n, _)| !known(n)) {
            return Err(LoadError::UnexpectedTensor {
                path: self.files[entry.file].path.clone(),
                name: name.clone(),
            });
        }
        if tied_head.is_some()
            && self.tensors.contains_key(LM_HEAD)
            && !self.same_values(EMBED, LM_HEAD)
        {
            self.warnings.push(LoadWarning::TiedLmHeadDiffers {
                path: self.files[self.tensors[LM_HEAD].file].path.clone(),
            });
        }
        Ok(())
    }

    fn check_shape(&self, name: &str, entry: &Entry, shape: &[usize]) -> Result<(), LoadError> {
        if entry.shape != shape {
            return Err(LoadError::ShapeMismatch {
                path: self.files[entry.file].path.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        Ok(())
    }

    /// Whether two tensors of equal shape hold the same values bit for bit: the same bytes when
    /// stored in one dtype, else the same f32 values (every supported dtype widens exactly).
    fn same_values(&self, a: &str, b: &str) -> bool {
        let (ea, eb) = (&self.tensors[a], &self.tensors[b]);
        let (da, db) = (self.data(ea), self.data(eb));
        let same = if ea.dtype == eb.dtype {
            da == db
        } else {
            let wa = widen_bytes(ea.dtype, da);
            let wb = widen_bytes(eb.dtype, db);
            wa.zip(wb).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        self.release(ea);
        self.release(eb);
        same
    }

    /// The checkpoint directory it was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The safetensors files, in the order they were read.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Total size of the safetensors files.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.map.len() as u64).sum()
    }

    /// Every tensor of the checkpoint (`*.rotary_emb.inv_freq` buffers left out), by name.
    pub fn tensors(&self) -> impl Iterator<Item = TensorInfo<'_>> {
        self.tensors.iter().map(|(name, e)| self.info(name, e))
    }

    /// The directory entry of tensor `name` (`None` if the checkpoint does not store it).
    pub fn tensor(&self, name: &str) -> Option<TensorInfo<'_>> {
        let (name, e) = self.tensors.get_key_value(name)?;
        Some(self.info(name, e))
    }

    fn info<'a>(&'a self, name: &'a str, e: &'a Entry) -> TensorInfo<'a> {
        TensorInfo {
            name,
            file: &self.files[e.file].path,
            dtype: e.dtype,
            shape: &e.shape,
            bytes: e.bytes.len(),
        }
    }

    /// What loading noticed but did not refuse (see [`LoadWarning`]). The library prints
    /// nothing; callers decide how to show these.
    pub fn warnings(&self) -> &[LoadWarning] {
        &self.warnings
    }

    fn data(&self, e: &Entry) -> &[u8] {
        // In range: `index_file` checked the range against the mapped length.
        &self.files[e.file].map[e.bytes.clone()]
    }

    /// Drops a converted tensor's pages from this process's resident set: the map stays valid
    /// and the kernel reads the file again if the range is touched again, so a model read
    /// tensor by tensor never holds more than one tensor's mapped pages resident.
    fn release(&self, e: &Entry) {
        #[cfg(unix)]
        {
            let map = &self.files[e.file].map;
            // SAFETY: `Mmap::map` makes a shared, read-only file mapping, for which
            // MADV_DONTNEED only unmaps the pages from this process; a later access (also one
            // racing from another thread) faults the same bytes back in from the file, so no
            // borrow of the map ever observes different contents, given the file is not
            // modified while mapped (the contract of `Checkpoint::open`). The range was checked
            // to lie inside the map. Failure only means the pages stay resident.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    e.bytes.start,
                    e.bytes.len(),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = e;
    }

    /// Total bytes of the tensors the config calls for (what a full read converts).
    pub fn tensor_bytes(&self) -> u64 {
        expected_tensors(&self.config)
            .iter()
            .filter_map(|s| self.tensors.get(&s.name))
            .map(|e| e.bytes.len() as u64)
            .sum()
    }

    /// Bytes of tensor `name` in the file (0 when absent).
    pub fn tensor_len(&self, name: &str) -> u64 {
        self.tensors.get(name).map_or(0, |e| e.bytes.len() as u64)
    }
}

impl TensorSource for Checkpoint {
    fn config(&self) -> &Config {
        &self.config
    }

    fn read<E: Element>(&self, name: &str) -> Result<Vec<E>, LoadError> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingStoredTensor {
                path: self.listing.clone(),
                name: name.to_owned(),
            })?;
        let out = convert::<E>(entry.dtype, self.data(entry));
        self.release(entry);
        out.ok_or_else(|| LoadError::NonFinite {
            path: self.files[entry.file].path.clone(),
            name: name.to_owned(),
        })
    }
}

pub(crate) const EMBED: &str = "model.embed_tokens.weight";
pub(crate) const LM_HEAD: &str = "lm_head.weight";

/// With tied embeddings, the `lm_head.weight` a checkpoint may store anyway (Hugging Face
/// writes it for some models): allowed, with the embedding's shape, and ignored.
pub(crate) fn tied_lm_head_spec(cfg: &Config) -> Option<TensorSpec> {
    cfg.tie_word_embeddings.then(|| TensorSpec {
        name: LM_HEAD.to_owned(),
        shape: vec![cfg.vocab_size, cfg.hidden_size],
        role: crate::weights::TensorRole::Linear,
    })
}

/// `bytes` (little-endian, a whole number of elements, validated by the caller) converted to
/// `E`, or `None` if a value is not finite.
fn convert<E: Element>(dtype: StorageDtype, bytes: &[u8]) -> Option<Vec<E>> {
    let mut finite = true;
    let out: Vec<E> = match dtype {
        StorageDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                finite &= v.is_finite();
                E::from_f32(v)
            })
            .collect(),
        StorageDtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| {
                let v = bf16::from_le_bytes([c[0], c[1]]);
                finite &= v.is_finite();
                E::from_bf16(v)
            })
            .collect(),
        StorageDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| {
                let v = f16::from_le_bytes([c[0], c[1]]);
                finite &= v.is_finite();
                E::from_f16(v)
            })
            .collect(),
    };
    finite.then_some(out)
}

/// The f32 values of `bytes` stored as `dtype`.
fn widen_bytes(dtype: StorageDtype, bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let width = dtype.bytes();
    bytes.chunks_exact(width).map(move |c| match dtype {
        StorageDtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        StorageDtype::Bf16 => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        StorageDtype::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
    })
}

/// The safetensors files of a checkpoint and, when sharded, its index.
struct WeightFiles {
    files: Vec<PathBuf>,
    index: Option<ShardIndex>,
}

impl WeightFiles {
    /// The file that lists the tensors: the index, or the one safetensors file.
    fn listing(&self) -> PathBuf {
        match &self.index {
            Some(index) => index.path.clone(),
            None => self.files[0].clone(),
        }
    }
}

/// A sharded checkpoint's `weight_map`: tensor name → shard file name.
struct ShardIndex {
    path: PathBuf,
    weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Checks the tensors found in the shards (name → index into `files`) against the
    /// `weight_map`: each tensor is in the shard the map names, and each map entry is in a
    /// shard. The first mismatch in name order is reported: first among the stored tensors,
    /// then among the map's entries.
    fn check(&self, found: &BTreeMap<&str, usize>, files: &[PathBuf]) -> Result<(), LoadError> {
        let mismatch = |name: &str, reason: String| LoadError::IndexMismatch {
            path: self.path.clone(),
            name: name.to_owned(),
            reason,
        };
        let file_name = |f: usize| {
            files[f]
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        for (&name, &file) in found {
            let actual = file_name(file);
            match self.weight_map.get(name) {
                None => {
                    return Err(mismatch(
                        name,
                        format!("is stored in {actual} but has no `weight_map` entry"),
                    ))
                }
                Some(listed) if *listed != actual => {
                    return Err(mismatch(
                        name,
                        format!("is stored in {actual} but `weight_map` puts it in {listed}"),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some((name, listed)) = self
            .weight_map
            .iter()
            .find(|(n, _)| !found.contains_key(n.as_str()))
        {
            return Err(mismatch(
                name,
                format!("`weight_map` puts it in {listed}, which does not hold it"),
            ));
        }
        Ok(())
    }
}

/// The safetensors files of `dir`: `model.safetensors`, or the shards its index names.
fn weight_files(dir: &Path) -> Result<WeightFiles, LoadError> {
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    if exists(&single) {
        // Present but perhaps a directory or a dangling link: say so rather than "missing".
        regular(&single)?;
        Ok(WeightFiles {
            files: vec![single],
            index: None,
        })
    } else if exists(&index) {
        shard_files(dir, &index)
    } else {
        Err(LoadError::NoWeights {
            path: dir.to_owned(),
        })
    }
}

/// Checks, without opening it (a FIFO would block), that `path` is or links to a regular file.
fn regular(path: &Path) -> Result<(), LoadError> {
    use crate::files::{regular_metadata, NotRegular};
    match regular_metadata(path) {
        Ok(_) => Ok(()),
        Err(NotRegular::Kind(kind)) => Err(LoadError::SpecialFile {
            path: path.to_owned(),
            kind,
        }),
        Err(NotRegular::Io(error)) => Err(LoadError::Io {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Maps `path` read-only after checking it is a regular file (symlinks to one are followed, as
/// in Hugging Face's cache) long enough to hold a safetensors header length.
fn map_file(path: &Path) -> Result<Mmap, LoadError> {
    let io = |error| LoadError::Io {
        path: path.to_owned(),
        error,
    };
    regular(path)?;
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(LoadError::NotAFile {
            path: path.to_owned(),
        });
    }
    if meta.len() < 8 {
        return Err(LoadError::Safetensors {
            path: path.to_owned(),
            reason: format!("{} bytes is too short for a safetensors header", meta.len()),
        });
    }
    // SAFETY: a read-only shared mapping of the file; the `&[u8]` it derefs to is immutable
    // only as long as the file's contents do not change. That the files are not modified (or
    // truncated) while mapped is the caller's contract, as for every memory-mapping model
    // loader; it is stated on `Checkpoint` and in docs/MODEL.md. A regular file was checked
    // for above, so the map is not of a device or pipe, and its length (>= 8) is not zero.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok(map)
}

/// Adds the tensors of the mapped file `map` (the `file`-th of `files`) to `out`, with their
/// byte ranges checked against the file ([`header::parse`]).
fn index_file(
    file: usize,
    path: &Path,
    map: &[u8],
    out: &mut BTreeMap<String, Entry>,
    files: &[PathBuf],
) -> Result<(), LoadError> {
    for HeaderTensor {
        name,
        dtype,
        shape,
        bytes,
    } in header::parse(path, map)?
    {
        if let Some(other) = out.get(&name) {
            return Err(LoadError::DuplicateTensor {
                path: path.to_owned(),
                other: files[other.file].clone(),
                name,
            });
        }
        let entry = Entry {
            file,
            dtype,
            shape,
            bytes,
        };
        out.insert(name, entry);
    }
    Ok(())
}

/// Reads every tensor of the checkpoint in `dir`, widened to f32, with no check against a
/// config (see [`crate::weights::Weights::from_tensors`]); the headers and a sharded index are
/// checked as by [`Checkpoint::open`]. [`Checkpoint`] converts on demand instead.
pub fn read_tensors(
    dir: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<BTreeMap<String, LoadedTensor>, LoadError> {
    let weights = weight_files(dir)?;
    let mut maps = Vec::new();
    let mut entries = BTreeMap::new();
    for (n, file) in weights.files.iter().enumerate() {
        let map = map_file(file)?;
        index_file(n, file, &map, &mut entries, &weights.files)?;
        maps.push(map);
    }
    if let Some(index) = &weights.index {
        let found = entries.iter().map(|(n, e)| (n.as_str(), e.file)).collect();
        index.check(&found, &weights.files)?;
    }
    let total: u64 = maps.iter().map(|m| m.len() as u64).sum();
    let mut done = 0;
    let mut tensors = BTreeMap::new();
    for (n, (file, map)) in weights.files.iter().zip(&maps).enumerate() {
        for (name, e) in entries.iter().filter(|(_, e)| e.file == n) {
            let data = widen_bytes(e.dtype, &map[e.bytes.clone()]).collect::<Vec<f32>>();
            if data.iter().any(|v| !v.is_finite()) {
                return Err(LoadError::NonFinite {
                    path: file.clone(),
                    name: name.clone(),
                });
            }
            let tensor = LoadedTensor {
                shape: e.shape.clone(),
                data,
                file: file.clone(),
            };
            tensors.insert(name.clone(), tensor);
        }
        done += map.len() as u64;
        progress(done, total);
    }
    Ok(tensors)
}

/// Reads the index `index` of the checkpoint in `dir`: its `weight_map` (no key twice, each
/// value a plain file name) and the distinct shard files it names, in name order.
fn shard_files(dir: &Path, index: &Path) -> Result<WeightFiles, LoadError> {
    let bad = |reason: String| LoadError::Index {
        path: index.to_owned(),
        reason,
    };
    use crate::files::{read_text, ReadFailure, MAX_JSON_BYTES};
    let text = read_text(index, MAX_JSON_BYTES).map_err(|failure| match failure {
        ReadFailure::Io(error) => LoadError::Io {
            path: index.to_owned(),
            error,
        },
        ReadFailure::NotAFile(kind) => LoadError::SpecialFile {
            path: index.to_owned(),
            kind,
        },
        ReadFailure::TooLarge => LoadError::FileTooLarge {
            path: index.to_owned(),
            limit: MAX_JSON_BYTES,
        },
    })?;
    let doc: header::IndexDoc =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let entries = doc
        .weight_map
        .ok_or_else(|| bad("no `weight_map` object".into()))?
        .0;
    if let Some(tensor) = header::first_duplicate(&entries) {
        return Err(LoadError::IndexMismatch {
            path: index.to_owned(),
            name: tensor.to_owned(),
            reason: "appears more than once in `weight_map`".into(),
        });
    }
    let mut weight_map = BTreeMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut sorted = entries;
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (tensor, file) in sorted {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{tensor}` is not a file name")))?;
        if file.is_empty() || file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "`weight_map.{tensor}` = {file:?} is not a plain file name"
            )));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_owned());
        }
        weight_map.insert(tensor, file.to_owned());
    }
    if names.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    names.sort_unstable();
    Ok(WeightFiles {
        files: names.into_iter().map(|n| dir.join(n)).collect(),
        index: Some(ShardIndex {
            path: index.to_owned(),
            weight_map,
        }),
    })
}

/// Rounds f32 values to `dtype` and returns their little-endian bytes.
pub fn encode(values: &[f32], dtype: StorageDtype) -> Vec<u8> {
    match dtype {
        StorageDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StorageDtype::Bf16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        StorageDtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// A tensor ready to be written: name, shape and encoded bytes.
pub struct EncodedTensor {
    /// The tensor's checkpoint name.
    pub name: String,
    /// Its dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The dtype `bytes` are encoded in.
    pub dtype: StorageDtype,
    /// The values, little-endian, row-major: the product of `shape` times
    /// [`StorageDtype::bytes`] bytes.
    pub bytes: Vec<u8>,
}

/// Writes one safetensors file holding `tensors` in their order, with `{"format": "pt"}`
/// metadata, replacing `path` only if it is a regular file ([`crate::files::write_with`]).
///
/// Written here rather than by `safetensors::serialize_to_file`, which renames a temporary
/// file of its own (mode 0600, whatever the umask) over any kind of target.
pub fn write_safetensors(path: &Path, tensors: &[EncodedTensor]) -> Result<(), LoadError> {
    let write_err = |reason: String| LoadError::Write {
        path: path.to_owned(),
        reason,
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for t in tensors {
        let elements = t
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(t.dtype.bytes()));
        if elements != Some(t.bytes.len()) {
            return Err(write_err(format!(
                "tensor `{}`: shape {:?} does not match its {} bytes",
                t.name,
                t.shape,
                t.bytes.len()
            )));
        }
        let end = offset + t.bytes.len();
        let dtype = match t.dtype {
            StorageDtype::F32 => "F32",
            StorageDtype::Bf16 => "BF16",
            StorageDtype::F16 => "F16",
        };
        header.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).map_err(|e| write_err(e.to_string()))?;
    // Padded with spaces so that the data starts 8-byte aligned, as safetensors writes it.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    crate::files::write_with(path, |tmp| {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(tmp)
            .map_err(|e| e.to_string())?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut write = || -> std::io::Result<()> {
            out.write_all(&(header.len() as u64).to_le_bytes())?;
            out.write_all(&header)?;
            for t in tensors {
                out.write_all(&t.bytes)?;
            }
            out.flush()?;
            out.get_ref().sync_all()
        };
        write().map_err(|e| e.to_string())
    })
}

/// Writes `model.safetensors`, or with `shards > 1` that many shard files and the index.
pub fn write_tensors(
    dir: &Path,
    tensors: &[EncodedTensor],
    shards: usize,
) -> Result<(), LoadError> {
    let write_err = |path: &Path, reason: String| LoadError::Write {
        path: path.to_owned(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e.to_string()))?;
    let shards = shards.clamp(1, tensors.len().max(1));
    let per_shard = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (n, chunk) in tensors.chunks(per_shard.max(1)).enumerate() {
        let file_name = if shards == 1 {
            SINGLE_FILE.to_owned()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", n + 1, shards)
        };
        let path = dir.join(&file_name);
        write_safetensors(&path, chunk)?;
        for t in chunk {
            weight_map.insert(t.name.clone(), file_name.clone().into());
        }
    }
    if shards > 1 {
        let total: usize = tensors.iter().map(|t| t.bytes.len()).sum();
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let path = dir.join(INDEX_FILE);
        let text =
            serde_json::to_string_pretty(&index).map_err(|e| write_err(&path, e.to_string()))?;
        crate::files::write_replacing(&path, text.as_bytes())?;
    }
    Ok(())
}
