// dagc's native CPU engine: a generated network's whole neuron DAG, forward or reverse, in
// ONE call (runtime/engine.py builds this file with the system's C++ compiler and calls it
// through ctypes).
//
// The DAG never mixes channels (scalar edge weights, depthwise convolutions, per-channel
// BatchNorm), so each thread owns whole channels (OpenMP, one parallel region per pass,
// static schedule) and walks the network's tables for each of its channels: node order,
// predecessor lists (edge-weight indices), consumer lists. A channel's planes (batch x H x W,
// batch contiguous) are small (78 KB in fp32 at batch 100, 14 x 14), so a node's local work
// (weighted sum, ReLU, 3x3 conv, BatchNorm statistics, normalise, and the reverse) runs on
// cache-resident buffers.
//
// Per channel, the activations of the nodes that other nodes read live in a per-thread arena
// that is reused channel after channel (the consumers of a node read it there); the only
// per-node plane that leaves the forward pass is each summed node's conv input x (the ReLU'd
// weighted sum), which is what the reverse pass needs: it recomputes y = conv(x) and the
// activation a = BN(y) on the cache-resident plane instead of storing them.
//
// The reverse pass is in fused pull form, in reverse topological order: for node j, each
// consumer s's gradient g_s (at s's weighted sum, after its ReLU mask) is read once and
// gives both j's output gradient (sum_s w_js g_s) and the edge weight's gradient
// <a_j, g_s> (a_j recomputed once per node). Then BatchNorm backward, conv backward and
// j's own ReLU mask write g_j into the per-thread gradient arena.
//
// Storage precision S (float, or bfloat16 kept as uint16) is that of the arenas and the
// saved x; the edge sums accumulate in fp32, every reduction (statistics, dots, weight
// gradients) in fp32 over fixed chunks whose totals are added in double. Every channel's
// work is the same whatever thread runs it, and the only cross-channel reduction (the
// edge-weight gradients) adds per-channel partials in channel order: results are bitwise
// the same for any number of threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

// --- storage types -------------------------------------------------------------------------

struct BF16 {
  uint16_t bits;
};

inline float load(float v) { return v; }
inline float load(BF16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(float* p, float v) { *p = v; }
inline void store(BF16* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to even
  p->bits = uint16_t(u >> 16);
}
// v as storage S would give it back (the identity for float).
inline float rounded(float v, float*) { return v; }
inline float rounded(float v, BF16*) {
  BF16 b;
  store(&b, v);
  return load(b);
}

// --- the network's tables (runtime/engine.py packs them into one int32 array) --------------

struct Tables {
  int64_t N, E;
  const int32_t* summed_slot;  // N: index of a summed node's saved x, -1 for source-fed
  const int32_t* read_slot;    // N: arena slot of a read node's activation, else -1
  const int32_t* grad_slot;    // N: arena slot of a summed node's gradient, else -1
  const int32_t* is_output;    // N: 1 for the nodes whose mean is the sink's input
  const int32_t* in_ptr;       // N + 1: node k's in-edges are in_edge[in_ptr[k]:in_ptr[k+1]]
  const int32_t* in_edge;      // E: edge ids, in the generated file's summation order
  const int32_t* out_ptr;      // N + 1: node k's out-edges are out_edge[out_ptr[k]:...]
  const int32_t* out_edge;     // E: edge ids, in CONSUMER_ORDER
  const int32_t* edge_pre;     // E
  const int32_t* edge_post;    // E
  Tables(const int32_t* t, int64_t n, int64_t e) : N(n), E(e) {
    summed_slot = t;
    read_slot = t + N;
    grad_slot = t + 2 * N;
    is_output = t + 3 * N;
    in_ptr = t + 4 * N;
    in_edge = in_ptr + N + 1;
    out_ptr = in_edge + E;
    out_edge = out_ptr + N + 1;
    edge_pre = out_edge + E;
    edge_post = edge_pre + E;
  }
};

// Reductions: float partial sums over fixed chunks (independent vector lanes, so the loops
// run at the speed of the loads), the chunks added in double in chunk order.
constexpr int64_t kChunk = 1024;

inline int64_t chunk_end(int64_t lo, int64_t n) { return lo + kChunk < n ? lo + kChunk : n; }

// --- per-thread scratch ---------------------------------------------------------------------
//
// Kept from call to call (OpenMP keeps its threads), so that a step's arenas are not fresh
// pages every time; grown when a call needs more.
void* scratch(int which, int64_t bytes) {
  thread_local std::unique_ptr<char[]> buffers[4];
  thread_local int64_t sizes[4] = {0, 0, 0, 0};
  if (sizes[which] < bytes) {
    buffers[which].reset(new char[bytes]);
    sizes[which] = bytes;
  }
  return buffers[which].get();
}

// --- a channel's batch of planes in a zero-padded grid --------------------------------------
//
// B images of (H + 2) x (W + 2) values back to back, plus one spare value before and after,
// so each 3x3 neighbour of a grid point is a fixed offset and one loop runs over the whole
// batch (values computed on the padding are thrown away). The padding is zeroed once and
// never written.
struct Grid {
  int64_t B, H, W, R, G;
  float* values;
  Grid(int64_t b, int64_t h, int64_t w, float* memory)
      : B(b), H(h), W(w), R(w + 2), G((h + 2) * (w + 2)), values(memory) {
    std::memset(values, 0, size() * sizeof(float));
  }
  static int64_t size(int64_t b, int64_t h, int64_t w) { return b * (h + 2) * (w + 2) + 2; }
  int64_t size() const { return B * G + 2; }
  float* first() { return values + 1 + R; }  // image 0, padded row 1, column 0
  int64_t points() const { return (B - 1) * G + H * R; }
  // plane (B x H x W) -> the grid's interior
  void load(const float* plane) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < H; ++r)
        std::memcpy(first() + b * G + r * R + 1, plane + (b * H + r) * W, W * sizeof(float));
  }
};

// out[q] = taps t[0..8] applied around each point q of a grid starting at `first`.
inline void convolve(float* __restrict out, const float* first, const float* t, int64_t R,
                     int64_t points) {
#pragma omp simd
  for (int64_t q = 0; q < points; ++q)
    out[q] = t[0] * first[q - R - 1] + t[1] * first[q - R] + t[2] * first[q - R + 1] +
             t[3] * first[q - 1] + t[4] * first[q] + t[5] * first[q + 1] +
             t[6] * first[q + R - 1] + t[7] * first[q + R] + t[8] * first[q + R + 1];
}

// conv output (grid points) -> plane
inline void extract(float* __restrict plane, const float* out, const Grid& g) {
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t r = 0; r < g.H; ++r)
      std::memcpy(plane + (b * g.H + r) * g.W, out + b * g.G + r * g.R + 1, g.W * sizeof(float));
}

template <typename S>
inline void load_plane(float* __restrict dst, const S* __restrict src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = load(src[i]);
}

template <typename S>
inline void store_plane(S* __restrict dst, const float* __restrict src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) store(dst + i, src[i]);
}

// Copy `bytes` to dst with non-temporal stores where dst is 64-byte aligned (AVX-512): the
// saved planes go to memory without evicting the cache-resident arenas on their way.
inline void stream_bytes(void* dst, const void* src, int64_t bytes) {
#ifdef __AVX512F__
  char* d = (char*)dst;
  const char* s = (const char*)src;
  const int64_t head = std::min<int64_t>(bytes, (64 - (uintptr_t(d) & 63)) & 63);
  std::memcpy(d, s, head);
  int64_t i = head;
  for (; i + 64 <= bytes; i += 64)
    _mm512_stream_si512((__m512i*)(d + i), _mm512_loadu_si512((const void*)(s + i)));
  std::memcpy(d + i, s + i, bytes - i);
#else
  std::memcpy(dst, src, bytes);
#endif
}

inline void stream_fence() {
#ifdef __AVX512F__
  _mm_sfence();
#endif
}

// A float plane stored as S, written around the cache (chunks converted in L1 first).
template <typename S>
inline void stream_plane(S* dst, const float* __restrict src, int64_t n) {
  alignas(64) S chunk[1024];
  for (int64_t lo = 0; lo < n; lo += 1024) {
    const int64_t m = n - lo < 1024 ? n - lo : 1024;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) store(chunk + i, src[lo + i]);
    stream_bytes(dst + lo, chunk, m * int64_t(sizeof(S)));
  }
}

// source (B, C, H, W) channel c -> plane (B x HW)
inline void gather_channel(float* __restrict plane, const float* t, int64_t B, int64_t C,
                           int64_t c, int64_t HW) {
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(plane + b * HW, t + (b * C + c) * HW, HW * sizeof(float));
}

inline void scatter_channel(float* t, const float* __restrict plane, int64_t B, int64_t C,
                            int64_t c, int64_t HW) {
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(t + (b * C + c) * HW, plane + b * HW, HW * sizeof(float));
}

template <typename S>
void forward(const Tables& T, const float* source, const float* w, const float* conv,
             const float* bn_weight, const float* bn_bias, const float* bn_mean,
             const float* bn_invstd, int64_t B, int64_t C, int64_t H, int64_t W, int training,
             double eps, int save, float* out, float* mean_out, float* invstd_out,
             float* shift_out, S* const* saved_x,
             int64_t n_slots, int64_t n_out, int threads) {
  const int64_t HW = H * W, P = B * HW, N = T.N, GS = Grid::size(B, H, W);
#pragma omp parallel num_threads(threads)
  {
    S* const arena = (S*)scratch(0, n_slots * P * sizeof(S));
    float* const planes = (float*)scratch(2, (4 * P + 2 * GS) * sizeof(float));
    float *const src = planes, *const x = planes + P, *const y = planes + 2 * P,
                 *const acc = planes + 3 * P;
    Grid grid(B, H, W, planes + 4 * P);
    float* const conv_out = planes + 4 * P + GS;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      gather_channel(src, source, B, C, c, HW);
      bool first_output = true;
      for (int64_t k = 0; k < N; ++k) {
        const float* input = src;
        const int32_t slot = T.summed_slot[k];
        if (slot >= 0) {  // relu(sum_e w[e] * a_pre(e)), in the generated file's order
          float* __restrict xs = x;
          const int32_t lo = T.in_ptr[k], hi = T.in_ptr[k + 1];
          for (int32_t i = lo; i < hi; ++i) {
            const int32_t e = T.in_edge[i];
            const float we = w[e];
            const S* __restrict a = arena + int64_t(T.read_slot[T.edge_pre[e]]) * P;
            if (i == lo) {
#pragma omp simd
              for (int64_t p = 0; p < P; ++p) xs[p] = load(a[p]) * we;
            } else {
#pragma omp simd
              for (int64_t p = 0; p < P; ++p) xs[p] += load(a[p]) * we;
            }
          }
          // ReLU (NaN stays NaN), rounded to the storage precision so that the reverse
          // pass, which reads the saved x, recomputes exactly this forward.
#pragma omp simd
          for (int64_t p = 0; p < P; ++p)
            xs[p] = rounded(xs[p] < 0.0f ? 0.0f : xs[p], (S*)nullptr);
          if (save) stream_plane(saved_x[slot] + c * P, xs, P);
          input = xs;
        }
        grid.load(input);
        convolve(conv_out, grid.first(), conv + (k * C + c) * 9, grid.R, grid.points());
        float* __restrict ys = y;
        extract(ys, conv_out, grid);
        float mean, invstd;
        if (training) {  // batch statistics, two passes in double on the cached plane
          double sum = 0.0;
          for (int64_t lo = 0; lo < P; lo += kChunk) {
            const int64_t hi = chunk_end(lo, P);
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (int64_t p = lo; p < hi; ++p) part += ys[p];
            sum += part;
          }
          mean = float(sum / double(P));
          double squares = 0.0;
          for (int64_t lo = 0; lo < P; lo += kChunk) {
            const int64_t hi = chunk_end(lo, P);
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (int64_t p = lo; p < hi; ++p) {
              const float d = ys[p] - mean;
              part += d * d;
            }
            squares += part;
          }
          invstd = float(1.0 / std::sqrt(squares / double(P) + eps));
          mean_out[k * C + c] = mean;
          invstd_out[k * C + c] = invstd;
        } else {
          mean = bn_mean[k * C + c];
          invstd = bn_invstd[k * C + c];
        }
        const float scale = bn_weight[k * C + c] * invstd;
        const float shift = bn_bias[k * C + c] - mean * scale;
        if (save) shift_out[k * C + c] = shift;
        const int32_t read = T.read_slot[k];
        if (read >= 0) {
          S* __restrict a = arena + int64_t(read) * P;
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) store(a + p, ys[p] * scale + shift);
        }
        if (T.is_output[k]) {  // the sink's input: output nodes added in node order
          float* __restrict o = acc;
          if (first_output) {
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) o[p] = ys[p] * scale + shift;
          } else {
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) o[p] += ys[p] * scale + shift;
          }
          first_output = false;
        }
      }
      float* __restrict o = acc;
      if (first_output) std::memset(o, 0, P * sizeof(float));
      const float count = float(n_out);
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) o[p] /= count;
      scatter_channel(out, o, B, C, c, HW);
    }
    stream_fence();
  }
}

template <typename S>
void backward(const Tables& T, const float* grad, const float* source, const float* w,
              const float* conv, const float* bn_weight, const float* mean_in,
              const float* invstd_in, const float* shift_in, int64_t B, int64_t C, int64_t H, int64_t W,
              int training, const S* const* saved_x, int64_t n_slots, int64_t n_out,
              float* grad_source, double* dw_part, float* grad_w, float* grad_conv,
              float* grad_bn_weight, float* grad_bn_bias, int threads) {
  const int64_t HW = H * W, P = B * HW, N = T.N, E = T.E, GS = Grid::size(B, H, W);
#pragma omp parallel num_threads(threads)
  {
    S* const arena = (S*)scratch(1, n_slots * P * sizeof(S));
    float* const planes = (float*)scratch(3, (8 * P + 3 * GS) * sizeof(float));
    float *const src = planes, *const sink = planes + P, *const x = planes + 2 * P,
                 *const y = planes + 3 * P, *const a = planes + 4 * P,
                 *const ga = planes + 5 * P, *const gx = planes + 6 * P,
                 *const gsrc = planes + 7 * P;
    Grid xgrid(B, H, W, planes + 8 * P), gygrid(B, H, W, planes + 8 * P + GS);
    float* const conv_out = planes + 8 * P + 2 * GS;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      gather_channel(src, source, B, C, c, HW);
      gather_channel(sink, grad, B, C, c, HW);
      {
        float* __restrict s = sink;
        const float count = float(n_out);
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) s[p] /= count;
      }
      std::memset(gsrc, 0, P * sizeof(float));
      for (int64_t j = N - 1; j >= 0; --j) {
        const int32_t slot = T.summed_slot[j];
        const float* input = src;
        if (slot >= 0) {
          load_plane(x, saved_x[slot] + c * P, P);
          input = x;
        }
        xgrid.load(input);
        const float* K = conv + (j * C + c) * 9;
        convolve(conv_out, xgrid.first(), K, xgrid.R, xgrid.points());
        float* __restrict ys = y;
        extract(ys, conv_out, xgrid);
        const float mean = mean_in[j * C + c], invstd = invstd_in[j * C + c];
        const float gamma = bn_weight[j * C + c];
        const float scale = gamma * invstd;
        // j's output gradient: the sink's share, then its consumers' gradients, each read
        // once for both the gather and the edge weight's dot with the recomputed activation.
        float* __restrict g = ga;
        bool empty = true;
        if (T.is_output[j]) {
          std::memcpy(g, sink, P * sizeof(float));
          empty = false;
        }
        const int32_t lo = T.out_ptr[j], hi = T.out_ptr[j + 1];
        if (hi > lo) {  // j's activation as the forward pass stored it
          float* __restrict as = a;
          const float shift = shift_in[j * C + c];
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) as[p] = rounded(ys[p] * scale + shift, (S*)nullptr);
        }
        for (int32_t i = lo; i < hi; ++i) {
          const int32_t e = T.out_edge[i];
          const float we = w[e];
          const S* __restrict gs = arena + int64_t(T.grad_slot[T.edge_post[e]]) * P;
          const float* __restrict as = a;
          double dot = 0.0;
          for (int64_t lo = 0; lo < P; lo += kChunk) {
            const int64_t hi = chunk_end(lo, P);
            float part = 0.0f;
            if (empty) {
#pragma omp simd reduction(+ : part)
              for (int64_t p = lo; p < hi; ++p) {
                const float v = load(gs[p]);
                g[p] = v * we;
                part += as[p] * v;
              }
            } else {
#pragma omp simd reduction(+ : part)
              for (int64_t p = lo; p < hi; ++p) {
                const float v = load(gs[p]);
                g[p] += v * we;
                part += as[p] * v;
              }
            }
            dot += part;
          }
          empty = false;
          dw_part[int64_t(e) * C + c] = dot;
        }
        if (empty) std::memset(g, 0, P * sizeof(float));
        // BatchNorm backward: sums of g and g * xhat in double.
        double sum_g = 0.0, sum_gx = 0.0;
        for (int64_t lo = 0; lo < P; lo += kChunk) {
          const int64_t hi = chunk_end(lo, P);
          float part_g = 0.0f, part_gx = 0.0f;
#pragma omp simd reduction(+ : part_g, part_gx)
          for (int64_t p = lo; p < hi; ++p) {
            const float xhat = (ys[p] - mean) * invstd;
            part_g += g[p];
            part_gx += g[p] * xhat;
          }
          sum_g += part_g;
          sum_gx += part_gx;
        }
        grad_bn_bias[j * C + c] = float(sum_g);
        grad_bn_weight[j * C + c] = float(sum_gx);
        // BatchNorm's input gradient, straight into the padded grid.
        {
          float* __restrict gy = gx;  // plane scratch
          if (training) {
            const float mg = float(sum_g / double(P)), mgx = float(sum_gx / double(P));
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) {
              const float xhat = (ys[p] - mean) * invstd;
              gy[p] = scale * (g[p] - mg - xhat * mgx);
            }
          } else {
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) gy[p] = g[p] * scale;
          }
          gygrid.load(gy);
        }
        // The conv's weight gradient: nine dots of gy with the shifted input.
        {
          const float* __restrict gf = gygrid.first();
          const float* __restrict xf = xgrid.first();
          const int64_t R = xgrid.R, n = xgrid.points();
          double sums[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
          for (int64_t lo = 0; lo < n; lo += kChunk) {
            const int64_t hi = chunk_end(lo, n);
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
            for (int64_t q = lo; q < hi; ++q) {
              const float v = gf[q];
              s0 += v * xf[q - R - 1];
              s1 += v * xf[q - R];
              s2 += v * xf[q - R + 1];
              s3 += v * xf[q - 1];
              s4 += v * xf[q];
              s5 += v * xf[q + 1];
              s6 += v * xf[q + R - 1];
              s7 += v * xf[q + R];
              s8 += v * xf[q + R + 1];
            }
            const float parts[9] = {s0, s1, s2, s3, s4, s5, s6, s7, s8};
            for (int t = 0; t < 9; ++t) sums[t] += parts[t];
          }
          float* gk = grad_conv + (j * C + c) * 9;
          for (int t = 0; t < 9; ++t) gk[t] = float(sums[t]);
        }
        // The input gradient: gy convolved with the flipped taps.
        const float flipped[9] = {K[8], K[7], K[6], K[5], K[4], K[3], K[2], K[1], K[0]};
        convolve(conv_out, gygrid.first(), flipped, gygrid.R, gygrid.points());
        float* __restrict gxs = gx;
        extract(gxs, conv_out, gygrid);
        if (slot >= 0) {  // through j's own ReLU: zero where x was not positive
          const float* __restrict xs = x;
          S* __restrict out = arena + int64_t(T.grad_slot[j]) * P;
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) store(out + p, xs[p] > 0.0f ? gxs[p] : 0.0f);
        } else {
          float* __restrict gs = gsrc;
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) gs[p] += gxs[p];
        }
      }
      scatter_channel(grad_source, gsrc, B, C, c, HW);
    }
#pragma omp for schedule(static)
    for (int64_t e = 0; e < E; ++e) {
      double s = 0.0;
      for (int64_t c = 0; c < C; ++c) s += dw_part[e * C + c];
      grad_w[e] = float(s);
    }
  }
}

}  // namespace

extern "C" {

void dagc_engine_forward(const int32_t* tables, int64_t N, int64_t E, int64_t n_slots,
                         int64_t n_out, const float* source, const float* w, const float* conv,
                         const float* bn_weight, const float* bn_bias, const float* bn_mean,
                         const float* bn_invstd, int64_t B, int64_t C, int64_t H, int64_t W,
                         int training, double eps, int save, int bf16, float* out,
                         float* mean_out, float* invstd_out, float* shift_out, void* const* saved_x,
                         int threads) {
  const Tables T(tables, N, E);
  if (bf16)
    forward<BF16>(T, source, w, conv, bn_weight, bn_bias, bn_mean, bn_invstd, B, C, H, W,
                  training, eps, save, out, mean_out, invstd_out, shift_out, (BF16* const*)saved_x, n_slots,
                  n_out, threads);
  else
    forward<float>(T, source, w, conv, bn_weight, bn_bias, bn_mean, bn_invstd, B, C, H, W,
                   training, eps, save, out, mean_out, invstd_out, shift_out, (float* const*)saved_x, n_slots,
                   n_out, threads);
}

void dagc_engine_backward(const int32_t* tables, int64_t N, int64_t E, int64_t n_slots,
                          int64_t n_out, const float* grad, const float* source,
                          const float* w, const float* conv, const float* bn_weight,
                          const float* mean, const float* invstd, const float* shift,
                          int64_t B, int64_t C,
                          int64_t H, int64_t W, int training, int bf16, const void* const* saved_x,
                          float* grad_source, double* dw_part, float* grad_w,
                          float* grad_conv, float* grad_bn_weight, float* grad_bn_bias,
                          int threads) {
  const Tables T(tables, N, E);
  if (bf16)
    backward<BF16>(T, grad, source, w, conv, bn_weight, mean, invstd, shift, B, C, H, W, training,
                   (const BF16* const*)saved_x, n_slots, n_out, grad_source, dw_part, grad_w,
                   grad_conv, grad_bn_weight, grad_bn_bias, threads);
  else
    backward<float>(T, grad, source, w, conv, bn_weight, mean, invstd, shift, B, C, H, W, training,
                    (const float* const*)saved_x, n_slots, n_out, grad_source, dw_part, grad_w,
                    grad_conv, grad_bn_weight, grad_bn_bias, threads);
}

}  // extern "C"
