// The block scheduler of the CUDA host emulator: runs the threads of one block as fibers,
// implements barriers and warp collectives, and turns deadlocks into errors.
//
// Scheduling is cooperative. A fiber runs until it reaches a barrier, a warp collective, or
// the end of the kernel; it then records what it waits for and switches directly to the next
// fiber of the run queue (or back to the scheduler loop when the queue is empty). A barrier
// releases all threads when the last one arrives; a warp collective completes when every lane
// named in its mask has arrived. An empty run queue with unfinished fibers is a deadlock, which
// fails the launch with a description of who waits where.
#include <atomic>
#include <bit>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "emu_worker.h"

namespace stag_emu {

constinit thread_local uint3 threadIdx{0, 0, 0};
constinit thread_local uint3 blockIdx{0, 0, 0};
constinit thread_local dim3 blockDim{1, 1, 1};
constinit thread_local dim3 gridDim{1, 1, 1};
constinit thread_local unsigned char *dynamic_smem = nullptr;
constinit thread_local uint64_t block_serial = 0;

}  // namespace stag_emu

namespace stag_emu::detail {

namespace {

// The worker whose block is running on this host thread (only set inside run_block, so
// non-null means "called from a kernel").
thread_local Worker *tls_worker = nullptr;

Worker &running_worker(const char *what, std::source_location loc) {
    Worker *w = tls_worker;
    if (w == nullptr) {
        std::fprintf(stderr, "stag_emu: %s called outside of a kernel (%s:%u)\n", what,
                     loc.file_name(), static_cast<unsigned>(loc.line()));
        std::abort();
    }
    return *w;
}

std::string site_name(const std::source_location &loc) {
    const char *file = loc.file_name();
    if (const char *slash = std::strrchr(file, '/')) {
        file = slash + 1;
    }
    return format("%s:%u", file, static_cast<unsigned>(loc.line()));
}

bool same_site(const std::source_location &a, const std::source_location &b) {
    return a.line() == b.line() && a.column() == b.column() &&
           (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

// "0-15,17,20-31"
std::string lane_list(uint32_t lanes) {
    std::string out;
    while (lanes != 0) {
        const int first = std::countr_zero(lanes);
        const int run = std::countr_one(lanes >> first);
        if (!out.empty()) {
            out += ',';
        }
        out += run == 1 ? format("%d", first) : format("%d-%d", first, first + run - 1);
        lanes = run + first >= 32 ? 0 : lanes & ~(((1u << run) - 1u) << first);
    }
    return out.empty() ? "none" : out;
}

bool is_shuffle(WarpOp op) {
    return op == WarpOp::ShflIdx || op == WarpOp::ShflUp || op == WarpOp::ShflDown ||
           op == WarpOp::ShflXor;
}

const char *warp_op_name(WarpOp op) {
    switch (op) {
        case WarpOp::ShflIdx: return "__shfl_sync";
        case WarpOp::ShflUp: return "__shfl_up_sync";
        case WarpOp::ShflDown: return "__shfl_down_sync";
        case WarpOp::ShflXor: return "__shfl_xor_sync";
        case WarpOp::Ballot: return "__ballot_sync";
        case WarpOp::Any: return "__any_sync";
        case WarpOp::All: return "__all_sync";
        case WarpOp::SyncWarp: return "__syncwarp";
        case WarpOp::MatchAny: return "__match_any_sync";
        case WarpOp::ReduceAdd: return "__reduce_add_sync";
    }
    return "?";
}

const char *barrier_name(BarrierOp op) {
    switch (op) {
        case BarrierOp::Sync: return "__syncthreads";
        case BarrierOp::Count: return "__syncthreads_count";
        case BarrierOp::And: return "__syncthreads_and";
        case BarrierOp::Or: return "__syncthreads_or";
    }
    return "?";
}

// Source lane of a shuffle, following PTX shfl.sync with the clamp value CUDA's __shfl*_sync
// pass for `width`: segmask = 32 - width selects the segment, c = 31 (idx/down/xor) or 0 (up).
// Returns `lane` itself when the source is outside the allowed range.
uint32_t shuffle_source(WarpOp op, uint32_t lane, int arg, int width) {
    const uint32_t b = static_cast<uint32_t>(arg) & 31u;
    const uint32_t segmask = static_cast<uint32_t>(32 - width);
    const uint32_t seg_start = lane & segmask;
    const uint32_t seg_end = seg_start | (31u & ~segmask);
    int j = 0;
    bool ok = false;
    switch (op) {
        case WarpOp::ShflUp:
            j = static_cast<int>(lane) - static_cast<int>(b);
            ok = j >= static_cast<int>(seg_start);
            break;
        case WarpOp::ShflDown:
            j = static_cast<int>(lane + b);
            ok = j <= static_cast<int>(seg_end);
            break;
        case WarpOp::ShflXor:
            j = static_cast<int>(lane ^ b);
            ok = j <= static_cast<int>(seg_end);
            break;
        default:  // ShflIdx
            j = static_cast<int>(seg_start | (b & ~segmask & 31u));
            ok = j <= static_cast<int>(seg_end);
            break;
    }
    return ok ? static_cast<uint32_t>(j) : lane;
}

}  // namespace

bool inside_kernel() { return tls_worker != nullptr; }

std::string format(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    va_list again;
    va_copy(again, ap);
    const int n = std::vsnprintf(nullptr, 0, fmt, ap);
    va_end(ap);
    std::string out(n > 0 ? static_cast<size_t>(n) : 0, '\0');
    std::vsnprintf(out.data(), out.size() + 1, fmt, again);
    va_end(again);
    return out;
}

void LaunchState::fail(int code, std::string message) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!failed.load(std::memory_order_relaxed)) {
        error_code = code;
        error = std::move(message);
        failed.store(true, std::memory_order_release);
    }
}

// ---- setup and the scheduler loop ----

bool Worker::prepare(const LaunchState &launch, std::string &error) {
    const uint32_t n = launch.threads_per_block;
    if (!stacks_.ensure(n)) {
        error = format("%s: could not map %u fiber stacks of %zu KiB", launch.kernel, n,
                       StackPool::stack_size() / 1024);
        return false;
    }
    if (fibers_.size() < n) {
        fibers_.resize(n);
    }
    const size_t warps = (n + 31) / 32;
    if (warps_.size() < warps) {
        warps_.resize(warps);
    }
    const uint32_t capacity = std::bit_ceil(n);
    if (queue_.size() < capacity) {
        queue_.resize(capacity);
    }
    queue_mask_ = static_cast<uint32_t>(queue_.size()) - 1;  // the size is a power of two
    const size_t smem = launch.dynamic_smem_bytes < 16 ? 16 : launch.dynamic_smem_bytes;
    if (smem_capacity_ < smem) {
        smem_storage_.reset(new (std::nothrow) unsigned char[smem + 64]);
        if (!smem_storage_) {
            smem_capacity_ = 0;
            smem_ = nullptr;
            error = format("%s: could not allocate %zu bytes of dynamic shared memory",
                           launch.kernel, smem);
            return false;
        }
        const auto addr = reinterpret_cast<uintptr_t>(smem_storage_.get());
        smem_ = smem_storage_.get() + ((64 - addr % 64) % 64);
        smem_capacity_ = smem;
    }
    return true;
}

bool Worker::run_block(const LaunchState &launch, uint64_t block_linear) {
    launch_ = &launch;
    failed_ = false;
    error_.clear();
    current_ = nullptr;

    const uint64_t gx = launch.grid.x, gy = launch.grid.y;
    block_idx_ = uint3{static_cast<unsigned>(block_linear % gx),
                       static_cast<unsigned>((block_linear / gx) % gy),
                       static_cast<unsigned>(block_linear / (gx * gy))};
    stag_emu::blockIdx = block_idx_;
    stag_emu::blockDim = launch.block;
    stag_emu::gridDim = launch.grid;
    stag_emu::dynamic_smem = smem_;
    {
        static std::atomic<uint64_t> serials{0};
        stag_emu::block_serial = serials.fetch_add(1, std::memory_order_relaxed) + 1;
    }
    if (launch.dynamic_smem_bytes != 0) {
        std::memset(smem_, 0xFF, launch.dynamic_smem_bytes);
    }

    threads_ = launch.threads_per_block;
    exited_ = 0;
    bar_arrived_ = 0;
    bar_first_ = nullptr;
    shuffled_ = launch.shuffle_seed != 0;
    // Seeded per block, not per worker, so a seed reproduces whichever worker runs the block.
    rng_ = (static_cast<uint64_t>(launch.shuffle_seed) << 32) ^
           (block_linear * 0xD1B54A32D192ED03ull);

    const uint32_t bx = launch.block.x, by = launch.block.y;
    for (uint32_t i = 0; i < threads_; ++i) {
        Fiber &f = fibers_[i];
        f.linear = i;
        f.tid = uint3{i % bx, (i / bx) % by, i / (bx * by)};
        f.state = FiberState::Runnable;
        // The stacks are a page-multiple apart, so their tops would all map to the same cache
        // sets; shifting each top by a different number of cache lines ("colouring") keeps
        // the fibers' hot frames from evicting each other.
        const size_t colour = (i % 64) * 64;
        context_init(f.ctx, stacks_.bottom(i), StackPool::stack_size() - colour,
                     &Worker::fiber_main, this);
    }
    const uint32_t warps = (threads_ + 31) / 32;
    for (uint32_t w = 0; w < warps; ++w) {
        const uint32_t lanes = w + 1 < warps || threads_ % 32 == 0 ? 32 : threads_ % 32;
        warps_[w] = WarpState{};
        warps_[w].present = lanes == 32 ? ~0u : (1u << lanes) - 1u;
    }
    head_ = 0;
    count_ = 0;
    for (uint32_t i = 0; i < threads_; ++i) {
        push(i);
    }

    context_init_native(scheduler_);
    tls_worker = this;
    while (!failed_) {
        Fiber *f = pop();
        if (f == nullptr) {
            if (exited_ == threads_) {
                break;
            }
            failed_ = true;
            error_ = block_prefix() + stall_message();
            break;
        }
        enter(f);
        context_switch(scheduler_, f->ctx);
    }
    tls_worker = nullptr;
    current_ = nullptr;
    return !failed_;
}

// Bottom frame of every fiber (arg = the Worker); the fiber itself is the worker's current_.
void Worker::fiber_main(void *arg) {
    context_started();
    Worker *w = static_cast<Worker *>(arg);
    std::string exception;
    // The handlers only record the message: leaving a fiber for good from inside a catch
    // block would leave the exception marked as "being handled" on this host thread.
    try {
        w->launch_->entry(w->launch_->params);
    } catch (const std::exception &e) {
        exception = std::string("uncaught C++ exception: ") + e.what();
    } catch (...) {
        exception = "uncaught C++ exception";
    }
    if (!exception.empty()) {
        w->record_fault(thread_name(*w->current_) + ": " + exception);
        std::string().swap(exception);  // free it: this frame is never unwound
        w->abandon_block();
    }
    w->exit_current();
}

Fiber *Worker::pop() {
    if (count_ == 0) {
        return nullptr;
    }
    if (shuffled_ && count_ > 1) {
        const uint32_t j = static_cast<uint32_t>(next_random() % count_);
        std::swap(queue_[head_], queue_[(head_ + j) & queue_mask_]);
    }
    const uint32_t i = queue_[head_];
    head_ = (head_ + 1) & queue_mask_;
    --count_;
    return &fibers_[i];
}

uint64_t Worker::next_random() {
    // splitmix64
    uint64_t z = (rng_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void Worker::enter(Fiber *f) {
    current_ = f;
    stag_emu::threadIdx = f->tid;
}

// Gives up the host thread until someone makes the current fiber runnable again (it may
// already be: then it continues right away if the queue picks it).
void Worker::suspend() {
    Fiber *self = current_;
    Fiber *next = pop();
    if (next == self) {
        return;
    }
    if (next != nullptr) {
        enter(next);
        context_switch(self->ctx, next->ctx);
    } else {
        current_ = nullptr;
        context_switch(self->ctx, scheduler_);
    }
    // Resumed: whoever switched here has already made this fiber current again.
}

void Worker::exit_current() {
    Fiber *f = current_;
    f->state = FiberState::Exited;
    ++exited_;
    warps_[f->linear / 32].exited |= 1u << (f->linear % 32);
    blocked_in_warp(f->linear / 32);
    Fiber *next = pop();
    if (next != nullptr) {
        enter(next);
        context_switch_final(f->ctx, next->ctx);
    } else {
        current_ = nullptr;
        context_switch_final(f->ctx, scheduler_);
    }
    std::abort();  // an exited fiber is never resumed
}

// Fault paths first record the message (so that every temporary involved is destroyed when
// record_fault returns) and then call abandon_block, which never returns: the frames of the
// faulting fiber are never unwound.
void Worker::record_fault(const std::string &what) {
    failed_ = true;
    error_ = block_prefix() + what;
}

void Worker::abandon_block() {
    Fiber *f = current_;
    current_ = nullptr;
    // The block's other fibers are abandoned where they are; their stacks are reused.
    context_switch_final(f->ctx, scheduler_);
    std::abort();
}

// ---- barriers ----

int Worker::barrier(BarrierOp op, int pred, std::source_location loc) {
    Fiber *f = current_;
    f->site = loc;
    if (bar_arrived_ == 0) {
        bar_first_ = f;
        bar_op_ = op;
        bar_acc_ = op == BarrierOp::And ? 1 : 0;
    } else if (op != bar_op_ || !same_site(loc, bar_first_->site)) [[unlikely]] {
        fault_divergent_barrier(*f, op);
    }
    switch (op) {
        case BarrierOp::Sync: break;
        case BarrierOp::Count: bar_acc_ += pred != 0; break;
        case BarrierOp::And: bar_acc_ &= pred != 0; break;
        case BarrierOp::Or: bar_acc_ |= pred != 0; break;
    }
    f->state = FiberState::AtBarrier;
    ++bar_arrived_;
    warps_[f->linear / 32].at_barrier |= 1u << (f->linear % 32);
    if (bar_arrived_ == threads_) {
        release_barrier();
    } else {
        blocked_in_warp(f->linear / 32);
    }
    suspend();
    return f->bar_result;
}

void Worker::fault_divergent_barrier(const Fiber &f, BarrierOp op) {
    record_fault(format("%s: %s at %s while %s waits at %s at %s (threads of the block "
                        "reached different barriers)",
                        thread_name(f).c_str(), barrier_name(op), site_name(f.site).c_str(),
                        thread_name(*bar_first_).c_str(), barrier_name(bar_op_),
                        site_name(bar_first_->site).c_str()));
    abandon_block();
}

void Worker::release_barrier() {
    for (uint32_t i = 0; i < threads_; ++i) {
        Fiber &g = fibers_[i];
        g.state = FiberState::Runnable;
        g.bar_result = bar_acc_;
        push(i);
    }
    for (uint32_t w = 0; w < (threads_ + 31) / 32; ++w) {
        warps_[w].at_barrier = 0;
    }
    bar_arrived_ = 0;
    bar_first_ = nullptr;
}

// ---- warp collectives ----

void Worker::warp_collective(WarpOp op, unsigned mask, const unsigned char *value,
                             unsigned size, int arg, int width, unsigned char *out,
                             std::source_location loc) {
    Fiber *f = current_;
    const uint32_t warp = f->linear / 32;
    const uint32_t bit = 1u << (f->linear % 32);
    f->site = loc;
    f->op = op;
    f->mask = mask;
    f->arg = arg;
    f->width = width;
    f->size = static_cast<uint8_t>(size);
    if ((mask & bit) == 0 ||
        (is_shuffle(op) && (width < 1 || width > 32 || (width & (width - 1)) != 0)))
        [[unlikely]] {
        fault_invalid_collective(*f);
    }
    if (value != nullptr) {
        std::memcpy(f->value, value, sizeof f->value);
    }
    f->state = FiberState::AtWarpOp;
    WarpState &w = warps_[warp];
    w.at_op |= bit;
    // Lanes past the end of the block do not exist: they neither arrive nor are waited for.
    const uint32_t group = mask & w.present;
    if ((w.at_op & group) == group) {
        complete_warp_op(warp, group, *f);
    } else {
        blocked_in_warp(warp);
    }
    suspend();
    if (out != nullptr) {
        std::memcpy(out, f->result, sizeof f->result);
    }
}

void Worker::fault_invalid_collective(const Fiber &f) {
    if ((f.mask >> (f.linear % 32) & 1u) == 0) {
        record_fault(format("%s: %s at %s with mask 0x%08x, which does not include the calling "
                            "lane %u",
                            thread_name(f).c_str(), warp_op_name(f.op), site_name(f.site).c_str(),
                            f.mask, f.linear % 32));
    } else {
        record_fault(format("%s: %s at %s with width %d (must be a power of two in 1..32)",
                            thread_name(f).c_str(), warp_op_name(f.op), site_name(f.site).c_str(),
                            f.width));
    }
    abandon_block();
}

void Worker::fault_mismatched_collective(uint32_t warp, const Fiber &caller, const Fiber &g) {
    record_fault(format("warp %u: %s calls %s (mask 0x%08x) at %s while %s waits at %s "
                        "(mask 0x%08x) at %s",
                        warp, thread_name(caller).c_str(), warp_op_name(caller.op), caller.mask,
                        site_name(caller.site).c_str(), thread_name(g).c_str(),
                        warp_op_name(g.op), g.mask, site_name(g.site).c_str()));
    abandon_block();
}

void Worker::complete_warp_op(uint32_t warp, uint32_t group, const Fiber &caller) {
    Fiber *lanes = &fibers_[warp * 32];
    // CUDA requires every lane named in the mask to execute the same collective with the
    // same mask; anything else is undefined behaviour on a GPU and an error here.
    for (uint32_t m = group; m != 0; m &= m - 1) {
        const Fiber &g = lanes[std::countr_zero(m)];
        if (g.op != caller.op || g.mask != caller.mask || g.size != caller.size) [[unlikely]] {
            fault_mismatched_collective(warp, caller, g);
        }
    }
    if (is_shuffle(caller.op)) {
        for (uint32_t m = group; m != 0; m &= m - 1) {
            const uint32_t lane = static_cast<uint32_t>(std::countr_zero(m));
            Fiber &g = lanes[lane];
            const uint32_t src = shuffle_source(g.op, lane, g.arg, g.width);
            if ((group >> src) & 1u) {
                std::memcpy(g.result, lanes[src].value, sizeof g.result);
            } else {
                std::memset(g.result, 0xFF, sizeof g.result);  // undefined on a GPU: poison
            }
        }
    } else if (caller.op == WarpOp::MatchAny) {
        for (uint32_t m = group; m != 0; m &= m - 1) {
            Fiber &g = lanes[std::countr_zero(m)];
            uint32_t same = 0;
            for (uint32_t k = group; k != 0; k &= k - 1) {
                const uint32_t lane = static_cast<uint32_t>(std::countr_zero(k));
                same |= std::memcmp(lanes[lane].value, g.value, g.size) == 0 ? 1u << lane : 0u;
            }
            std::memcpy(g.result, &same, sizeof same);
        }
    } else if (caller.op == WarpOp::ReduceAdd) {
        uint32_t sum = 0;
        for (uint32_t m = group; m != 0; m &= m - 1) {
            uint32_t v;
            std::memcpy(&v, lanes[std::countr_zero(m)].value, sizeof v);
            sum += v;
        }
        for (uint32_t m = group; m != 0; m &= m - 1) {
            std::memcpy(lanes[std::countr_zero(m)].result, &sum, sizeof sum);
        }
    } else if (caller.op != WarpOp::SyncWarp) {
        uint32_t ballot = 0;
        for (uint32_t m = group; m != 0; m &= m - 1) {
            const uint32_t lane = static_cast<uint32_t>(std::countr_zero(m));
            int pred;
            std::memcpy(&pred, lanes[lane].value, sizeof pred);
            ballot |= pred != 0 ? 1u << lane : 0u;
        }
        const unsigned r = caller.op == WarpOp::Ballot ? ballot
                           : caller.op == WarpOp::Any  ? (ballot != 0 ? 1u : 0u)
                                                       : (ballot == group ? 1u : 0u);
        for (uint32_t m = group; m != 0; m &= m - 1) {
            std::memcpy(lanes[std::countr_zero(m)].result, &r, sizeof r);
        }
    }
    warps_[warp].at_op &= ~group;
    for (uint32_t m = group; m != 0; m &= m - 1) {
        const uint32_t lane = static_cast<uint32_t>(std::countr_zero(m));
        lanes[lane].state = FiberState::Runnable;
        push(warp * 32 + lane);
    }
}

unsigned Worker::active_mask(std::source_location loc) {
    Fiber *f = current_;
    const uint32_t warp = f->linear / 32;
    f->site = loc;
    f->state = FiberState::AtActiveMask;
    warps_[warp].at_activemask |= 1u << (f->linear % 32);
    blocked_in_warp(warp);
    suspend();
    unsigned r;
    std::memcpy(&r, f->result, sizeof r);
    return r;
}

// A lane of `warp` just stopped running. Pending __activemask calls resolve once no lane of
// the warp can still arrive at them.
void Worker::blocked_in_warp(uint32_t warp) {
    const WarpState &w = warps_[warp];
    if (w.at_activemask != 0 &&
        (w.at_barrier | w.at_op | w.at_activemask | w.exited) == w.present) {
        resolve_activemask(warp);
    }
}

void Worker::resolve_activemask(uint32_t warp) {
    Fiber *lanes = &fibers_[warp * 32];
    uint32_t pending = warps_[warp].at_activemask;
    while (pending != 0) {
        const Fiber &lead = lanes[std::countr_zero(pending)];
        uint32_t group = 0;
        for (uint32_t m = pending; m != 0; m &= m - 1) {
            const int lane = std::countr_zero(m);
            if (same_site(lanes[lane].site, lead.site)) {
                group |= 1u << lane;
            }
        }
        for (uint32_t m = group; m != 0; m &= m - 1) {
            const uint32_t lane = static_cast<uint32_t>(std::countr_zero(m));
            std::memcpy(lanes[lane].result, &group, sizeof group);
            lanes[lane].state = FiberState::Runnable;
            push(warp * 32 + lane);
        }
        pending &= ~group;
    }
    warps_[warp].at_activemask = 0;
}

// ---- error messages ----

std::string Worker::block_prefix() const {
    return format("%s: block (%u,%u,%u): ", launch_->kernel, block_idx_.x, block_idx_.y,
                  block_idx_.z);
}

std::string Worker::thread_name(const Fiber &f) {
    return format("thread (%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z);
}

std::string Worker::op_name(const Fiber &f) {
    switch (f.state) {
        case FiberState::AtBarrier: return barrier_name(BarrierOp::Sync);
        case FiberState::AtActiveMask: return "__activemask";
        default: return format("%s (mask 0x%08x)", warp_op_name(f.op), f.mask);
    }
}

std::string Worker::describe_lane(uint32_t warp, uint32_t lane) const {
    const Fiber &f = fibers_[warp * 32 + lane];
    switch (f.state) {
        case FiberState::Exited: return format("lane %u has exited", lane);
        case FiberState::Runnable: return format("lane %u is runnable", lane);
        default:
            return format("lane %u waits at %s at %s", lane, op_name(f).c_str(),
                          site_name(f.site).c_str());
    }
}

std::string Worker::stall_message() const {
    uint32_t at_op = 0, at_am = 0;
    for (uint32_t i = 0; i < threads_; ++i) {
        at_op += fibers_[i].state == FiberState::AtWarpOp;
        at_am += fibers_[i].state == FiberState::AtActiveMask;
    }
    const std::string census =
        format("%u of %u threads at %s, %u at warp collectives, %u at __activemask, %u exited",
               bar_arrived_, threads_, barrier_name(bar_first_ ? bar_op_ : BarrierOp::Sync),
               at_op, at_am, exited_);
    for (uint32_t warp = 0; warp < (threads_ + 31) / 32; ++warp) {
        const WarpState &w = warps_[warp];
        if (w.at_op == 0) {
            continue;
        }
        const Fiber *lanes = &fibers_[warp * 32];
        const Fiber &lead = lanes[std::countr_zero(w.at_op)];
        const uint32_t group = lead.mask & w.present;
        uint32_t arrived = 0;
        for (uint32_t m = w.at_op & group; m != 0; m &= m - 1) {
            const Fiber &g = lanes[std::countr_zero(m)];
            if (g.op == lead.op && g.mask == lead.mask) {
                arrived |= 1u << std::countr_zero(m);
            }
        }
        const uint32_t missing = group & ~arrived;
        std::string msg = format("warp %u: %s at %s waits for lanes %s (arrived: %s)", warp,
                                 op_name(lead).c_str(), site_name(lead.site).c_str(),
                                 lane_list(missing).c_str(), lane_list(arrived).c_str());
        if (missing != 0) {
            msg += "; " + describe_lane(warp, static_cast<uint32_t>(std::countr_zero(missing)));
        }
        return msg + " (" + census + ")";
    }
    if (bar_first_ != nullptr) {
        return format("%s at %s reached by %u of %u threads; %u exited", barrier_name(bar_op_),
                      site_name(bar_first_->site).c_str(), bar_arrived_, threads_, exited_) +
               (at_am != 0 ? " (" + census + ")" : std::string());
    }
    return "deadlock (" + census + ")";
}

}  // namespace stag_emu::detail

// ---- the functions called by kernel code (emu_sync.h) ----

namespace stag_emu {

using detail::running_worker;

int block_barrier(BarrierOp op, int pred, std::source_location loc) {
    return running_worker("__syncthreads", loc).barrier(op, pred, loc);
}

void warp_shuffle(WarpOp op, unsigned mask, const unsigned char *value, unsigned size, int arg,
                  int width, unsigned char *out, std::source_location loc) {
    running_worker("a warp shuffle", loc)
        .warp_collective(op, mask, value, size, arg, width, out, loc);
}

unsigned warp_vote(WarpOp op, unsigned mask, int pred, std::source_location loc) {
    alignas(16) unsigned char in[16] = {};
    alignas(16) unsigned char out[16];
    std::memcpy(in, &pred, sizeof pred);
    running_worker("a warp vote", loc)
        .warp_collective(op, mask, in, sizeof pred, 0, warpSize, out, loc);
    unsigned r;
    std::memcpy(&r, out, sizeof r);
    return r;
}

unsigned warp_match_any(unsigned mask, const unsigned char *value, unsigned size,
                        std::source_location loc) {
    alignas(16) unsigned char out[16];
    running_worker("__match_any_sync", loc)
        .warp_collective(WarpOp::MatchAny, mask, value, size, 0, warpSize, out, loc);
    unsigned r;
    std::memcpy(&r, out, sizeof r);
    return r;
}

unsigned warp_reduce_add(unsigned mask, unsigned value, std::source_location loc) {
    alignas(16) unsigned char in[16] = {};
    alignas(16) unsigned char out[16];
    std::memcpy(in, &value, sizeof value);
    running_worker("__reduce_add_sync", loc)
        .warp_collective(WarpOp::ReduceAdd, mask, in, sizeof value, 0, warpSize, out, loc);
    unsigned r;
    std::memcpy(&r, out, sizeof r);
    return r;
}

void warp_sync(unsigned mask, std::source_location loc) {
    running_worker("__syncwarp", loc)
        .warp_collective(WarpOp::SyncWarp, mask, nullptr, 0, 0, warpSize, nullptr, loc);
}

unsigned active_mask(std::source_location loc) {
    return running_worker("__activemask", loc).active_mask(loc);
}

void kernel_trap(const char *what, std::source_location loc) {
    detail::Worker &w = running_worker(what, loc);
    w.record_fault(detail::format("thread (%u,%u,%u): %s at %s", threadIdx.x, threadIdx.y,
                                  threadIdx.z, what, detail::site_name(loc).c_str()));
    w.abandon_block();
}

void assert_fail(const char *expr, const char *file, unsigned line, const char *function) {
    if (detail::tls_worker == nullptr) {
        std::fprintf(stderr, "%s:%u: %s: Assertion `%s' failed.\n", file, line, function, expr);
        std::abort();
    }
    const char *base = std::strrchr(file, '/');
    detail::tls_worker->record_fault(detail::format(
        "thread (%u,%u,%u): assertion `%s' failed at %s:%u in %s", threadIdx.x, threadIdx.y,
        threadIdx.z, expr, base ? base + 1 : file, line, function));
    detail::tls_worker->abandon_block();
}

}  // namespace stag_emu
