// runner.cpp — runs one block of a gather launch on the calling host thread: every thread of the
// block in order (x fastest), with threadIdx/blockIdx/blockDim/gridDim set as the device would.
// The entry points are the real ones of kernels/gather.cu, compiled for the host by build.rs.
#include "sim_cuda.h"

SIM_TLS sim_dim3 threadIdx;
SIM_TLS sim_dim3 blockIdx;
SIM_TLS sim_dim3 blockDim;
SIM_TLS sim_dim3 gridDim;

typedef unsigned long long u64;

#define DECLARE(W, SUFFIX, I)                                                                   \
    extern "C" void gather_rows_v##W##_##SUFFIX(const unsigned char*, const I*, u64,             \
                                                unsigned char*, u64, u64, u64, u64);
DECLARE(16, u64, u64)
DECLARE(8, u64, u64)
DECLARE(4, u64, u64)
DECLARE(2, u64, u64)
DECLARE(1, u64, u64)
DECLARE(16, u32, unsigned int)
DECLARE(8, u32, unsigned int)
DECLARE(4, u32, unsigned int)
DECLARE(2, u32, unsigned int)
DECLARE(1, u32, unsigned int)

// entry: 0..4 = v16..v1 with 64-bit indices, 5..9 = v16..v1 with 32-bit indices.
// args: src, idx, base, dst, n, row_words, seg_words, segs (as the launch passed them, with the
// three pointers already translated to host addresses).
extern "C" int cudasim_run_block(int entry, const u64* a, const unsigned int* grid,
                                 const unsigned int* block, const unsigned int* bidx) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    blockIdx = {bidx[0], bidx[1], bidx[2]};
    const unsigned char* src = (const unsigned char*)a[0];
    const void* idx = (const void*)a[1];
    unsigned char* dst = (unsigned char*)a[3];
    for (unsigned int z = 0; z < block[2]; z++) {
        for (unsigned int y = 0; y < block[1]; y++) {
            for (unsigned int x = 0; x < block[0]; x++) {
                threadIdx = {x, y, z};
#define CALL(K, W, SUFFIX, I)                                                                   \
    case K:                                                                                     \
        gather_rows_v##W##_##SUFFIX(src, (const I*)idx, a[2], dst, a[4], a[5], a[6], a[7]);    \
        break;
                switch (entry) {
                    CALL(0, 16, u64, u64)
                    CALL(1, 8, u64, u64)
                    CALL(2, 4, u64, u64)
                    CALL(3, 2, u64, u64)
                    CALL(4, 1, u64, u64)
                    CALL(5, 16, u32, unsigned int)
                    CALL(6, 8, u32, unsigned int)
                    CALL(7, 4, u32, unsigned int)
                    CALL(8, 2, u32, unsigned int)
                    CALL(9, 1, u32, unsigned int)
                    default:
                        return -1;
                }
            }
        }
    }
    return 0;
}
