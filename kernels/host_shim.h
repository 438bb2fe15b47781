// host_shim.h: lets g++ compile crops.cu as plain C++, so the kernels run on the CPU for tests.
//
// The CUDA qualifiers disappear, blockIdx/threadIdx/blockDim/gridDim become thread-local globals,
// and emulate_launch() runs a kernel body once per (block, thread) of the grid it would be launched
// with, so the host build executes the kernels' own indexing as well as their arithmetic.
#pragma once

#include <cmath>
#include <cstring>

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
// Shared memory: one copy per kernel instantiation. emulate_launch runs a block's threads in order,
// thread (0, 0, 0) first, so what it writes before the barrier is there for the others, block by block.
#define __shared__ static

inline void __syncthreads() {}

using std::fabs;
using std::floor;
using std::fmax;
using std::fmin;
using std::trunc;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

// float -> IEEE half bits, round to nearest even (GCC >= 12 converts _Float16 in software on x86-64).
inline unsigned short half_bits(float value)
{
    _Float16 half = (_Float16)value;
    unsigned short bits;
    std::memcpy(&bits, &half, sizeof bits);
    return bits;
}

template <typename Body>
void emulate_launch(dim3 grid, dim3 block, Body kernel_body)
{
    gridDim = grid;
    blockDim = block;
    for (blockIdx.z = 0; blockIdx.z < grid.z; ++blockIdx.z)
        for (blockIdx.y = 0; blockIdx.y < grid.y; ++blockIdx.y)
            for (blockIdx.x = 0; blockIdx.x < grid.x; ++blockIdx.x)
                for (threadIdx.z = 0; threadIdx.z < block.z; ++threadIdx.z)
                    for (threadIdx.y = 0; threadIdx.y < block.y; ++threadIdx.y)
                        for (threadIdx.x = 0; threadIdx.x < block.x; ++threadIdx.x)
                            kernel_body();
}
