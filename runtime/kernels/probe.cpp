// The machine's own ceilings, measured the way the engine works: fused multiply-adds on
// registers (the compute floor) and streaming reads of a buffer per thread (the byte floor at
// each cache level). Built and loaded like the engine (native.py); driven by probe.py.
#include <omp.h>

#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
typedef __m512 vec;
static const int LANES = 16;
static inline vec vset(float x) { return _mm512_set1_ps(x); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
static inline float vsum(vec a) { return _mm512_reduce_add_ps(a); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
typedef __m256 vec;
static const int LANES = 8;
static inline vec vset(float x) { return _mm256_set1_ps(x); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
static inline float vsum(vec a) {
    float lanes[8];
    _mm256_storeu_ps(lanes, a);
    float total = 0;
    for (float x : lanes) total += x;
    return total;
}
#else
typedef float vec;
static const int LANES = 1;
static inline vec vset(float x) { return x; }
static inline vec vfma(vec a, vec b, vec c) { return std::fma(a, b, c); }
static inline vec vadd(vec a, vec b) { return a + b; }
static inline vec vload(const float* p) { return *p; }
static inline float vsum(vec a) { return a; }
#endif

// Independent accumulators: enough to cover the FMA latency (4 cycles) on two ports.
static const int CHAINS = 12;

extern "C" int probe_lanes() { return LANES; }

// Each thread runs `rounds` rounds of CHAINS vector FMAs; returns the fused multiply-adds done
// (all threads), and writes a checksum so the compiler cannot drop the work.
extern "C" double probe_fma(int64_t rounds, int threads, float* checksum) {
    double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        vec acc[CHAINS];
        for (int c = 0; c < CHAINS; ++c) acc[c] = vset(1.0f + 1e-3f * c);
        const vec scale = vset(0.999999f), shift = vset(1e-7f);
        for (int64_t r = 0; r < rounds; ++r)
            for (int c = 0; c < CHAINS; ++c) acc[c] = vfma(acc[c], scale, shift);
        float sum = 0;
        for (int c = 0; c < CHAINS; ++c) sum += vsum(acc[c]);
        total += static_cast<double>(rounds) * CHAINS * LANES;
        if (sum == 12345.678f) checksum[0] = sum;  // never true; keeps `sum` live
    }
    return total;
}

// Each thread reads its own `floats`-long slice of `data` `repeats` times (threads x floats
// in all); returns the sum of everything read, so no read can be skipped.
extern "C" double probe_read(const float* data, int64_t floats, int repeats, int threads) {
    double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        const float* slice = data + floats * omp_get_thread_num();
        for (int r = 0; r < repeats; ++r) {
            vec acc[4] = {vset(0), vset(0), vset(0), vset(0)};
            int64_t i = 0;
            for (; i + 4 * LANES <= floats; i += 4 * LANES)
                for (int k = 0; k < 4; ++k) acc[k] = vadd(acc[k], vload(slice + i + k * LANES));
            float sum = vsum(vadd(vadd(acc[0], acc[1]), vadd(acc[2], acc[3])));
            for (; i < floats; ++i) sum += slice[i];
            total += sum;
        }
    }
    return total;
}
