// gather.cu — arraydrain's batch gather kernel.
//
// Gathers rows of one device-resident column, by a device list of 64-bit row indices, into a
// contiguous staging buffer. Dtype-agnostic: a row is `row_words` words of W bytes. One launch
// covers a whole chunk of many loader batches. Self-contained on purpose (no #include): it is
// embedded in the arraydrain binary and compiled at run time with NVRTC for the device's own
// architecture (src/cuda/kernels.rs).
//
// ENTRY POINTS (extern "C", one per vector width W in bytes, all with the same parameters):
//   gather_rows_v16, gather_rows_v8, gather_rows_v4, gather_rows_v2, gather_rows_v1
//   (const unsigned char*      src,        // the column's first row
//    const unsigned long long* idx,        // n source row numbers, or NULL
//    unsigned long long        base,       // with idx == NULL, row i is base + i
//    unsigned char*            dst,        // n contiguous output rows
//    unsigned long long        n,          // rows to gather
//    unsigned long long        row_words)  // words of W bytes per row (row_bytes / W)
//
// CONTRACT (the caller guarantees every item; quoted at the single launch site, Kernels::gather
// in src/cuda/kernels.rs):
//   K1 alignment: W is the widest of 16, 8, 4, 2, 1 that divides row_bytes and the addresses
//      src and dst (and never wider), so every source and destination row starts W-aligned.
//   K2 source bounds: src points at src_rows * row_bytes readable device bytes, and every
//      source row r_i = (idx ? idx[i] : base + i), i < n, satisfies r_i < src_rows.
//   K3 index list: idx is NULL or points at n readable, 8-byte aligned u64 on the device.
//   K4 destination: dst points at n * row_bytes writable device bytes that overlap neither the
//      source column nor idx.
//   K5 sizes: n >= 1, row_words >= 1, and n * row_bytes, r_i * row_bytes fit in 64 bits; all
//      offset arithmetic below is 64-bit, so tables past 2^31 rows and outputs past 4 GiB work.
//   K6 launch shape: blockDim = (tx, ty, 1), tx * ty <= 1024, any gridDim.x >= 1; the
//      grid-stride loop covers every row whatever the grid size.
//
// EFFECT: for every i < n: dst[i*row_bytes, (i+1)*row_bytes) = src[r_i*row_bytes, (r_i+1)*row_bytes).
// No other memory is written. tx threads copy one row W bytes at a time (coalesced within a
// row); ty rows per block per step.

typedef unsigned long long u64;

struct __align__(16) W16 { u64 a, b; };
struct __align__(8) W8 { u64 a; };
struct __align__(4) W4 { unsigned int a; };
struct __align__(2) W2 { unsigned short a; };
struct W1 { unsigned char a; };

template <typename V>
__device__ __forceinline__ void gather_rows(const unsigned char* __restrict__ src,
                                            const u64* __restrict__ idx, u64 base,
                                            unsigned char* __restrict__ dst, u64 n,
                                            u64 row_words) {
    const V* __restrict__ s = reinterpret_cast<const V*>(src);
    V* __restrict__ d = reinterpret_cast<V*>(dst);
    const u64 step = (u64)gridDim.x * (u64)blockDim.y;
    for (u64 i = (u64)blockIdx.x * (u64)blockDim.y + (u64)threadIdx.y; i < n; i += step) {
        // K2/K3: r < src_rows; all tx threads of the row read the same index (one broadcast).
        const u64 r = idx ? idx[i] : base + i;
        const V* __restrict__ from = s + r * row_words;
        V* __restrict__ to = d + i * row_words;
        for (u64 w = threadIdx.x; w < row_words; w += blockDim.x) {
            to[w] = from[w];
        }
    }
}

extern "C" __global__ void gather_rows_v16(const unsigned char* __restrict__ src,
                                           const u64* __restrict__ idx, u64 base,
                                           unsigned char* __restrict__ dst, u64 n, u64 row_words) {
    gather_rows<W16>(src, idx, base, dst, n, row_words);
}

extern "C" __global__ void gather_rows_v8(const unsigned char* __restrict__ src,
                                          const u64* __restrict__ idx, u64 base,
                                          unsigned char* __restrict__ dst, u64 n, u64 row_words) {
    gather_rows<W8>(src, idx, base, dst, n, row_words);
}

extern "C" __global__ void gather_rows_v4(const unsigned char* __restrict__ src,
                                          const u64* __restrict__ idx, u64 base,
                                          unsigned char* __restrict__ dst, u64 n, u64 row_words) {
    gather_rows<W4>(src, idx, base, dst, n, row_words);
}

extern "C" __global__ void gather_rows_v2(const unsigned char* __restrict__ src,
                                          const u64* __restrict__ idx, u64 base,
                                          unsigned char* __restrict__ dst, u64 n, u64 row_words) {
    gather_rows<W2>(src, idx, base, dst, n, row_words);
}

extern "C" __global__ void gather_rows_v1(const unsigned char* __restrict__ src,
                                          const u64* __restrict__ idx, u64 base,
                                          unsigned char* __restrict__ dst, u64 n, u64 row_words) {
    gather_rows<W1>(src, idx, base, dst, n, row_words);
}
