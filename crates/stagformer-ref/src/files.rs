//! Reading and writing the files of a checkpoint (and the CLI's outputs) safely: only regular
//! files are read, with a size bound for the small JSON ones, and a file is written next to its
//! target and renamed over it, only where the target is a regular file or does not exist yet.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::LoadError;

/// Most bytes read from `config.json` or `model.safetensors.index.json`.
pub const MAX_JSON_BYTES: u64 = 16 << 20;

/// What a file system entry is, for messages ("a directory", "a FIFO", ...).
pub fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Why a small file could not be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    Io(std::io::Error),
    /// It exists but is not a regular file (after following symlinks): what it is.
    NotAFile(&'static str),
    /// Larger than the limit given.
    TooLarge,
}

/// Reads `path` as UTF-8 text, at most `limit` bytes. The type is checked from `metadata`
/// (which follows symlinks, as Hugging Face's cache needs) before the file is opened, so a
/// FIFO is never opened and cannot block; a dangling symlink is reported as one.
pub(crate) fn read_text(path: &Path, limit: u64) -> Result<String, ReadFailure> {
    regular_metadata(path)?;
    let file = File::open(path).map_err(ReadFailure::Io)?;
    // Checked again on the opened handle, in case the entry was replaced in between.
    let opened = file.metadata().map_err(ReadFailure::Io)?;
    if !opened.is_file() {
        return Err(ReadFailure::NotAFile(kind(&opened)));
    }
    let mut text = String::new();
    // One byte past the limit tells "exactly at the limit" from "larger".
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(ReadFailure::Io)?;
    if text.len() as u64 > limit {
        return Err(ReadFailure::TooLarge);
    }
    Ok(text)
}

/// Why [`regular_metadata`] found no regular file.
#[derive(Debug)]
pub(crate) enum NotRegular {
    Io(std::io::Error),
    /// What it is instead.
    Kind(&'static str),
}

impl From<NotRegular> for ReadFailure {
    fn from(e: NotRegular) -> Self {
        match e {
            NotRegular::Io(e) => ReadFailure::Io(e),
            NotRegular::Kind(k) => ReadFailure::NotAFile(k),
        }
    }
}

/// The metadata of `path` when it is (or links to) a regular file.
pub(crate) fn regular_metadata(path: &Path) -> Result<Metadata, NotRegular> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(meta),
        Ok(meta) => Err(NotRegular::Kind(kind(&meta))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_symlink(path) => {
            Err(NotRegular::Kind("a dangling symlink"))
        }
        Err(e) => Err(NotRegular::Io(e)),
    }
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Checks that a file may be written at `path`: nothing is there, or a regular file (not a
/// symlink, which would be replaced by a file rather than written through).
pub fn check_replaceable(path: &Path) -> Result<(), LoadError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        Ok(meta) => Err(LoadError::Write {
            path: path.to_owned(),
            reason: format!("it is {}; only a regular file is replaced", kind(&meta)),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LoadError::Write {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Writes `bytes` to `path` (see [`write_with`]).
pub fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    write_with(path, |tmp| {
        let mut file = OpenOptions::new()
            .write(true)
            .open(tmp)
            .map_err(|e| e.to_string())?;
        file.write_all(bytes).map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())
    })
}

/// Writes a file at `path` by letting `fill` write a fresh temporary file beside it, then
/// renaming that over `path`: a reader never sees half a file, and a failed write leaves what
/// was there. Refuses a `path` that is not a regular file ([`check_replaceable`]). The
/// temporary file is created like any new file (mode 0o666 less the umask).
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), LoadError> {
    check_replaceable(path)?;
    let err = |reason: String| LoadError::Write {
        path: path.to_owned(),
        reason,
    };
    let tmp = temp_path(path).ok_or_else(|| err("not a file name".into()))?;
    // create_new: never follows or truncates something already at the temporary name.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| err(format!("cannot create {}: {e}", tmp.display())))?;
    let written = fill(&tmp).and_then(|()| {
        // Checked again just before the rename, which would replace whatever is there.
        check_replaceable(path).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    });
    if let Err(reason) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(reason));
    }
    Ok(())
}

/// `.NAME.tmp-PID` in the directory of `path`.
fn temp_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    Some(match path.parent() {
        Some(dir) => dir.join(tmp),
        None => PathBuf::from(tmp),
    })
}
