//! Element types of device buffers.
//!
//! [`DeviceElem`] is implemented for exactly the element types the kernels use: `f32`,
//! [`bf16`], [`f16`](struct@f16), `i32` and `u32`. It is sealed: the device code only
//! understands these.

use std::fmt;

use half::{bf16, f16};

/// The element type of a device buffer, as a runtime value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// `f32`: IEEE single precision.
    F32,
    /// [`bf16`]: bfloat16 (f32's exponent, 8 significant bits).
    BF16,
    /// [`f16`](struct@f16): IEEE half precision.
    F16,
    /// `i32` (token ids, row indices).
    I32,
    /// `u32` (counters, sampler inputs).
    U32,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Lower-case name, as used in kernel names (`rmsnorm_bf16`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::U32 => "u32",
        }
    }

    /// Whether this is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::BF16 | DType::F16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
    impl Sealed for i32 {}
    impl Sealed for u32 {}
}

/// An element type that can live in a [`DeviceBuffer`](crate::device::DeviceBuffer).
///
/// Sealed: implemented for `f32`, [`bf16`], [`f16`](struct@f16), `i32` and `u32` only.
pub trait DeviceElem:
    sealed::Sealed + bytemuck::Pod + Copy + Send + Sync + PartialEq + fmt::Debug + Default + 'static
{
    /// The runtime tag of this type.
    const DTYPE: DType;
    /// The value that fresh emulated allocations are filled with, so that outputs a kernel
    /// forgot to write are visible: a quiet NaN with a recognisable payload for floats,
    /// `0xDEADBEEF` for integers.
    const POISON: Self;
}

impl DeviceElem for f32 {
    const DTYPE: DType = DType::F32;
    const POISON: Self = f32::from_bits(0x7FDE_ADBE);
}

impl DeviceElem for bf16 {
    const DTYPE: DType = DType::BF16;
    const POISON: Self = bf16::from_bits(0x7FDE);
}

impl DeviceElem for f16 {
    const DTYPE: DType = DType::F16;
    const POISON: Self = f16::from_bits(0x7EAD);
}

impl DeviceElem for i32 {
    const DTYPE: DType = DType::I32;
    const POISON: Self = 0xDEAD_BEEF_u32 as i32;
}

impl DeviceElem for u32 {
    const DTYPE: DType = DType::U32;
    const POISON: Self = 0xDEAD_BEEF;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_rust_types() {
        assert_eq!(DType::F32.size_in_bytes(), std::mem::size_of::<f32>());
        assert_eq!(DType::BF16.size_in_bytes(), std::mem::size_of::<bf16>());
        assert_eq!(DType::F16.size_in_bytes(), std::mem::size_of::<f16>());
        assert_eq!(DType::I32.size_in_bytes(), std::mem::size_of::<i32>());
        assert_eq!(DType::U32.size_in_bytes(), std::mem::size_of::<u32>());
    }

    #[test]
    fn float_poison_is_nan() {
        assert!(f32::POISON.is_nan());
        assert!(bf16::POISON.is_nan());
        assert!(f16::POISON.is_nan());
        // Quiet NaNs: converting them does not raise or change their class.
        assert!(bf16::POISON.to_f32().is_nan());
        assert!(f16::POISON.to_f32().is_nan());
        assert_eq!(i32::POISON as u32, 0xDEAD_BEEF);
        assert_eq!(u32::POISON, 0xDEAD_BEEF);
    }

    #[test]
    fn names() {
        assert_eq!(DType::BF16.to_string(), "bf16");
        assert!(DType::F16.is_float());
        assert!(!DType::U32.is_float());
    }
}
