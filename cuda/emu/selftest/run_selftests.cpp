// Standalone driver for the emulator self-tests (the Rust test suite calls the same entry
// points). Not part of the library: build it by hand from the repository root with
//
//   g++ -std=c++20 -O2 -Wall -Wextra -I cuda/include -I cuda/emu cuda/emu/*.cpp
//       -x c++ cuda/emu/selftest/*.cu -x none cuda/emu/selftest/run_selftests.cpp
//       -o /tmp/run_selftests -lpthread
//
// (one command line; -x c++ makes g++ treat the .cu files as C++).
//   /tmp/run_selftests [--bench] [--exhaustive]
//
// --bench prints launch and barrier throughput; --exhaustive checks the bf16/half conversions
// on all 2^32 float bit patterns against independent reference implementations.
#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdarg>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "emu.h"
#include "selftest.h"

namespace {

int g_passed = 0;
int g_failed = 0;

void check(bool ok, const std::string &what) {
    if (ok) {
        ++g_passed;
    } else {
        ++g_failed;
        std::printf("FAIL: %s\n", what.c_str());
    }
}

std::string fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char *f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    std::vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

StagEmuLaunch make_cfg(uint32_t gx, uint32_t gy, uint32_t gz, uint32_t bx, uint32_t by,
                       uint32_t bz, uint32_t seed = 0, uint32_t workers = 1, uint32_t smem = 0) {
    return StagEmuLaunch{{gx, gy, gz}, {bx, by, bz}, smem, seed, workers, 0};
}
uint32_t cfg_threads(const StagEmuLaunch &c) { return c.block[0] * c.block[1] * c.block[2]; }
uint32_t cfg_blocks(const StagEmuLaunch &c) { return c.grid[0] * c.grid[1] * c.grid[2]; }
std::string cfg_name(const StagEmuLaunch &c) {
    return fmt("grid (%u,%u,%u) block (%u,%u,%u) seed %u workers %u", c.grid[0], c.grid[1],
               c.grid[2], c.block[0], c.block[1], c.block[2], c.shuffle_seed, c.workers);
}

// ---- 1. block reduction ----

bool run_block_sum(const StagEmuLaunch &cfg, bool report = true) {
    const uint32_t n = cfg_threads(cfg), blocks = cfg_blocks(cfg);
    std::vector<float> in(size_t{n} * blocks);
    for (size_t i = 0; i < in.size(); ++i) {
        in[i] = static_cast<float>(static_cast<int>((i * 7) % 11) - 3);
    }
    std::vector<float> sums(blocks, -1.0f);
    std::vector<uint32_t> coords(in.size(), 0xFFFFFFFFu), positives(blocks, 0);
    const int rc = stag_emu_selftest_block_sum(&cfg, in.data(), sums.data(), coords.data(),
                                               positives.data());
    bool ok = rc == 0;
    for (uint32_t b = 0; ok && b < blocks; ++b) {
        float expect = 0;
        uint32_t pos = 0;
        for (uint32_t t = 0; t < n; ++t) {
            const float v = in[size_t{b} * n + t];
            expect += v;
            pos += v > 0;
            const uint32_t tx = t % cfg.block[0], ty = (t / cfg.block[0]) % cfg.block[1],
                           tz = t / (cfg.block[0] * cfg.block[1]);
            ok &= coords[size_t{b} * n + t] == (tx | ty << 10 | tz << 20);
        }
        ok &= sums[b] == expect && positives[b] == pos;
    }
    if (report) {
        check(ok, fmt("block_sum %s (rc %d: %s)", cfg_name(cfg).c_str(), rc,
                      stag_emu_last_error()));
    }
    return ok;
}

void test_block_sum() {
    const StagEmuLaunch geometries[] = {
        make_cfg(1, 1, 1, 1, 1, 1),     make_cfg(1, 1, 1, 33, 1, 1),
        make_cfg(3, 1, 1, 100, 1, 1),   make_cfg(2, 3, 1, 8, 4, 2),
        make_cfg(2, 2, 2, 7, 5, 3),     make_cfg(5, 1, 1, 1024, 1, 1),
        make_cfg(1, 70000, 1, 32, 1, 1) /* grid.y beyond 65535 is invalid */,
    };
    for (const StagEmuLaunch &g : geometries) {
        for (uint32_t seed : {0u, 7u}) {
            for (uint32_t workers : {1u, 2u}) {
                StagEmuLaunch cfg = g;
                cfg.shuffle_seed = seed;
                cfg.workers = workers;
                if (cfg.grid[1] > 65535) {
                    std::vector<float> dummy(1);
                    std::vector<uint32_t> d2(1);
                    const int rc = stag_emu_selftest_block_sum(&cfg, dummy.data(), dummy.data(),
                                                               d2.data(), d2.data());
                    check(rc == STAG_EMU_ERROR_INVALID_CONFIG,
                          fmt("grid.y > 65535 rejected (rc %d)", rc));
                    continue;
                }
                run_block_sum(cfg);
            }
        }
    }
}

// ---- 2. missing barrier ----

void test_missing_sync() {
    const uint32_t n = 256;
    std::vector<uint32_t> expect(n);
    for (uint32_t t = 0; t < n; ++t) {
        expect[t] = (t + 1) % n + 1;
    }
    for (uint32_t seed : {0u, 1u, 2u, 3u}) {
        std::vector<uint32_t> out(n);
        const int rc = stag_emu_selftest_missing_sync(n, seed, 1, out.data());
        check(rc == 0 && out == expect, fmt("missing_sync with barrier, seed %u", seed));
    }
    std::vector<std::vector<uint32_t>> results;
    int wrong = 0;
    for (uint32_t seed : {1u, 2u, 3u, 4u}) {
        std::vector<uint32_t> out(n);
        const int rc = stag_emu_selftest_missing_sync(n, seed, 0, out.data());
        check(rc == 0, fmt("missing_sync without barrier runs, seed %u", seed));
        wrong += out != expect;
        results.push_back(out);
    }
    check(wrong > 0, "missing __syncthreads is exposed by some seed");
    check(results[0] != results[1] || results[1] != results[2],
          "missing __syncthreads gives seed-dependent results");
}

// ---- 3. broken kernels ----

void test_broken() {
    struct Case {
        uint32_t scenario;
        const char *needles[3];
    };
    const Case cases[] = {
        {STAG_EMU_BROKEN_PARTIAL_BARRIER,
         {"__syncthreads", "reached by 32 of 64 threads; 32 exited", nullptr}},
        {STAG_EMU_BROKEN_EARLY_EXIT, {"__syncthreads", "reached by 32 of 64", "32 exited"}},
        {STAG_EMU_BROKEN_DIFFERENT_BARRIERS, {"different barriers", nullptr, nullptr}},
        {STAG_EMU_BROKEN_WARP_LANES_EXIT, {"__shfl_xor_sync", "exited", nullptr}},
        {STAG_EMU_BROKEN_MIXED_SYNC, {"__syncwarp", "__syncthreads", nullptr}},
        {STAG_EMU_BROKEN_ASSERT, {"assertion", "t != n - 1", nullptr}},
        {STAG_EMU_BROKEN_SHUFFLE_WIDTH, {"width 12", nullptr, nullptr}},
        {STAG_EMU_BROKEN_MASK_WITHOUT_SELF,
         {"does not include the calling lane", nullptr, nullptr}},
        {STAG_EMU_BROKEN_TRAP, {"__trap", nullptr, nullptr}},
        {STAG_EMU_BROKEN_MISMATCHED_MASKS, {"__syncwarp", "mask 0x00000003", nullptr}},
    };
    for (const Case &c : cases) {
        for (uint32_t seed : {0u, 5u}) {
            for (uint32_t workers : {1u, 2u}) {
                const StagEmuLaunch cfg = make_cfg(3, 1, 1, 64, 1, 1, seed, workers);
                const int rc = stag_emu_selftest_broken(&cfg, c.scenario);
                const std::string msg = stag_emu_last_error();
                bool ok = rc == STAG_EMU_ERROR_KERNEL &&
                          msg.find("selftest_broken: block (") != std::string::npos;
                for (const char *needle : c.needles) {
                    ok &= needle == nullptr || msg.find(needle) != std::string::npos;
                }
                check(ok, fmt("broken scenario %u seed %u workers %u: rc %d, \"%s\"", c.scenario,
                              seed, workers, rc, msg.c_str()));
                if (seed == 0 && workers == 1) {
                    std::printf("  scenario %u: %s\n", c.scenario, msg.c_str());
                }
            }
        }
    }
    const StagEmuLaunch too_big = make_cfg(1, 1, 1, 1024, 1, 1);
    const int rc = stag_emu_selftest_broken(&too_big, STAG_EMU_BROKEN_ASSERT);
    check(rc == STAG_EMU_ERROR_INVALID_CONFIG &&
              std::strstr(stag_emu_last_error(), "launch bound") != nullptr,
          fmt("launch bound enforced (rc %d: %s)", rc, stag_emu_last_error()));
    // Workers whose block failed are reused: later launches must be unaffected.
    check(run_block_sum(make_cfg(4, 1, 1, 128, 1, 1, 3, 2), false), "launch after failures");
    check(std::strlen(stag_emu_last_error()) == 0, "error cleared by a successful launch");
}

// ---- 4. warp collectives ----

std::vector<int32_t> expected_warp(const StagEmuLaunch &cfg, const std::vector<int32_t> &in) {
    const uint32_t n = cfg_threads(cfg), blocks = cfg_blocks(cfg);
    const int C = STAG_EMU_SELFTEST_WARP_COLUMNS;
    std::vector<int32_t> out(in.size() * C);
    for (uint32_t b = 0; b < blocks; ++b) {
        for (uint32_t t = 0; t < n; ++t) {
            const size_t gidx = size_t{b} * n + t;
            const uint32_t base = t / 32 * 32;
            const uint32_t lanes = std::min<uint32_t>(32, n - base);
            const int lane = static_cast<int>(t % 32);
            auto exists = [&](int j) { return j >= 0 && j < static_cast<int>(lanes); };
            auto get = [&](int j) { return exists(j) ? in[size_t{b} * n + base + j] : -1; };
            const int v = in[gidx];
            int32_t *o = &out[gidx * C];
            o[0] = get(31 - lane);
            o[1] = lane + 3 <= 31 ? get(lane + 3) : v;
            o[2] = lane % 16 >= 5 ? get(lane - 5) : v;
            o[3] = get((lane & ~7) + 5);
            o[4] = get((lane & ~15) + (lane + 9) % 16);
            const int j = lane ^ 20;
            o[5] = j <= (lane | 15) ? get(j) : v;
            o[6] = lane % 8 + 2 < 8 ? get(lane + 2) : v;
            uint32_t ballot = 0;
            bool any = false, all = true;
            int sum = 0;
            for (int k = 0; k < static_cast<int>(lanes); ++k) {
                ballot |= (get(k) & 1) ? 1u << k : 0u;
                any |= get(k) > 1000;
                all &= get(k) >= 0;
                sum += get(k);
            }
            o[7] = static_cast<int32_t>(ballot);
            o[8] = any;
            o[9] = all;
            o[10] = lanes == 32 ? sum : 0;
            o[11] = exists(lane ^ 1)
                        ? static_cast<int32_t>(std::bit_cast<uint32_t>(
                              static_cast<float>(get(lane ^ 1)) * 0.5f))
                        : -1;
            auto bf16 = [](int x) {
                return static_cast<int32_t>(stag_emu::f32_to_bf16_bits(static_cast<float>(x)));
            };
            o[12] = lane == 31 ? bf16(v) : (exists(lane + 1) ? bf16(get(lane + 1)) : 0xFFFF);
            o[13] = exists((lane + 1) % 32) ? get((lane + 1) % 32) + 3 : -1;
            o[14] = lane % 2 == 0 ? get(lane ^ 2) : 0;
            const uint32_t present = lanes == 32 ? ~0u : (1u << lanes) - 1u;
            o[15] = lane % 3 == 0 ? static_cast<int32_t>(0x49249249u & present) : 0;
        }
    }
    return out;
}

void test_warp_ops() {
    const StagEmuLaunch geometries[] = {
        make_cfg(2, 1, 1, 64, 1, 1), make_cfg(1, 1, 1, 48, 1, 1), make_cfg(1, 1, 1, 100, 1, 1),
        make_cfg(2, 1, 1, 8, 4, 1),  make_cfg(1, 1, 1, 5, 1, 1),  make_cfg(3, 1, 1, 1024, 1, 1),
    };
    for (const StagEmuLaunch &g : geometries) {
        for (uint32_t seed : {0u, 3u, 11u}) {
            StagEmuLaunch cfg = g;
            cfg.shuffle_seed = seed;
            cfg.workers = 2;
            const uint32_t total = cfg_threads(cfg) * cfg_blocks(cfg);
            std::vector<int32_t> in(total);
            for (uint32_t i = 0; i < total; ++i) {
                const uint32_t h = i * 7919u;
                in[i] = (i / 32) % 2 == 0 ? static_cast<int32_t>(h % 900)
                                          : static_cast<int32_t>(h % 2048) - 100;
            }
            std::vector<int32_t> out(size_t{total} * STAG_EMU_SELFTEST_WARP_COLUMNS, 12345);
            const int rc = stag_emu_selftest_warp_ops(&cfg, in.data(), out.data());
            const std::vector<int32_t> expect = expected_warp(cfg, in);
            std::string detail;
            for (size_t i = 0; i < out.size() && detail.empty(); ++i) {
                if (out[i] != expect[i]) {
                    detail = fmt("thread %zu column %zu: got %d (0x%x), want %d (0x%x)",
                                 i / STAG_EMU_SELFTEST_WARP_COLUMNS,
                                 i % STAG_EMU_SELFTEST_WARP_COLUMNS, out[i], out[i], expect[i],
                                 expect[i]);
                }
            }
            check(rc == 0 && detail.empty(), fmt("warp_ops %s (rc %d %s) %s", cfg_name(cfg).c_str(),
                                                 rc, stag_emu_last_error(), detail.c_str()));
        }
    }
}

// ---- 5b. last block finalises ----

void test_last_block() {
    for (uint32_t mode : {0u, 1u}) {
        for (uint32_t workers : {1u, 2u, 0u}) {
            for (uint32_t seed : {0u, 5u}) {
                const StagEmuLaunch cfg = make_cfg(37, 5, 1, 64, 1, 1, seed, workers);
                uint64_t out[5] = {};
                const int rc = stag_emu_selftest_last_block(&cfg, mode, 300, 3, out);
                const bool ok = rc == 0 && out[0] == 15 && out[1] == 0 && out[2] == 0 &&
                                out[3] == 0 && out[4] == 0;
                check(ok, fmt("last_block mode %u %s: %llu %llu %llu %llu %llu", mode,
                              cfg_name(cfg).c_str(), (unsigned long long)out[0],
                              (unsigned long long)out[1], (unsigned long long)out[2],
                              (unsigned long long)out[3], (unsigned long long)out[4]));
            }
        }
    }
}

// ---- 5. atomics ----

void test_atomics() {
    for (uint32_t workers : {1u, 2u, 0u}) {
        for (uint32_t seed : {0u, 9u}) {
            const StagEmuLaunch cfg = make_cfg(64, 2, 1, 96, 1, 1, seed, workers);
            uint64_t out[8] = {};
            const int rc = stag_emu_selftest_atomics(&cfg, out);
            const uint64_t n = uint64_t{cfg_threads(cfg)} * cfg_blocks(cfg);
            const bool ok = rc == 0 && out[0] == n && out[1] == n && out[2] == n - 1 &&
                            out[3] == 0 && out[4] == n * (n - 1) / 2 && out[5] == n &&
                            out[6] == n && out[7] < n;
            check(ok, fmt("atomics %s: %llu %llu %llu %llu %llu %llu %llu %llu",
                          cfg_name(cfg).c_str(),
                          (unsigned long long)out[0], (unsigned long long)out[1],
                          (unsigned long long)out[2], (unsigned long long)out[3],
                          (unsigned long long)out[4], (unsigned long long)out[5],
                          (unsigned long long)out[6], (unsigned long long)out[7]));
        }
    }
}

// ---- 6. dynamic shared memory, launch validation ----

void test_dynamic_smem() {
    for (uint32_t bytes : {0u, 4u, 4096u, 48u * 1024u, 227u * 1024u}) {
        for (uint32_t workers : {1u, 2u}) {
            const StagEmuLaunch cfg = make_cfg(6, 1, 1, 128, 1, 1, 0, workers, bytes);
            std::vector<uint32_t> out(6 * 4, 77);
            const int rc = stag_emu_selftest_dynamic_smem(&cfg, out.data());
            bool ok = rc == 0;
            for (uint32_t b = 0; b < 6; ++b) {
                ok &= out[b * 4] == 0 && out[b * 4 + 1] == 1 &&
                      out[b * 4 + 2] == (bytes >= 4 ? 1u : 0u) && out[b * 4 + 3] == 0;
            }
            check(ok, fmt("dynamic smem %u bytes, workers %u (rc %d)", bytes, workers, rc));
        }
    }
    std::vector<uint32_t> out(4);
    StagEmuLaunch cfg = make_cfg(1, 1, 1, 32, 1, 1, 0, 1, 227u * 1024u + 4u);
    check(stag_emu_selftest_dynamic_smem(&cfg, out.data()) == STAG_EMU_ERROR_INVALID_CONFIG,
          "too much dynamic shared memory rejected");
    cfg = make_cfg(1, 1, 1, 1025, 1, 1);
    check(stag_emu_selftest_dynamic_smem(&cfg, out.data()) == STAG_EMU_ERROR_INVALID_CONFIG,
          "1025 threads rejected");
    cfg = make_cfg(0, 1, 1, 32, 1, 1);
    const int rc = stag_emu_selftest_dynamic_smem(&cfg, out.data());
    check(rc == STAG_EMU_ERROR_INVALID_CONFIG &&
              std::strstr(stag_emu_last_error(), "selftest_dynamic_smem") != nullptr,
          fmt("zero grid rejected: %s", stag_emu_last_error()));
}

// ---- conversions ----

// Independent references: half via the compiler's _Float16 (IEEE round-to-nearest-even),
// bf16 by picking the nearer of the two truncation neighbours in double arithmetic.
uint16_t ref_half(float x) {
    const uint32_t u = std::bit_cast<uint32_t>(x);
    if (std::isnan(x)) {
        return static_cast<uint16_t>(((u >> 16) & 0x8000u) | 0x7E00u | ((u >> 13) & 0x3FFu));
    }
    return std::bit_cast<uint16_t>(static_cast<_Float16>(x));
}
uint16_t ref_bf16(float x) {
    const uint32_t u = std::bit_cast<uint32_t>(x);
    if (std::isnan(x)) {
        return static_cast<uint16_t>((u >> 16) | 0x40u);
    }
    const uint32_t lo = u & 0xFFFF0000u;
    const uint32_t hi = lo + 0x10000u;  // next magnitude (may be inf)
    const double dx = std::fabs(static_cast<double>(x));
    const double dlo = std::fabs(static_cast<double>(std::bit_cast<float>(lo)));
    // The bf16 above FLT_MAX's truncation is infinity; its "value" for rounding is 2^128.
    const double dhi = (hi & 0x7FFFFFFFu) == 0x7F800000u
                           ? std::ldexp(1.0, 128)
                           : std::fabs(static_cast<double>(std::bit_cast<float>(hi)));
    if ((u & 0x7FFFFFFFu) == 0x7F800000u) {
        return static_cast<uint16_t>(u >> 16);
    }
    const double a = dx - dlo, b = dhi - dx;
    const bool up = a > b || (a == b && ((lo >> 16) & 1u));
    return static_cast<uint16_t>((up ? hi : lo) >> 16);
}

void test_convert(bool exhaustive) {
    std::vector<float> in = {
        0.0f, -0.0f, 1.0f, -1.0f, INFINITY, -INFINITY, NAN, -NAN,
        std::bit_cast<float>(0x7F800001u), std::bit_cast<float>(0xFFC00001u),  // NaN payloads
        std::bit_cast<float>(0x7F80FFFFu), std::bit_cast<float>(0x7FBFFFFFu),
        65504.0f, 65519.996f, 65520.0f, 65536.0f, -65520.0f, 3.4028235e38f,
        std::bit_cast<float>(0x7F7F8000u), std::bit_cast<float>(0x7F7F7FFFu),  // bf16 overflow tie
        6.1035156e-5f, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 8.940697e-8f, 1e-10f,
        1.0e-45f, 1.17549435e-38f, 1.1754942e-38f,  // float subnormals
        1.00048828125f, 1.00146484375f, 1.0009765625f,  // half ties
        std::bit_cast<float>(0x3F808000u), std::bit_cast<float>(0x3F818000u),  // bf16 ties
        std::bit_cast<float>(0x3F808001u), 0.1f, -2.5f, 1234.5678f, 3.14159265f,
    };
    for (uint32_t i = 0; i < 4096; ++i) {
        in.push_back(std::bit_cast<float>(i * 1048573u + 12345u));
    }
    const uint32_t n = static_cast<uint32_t>(in.size());
    std::vector<uint16_t> bf(n), hf(n);
    std::vector<float> bfb(n), hfb(n);
    uint32_t pair_mismatches = 99;
    const int rc = stag_emu_selftest_convert(in.data(), n, bf.data(), hf.data(), bfb.data(),
                                             hfb.data(), &pair_mismatches);
    std::string detail;
    for (uint32_t i = 0; i < n && detail.empty(); ++i) {
        if (bf[i] != ref_bf16(in[i]) || hf[i] != ref_half(in[i])) {
            detail = fmt("x = %a (0x%08x): bf16 0x%04x want 0x%04x, half 0x%04x want 0x%04x",
                         in[i], std::bit_cast<uint32_t>(in[i]), bf[i], ref_bf16(in[i]), hf[i],
                         ref_half(in[i]));
        }
        const float want_h = static_cast<float>(std::bit_cast<_Float16>(hf[i]));
        const float want_b = std::bit_cast<float>(static_cast<uint32_t>(bf[i]) << 16);
        if (detail.empty() && std::bit_cast<uint32_t>(hfb[i]) != std::bit_cast<uint32_t>(want_h) &&
            !(std::isnan(hfb[i]) && std::isnan(want_h))) {
            detail = fmt("half 0x%04x decodes to %a, want %a", hf[i], hfb[i], want_h);
        }
        if (detail.empty() && std::bit_cast<uint32_t>(bfb[i]) != std::bit_cast<uint32_t>(want_b)) {
            detail = fmt("bf16 0x%04x decodes to %a, want %a", bf[i], bfb[i], want_b);
        }
    }
    check(rc == 0 && pair_mismatches == 0 && detail.empty(),
          fmt("conversions (rc %d, pair mismatches %u) %s", rc, pair_mismatches, detail.c_str()));

    // Decoding all 65536 patterns; NaN payloads must survive a round trip.
    std::vector<uint16_t> bits(65536);
    for (uint32_t i = 0; i < 65536; ++i) {
        bits[i] = static_cast<uint16_t>(i);
    }
    std::vector<float> bf_f(65536), hf_f(65536);
    stag_emu_selftest_decode_host(bits.data(), bits.size(), bf_f.data(), hf_f.data());
    std::vector<uint16_t> bf_back(65536), hf_back(65536);
    stag_emu_selftest_convert_host(bf_f.data(), 65536, bf_back.data(), hf_back.data());
    std::vector<uint16_t> bf_back2(65536), hf_back2(65536);
    stag_emu_selftest_convert_host(hf_f.data(), 65536, bf_back2.data(), hf_back2.data());
    int bad = 0;
    for (uint32_t i = 0; i < 65536; ++i) {
        const bool bf_nan = (i & 0x7FFFu) > 0x7F80u, hf_nan = (i & 0x7FFFu) > 0x7C00u;
        // A NaN's quiet bit is set on the way back; everything else round-trips exactly.
        bad += bf_back[i] != (bf_nan ? (i | 0x40u) : i);
        bad += hf_back2[i] != (hf_nan ? (i | 0x200u) : i);
        const float want_h = static_cast<float>(std::bit_cast<_Float16>(static_cast<uint16_t>(i)));
        bad += !hf_nan && std::bit_cast<uint32_t>(hf_f[i]) != std::bit_cast<uint32_t>(want_h);
    }
    check(bad == 0, fmt("decode / round trip of all 16-bit patterns (%d bad)", bad));

    if (exhaustive) {
        std::printf("  exhaustive conversion sweep over 2^32 floats...\n");
        uint64_t mismatches = 0;
        std::vector<float> chunk(1u << 20);
        std::vector<uint16_t> b(chunk.size()), h(chunk.size());
        for (uint64_t start = 0; start < (1ull << 32); start += chunk.size()) {
            for (size_t i = 0; i < chunk.size(); ++i) {
                chunk[i] = std::bit_cast<float>(static_cast<uint32_t>(start + i));
            }
            stag_emu_selftest_convert_host(chunk.data(), chunk.size(), b.data(), h.data());
            for (size_t i = 0; i < chunk.size(); ++i) {
                mismatches += b[i] != ref_bf16(chunk[i]);
                mismatches += h[i] != ref_half(chunk[i]);
            }
        }
        check(mismatches == 0,
              fmt("exhaustive conversions: %llu mismatches", (unsigned long long)mismatches));
    }
}

// ---- barrier loop: results independent of scheduling ----

std::vector<uint32_t> host_barrier_loop(const StagEmuLaunch &cfg, uint32_t iterations) {
    const uint32_t n = cfg_threads(cfg), blocks = cfg_blocks(cfg);
    std::vector<uint32_t> out(size_t{n} * blocks);
    for (uint32_t b = 0; b < blocks; ++b) {
        std::vector<uint32_t> v(n), s(n);
        for (uint32_t t = 0; t < n; ++t) {
            v[t] = b * n + t;
        }
        for (uint32_t i = 0; i < iterations; ++i) {
            s = v;
            for (uint32_t t = 0; t < n; ++t) {
                v[t] = v[t] * 1664525u + s[(t + 1) % n] + 1013904223u;
            }
        }
        std::copy(v.begin(), v.end(), out.begin() + size_t{b} * n);
    }
    return out;
}

void test_barrier_loop() {
    const StagEmuLaunch base = make_cfg(3, 1, 1, 256, 1, 1);
    const std::vector<uint32_t> expect = host_barrier_loop(base, 10);
    for (uint32_t seed : {0u, 1u, 2u}) {
        for (uint32_t workers : {1u, 2u}) {
            StagEmuLaunch cfg = base;
            cfg.shuffle_seed = seed;
            cfg.workers = workers;
            std::vector<uint32_t> out(expect.size());
            const int rc = stag_emu_selftest_barrier_loop(&cfg, 10, out.data());
            check(rc == 0 && out == expect, fmt("barrier_loop %s", cfg_name(cfg).c_str()));
        }
    }
}

// Launches from several host threads at once (each has its own workers and error state).
void test_concurrent_launches() {
    std::vector<std::thread> threads;
    std::vector<int> ok(4, 0);
    for (int i = 0; i < 4; ++i) {
        threads.emplace_back([i, &ok] {
            bool good = true;
            for (int rep = 0; rep < 20; ++rep) {
                if (i % 2 == 0) {
                    good &= run_block_sum(make_cfg(4, 1, 1, 96, 1, 1, rep, 2), false);
                } else {
                    const StagEmuLaunch cfg = make_cfg(2, 1, 1, 64, 1, 1, rep, 2);
                    good &= stag_emu_selftest_broken(&cfg, STAG_EMU_BROKEN_PARTIAL_BARRIER) ==
                                STAG_EMU_ERROR_KERNEL &&
                            std::strstr(stag_emu_last_error(), "selftest_broken") != nullptr;
                }
            }
            ok[i] = good;
        });
    }
    for (std::thread &t : threads) {
        t.join();
    }
    check(ok[0] && ok[1] && ok[2] && ok[3], "concurrent launches from 4 host threads");
}

// ---- benchmark ----

// Wall time and the process's CPU time (they differ on a loaded or throttled machine).
struct Timer {
    std::chrono::steady_clock::time_point wall = std::chrono::steady_clock::now();
    std::clock_t cpu = std::clock();
    double wall_s() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();
    }
    double cpu_s() const { return static_cast<double>(std::clock() - cpu) / CLOCKS_PER_SEC; }
};

void bench() {
    std::printf("benchmarks (wall / process CPU):\n");
    for (uint32_t seed : {0u, 42u}) {
        // One block of 256 threads, 2 iterations = 4 barriers.
        const StagEmuLaunch cfg = make_cfg(1, 1, 1, 256, 1, 1, seed, 1);
        std::vector<uint32_t> out(256);
        const int reps = 10000;
        const Timer t;
        for (int r = 0; r < reps; ++r) {
            stag_emu_selftest_barrier_loop(&cfg, 2, out.data());
        }
        std::printf("  1 block x 256 threads, 4 barriers, %s: %.0f / %.0f launches/s\n",
                    seed == 0 ? "in order" : "shuffled", reps / t.wall_s(), reps / t.cpu_s());
    }
    for (uint32_t workers : {1u, 2u}) {
        // Many barrier phases: 64 blocks x 1024 threads x 100 iterations (200 barriers).
        const StagEmuLaunch cfg = make_cfg(64, 1, 1, 1024, 1, 1, 0, workers);
        std::vector<uint32_t> out(64 * 1024);
        const Timer t;
        stag_emu_selftest_barrier_loop(&cfg, 100, out.data());
        const double arrivals = 64.0 * 1024 * 200;
        std::printf("  64 blocks x 1024 threads x 200 barriers, %u worker(s): %.3f / %.3f s "
                    "(%.0f / %.0f ns per thread per barrier)\n",
                    workers, t.wall_s(), t.cpu_s(), t.wall_s() / arrivals * 1e9,
                    t.cpu_s() / arrivals * 1e9);
    }
    {
        // Warp collectives: 64 blocks x 256 threads, 21 collectives per thread.
        const StagEmuLaunch cfg = make_cfg(64, 1, 1, 256, 1, 1, 0, 1);
        std::vector<int32_t> in(64 * 256, 1), out(in.size() * STAG_EMU_SELFTEST_WARP_COLUMNS);
        const Timer t;
        for (int r = 0; r < 10; ++r) {
            stag_emu_selftest_warp_ops(&cfg, in.data(), out.data());
        }
        const double per_lane_op = 10.0 * 64 * 256 * 21;
        std::printf("  warp_ops 64 x 256 threads: %.2f / %.2f ms per launch (%.0f / %.0f ns per "
                    "lane per collective)\n",
                    t.wall_s() / 10 * 1e3, t.cpu_s() / 10 * 1e3, t.wall_s() / per_lane_op * 1e9,
                    t.cpu_s() / per_lane_op * 1e9);
    }
    {
        // No barriers: a 64k-element grid-stride loop on 4 x 64 threads.
        std::vector<float> in(65536, 1.5f), a(65536), b(65536);
        std::vector<uint16_t> x(65536), y(65536);
        uint32_t mism = 0;
        const Timer t;
        for (int r = 0; r < 100; ++r) {
            stag_emu_selftest_convert(in.data(), 65536, x.data(), y.data(), a.data(), b.data(),
                                      &mism);
        }
        std::printf("  convert 64k elements (4 x 64 threads): %.0f / %.0f us per launch\n",
                    t.wall_s() / 100 * 1e6, t.cpu_s() / 100 * 1e6);
    }
}

// The stag_mma.cuh primitives (tests/emulator.rs checks the same entry points more widely).
void test_mma() {
    std::vector<uint16_t> a(256), b(128);
    std::vector<float> af(256), bf(128), c(128, 0.25f), d(256);
    uint32_t x = 12345;
    auto next = [&x] {
        x = x * 1664525u + 1013904223u;
        return float(int(x >> 24) - 128) / 64.0f;  // exact in bf16
    };
    for (int i = 0; i < 256; ++i) af[i] = next(), a[i] = uint16_t(std::bit_cast<uint32_t>(af[i]) >> 16);
    for (int i = 0; i < 128; ++i) bf[i] = next(), b[i] = uint16_t(std::bit_cast<uint32_t>(bf[i]) >> 16);
    auto wrong = [&](uint32_t swap) {
        int bad = 0;
        const int rc = stag_emu_selftest_mma(0, a.data(), b.data(), c.data(), d.data(), 32, swap);
        for (int i = 0; i < 256; ++i) {
            const int r = (i % 128) / 8, n = i % 8;
            double want = c[r * 8 + n];
            for (int k = 0; k < 16; ++k) want += double(af[r * 16 + k]) * bf[k * 8 + n];
            bad += std::fabs(d[i] - want) > 1e-5 * (1 + std::fabs(want));
        }
        return rc == 0 ? bad : -1;
    };
    check(wrong(0) == 0, "mma m16n8k16 bf16 matches a plain product");
    check(wrong(1 | 6 << 8) > 0, "mma with two lanes swapped is wrong");
    std::vector<uint16_t> m(256);
    for (int i = 0; i < 256; ++i) m[i] = uint16_t(i * 37 + 11);
    std::vector<uint32_t> out(128);
    int bad = stag_emu_selftest_ldmatrix(4, 1, m.data(), out.data()) == 0 ? 0 : 1;
    for (int l = 0; l < 32; ++l) {
        for (int j = 0; j < 4; ++j) {
            const auto at = [&](int r, int col) { return uint32_t(m[(j * 8 + r) * 8 + col]); };
            bad += out[l * 4 + j] != (at(2 * (l % 4), l / 4) | at(2 * (l % 4) + 1, l / 4) << 16);
        }
    }
    check(bad == 0, "ldmatrix.x4.trans words per lane");
    std::vector<uint32_t> src(64), cp(128);
    for (int i = 0; i < 64; ++i) src[i] = 0x100 + uint32_t(i);
    const int rc = stag_emu_selftest_cp_async(src.data(), cp.data());
    check(rc == 0 && cp[0] == 0xFFFFFFFFu && cp[32] == src[0] && cp[64] == 0xFFFFFFFFu &&
              cp[96] == src[32],
          "cp.async destinations hold poison until their wait");
}

}  // namespace

int main(int argc, char **argv) {
    bool do_bench = false, exhaustive = false;
    for (int i = 1; i < argc; ++i) {
        do_bench |= std::strcmp(argv[i], "--bench") == 0;
        exhaustive |= std::strcmp(argv[i], "--exhaustive") == 0;
    }
    test_block_sum();
    test_missing_sync();
    test_broken();
    test_warp_ops();
    test_atomics();
    test_last_block();
    test_dynamic_smem();
    test_convert(exhaustive);
    test_barrier_loop();
    test_concurrent_launches();
    test_mma();
    if (do_bench) {
        bench();
    }
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
