// CUDA's built-in vector types for the host emulator, with the alignment nvcc gives them, so
// that structs and vectorised loads (float4, uint4, ...) have the same layout on both sides.
#pragma once

#include <cstdint>

// 3-component types have the alignment of their element (as in CUDA).
struct uint3 {
    unsigned int x, y, z;
};
struct int3 {
    int x, y, z;
};
struct float3 {
    float x, y, z;
};

struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
    int x, y;
};
struct __attribute__((aligned(16))) int4 {
    int x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned int x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned int x, y, z, w;
};
struct __attribute__((aligned(16))) double2 {
    double x, y;
};
struct __attribute__((aligned(4))) ushort2 {
    unsigned short x, y;
};
struct __attribute__((aligned(8))) ushort4 {
    unsigned short x, y, z, w;
};

static_assert(sizeof(float4) == 16 && alignof(float4) == 16);
static_assert(sizeof(uint4) == 16 && alignof(uint4) == 16);
static_assert(sizeof(float2) == 8 && alignof(float2) == 8);
static_assert(sizeof(uint3) == 12 && alignof(uint3) == 4);

// Launch dimensions: unspecified components default to 1, as in CUDA.
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

constexpr float2 make_float2(float x, float y) { return float2{x, y}; }
constexpr float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
constexpr float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
constexpr int2 make_int2(int x, int y) { return int2{x, y}; }
constexpr int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
constexpr int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
constexpr uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
constexpr uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) {
    return uint3{x, y, z};
}
constexpr uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
    return uint4{x, y, z, w};
}
constexpr double2 make_double2(double x, double y) { return double2{x, y}; }
constexpr ushort2 make_ushort2(unsigned short x, unsigned short y) { return ushort2{x, y}; }
constexpr ushort4 make_ushort4(unsigned short x, unsigned short y, unsigned short z,
                               unsigned short w) {
    return ushort4{x, y, z, w};
}
