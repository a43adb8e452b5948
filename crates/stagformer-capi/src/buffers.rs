//! Caller pointers turned into references and slices, each checked (null, length) before it
//! is dereferenced; the messages name the argument.

use std::ffi::{c_char, CStr};

use crate::status::Failure;

/// `len` values at `ptr` (`arg` names it in errors). An empty slice needs no pointer.
///
/// # Safety
/// A non-null `ptr` must point to `len` readable, initialized values that stay unmodified
/// while the slice lives.
pub(crate) unsafe fn slice<'a, T>(
    arg: &str,
    ptr: *const T,
    len: usize,
) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::arg(
            arg,
            format!("is null but {len} values are expected"),
        ));
    }
    check_layout(arg, ptr, len)?;
    // SAFETY: non-null, aligned, at most isize::MAX bytes (checked) and, by this function's
    // contract, valid for `len` reads.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// What a slice of `len` values at `ptr` needs besides validity: alignment for `T` and at most
/// `isize::MAX` bytes in all (a length no real buffer has is an argument error, not UB).
fn check_layout<T>(arg: &str, ptr: *const T, len: usize) -> Result<(), Failure> {
    if !ptr.is_aligned() {
        return Err(Failure::arg(
            arg,
            format!("is not aligned to {} bytes", std::mem::align_of::<T>()),
        ));
    }
    match len.checked_mul(std::mem::size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(()),
        _ => Err(Failure::arg(arg, format!("length {len} is too large"))),
    }
}

/// A writable buffer `ptr` of `len` values that must hold at least `needed` (`arg` names
/// it); `needed == 0` accepts anything, a null pointer included.
///
/// # Safety
/// A non-null `ptr` must point to `len` writable values not aliased while the slice lives.
pub(crate) unsafe fn slice_mut<'a, T>(
    arg: &str,
    ptr: *mut T,
    len: usize,
    needed: usize,
) -> Result<&'a mut [T], Failure> {
    if needed == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Failure::arg(
            arg,
            format!("is null but {needed} values are written"),
        ));
    }
    if len < needed {
        return Err(Failure::arg(
            arg,
            format!("holds {len} values; {needed} are written"),
        ));
    }
    check_layout(arg, ptr.cast_const(), needed)?;
    // SAFETY: non-null, aligned, at most isize::MAX bytes (checked) and, by this function's
    // contract, valid for `len` writes; only the first `needed` (≤ len) are exposed.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, needed) })
}

/// The out-pointer `ptr` (`arg` names it), checked for null.
///
/// # Safety
/// A non-null `ptr` must be valid for one write of `T`.
pub(crate) unsafe fn out<'a, T>(arg: &str, ptr: *mut T) -> Result<&'a mut T, Failure> {
    // SAFETY: by this function's contract a non-null `ptr` is valid for a write.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::arg(arg, "is null"))
}

/// The NUL-terminated UTF-8 string `ptr` (`arg` names it).
///
/// # Safety
/// A non-null `ptr` must point to a NUL-terminated string.
pub(crate) unsafe fn string<'a>(arg: &str, ptr: *const c_char) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::arg(arg, "is null"));
    }
    // SAFETY: non-null and NUL-terminated by this function's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str()
        .map_err(|_| Failure::arg(arg, "is not valid UTF-8"))
}

/// `a × b` for sizes from the caller, or an error naming `what`.
pub(crate) fn product(what: &str, a: usize, b: usize) -> Result<usize, Failure> {
    a.checked_mul(b)
        .ok_or_else(|| Failure::arg(what, format!("{a} × {b} values overflow the address space")))
}
