// sim_cuda.h — the few CUDA C++ names kernels/*.cu uses, for compiling them as ordinary host C++
// (force-included by the simulator's build script; never seen by NVRTC). A launch runs every
// thread of the grid on one host thread, one after another (runner.cpp), so these are
// thread-local variables the runner sets before calling the entry point.
#pragma once
#include <stdint.h>

struct sim_dim3 {
    unsigned int x, y, z;
};

// initial-exec: the kernels read these in their inner loops; the general TLS model would call
// __tls_get_addr on every read. 48 bytes of static TLS, which glibc reserves for dlopen'ed
// libraries.
#define SIM_TLS thread_local __attribute__((tls_model("initial-exec")))
extern SIM_TLS sim_dim3 threadIdx;
extern SIM_TLS sim_dim3 blockIdx;
extern SIM_TLS sim_dim3 blockDim;
extern SIM_TLS sim_dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __align__(n) __attribute__((aligned(n)))
// GNU C++ already spells restrict as __restrict__.

template <typename T>
static inline T min(T a, T b) {
    return b < a ? b : a;
}
template <typename T>
static inline T max(T a, T b) {
    return a < b ? b : a;
}
