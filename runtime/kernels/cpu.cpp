// dagc's CPU kernels for the per-neuron work of a generated network (runtime/kernels/cpu.py
// builds this file with the system's C++ compiler and calls it through ctypes).
//
// All tensors are contiguous float32. The weighted sums and dots read each input once and
// write each output once; the conv + BatchNorm kernels make one extra pass where BatchNorm
// needs statistics first (the passes are counted in docs/cpu-kernels.md). The work is split
// into fixed blocks (of elements, or of (sample, channel) planes) that do not depend on the
// thread count, and every reduction adds its partial sums in a fixed order afterwards, so a
// result is bitwise the same for any number of threads.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Elements per block of the weighted sums and dot products: 16 KB of float32, so a block's
// accumulator stays in the L1 cache while the k inputs stream through it.
constexpr int64_t kBlock = 4096;

int64_t blocks_of(int64_t n) { return (n + kBlock - 1) / kBlock; }

// A plane (H x W) is worked on in a zero-padded grid of H + 2 rows of W + 2 values, stored
// flat with one spare value before and after, so each 3x3 neighbour of a grid point is a
// fixed offset and the inner loops run over whole grid rows (long enough to vectorise, where
// W = 14 alone is not). The values computed in the two padding columns are thrown away.
struct PaddedPlane {
  int64_t H, W, row;
  std::vector<float> values;
  PaddedPlane(int64_t h, int64_t w) : H(h), W(w), row(w + 2), values((h + 2) * (w + 2) + 2, 0.0f) {}
  void load(const float* plane) {
    for (int64_t r = 0; r < H; ++r)
      std::memcpy(values.data() + 1 + (r + 1) * row + 1, plane + r * W, W * sizeof(float));
  }
  // The grid point of row 1, column 0: the start of the H rows that hold the plane.
  const float* first_row() const { return values.data() + 1 + row; }
  int64_t points() const { return H * row; }
};

// out[q] = the 3x3 taps t[0..8] (row by row) applied around each grid point q of the H
// plane rows of a padded grid that starts at `first` (PaddedPlane::first_row).
inline void convolve_grid(float* __restrict out, const float* first, const float* t,
                          int64_t row, int64_t points) {
  const int64_t R = row;
#pragma omp simd
  for (int64_t q = 0; q < points; ++q)
    out[q] = t[0] * first[q - R - 1] + t[1] * first[q - R] + t[2] * first[q - R + 1] +
             t[3] * first[q - 1] + t[4] * first[q] + t[5] * first[q + 1] +
             t[6] * first[q + R - 1] + t[7] * first[q + R] + t[8] * first[q + R + 1];
}

}  // namespace

extern "C" {

// out = w[0] * x[0] + w[1] * x[1] + ... (+ ReLU), n elements; inputs added in order.
void dagc_weighted_sum(float* out, const float* const* x, const float* w, int64_t k,
                       int64_t n, int relu, int threads) {
  const int64_t blocks = blocks_of(n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * kBlock, m = lo + kBlock < n ? kBlock : n - lo;
    float* __restrict o = out + lo;
    const float* __restrict x0 = x[0] + lo;
    const float w0 = w[0];
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) o[i] = x0[i] * w0;
    for (int64_t j = 1; j < k; ++j) {
      const float* __restrict xj = x[j] + lo;
      const float wj = w[j];
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) o[i] += xj[i] * wj;
    }
    if (relu) {
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) o[i] = o[i] < 0.0f ? 0.0f : o[i];  // NaN stays NaN
    }
  }
}

// out[j] = sum(h * x[j]) over n elements. partial: k * blocks_of(n) doubles of scratch.
void dagc_dots(float* out, const float* h, const float* const* x, int64_t k, int64_t n,
               int threads, double* partial) {
  const int64_t blocks = blocks_of(n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * kBlock, m = lo + kBlock < n ? kBlock : n - lo;
    const float* __restrict hb = h + lo;
    for (int64_t j = 0; j < k; ++j) {  // h's block stays in cache for all k inputs
      const float* __restrict xj = x[j] + lo;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < m; ++i) s += hb[i] * xj[i];
      partial[j * blocks + b] = s;
    }
  }
  for (int64_t j = 0; j < k; ++j) {
    double s = 0.0;
    for (int64_t b = 0; b < blocks; ++b) s += partial[j * blocks + b];
    out[j] = static_cast<float>(s);
  }
}

// A node's depthwise 3x3 convolution (padding 1) of x (B, C, H, W) by w (C, 1, 3, 3), into
// y, then its BatchNorm into out. In training the batch statistics (biased variance) are
// taken while y is written and returned in mean and invstd; otherwise mean and invstd hold
// the running mean and 1 / sqrt(running var + eps) on entry. scratch: B * C * 2 + C * 2
// doubles.
void dagc_conv_batch_norm(float* y, float* out, float* mean, float* invstd, const float* x,
                          const float* w, const float* gamma, const float* beta, int64_t B,
                          int64_t C, int64_t H, int64_t W, int training, double eps,
                          int threads, double* scratch) {
  const int64_t planes = B * C, HW = H * W;
  double* plane_sums = scratch;                 // per plane: sum, sum of squares
  double* affine = scratch + planes * 2;        // per channel: scale, shift
#pragma omp parallel num_threads(threads)
  {
    PaddedPlane in(H, W);
    std::vector<float> grid(in.points());
    const int64_t R = in.row;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const float* k = w + (p % C) * 9;
      in.load(x + p * HW);
      float* o = grid.data();
      convolve_grid(o, in.first_row(), k, R, in.points());
      float* yp = y + p * HW;
      for (int64_t r = 0; r < H; ++r) std::memcpy(yp + r * W, o + r * R + 1, W * sizeof(float));
      if (training) {
        double sum = 0.0, squares = 0.0;
#pragma omp simd reduction(+ : sum, squares)
        for (int64_t i = 0; i < HW; ++i) {
          const double v = yp[i];
          sum += v;
          squares += v * v;
        }
        plane_sums[p * 2] = sum;
        plane_sums[p * 2 + 1] = squares;
      }
    }
    // Per channel: the statistics (planes added in sample order), then out = y * scale +
    // shift with scale = gamma * invstd and shift = beta - mean * scale.
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < C; ++ch) {
      double m = mean[ch], s = invstd[ch];
      if (training) {
        double sum = 0.0, squares = 0.0;
        for (int64_t b = 0; b < B; ++b) {
          sum += plane_sums[(b * C + ch) * 2];
          squares += plane_sums[(b * C + ch) * 2 + 1];
        }
        const double n = static_cast<double>(B * HW);
        m = sum / n;
        const double var = squares / n - m * m;
        s = 1.0 / std::sqrt((var > 0.0 ? var : 0.0) + eps);
        mean[ch] = static_cast<float>(m);
        invstd[ch] = static_cast<float>(s);
      }
      const float scale = gamma[ch] * static_cast<float>(s);
      affine[ch * 2] = scale;
      affine[ch * 2 + 1] = beta[ch] - static_cast<float>(m) * scale;
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const float scale = static_cast<float>(affine[(p % C) * 2]);
      const float shift = static_cast<float>(affine[(p % C) * 2 + 1]);
      const float* __restrict yp = y + p * HW;
      float* __restrict op = out + p * HW;
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) op[i] = yp[i] * scale + shift;
    }
  }
}

// The gradients of dagc_conv_batch_norm from grad at its output: grad_x (zero where x is
// not positive with relu_input: x is then a ReLU's output), grad_w (C, 1, 3, 3), grad_gamma
// and grad_beta (C). mean and invstd: what the forward used (the batch's in training, the
// running ones otherwise). scratch: B * C * 11 + C * 3 doubles.
void dagc_conv_batch_norm_backward(float* grad_x, float* grad_w, float* grad_gamma,
                                   float* grad_beta, const float* grad, const float* x,
                                   const float* y, const float* w, const float* gamma,
                                   const float* mean, const float* invstd, int64_t B,
                                   int64_t C, int64_t H, int64_t W, int training,
                                   int relu_input, int threads, double* scratch) {
  const int64_t planes = B * C, HW = H * W;
  double* plane_sums = scratch;                 // per plane: sum(g), sum(g * (y - mean))
  double* weight_sums = scratch + planes * 2;   // per plane: the 9 weight-gradient sums
  double* coefficients = weight_sums + planes * 9;  // per channel: a, mean(g), mean(g xhat)
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const float* __restrict g = grad + p * HW;
      const float* __restrict yp = y + p * HW;
      const double m = mean[p % C];
      double sum = 0.0, centred = 0.0;
#pragma omp simd reduction(+ : sum, centred)
      for (int64_t i = 0; i < HW; ++i) {
        sum += g[i];
        centred += static_cast<double>(g[i]) * (yp[i] - m);
      }
      plane_sums[p * 2] = sum;
      plane_sums[p * 2 + 1] = centred;
    }
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < C; ++ch) {
      double sum = 0.0, centred = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        sum += plane_sums[(b * C + ch) * 2];
        centred += plane_sums[(b * C + ch) * 2 + 1];
      }
      const double s = invstd[ch], n = static_cast<double>(B * HW);
      grad_beta[ch] = static_cast<float>(sum);
      grad_gamma[ch] = static_cast<float>(centred * s);
      coefficients[ch * 3] = gamma[ch] * s;
      coefficients[ch * 3 + 1] = training ? sum / n : 0.0;
      coefficients[ch * 3 + 2] = training ? centred * s / n : 0.0;
    }
    PaddedPlane g_in(H, W), x_in(H, W);
    std::vector<float> grid(g_in.points()), grad_y(HW);
    const int64_t R = g_in.row;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t ch = p % C;
      const float* k = w + ch * 9;
      // The gradient at the conv's output (BatchNorm's backward), straight into the grid:
      // a * (g - mean(g) - xhat * mean(g xhat)), xhat = (y - mean) * invstd.
      const float a = static_cast<float>(coefficients[ch * 3]);
      const float mg = static_cast<float>(coefficients[ch * 3 + 1]);
      const float mgx = static_cast<float>(coefficients[ch * 3 + 2]);
      const float m = mean[ch], s = invstd[ch];
      const float* __restrict g = grad + p * HW;
      const float* __restrict yp = y + p * HW;
      float* __restrict gy = grad_y.data();
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) gy[i] = a * (g[i] - mg - (yp[i] - m) * s * mgx);
      g_in.load(gy);
      x_in.load(x + p * HW);
      const float* e = g_in.first_row();
      const float* v = x_in.first_row();
      float* __restrict d = grid.data();
      // The input gradient: the convolution of grad_y with the flipped kernel.
      const float flipped[9] = {k[8], k[7], k[6], k[5], k[4], k[3], k[2], k[1], k[0]};
      convolve_grid(d, e, flipped, R, g_in.points());
      if (relu_input) {
#pragma omp simd
        for (int64_t q = 0; q < g_in.points(); ++q) d[q] = v[q] > 0.0f ? d[q] : 0.0f;
      }
      // The weight gradient: grad_y against each shifted input (the padding columns of
      // grad_y are zero, so the thrown-away grid points add nothing).
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
      for (int64_t q = 0; q < g_in.points(); ++q) {
        const float t = e[q];
        s0 += t * v[q - R - 1];
        s1 += t * v[q - R];
        s2 += t * v[q - R + 1];
        s3 += t * v[q - 1];
        s4 += t * v[q];
        s5 += t * v[q + 1];
        s6 += t * v[q + R - 1];
        s7 += t * v[q + R];
        s8 += t * v[q + R + 1];
      }
      const float sums[9] = {s0, s1, s2, s3, s4, s5, s6, s7, s8};
      for (int t = 0; t < 9; ++t) weight_sums[p * 9 + t] = sums[t];
      float* out = grad_x + p * HW;
      for (int64_t r = 0; r < H; ++r) std::memcpy(out + r * W, d + r * R + 1, W * sizeof(float));
    }
    // Each channel's weight gradient: its planes' sums, added in sample order.
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < C; ++ch) {
      double sums[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t b = 0; b < B; ++b)
        for (int t = 0; t < 9; ++t) sums[t] += weight_sums[(b * C + ch) * 9 + t];
      for (int t = 0; t < 9; ++t) grad_w[ch * 9 + t] = static_cast<float>(sums[t]);
    }
  }
}

}  // extern "C"
