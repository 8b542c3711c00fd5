// gather.cu — arraydrain's batch gather kernel.
//
// Gathers rows of one device-resident column, by a device list of row indices (32- or 64-bit),
// into a contiguous staging buffer. Dtype-agnostic: a row is `row_words` words of W bytes. One
// launch covers a whole chunk of many loader batches. Self-contained on purpose (no #include):
// it is embedded in the arraydrain binary and compiled at run time with NVRTC (12.x or 13.x) for
// the device's own architecture (src/cuda/kernels.rs).
//
// WORK UNITS: each row is cut into `segs` segments of `seg_words` words (the last one may be
// shorter); a unit is one (row, segment) pair, copied by the blockDim.x threads of one block row
// (threadIdx.y). Small rows are one segment and a block copies blockDim.y rows at once; large
// rows (an image of 3x224x224 f32 is 588 KiB) are cut into many segments, so a chunk of a few
// rows still spreads over every multiprocessor.
//
// ENTRY POINTS (extern "C", one per vector width W in bytes and index type, all with the same
// parameters but the type of idx):
//   gather_rows_v16_u64, gather_rows_v8_u64, gather_rows_v4_u64, gather_rows_v2_u64,
//   gather_rows_v1_u64 (idx: const unsigned long long*), and the same names ending in _u32
//   (idx: const unsigned int*):
//   (const unsigned char* src,        // the column's first row
//    const IDX*           idx,        // n source row numbers, or NULL
//    unsigned long long   base,       // with idx == NULL, row i is base + i
//    unsigned char*       dst,        // n contiguous output rows
//    unsigned long long   n,          // rows to gather
//    unsigned long long   row_words,  // words of W bytes per row (row_bytes / W)
//    unsigned long long   seg_words,  // words per segment
//    unsigned long long   segs)       // segments per row = ceil(row_words / seg_words)
//
// CONTRACT (the caller guarantees every item; quoted at the single launch site, Kernels::gather
// in src/cuda/kernels.rs):
//   K1 alignment: W is the widest of 16, 8, 4, 2, 1 that divides row_bytes and the addresses
//      src and dst (and never wider), so every source and destination row starts W-aligned.
//   K2 source bounds: src points at src_rows * row_bytes readable device bytes, and every
//      source row r_i = (idx ? idx[i] : base + i), i < n, satisfies r_i < src_rows.
//   K3 index list: idx is NULL or points at n readable, naturally aligned IDX on the device.
//   K4 destination: dst points at n * row_bytes writable device bytes that overlap neither the
//      source column nor idx.
//   K5 sizes: n >= 1, row_words >= 1, seg_words >= 1, segs = ceil(row_words / seg_words), and
//      n * segs, n * row_bytes, r_i * row_bytes fit in 64 bits; all offset arithmetic below is
//      64-bit, so tables past 2^31 rows and outputs past 4 GiB work.
//   K6 launch shape: blockDim = (tx, ty, 1), tx * ty <= 1024, any gridDim.x >= 1; the
//      grid-stride loop covers every unit whatever the grid size.
//
// EFFECT: for every i < n: dst[i*row_bytes, (i+1)*row_bytes) = src[r_i*row_bytes, (r_i+1)*row_bytes).
// No other memory is written. Within a unit, consecutive threads copy consecutive words
// (coalesced).

typedef unsigned long long u64;

struct __align__(16) W16 { u64 a, b; };
struct __align__(8) W8 { u64 a; };
struct __align__(4) W4 { unsigned int a; };
struct __align__(2) W2 { unsigned short a; };
struct W1 { unsigned char a; };

template <typename V, typename I>
__device__ __forceinline__ void gather_rows(const unsigned char* __restrict__ src,
                                            const I* __restrict__ idx, u64 base,
                                            unsigned char* __restrict__ dst, u64 n,
                                            u64 row_words, u64 seg_words, u64 segs) {
    const V* __restrict__ s = reinterpret_cast<const V*>(src);
    V* __restrict__ d = reinterpret_cast<V*>(dst);
    const u64 units = n * segs;  // K5
    const u64 step = (u64)gridDim.x * (u64)blockDim.y;
    for (u64 u = (u64)blockIdx.x * (u64)blockDim.y + (u64)threadIdx.y; u < units; u += step) {
        // One segment per row is the common case: skip the 64-bit division.
        const u64 i = segs == 1 ? u : u / segs;
        const u64 seg = u - i * segs;
        // K2/K3: r < src_rows; all tx threads of the unit read the same index (one broadcast).
        const u64 r = idx ? (u64)idx[i] : base + i;
        const V* __restrict__ from = s + r * row_words;
        V* __restrict__ to = d + i * row_words;
        const u64 w0 = seg * seg_words;
        const u64 w1 = min(w0 + seg_words, row_words);
        for (u64 w = w0 + threadIdx.x; w < w1; w += blockDim.x) {
            to[w] = from[w];
        }
    }
}

#define GATHER_ENTRY(W, V, SUFFIX, I)                                                          \
    extern "C" __global__ void gather_rows_v##W##_##SUFFIX(                                    \
        const unsigned char* __restrict__ src, const I* __restrict__ idx, u64 base,            \
        unsigned char* __restrict__ dst, u64 n, u64 row_words, u64 seg_words, u64 segs) {      \
        gather_rows<V, I>(src, idx, base, dst, n, row_words, seg_words, segs);                 \
    }

GATHER_ENTRY(16, W16, u64, u64)
GATHER_ENTRY(8, W8, u64, u64)
GATHER_ENTRY(4, W4, u64, u64)
GATHER_ENTRY(2, W2, u64, u64)
GATHER_ENTRY(1, W1, u64, u64)
GATHER_ENTRY(16, W16, u32, unsigned int)
GATHER_ENTRY(8, W8, u32, unsigned int)
GATHER_ENTRY(4, W4, u32, unsigned int)
GATHER_ENTRY(2, W2, u32, unsigned int)
GATHER_ENTRY(1, W1, u32, unsigned int)
