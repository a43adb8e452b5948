//! Typed device buffers and views into them.

use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use super::cuda::CudaMem;
use super::emu::HostMem;
use super::kernel::Retained;
use super::{Backend, Device, Stream};
use crate::dtype::{DType, DeviceElem};
use crate::error::{DeviceError, Result};

/// One device allocation, shared by the buffer that owns it and by the queued work that uses
/// it (so that dropping the buffer early is safe).
pub(crate) struct Allocation {
    device: Device,
    mem: Memory,
    /// Requested size, counted in [`Device::allocated_bytes`] while the allocation lives.
    bytes: usize,
}

enum Memory {
    Host(HostMem),
    Cuda(CudaMem),
    /// Memory owned by someone else (see `interop`): its address, never freed here. On the
    /// emulated device it is a host address.
    Foreign(u64),
}

impl Allocation {
    fn new(device: &Device, bytes: usize) -> Result<Arc<Allocation>> {
        let mem = match device.backend() {
            Backend::Emulated(_) => Memory::Host(HostMem::new(bytes)?),
            Backend::Cuda(c) => Memory::Cuda(c.alloc(bytes)?),
        };
        device.account(bytes, true);
        Ok(Arc::new(Allocation {
            device: device.clone(),
            mem,
            bytes,
        }))
    }

    /// An allocation standing for foreign memory at `addr`: not counted, never freed.
    pub(super) fn foreign(device: &Device, addr: u64) -> Arc<Allocation> {
        Arc::new(Allocation {
            device: device.clone(),
            mem: Memory::Foreign(addr),
            bytes: 0,
        })
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// The device address of the first byte.
    pub(crate) fn addr(&self) -> u64 {
        match &self.mem {
            Memory::Host(h) => h.as_ptr() as u64,
            Memory::Cuda(c) => c.ptr,
            Memory::Foreign(addr) => *addr,
        }
    }

    /// The host pointer of an emulated allocation.
    pub(crate) fn host_ptr(&self) -> Result<*mut u8> {
        match &self.mem {
            Memory::Host(h) => Ok(h.as_ptr()),
            Memory::Foreign(addr) if matches!(self.device.backend(), Backend::Emulated(_)) => {
                Ok(*addr as usize as *mut u8)
            }
            Memory::Cuda(_) | Memory::Foreign(_) => Err(DeviceError::DeviceMismatch {
                arg: "buffer",
                expected: "an emulated device".into(),
                found: self.device.describe(),
            }),
        }
    }

    /// The address of byte `offset` as a pointer, for kernel parameters. For emulated memory
    /// the pointer is derived from the allocation's own pointer.
    fn ptr_at(&self, offset: usize) -> *mut c_void {
        match &self.mem {
            Memory::Host(h) => h.as_ptr().wrapping_add(offset).cast(),
            Memory::Cuda(c) => c.ptr.wrapping_add(offset as u64) as usize as *mut c_void,
            Memory::Foreign(addr) => addr.wrapping_add(offset as u64) as usize as *mut c_void,
        }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.device.account(self.bytes, false);
    }
}

pub(super) fn byte_len<T: DeviceElem>(arg: &'static str, len: usize) -> Result<usize> {
    len.checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| {
            DeviceError::overflow(
                arg,
                format!("{len} elements of {} do not fit in memory", T::DTYPE),
            )
        })
}

/// Resolves `range` against a length; `arg` names it in the error.
fn resolve(
    arg: &'static str,
    range: impl RangeBounds<usize>,
    len: usize,
) -> Result<(usize, usize)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => Some(len),
    };
    match (start, end) {
        (Some(s), Some(e)) if s <= e && e <= len => Ok((s, e)),
        (s, e) => Err(DeviceError::OutOfBounds {
            arg,
            start: s.unwrap_or(usize::MAX),
            end: e.unwrap_or(usize::MAX),
            len,
        }),
    }
}

/// A typed buffer of `len` elements in device memory.
pub struct DeviceBuffer<T: DeviceElem> {
    alloc: Arc<Allocation>,
    len: usize,
    _elem: PhantomData<T>,
}

/// An immutable view of a range of a [`DeviceBuffer`].
pub struct DeviceView<'a, T: DeviceElem> {
    alloc: &'a Arc<Allocation>,
    offset: usize,
    len: usize,
    _elem: PhantomData<&'a [T]>,
}

/// A mutable view of a range of a [`DeviceBuffer`].
pub struct DeviceViewMut<'a, T: DeviceElem> {
    alloc: &'a Arc<Allocation>,
    offset: usize,
    len: usize,
    _elem: PhantomData<&'a mut [T]>,
}

/// Anything that can be read as a device range: a buffer or a view.
pub trait AsDeviceView<T: DeviceElem> {
    /// The whole range as an immutable view.
    fn view(&self) -> DeviceView<'_, T>;
}

/// Anything that can be written as a device range: a buffer or a mutable view.
pub trait AsDeviceViewMut<T: DeviceElem>: AsDeviceView<T> {
    /// The whole range as a mutable view.
    fn view_mut(&mut self) -> DeviceViewMut<'_, T>;
}

impl<T: DeviceElem> DeviceBuffer<T> {
    /// Allocates `len` elements on `device`.
    ///
    /// On CUDA the contents are uninitialised. Under emulation they are filled with
    /// [`DeviceElem::POISON`] (NaN for floats, `0xDEADBEEF` for integers), so that outputs a
    /// kernel forgot to write are visible. Allocation is not ordered on any stream.
    pub fn alloc(device: &Device, len: usize) -> Result<Self> {
        let bytes = byte_len::<T>("len", len)?;
        let alloc = Allocation::new(device, bytes)?;
        if let Memory::Host(h) = &alloc.mem {
            let p = h.as_ptr().cast::<T>();
            for i in 0..len {
                // SAFETY: the fresh allocation holds `len` elements of `T`, is aligned to 256
                // bytes and is not yet shared with anything.
                unsafe { p.add(i).write(T::POISON) };
            }
        }
        Ok(DeviceBuffer {
            alloc,
            len,
            _elem: PhantomData,
        })
    }

    /// A buffer over `alloc`, which holds at least `len` elements (checked by the caller).
    pub(super) fn from_allocation(alloc: Arc<Allocation>, len: usize) -> Self {
        DeviceBuffer {
            alloc,
            len,
            _elem: PhantomData,
        }
    }

    /// Allocates `len` elements, zeroed in stream order on `stream`.
    pub fn alloc_zeroed(stream: &Stream, len: usize) -> Result<Self> {
        let mut b = Self::alloc(stream.device(), len)?;
        b.view_mut().fill_zero(stream)?;
        Ok(b)
    }

    /// Allocates a buffer holding a copy of `data`, written in stream order on `stream`.
    /// `data` may be reused as soon as this returns.
    pub fn from_host(stream: &Stream, data: &[T]) -> Result<Self> {
        let mut b = Self::alloc(stream.device(), data.len())?;
        b.view_mut().copy_from_host(stream, data)?;
        Ok(b)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        T::DTYPE
    }

    /// The device the buffer lives on.
    pub fn device(&self) -> &Device {
        &self.alloc.device
    }

    /// Device address of the first element (a host address under emulation).
    pub fn addr(&self) -> u64 {
        self.alloc.addr()
    }

    /// The whole buffer as an immutable view.
    pub fn view(&self) -> DeviceView<'_, T> {
        DeviceView {
            alloc: &self.alloc,
            offset: 0,
            len: self.len,
            _elem: PhantomData,
        }
    }

    /// The whole buffer as a mutable view.
    pub fn view_mut(&mut self) -> DeviceViewMut<'_, T> {
        DeviceViewMut {
            alloc: &self.alloc,
            offset: 0,
            len: self.len,
            _elem: PhantomData,
        }
    }

    /// An immutable view of `range`; [`DeviceError::OutOfBounds`] if it does not fit.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<DeviceView<'_, T>> {
        self.view().slice(range)
    }

    /// A mutable view of `range`; [`DeviceError::OutOfBounds`] if it does not fit.
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> Result<DeviceViewMut<'_, T>> {
        self.view_mut().into_slice_mut(range)
    }

    /// Copies `src` (exactly `len()` elements) into the buffer, in order on `stream`.
    pub fn copy_from_host(&mut self, stream: &Stream, src: &[T]) -> Result<()> {
        self.view_mut().copy_from_host(stream, src)
    }

    /// Copies the device range `src` (exactly `len()` elements) into the buffer.
    pub fn copy_from(&mut self, stream: &Stream, src: &impl AsDeviceView<T>) -> Result<()> {
        self.view_mut().copy_from(stream, src)
    }

    /// Sets all elements to zero (all-zero bits), in order on `stream`.
    pub fn fill_zero(&mut self, stream: &Stream) -> Result<()> {
        self.view_mut().fill_zero(stream)
    }

    /// Copies the buffer to a new `Vec`, after all work queued on `stream` so far. Waits for
    /// the stream and returns its sticky error, if any.
    pub fn to_host(&self, stream: &Stream) -> Result<Vec<T>> {
        self.view().to_host(stream)
    }

    /// Copies the buffer into `dst` (exactly `len()` elements); waits like [`Self::to_host`].
    pub fn copy_to_host(&self, stream: &Stream, dst: &mut [T]) -> Result<()> {
        self.view().copy_to_host(stream, dst)
    }

    /// A new buffer with a copy of this one's contents, made in order on `stream`.
    pub fn try_clone(&self, stream: &Stream) -> Result<Self> {
        let mut b = Self::alloc(stream.device(), self.len)?;
        b.copy_from(stream, self)?;
        Ok(b)
    }
}

impl<T: DeviceElem> fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("dtype", &T::DTYPE)
            .field("len", &self.len)
            .field("device", &self.alloc.device.name())
            .finish()
    }
}

impl<T: DeviceElem> AsDeviceView<T> for DeviceBuffer<T> {
    fn view(&self) -> DeviceView<'_, T> {
        DeviceBuffer::view(self)
    }
}

impl<T: DeviceElem> AsDeviceViewMut<T> for DeviceBuffer<T> {
    fn view_mut(&mut self) -> DeviceViewMut<'_, T> {
        DeviceBuffer::view_mut(self)
    }
}

impl<T: DeviceElem> Clone for DeviceView<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: DeviceElem> Copy for DeviceView<'_, T> {}

impl<'a, T: DeviceElem> DeviceView<'a, T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        T::DTYPE
    }

    /// The device the viewed buffer lives on.
    pub fn device(&self) -> &'a Device {
        &self.alloc.device
    }

    /// Offset of the view's first element in its buffer, in elements.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Device address of the first element (a host address under emulation).
    pub fn addr(&self) -> u64 {
        self.alloc.addr() + (self.offset * std::mem::size_of::<T>()) as u64
    }

    /// The address as a pointer, for kernel parameters. Never dereference it on the host.
    pub fn as_ptr(&self) -> *const c_void {
        self.alloc
            .ptr_at(self.offset * std::mem::size_of::<T>())
            .cast_const()
    }

    /// A sub-view of `range` (relative to this view).
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<DeviceView<'a, T>> {
        let (s, e) = resolve("range", range, self.len)?;
        Ok(DeviceView {
            alloc: self.alloc,
            offset: self.offset + s,
            len: e - s,
            _elem: PhantomData,
        })
    }

    /// Splits into `[0, mid)` and `[mid, len)`.
    pub fn split_at(&self, mid: usize) -> Result<(DeviceView<'a, T>, DeviceView<'a, T>)> {
        Ok((self.slice(..mid)?, self.slice(mid..)?))
    }

    /// The same memory viewed as another element type of the same size (e.g. `i32` as `u32`).
    pub fn bitcast<U: DeviceElem>(&self) -> Result<DeviceView<'a, U>> {
        if std::mem::size_of::<U>() != std::mem::size_of::<T>() {
            return Err(DeviceError::invalid(
                "bitcast",
                format!("{:?} and {:?} differ in size", T::DTYPE, U::DTYPE),
            ));
        }
        Ok(DeviceView {
            alloc: self.alloc,
            offset: self.offset,
            len: self.len,
            _elem: PhantomData,
        })
    }

    /// Copies the viewed range to a new `Vec`; waits for `stream` (see
    /// [`DeviceBuffer::to_host`]).
    pub fn to_host(&self, stream: &Stream) -> Result<Vec<T>> {
        let mut v = vec![T::default(); self.len];
        self.copy_to_host(stream, &mut v)?;
        Ok(v)
    }

    /// Copies the viewed range into `dst` (exactly `len()` elements); waits for `stream`.
    pub fn copy_to_host(&self, stream: &Stream, dst: &mut [T]) -> Result<()> {
        stream.check_device("src", self.alloc)?;
        if dst.len() != self.len {
            return Err(DeviceError::LengthMismatch {
                arg: "dst",
                expected: self.len,
                found: dst.len(),
            });
        }
        let off = self.offset * std::mem::size_of::<T>();
        // SAFETY: the view lies within its allocation, so `off .. off + size_of_val(dst)` does.
        unsafe { stream.read_to_host(self.alloc, off, bytemuck::cast_slice_mut(dst)) }
    }

    /// Keeps the allocation alive for queued work; `arg` names it in device-mismatch errors.
    #[allow(dead_code)] // for the kernel op wrappers
    pub(crate) fn retain(&self, arg: &'static str) -> Retained {
        Retained::new(arg, Arc::clone(self.alloc))
    }

    pub(crate) fn allocation(&self) -> &'a Arc<Allocation> {
        self.alloc
    }

    /// Byte offset of the view in its allocation.
    pub(crate) fn byte_offset(&self) -> usize {
        self.offset * std::mem::size_of::<T>()
    }
}

impl<T: DeviceElem> fmt::Debug for DeviceView<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceView")
            .field("dtype", &T::DTYPE)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: DeviceElem> AsDeviceView<T> for DeviceView<'_, T> {
    fn view(&self) -> DeviceView<'_, T> {
        *self
    }
}

impl<'a, T: DeviceElem> DeviceViewMut<'a, T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        T::DTYPE
    }

    /// The device the viewed buffer lives on.
    pub fn device(&self) -> &'a Device {
        &self.alloc.device
    }

    /// Offset of the view's first element in its buffer, in elements.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Device address of the first element (a host address under emulation).
    pub fn addr(&self) -> u64 {
        self.as_view().addr()
    }

    /// The address as a pointer, for kernel parameters. Never dereference it on the host.
    pub fn as_mut_ptr(&mut self) -> *mut c_void {
        self.alloc.ptr_at(self.offset * std::mem::size_of::<T>())
    }

    /// An immutable view of the same range.
    pub fn as_view(&self) -> DeviceView<'_, T> {
        DeviceView {
            alloc: self.alloc,
            offset: self.offset,
            len: self.len,
            _elem: PhantomData,
        }
    }

    /// A shorter-lived mutable view of the same range.
    pub fn reborrow(&mut self) -> DeviceViewMut<'_, T> {
        DeviceViewMut {
            alloc: self.alloc,
            offset: self.offset,
            len: self.len,
            _elem: PhantomData,
        }
    }

    /// An immutable sub-view of `range` (relative to this view).
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<DeviceView<'_, T>> {
        self.as_view().slice(range)
    }

    /// A mutable sub-view of `range` (relative to this view).
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> Result<DeviceViewMut<'_, T>> {
        self.reborrow().into_slice_mut(range)
    }

    /// Narrows this view to `range` (relative to it).
    pub fn into_slice_mut(self, range: impl RangeBounds<usize>) -> Result<DeviceViewMut<'a, T>> {
        let (s, e) = resolve("range", range, self.len)?;
        Ok(DeviceViewMut {
            alloc: self.alloc,
            offset: self.offset + s,
            len: e - s,
            _elem: PhantomData,
        })
    }

    /// This view as another element type of the same size (e.g. `i32` as `f32`), so that
    /// outputs of several types can share one buffer and one copy back.
    pub fn into_bitcast<U: DeviceElem>(self) -> Result<DeviceViewMut<'a, U>> {
        if std::mem::size_of::<U>() != std::mem::size_of::<T>() {
            return Err(DeviceError::invalid(
                "bitcast",
                format!("{:?} and {:?} differ in size", T::DTYPE, U::DTYPE),
            ));
        }
        Ok(DeviceViewMut {
            alloc: self.alloc,
            offset: self.offset,
            len: self.len,
            _elem: PhantomData,
        })
    }

    /// Splits into the disjoint mutable views `[0, mid)` and `[mid, len)`.
    pub fn split_at_mut(self, mid: usize) -> Result<(DeviceViewMut<'a, T>, DeviceViewMut<'a, T>)> {
        if mid > self.len {
            return Err(DeviceError::OutOfBounds {
                arg: "mid",
                start: mid,
                end: mid,
                len: self.len,
            });
        }
        let left = DeviceViewMut {
            alloc: self.alloc,
            offset: self.offset,
            len: mid,
            _elem: PhantomData,
        };
        let right = DeviceViewMut {
            alloc: self.alloc,
            offset: self.offset + mid,
            len: self.len - mid,
            _elem: PhantomData,
        };
        Ok((left, right))
    }

    /// Copies `src` (exactly `len()` elements) into the range, in order on `stream`. `src`
    /// may be reused as soon as this returns.
    pub fn copy_from_host(&mut self, stream: &Stream, src: &[T]) -> Result<()> {
        stream.check_device("dst", self.alloc)?;
        if src.len() != self.len {
            return Err(DeviceError::LengthMismatch {
                arg: "src",
                expected: self.len,
                found: src.len(),
            });
        }
        let off = self.offset * std::mem::size_of::<T>();
        // SAFETY: the view lies within its allocation, so `off .. off + size_of_val(src)` does.
        unsafe { stream.write_from_host(self.alloc, off, bytemuck::cast_slice(src)) }
    }

    /// Copies the device range `src` (exactly `len()` elements) into this range, in order on
    /// `stream`.
    pub fn copy_from(&mut self, stream: &Stream, src: &impl AsDeviceView<T>) -> Result<()> {
        let src = src.view();
        stream.check_device("dst", self.alloc)?;
        stream.check_device("src", src.alloc)?;
        if src.len != self.len {
            return Err(DeviceError::LengthMismatch {
                arg: "src",
                expected: self.len,
                found: src.len,
            });
        }
        let size = std::mem::size_of::<T>();
        // SAFETY: both views lie within their allocations, and borrowing rules make them
        // disjoint (`self` is borrowed mutably, `src` immutably).
        unsafe {
            stream.copy_device(
                self.alloc,
                self.offset * size,
                src.alloc,
                src.offset * size,
                self.len * size,
            )
        }
    }

    /// Sets the range to zero (all-zero bits), in order on `stream`.
    pub fn fill_zero(&mut self, stream: &Stream) -> Result<()> {
        stream.check_device("dst", self.alloc)?;
        let size = std::mem::size_of::<T>();
        // SAFETY: the view lies within its allocation.
        unsafe { stream.zero_device(self.alloc, self.offset * size, self.len * size) }
    }

    /// Copies the range to a new `Vec`; waits for `stream`.
    pub fn to_host(&self, stream: &Stream) -> Result<Vec<T>> {
        self.as_view().to_host(stream)
    }

    /// Keeps the allocation alive for queued work; `arg` names it in device-mismatch errors.
    #[allow(dead_code)] // for the kernel op wrappers
    pub(crate) fn retain(&self, arg: &'static str) -> Retained {
        Retained::new(arg, Arc::clone(self.alloc))
    }

    pub(crate) fn allocation(&self) -> &'a Arc<Allocation> {
        self.alloc
    }

    /// Byte offset of the view in its allocation.
    pub(crate) fn byte_offset(&self) -> usize {
        self.offset * std::mem::size_of::<T>()
    }
}

impl<T: DeviceElem> fmt::Debug for DeviceViewMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceViewMut")
            .field("dtype", &T::DTYPE)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: DeviceElem> AsDeviceView<T> for DeviceViewMut<'_, T> {
    fn view(&self) -> DeviceView<'_, T> {
        self.as_view()
    }
}

impl<T: DeviceElem> AsDeviceViewMut<T> for DeviceViewMut<'_, T> {
    fn view_mut(&mut self) -> DeviceViewMut<'_, T> {
        self.reborrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitcast_views_reinterpret_same_size_types() {
        let device = Device::emulated();
        let stream = device.new_stream().unwrap();
        let b = DeviceBuffer::from_host(&stream, &[-1i32, 7, 2]).unwrap();
        let u = b.slice(1..).unwrap().bitcast::<u32>().unwrap();
        assert_eq!(u.to_host(&stream).unwrap(), vec![7, 2]);
        let all = b.view().bitcast::<u32>().unwrap();
        assert_eq!(all.to_host(&stream).unwrap()[0], u32::MAX);
        let err = b.view().bitcast::<half::bf16>().unwrap_err();
        assert!(err.to_string().contains("bitcast"), "{err}");
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)]
    fn resolve_ranges() {
        assert_eq!(resolve("r", .., 5).unwrap(), (0, 5));
        assert_eq!(resolve("r", 1..3, 5).unwrap(), (1, 3));
        assert_eq!(resolve("r", 1..=4, 5).unwrap(), (1, 5));
        assert_eq!(resolve("r", 5.., 5).unwrap(), (5, 5));
        assert!(matches!(
            resolve("r", 2..6, 5),
            Err(DeviceError::OutOfBounds {
                start: 2,
                end: 6,
                len: 5,
                ..
            })
        ));
        assert!(resolve("r", 3..2, 5).is_err());
        assert!(resolve("r", ..=usize::MAX, 5).is_err());
    }

    #[test]
    fn emulated_alloc_is_poisoned_and_aligned() {
        let d = Device::emulated();
        let s = d.new_stream().unwrap();
        let b = DeviceBuffer::<f32>::alloc(&d, 10).unwrap();
        assert_eq!(b.addr() % 256, 0);
        assert!(b.to_host(&s).unwrap().iter().all(|v| v.is_nan()));
        let b = DeviceBuffer::<u32>::alloc(&d, 3).unwrap();
        assert_eq!(b.to_host(&s).unwrap(), vec![0xDEAD_BEEF; 3]);
    }

    #[test]
    fn view_addresses() {
        let d = Device::emulated();
        let mut b = DeviceBuffer::<half::bf16>::alloc(&d, 100).unwrap();
        let base = b.addr();
        let v = b.slice(10..20).unwrap();
        assert_eq!(v.addr(), base + 20);
        assert_eq!(v.as_ptr() as u64, base + 20);
        let v2 = v.slice(5..).unwrap();
        assert_eq!((v2.offset(), v2.len()), (15, 5));
        let mut m = b.slice_mut(50..).unwrap();
        assert_eq!(m.as_mut_ptr() as u64, base + 100);
        let (l, r) = m.split_at_mut(20).unwrap();
        assert_eq!((l.offset(), l.len(), r.offset(), r.len()), (50, 20, 70, 30));
    }

    #[test]
    fn size_overflow_is_an_error() {
        let d = Device::emulated();
        let e = DeviceBuffer::<f32>::alloc(&d, usize::MAX / 2).unwrap_err();
        assert!(
            matches!(e, DeviceError::SizeOverflow { arg: "len", .. }),
            "{e}"
        );
    }
}
