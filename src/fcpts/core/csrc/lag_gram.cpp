// Gram matrices of a depthwise convolution's receptive fields from lag products (fcpts.core.lag_gram).
//
// A depthwise conv's Gram entry for kernel offsets a, b of channel c is
//   G[c, a, b] = sum_n sum_p x[n, c, s*p + o_a] * y[n, c, s*p + o_b]
// over the output positions p. With the lag d = o_b - o_a it is a sum of the lag-product plane
//   P_d[c, q] = sum_n x[n, c, q] * y[n, c, q + d]
// over the strided rectangle q = o_a + s*p. fcpts_lag_products accumulates the planes (one pass per
// lag over each channel's (H, W) planes, which stay in cache); fcpts_lag_sums reads the rectangles.
#include <algorithm>
#include <cstdint>

// out[c, l] (H, W) += sum_n x[n, c] * y[n, c] shifted by lags[l] = (dh, dw), where both lie in the plane.
// x, y: (N, C, H, W) float32, contiguous (already padded); lags: (L, 2); out: (C, L, H, W) float32.
extern "C" void fcpts_lag_products(const float* x, const float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                                   const int64_t* lags, int64_t L, float* out, int threads) {
  const int64_t plane = H * W;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t n = 0; n < N; ++n) {
      const float* xp = x + (n * C + c) * plane;
      const float* yp = y + (n * C + c) * plane;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t dh = lags[2 * l], dw = lags[2 * l + 1];
        float* o = out + (c * L + l) * plane;
        const int64_t h0 = std::max<int64_t>(0, -dh), h1 = std::min<int64_t>(H, H - dh);
        const int64_t w0 = std::max<int64_t>(0, -dw), w1 = std::min<int64_t>(W, W - dw);
        for (int64_t h = h0; h < h1; ++h) {
          const float* xr = xp + h * W;
          const float* yr = yp + (h + dh) * W + dw;
          float* orow = o + h * W;
#pragma omp simd
          for (int64_t w = w0; w < w1; ++w) orow[w] += xr[w] * yr[w];
        }
      }
    }
  }
}

// out[c, m] = sum_{i < Ho, j < Wo} P[c, l_m, h_m + sh*i, w_m + sw*j] in double, for items[m] = (l_m, h_m, w_m).
// P: (C, L, H, W) float32 from fcpts_lag_products; out: (C, M) float64.
extern "C" void fcpts_lag_sums(const float* P, int64_t C, int64_t L, int64_t H, int64_t W, const int64_t* items,
                               int64_t M, int64_t Ho, int64_t Wo, int64_t sh, int64_t sw, double* out, int threads) {
  const int64_t plane = H * W;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t m = 0; m < M; ++m) {
      const float* p = P + (c * L + items[3 * m]) * plane + items[3 * m + 1] * W + items[3 * m + 2];
      double total = 0.0;
      for (int64_t i = 0; i < Ho; ++i) {
        const float* row = p + i * sh * W;
        float part = 0.0f;  // one output row: at most a few hundred terms
#pragma omp simd reduction(+ : part)
        for (int64_t j = 0; j < Wo; ++j) part += row[j * sw];
        total += part;
      }
      out[c * M + m] = total;
    }
  }
}
