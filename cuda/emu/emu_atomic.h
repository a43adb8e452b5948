// CUDA atomics on the host. Threads of one block are fibers on one host thread, but blocks run
// in parallel on several host threads, so every atomic is a real std::atomic_ref operation.
// Like CUDA's (non-_system) atomics they are relaxed; __threadfence() is the ordering tool.
#pragma once

#include <atomic>

namespace stag_emu::atomic {

constexpr auto relaxed = std::memory_order_relaxed;

template <class T>
inline T add(T *a, T v) {
    return std::atomic_ref<T>(*a).fetch_add(v, relaxed);
}
template <class T>
inline T sub(T *a, T v) {
    return std::atomic_ref<T>(*a).fetch_sub(v, relaxed);
}
template <class T>
inline T bit_and(T *a, T v) {
    return std::atomic_ref<T>(*a).fetch_and(v, relaxed);
}
template <class T>
inline T bit_or(T *a, T v) {
    return std::atomic_ref<T>(*a).fetch_or(v, relaxed);
}
template <class T>
inline T bit_xor(T *a, T v) {
    return std::atomic_ref<T>(*a).fetch_xor(v, relaxed);
}
template <class T>
inline T exch(T *a, T v) {
    return std::atomic_ref<T>(*a).exchange(v, relaxed);
}
template <class T>
inline T cas(T *a, T compare, T v) {
    // CUDA returns the old value whether or not the swap happened; on failure
    // compare_exchange_strong writes the observed value into `compare`.
    std::atomic_ref<T>(*a).compare_exchange_strong(compare, v, relaxed, relaxed);
    return compare;
}
// Read-modify-write through a CAS loop, for the operations std::atomic_ref lacks.
template <class T, class F>
inline T update(T *a, F f) {
    std::atomic_ref<T> ref(*a);
    T old = ref.load(relaxed);
    while (!ref.compare_exchange_weak(old, f(old), relaxed, relaxed)) {
    }
    return old;
}
template <class T>
inline T min(T *a, T v) {
    return update(a, [v](T o) { return v < o ? v : o; });
}
template <class T>
inline T max(T *a, T v) {
    return update(a, [v](T o) { return v > o ? v : o; });
}

// The ordered operations behind cuda/include/stag_atomic.cuh, with the C++ orders NVIDIA's
// atomics ABI maps to the PTX instructions: atom.acq_rel.gpu.add, atom.release.gpu.add,
// ld.acquire.gpu, st.relaxed.gpu. Device scope is the whole process here (every block of a
// launch is a host thread of it).
template <class T>
inline T add_acq_rel(T *a, T v) {
    return std::atomic_ref<T>(*a).fetch_add(v, std::memory_order_acq_rel);
}
template <class T>
inline T add_release(T *a, T v) {
    return std::atomic_ref<T>(*a).fetch_add(v, std::memory_order_release);
}
template <class T>
inline T load_acquire(const T *a) {
    // atomic_ref needs a non-const object; the load does not write it.
    return std::atomic_ref<T>(*const_cast<T *>(a)).load(std::memory_order_acquire);
}
template <class T>
inline void store_relaxed(T *a, T v) {
    std::atomic_ref<T>(*a).store(v, relaxed);
}

}  // namespace stag_emu::atomic

// All return the value held before the operation.
inline int atomicAdd(int *a, int v) { return stag_emu::atomic::add(a, v); }
inline unsigned int atomicAdd(unsigned int *a, unsigned int v) {
    return stag_emu::atomic::add(a, v);
}
inline unsigned long long atomicAdd(unsigned long long *a, unsigned long long v) {
    return stag_emu::atomic::add(a, v);
}
inline float atomicAdd(float *a, float v) { return stag_emu::atomic::add(a, v); }
inline double atomicAdd(double *a, double v) { return stag_emu::atomic::add(a, v); }

inline int atomicSub(int *a, int v) { return stag_emu::atomic::sub(a, v); }
inline unsigned int atomicSub(unsigned int *a, unsigned int v) {
    return stag_emu::atomic::sub(a, v);
}

inline int atomicExch(int *a, int v) { return stag_emu::atomic::exch(a, v); }
inline unsigned int atomicExch(unsigned int *a, unsigned int v) {
    return stag_emu::atomic::exch(a, v);
}
inline unsigned long long atomicExch(unsigned long long *a, unsigned long long v) {
    return stag_emu::atomic::exch(a, v);
}
inline float atomicExch(float *a, float v) { return stag_emu::atomic::exch(a, v); }

inline int atomicCAS(int *a, int compare, int v) { return stag_emu::atomic::cas(a, compare, v); }
inline unsigned int atomicCAS(unsigned int *a, unsigned int compare, unsigned int v) {
    return stag_emu::atomic::cas(a, compare, v);
}
inline unsigned long long atomicCAS(unsigned long long *a, unsigned long long compare,
                                    unsigned long long v) {
    return stag_emu::atomic::cas(a, compare, v);
}
inline unsigned short atomicCAS(unsigned short *a, unsigned short compare, unsigned short v) {
    return stag_emu::atomic::cas(a, compare, v);
}

inline int atomicMin(int *a, int v) { return stag_emu::atomic::min(a, v); }
inline unsigned int atomicMin(unsigned int *a, unsigned int v) {
    return stag_emu::atomic::min(a, v);
}
inline long long atomicMin(long long *a, long long v) { return stag_emu::atomic::min(a, v); }
inline unsigned long long atomicMin(unsigned long long *a, unsigned long long v) {
    return stag_emu::atomic::min(a, v);
}
inline int atomicMax(int *a, int v) { return stag_emu::atomic::max(a, v); }
inline unsigned int atomicMax(unsigned int *a, unsigned int v) {
    return stag_emu::atomic::max(a, v);
}
inline long long atomicMax(long long *a, long long v) { return stag_emu::atomic::max(a, v); }
inline unsigned long long atomicMax(unsigned long long *a, unsigned long long v) {
    return stag_emu::atomic::max(a, v);
}

inline int atomicAnd(int *a, int v) { return stag_emu::atomic::bit_and(a, v); }
inline unsigned int atomicAnd(unsigned int *a, unsigned int v) {
    return stag_emu::atomic::bit_and(a, v);
}
inline unsigned long long atomicAnd(unsigned long long *a, unsigned long long v) {
    return stag_emu::atomic::bit_and(a, v);
}
inline int atomicOr(int *a, int v) { return stag_emu::atomic::bit_or(a, v); }
inline unsigned int atomicOr(unsigned int *a, unsigned int v) {
    return stag_emu::atomic::bit_or(a, v);
}
inline unsigned long long atomicOr(unsigned long long *a, unsigned long long v) {
    return stag_emu::atomic::bit_or(a, v);
}
inline int atomicXor(int *a, int v) { return stag_emu::atomic::bit_xor(a, v); }
inline unsigned int atomicXor(unsigned int *a, unsigned int v) {
    return stag_emu::atomic::bit_xor(a, v);
}
inline unsigned long long atomicXor(unsigned long long *a, unsigned long long v) {
    return stag_emu::atomic::bit_xor(a, v);
}

// ((old >= limit) ? 0 : old + 1) and ((old == 0 || old > limit) ? limit : old - 1), as in CUDA.
inline unsigned int atomicInc(unsigned int *a, unsigned int limit) {
    return stag_emu::atomic::update(a,
                                    [limit](unsigned int o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned int atomicDec(unsigned int *a, unsigned int limit) {
    return stag_emu::atomic::update(
        a, [limit](unsigned int o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}

// Device-wide ordering: blocks are host threads. Within a block all threads share one host
// thread and run sequentially, so only the compiler must be kept from reordering.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
