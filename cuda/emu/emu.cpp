// Kernel launches for the CUDA host emulator: configuration checks, the host threads that run
// a grid's blocks, and error reporting.
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "emu_worker.h"

namespace stag_emu {

namespace {

using detail::format;
using detail::LaunchState;
using detail::Worker;

thread_local std::string tls_last_error;

// Limits of current NVIDIA GPUs (compute capability 9.0); exceeding them fails the launch
// on a GPU too.
constexpr uint32_t kMaxThreadsPerBlock = 1024;
constexpr uint32_t kMaxBlockDimXY = 1024;
constexpr uint32_t kMaxBlockDimZ = 64;
constexpr uint32_t kMaxGridDimX = 0x7FFFFFFFu;
constexpr uint32_t kMaxGridDimYZ = 65535;
constexpr uint32_t kMaxDynamicSmem = 227 * 1024;
// Upper bound on host threads per launch, whatever the caller asks for.
constexpr uint32_t kMaxWorkers = 64;

// Workers (fiber stacks and buffers) outlive launches: creating stacks costs syscalls, so
// idle workers wait here for the next launch on any host thread.
class WorkerPool {
public:
    std::unique_ptr<Worker> take() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!idle_.empty()) {
                std::unique_ptr<Worker> w = std::move(idle_.back());
                idle_.pop_back();
                return w;
            }
        }
        return std::make_unique<Worker>();
    }
    void give_back(std::unique_ptr<Worker> w) {
        std::lock_guard<std::mutex> lock(mutex_);
        idle_.push_back(std::move(w));
    }

private:
    std::mutex mutex_;
    std::vector<std::unique_ptr<Worker>> idle_;
};

WorkerPool &worker_pool() {
    // Never destroyed: launches may still run on other threads during static destruction.
    static WorkerPool *pool = new WorkerPool;
    return *pool;
}

// STAG_EMU_SHUFFLE_SEED=<n> makes launches that ask for in-order scheduling (seed 0) use
// seed n instead, to run a whole test suite in shuffled order.
uint32_t default_shuffle_seed() {
    static const uint32_t seed = [] {
        const char *env = std::getenv("STAG_EMU_SHUFFLE_SEED");
        return env ? static_cast<uint32_t>(std::strtoul(env, nullptr, 0)) : 0u;
    }();
    return seed;
}

// Runs blocks until none are left or one failed. Never throws: it runs on helper threads, and
// the launch entry points are called from C.
void run_blocks(LaunchState &launch) noexcept {
    try {
        std::unique_ptr<Worker> worker = worker_pool().take();
        std::string error;
        if (!worker->prepare(launch, error)) {
            launch.fail(STAG_EMU_ERROR_RESOURCES, error);
        } else {
            while (!launch.failed.load(std::memory_order_relaxed)) {
                const uint64_t b = launch.next_block.fetch_add(1, std::memory_order_relaxed);
                if (b >= launch.block_count) {
                    break;
                }
                if (!worker->run_block(launch, b)) {
                    launch.fail(STAG_EMU_ERROR_KERNEL, worker->error());
                    break;
                }
            }
        }
        worker_pool().give_back(std::move(worker));
    } catch (const std::exception &e) {
        launch.fail(STAG_EMU_ERROR_RESOURCES, std::string(launch.kernel) + ": " + e.what());
    }
}

int fail_config(const char *kernel, const std::string &what) {
    tls_last_error = std::string(kernel) + ": invalid launch: " + what;
    return STAG_EMU_ERROR_INVALID_CONFIG;
}

int launch_checked(const char *kernel, const StagEmuLaunch *cfg, KernelEntry entry,
                   const void *params, uint32_t max_threads) {
    if (detail::inside_kernel()) {
        // The block scheduler's state is per host thread and busy with the running kernel.
        return fail_config(kernel, "launched from inside a kernel (not supported)");
    }
    if (cfg == nullptr || params == nullptr) {
        return fail_config(kernel, "null launch configuration or parameters");
    }
    const uint32_t *g = cfg->grid;
    const uint32_t *b = cfg->block;
    if (g[0] == 0 || g[1] == 0 || g[2] == 0 || b[0] == 0 || b[1] == 0 || b[2] == 0) {
        return fail_config(kernel, format("zero dimension in grid (%u,%u,%u) or block (%u,%u,%u)",
                                          g[0], g[1], g[2], b[0], b[1], b[2]));
    }
    if (g[0] > kMaxGridDimX || g[1] > kMaxGridDimYZ || g[2] > kMaxGridDimYZ) {
        return fail_config(kernel, format("grid (%u,%u,%u) exceeds (%u,%u,%u)", g[0], g[1], g[2],
                                          kMaxGridDimX, kMaxGridDimYZ, kMaxGridDimYZ));
    }
    if (b[0] > kMaxBlockDimXY || b[1] > kMaxBlockDimXY || b[2] > kMaxBlockDimZ) {
        return fail_config(kernel, format("block (%u,%u,%u) exceeds (%u,%u,%u)", b[0], b[1], b[2],
                                          kMaxBlockDimXY, kMaxBlockDimXY, kMaxBlockDimZ));
    }
    const uint64_t threads = uint64_t{b[0]} * b[1] * b[2];
    if (threads > kMaxThreadsPerBlock) {
        return fail_config(kernel, format("block (%u,%u,%u) has %llu threads, more than %u", b[0],
                                          b[1], b[2], static_cast<unsigned long long>(threads),
                                          kMaxThreadsPerBlock));
    }
    if (max_threads != 0 && threads > max_threads) {
        return fail_config(kernel,
                           format("block of %llu threads exceeds the kernel's launch bound of %u",
                                  static_cast<unsigned long long>(threads), max_threads));
    }
    if (cfg->dynamic_smem_bytes > kMaxDynamicSmem) {
        return fail_config(kernel, format("%u bytes of dynamic shared memory exceed %u",
                                          cfg->dynamic_smem_bytes, kMaxDynamicSmem));
    }

    LaunchState state;
    state.kernel = kernel;
    state.entry = entry;
    state.params = params;
    state.grid = dim3(g[0], g[1], g[2]);
    state.block = dim3(b[0], b[1], b[2]);
    state.threads_per_block = static_cast<uint32_t>(threads);
    state.dynamic_smem_bytes = cfg->dynamic_smem_bytes;
    state.shuffle_seed = cfg->shuffle_seed != 0 ? cfg->shuffle_seed : default_shuffle_seed();
    state.block_count = uint64_t{g[0]} * g[1] * g[2];

    uint32_t workers = cfg->workers;
    if (workers == 0) {
        workers = std::max(1u, std::thread::hardware_concurrency());
    }
    workers = static_cast<uint32_t>(
        std::min<uint64_t>({workers, kMaxWorkers, state.block_count}));

    // The calling thread is one of the workers; helpers exist only for the launch.
    std::vector<std::thread> helpers;
    helpers.reserve(workers - 1);
    for (uint32_t i = 1; i < workers; ++i) {
        try {
            helpers.emplace_back(run_blocks, std::ref(state));
        } catch (...) {
            break;  // fewer threads are fine: the remaining workers take all blocks
        }
    }
    run_blocks(state);
    for (std::thread &t : helpers) {
        t.join();
    }
    if (state.failed.load(std::memory_order_acquire)) {
        tls_last_error = state.error;
        return state.error_code;
    }
    return STAG_EMU_OK;
}

}  // namespace

int launch(const char *kernel, const StagEmuLaunch *cfg, KernelEntry entry, const void *params,
           uint32_t max_threads) {
    // Called from C (and Rust): no exception may escape.
    try {
        tls_last_error.clear();
        return launch_checked(kernel, cfg, entry, params, max_threads);
    } catch (const std::exception &e) {
        try {
            tls_last_error = std::string(kernel) + ": " + e.what();
        } catch (...) {
        }
        return STAG_EMU_ERROR_RESOURCES;
    }
}

}  // namespace stag_emu

extern "C" const char *stag_emu_last_error(void) { return stag_emu::tls_last_error.c_str(); }
