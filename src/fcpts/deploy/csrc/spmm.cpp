// fcpts cpu-sparse kernel: y = x @ W^T + b for a CSR weight W (M x K, int32 indices, float32 values)
// and a dense float32 activation x; and its 1xB block-CSR variant (B = 4 or 8; the cpu-block kernel):
// one column index per aligned run of B consecutive input weights of a row, the B values contiguous.
// Output-stationary over 16-float lanes of the activation's row (batch/token/pixel) dimension: a
// tile of T = 16*V activation rows is held transposed (K x T), and every stored weight
// w = W[m, k] does acc[m, 0:T] += w * xt[k, 0:T] (V 16-float FMAs). Blocks with few rows run along
// the block instead (run_dot). Written with GCC vector extensions of the machine's width (vn:
// AVX-512 or AVX2). OpenMP over (batch, row tile, output-row chunk) work items.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>
#include <omp.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

// vn: the machine's vector, W floats. A 16-float lane group is 16 / W of them: on AVX2 a 64-byte
// generic vector is not kept in registers (GCC round-trips it through the stack at every FMA).
#ifdef __AVX512F__
typedef float vn __attribute__((vector_size(64)));
#else
typedef float vn __attribute__((vector_size(32)));
#endif
constexpr int W = sizeof(vn) / sizeof(float);

static inline vn ld(const float* p) { vn r; __builtin_memcpy(&r, p, sizeof r); return r; }
static inline void st(float* p, vn v) { __builtin_memcpy(p, &v, sizeof v); }

// acc[0:V] = sum_j v[j] * xt[c[j] * ldx + 0 : 16*V]
template <int V>
static inline void csr_dot(const float* __restrict xt, int64_t ldx, const int32_t* __restrict c,
                           const float* __restrict v, int32_t nnz, vn* out) {
    constexpr int NV = 16 * V / W;  // native vectors per V lane groups
    vn a[NV], c2[NV];  // two accumulator sets hide the FMA latency when NV is small
    vn* b = NV < 4 ? c2 : a;  // NV >= 4 (V = 2 on AVX2, 4 on AVX-512): one set (two: within 5% on AVX2)
    for (int u = 0; u < NV; ++u) a[u] = c2[u] = (vn){};
    int32_t j = 0;
    for (; j + 1 < nnz; j += 2) {
        const float* p0 = xt + (int64_t)c[j] * ldx;
        const float* p1 = xt + (int64_t)c[j + 1] * ldx;
        const float w0 = v[j], w1 = v[j + 1];
        for (int u = 0; u < NV; ++u) {
            a[u] += w0 * ld(p0 + W * u);
            b[u] += w1 * ld(p1 + W * u);
        }
    }
    if (j < nnz) {
        const float* p0 = xt + (int64_t)c[j] * ldx;
        const float w0 = v[j];
        for (int u = 0; u < NV; ++u) a[u] += w0 * ld(p0 + W * u);
    }
    for (int u = 0; u < NV; ++u) out[u] = NV < 4 ? a[u] + c2[u] : a[u];
}

// The same over 1xB blocks: acc[0:V] = sum_j sum_e v[j*B + e] * xt[(c[j] + e) * ldx + 0 : 16*V].
template <int V, int B>
static inline void row_dot(const float* __restrict xt, int64_t ldx, const int32_t* __restrict c,
                           const float* __restrict v, int32_t nb, vn* out) {
    if (B == 1) return csr_dot<V>(xt, ldx, c, v, nb, out);
    constexpr int NV = 16 * V / W;  // native vectors per V lane groups
    vn a[NV], c2[NV];  // two accumulator sets hide the FMA latency when NV is small
    vn* b = NV < 4 ? c2 : a;  // NV >= 4 (V = 2 on AVX2, 4 on AVX-512): one set (two: within 5% on AVX2)
    for (int u = 0; u < NV; ++u) a[u] = c2[u] = (vn){};
    for (int32_t j = 0; j < nb; ++j) {
        const float* p = xt + (int64_t)c[j] * ldx;
        const float* w = v + (int64_t)j * B;
        for (int e = 0; e < B; e += 2) {
            const float w0 = w[e], w1 = w[e + 1];
            for (int u = 0; u < NV; ++u) {
                a[u] += w0 * ld(p + e * ldx + W * u);
                b[u] += w1 * ld(p + (e + 1) * ldx + W * u);
            }
        }
    }
    for (int u = 0; u < NV; ++u) out[u] = NV < 4 ? a[u] + c2[u] : a[u];
}

#if defined(__AVX__) && !defined(__AVX512F__)
// dst rows [0, 8) (stride ld) = columns [0, 8) of the full 8 x 8 block src (stride ls), with AVX:
// the element-by-element loop it replaces cost about a fifth of a 128-row layer on AVX2.
static inline void tr8(const float* __restrict src, int64_t ls, float* __restrict dst, int64_t ld) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ls);
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        r[4 * i + 0] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; ++j) {
        _mm256_storeu_ps(dst + j * ld, _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
        _mm256_storeu_ps(dst + (4 + j) * ld, _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
    }
}
#endif

// dst rows [0, nk) (stride ld) = columns [0, nk) of the 16 x 16 block src (rows [0, ni) stride ls, the
// rest read as zeros; columns >= nk not read).
static inline void tr16(const float* __restrict src, int64_t ls, int ni, int nk, float* __restrict dst, int64_t ld) {
#ifdef __AVX512F__
    const __mmask16 m = nk >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nk) - 1);
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = i < ni ? _mm512_maskz_loadu_ps(m, src + i * ls) : _mm512_setzero_ps();
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
            t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
        }
    for (int j = 0; j < 8; ++j) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
    }
    for (int k = 0; k < nk; ++k) _mm512_storeu_ps(dst + k * ld, r[k]);
#else
#if defined(__AVX__)
    if (ni == 16 && nk == 16) {  // four 8 x 8 transposes in registers; partial blocks element by element
        for (int i0 = 0; i0 < 16; i0 += 8)
            for (int k0 = 0; k0 < 16; k0 += 8) tr8(src + i0 * ls + k0, ls, dst + k0 * ld + i0, ld);
        return;
    }
#endif
    for (int k = 0; k < nk; ++k)
        for (int i = 0; i < 16; ++i) dst[k * ld + i] = i < ni ? src[i * ls + k] : 0.0f;
#endif
}

// buf (K x T) = transpose of x rows [0, nv) (row stride ldx), lanes >= nv zeroed.
static void pack_rows(const float* __restrict x, int64_t ldx, int64_t nv, int64_t K, int T, float* __restrict buf) {
    for (int64_t i0 = 0; i0 < T; i0 += 16) {
        const int ni = nv - i0 >= 16 ? 16 : nv - i0 > 0 ? (int)(nv - i0) : 0;
        for (int64_t k0 = 0; k0 < K; k0 += 16) {
            const int nk = K - k0 < 16 ? (int)(K - k0) : 16;
            tr16(x + (ni ? i0 * ldx : 0) + k0, ldx, ni, nk, buf + k0 * T + i0, T);
        }
    }
}

// buf (K x T) = columns [0, nv) of xt (K rows, stride ldx), lanes >= nv zeroed.
static void pack_cols(const float* __restrict xt, int64_t ldx, int64_t nv, int64_t K, int T, float* __restrict buf) {
    for (int64_t k = 0; k < K; ++k) {
        float* dst = buf + k * T;
        memcpy(dst, xt + k * ldx, nv * sizeof(float));
        memset(dst + nv, 0, (T - nv) * sizeof(float));
    }
}

template <int V, int B>
static void tile_rowmajor(const float* x, int64_t ldx, int64_t nv, int64_t K, const int32_t* rowptr,
                          const int32_t* col, const float* val, int64_t m0, int64_t m1, const float* bias,
                          float* y, int64_t ldy, float* buf, float* ybuf) {
    const int T = 16 * V;
    pack_rows(x, ldx, nv, K, T, buf);
    float tmp[16 * 16];
    for (int64_t mb = m0; mb < m1; mb += 16) {
        const int mn = m1 - mb < 16 ? (int)(m1 - mb) : 16;
        for (int mm = 0; mm < mn; ++mm) {
            const int64_t m = mb + mm;
            vn acc[16 * V / W];
            row_dot<V, B>(buf, T, col + rowptr[m], val + (int64_t)rowptr[m] * B, rowptr[m + 1] - rowptr[m], acc);
            for (int u = 0; u < 16 * V / W; ++u) st(ybuf + mm * T + W * u, acc[u]);
        }
        float b[16] = {};
        if (bias)
            for (int mm = 0; mm < mn; ++mm) b[mm] = bias[mb + mm];
        // ybuf (mn x T) -> y rows [0, nv), columns [mb, mb + mn), plus the bias
        for (int64_t i0 = 0; i0 < nv; i0 += 16) {
            const int ib = nv - i0 < 16 ? (int)(nv - i0) : 16;
            tr16(ybuf + i0, T, mn, ib, tmp, 16);
            for (int i = 0; i < ib; ++i) {
                float* dst = y + (i0 + i) * ldy + mb;
                if (mn == 16)
                    for (int h = 0; h < 16; h += W) st(dst + h, ld(tmp + 16 * i + h) + ld(b + h));
                else
                    for (int mm = 0; mm < mn; ++mm) dst[mm] = tmp[16 * i + mm] + b[mm];
            }
        }
    }
}

template <int V, int B>
static void tile_colmajor(const float* xt, int64_t ldx, int64_t nv, int64_t K, const int32_t* rowptr,
                          const int32_t* col, const float* val, int64_t m0, int64_t m1, const float* bias,
                          float* yt, int64_t ldy, float* buf) {
    const int T = 16 * V;
    const float* src = xt;
    int64_t lds = ldx;
    if (nv < T) {
        pack_cols(xt, ldx, nv, K, T, buf);
        src = buf;
        lds = T;
    }
    for (int64_t m = m0; m < m1; ++m) {
        vn acc[16 * V / W];
        row_dot<V, B>(src, lds, col + rowptr[m], val + (int64_t)rowptr[m] * B, rowptr[m + 1] - rowptr[m], acc);
        const float b = bias ? bias[m] : 0.0f;
        float* dst = yt + m * ldy;
        if (nv == T) {
            for (int u = 0; u < 16 * V / W; ++u) st(dst + W * u, acc[u] + b);
        } else {
            float tmp[16 * V];
            for (int u = 0; u < 16 * V / W; ++u) st(tmp + W * u, acc[u] + b);
            memcpy(dst, tmp, nv * sizeof(float));
        }
    }
}

// Lane groups per tile: at most 4 native vectors (V = 4 with AVX-512, 2 with AVX2: 8 AVX2 vectors
// per stored weight ran 8-20% slower than 4 on MiniLM's shapes at 64-1024 rows, 0.05-0.2 density).
static int lanes_for(int64_t N, int64_t K) {
    int V = N >= 64 ? 4 : N >= 32 ? 2 : 1;
    if (V > 4 * W / 16) V = 4 * W / 16;
    while (V > 1 && K * 16 * V * 4 > (512 << 10)) V /= 2;  // keep the packed tile in L2
    return V;
}

template <bool ROWMAJOR, int BLK>
static void run(const float* x, int64_t B, int64_t N, int64_t K, int64_t ldx, int64_t xbs, const int32_t* rowptr,
                const int32_t* col, const float* val, int64_t M, const float* bias, float* y, int64_t ldy,
                int64_t ybs, int nthreads) {
    const int V = lanes_for(N, K);
    const int64_t T = 16 * V;
    const int64_t tiles = (N + T - 1) / T;
    int64_t splits = 1;
    if (B * tiles < nthreads) {
        splits = (nthreads + B * tiles - 1) / (B * tiles);
        const int64_t most = (M + 15) / 16;
        if (splits > most) splits = most;
    }
    const int64_t chunk = ((M + splits - 1) / splits + 15) / 16 * 16;
    const int64_t items = B * tiles * splits;
    if (nthreads > items) nthreads = (int)items;
    if (nthreads < 1) nthreads = 1;
#pragma omp parallel num_threads(nthreads)
    {
        float* buf = (float*)aligned_alloc(64, ((K * T + 16 * T) * sizeof(float) + 63) / 64 * 64);
        float* ybuf = buf + K * T;
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; ++it) {
            const int64_t s = it % splits, t = (it / splits) % tiles, b = it / (splits * tiles);
            const int64_t m0 = s * chunk, m1 = (s + 1) * chunk < M ? (s + 1) * chunk : M;
            if (m0 >= m1) continue;
            const int64_t n0 = t * T, nv = N - n0 < T ? N - n0 : T;
            const float* xb = x + b * xbs;
            float* yb = y + b * ybs;
            if (ROWMAJOR) {
                const float* xs = xb + n0 * ldx;
                float* ys = yb + n0 * ldy;
                if (V == 4) tile_rowmajor<4, BLK>(xs, ldx, nv, K, rowptr, col, val, m0, m1, bias, ys, ldy, buf, ybuf);
                else if (V == 2) tile_rowmajor<2, BLK>(xs, ldx, nv, K, rowptr, col, val, m0, m1, bias, ys, ldy, buf, ybuf);
                else tile_rowmajor<1, BLK>(xs, ldx, nv, K, rowptr, col, val, m0, m1, bias, ys, ldy, buf, ybuf);
            } else {
                const float* xs = xb + n0;
                float* ys = yb + n0;
                if (V == 4) tile_colmajor<4, BLK>(xs, ldx, nv, K, rowptr, col, val, m0, m1, bias, ys, ldy, buf);
                else if (V == 2) tile_colmajor<2, BLK>(xs, ldx, nv, K, rowptr, col, val, m0, m1, bias, ys, ldy, buf);
                else tile_colmajor<1, BLK>(xs, ldx, nv, K, rowptr, col, val, m0, m1, bias, ys, ldy, buf);
            }
        }
        free(buf);
    }
}

// --- few rows: vectors along the block instead of along the rows ---------------------------------
// With fewer than 16 activation rows the row-lane kernel above leaves most lanes empty. A 1xB block
// is B consecutive inputs of one output row, so y[n, m] = sum_j w[j, 0:B] . x[n, c[j] : c[j] + B]
// vectorizes along the block: one 8-float FMA per block (B = 8) or per two blocks (B = 4), the
// weight vector loaded once for R rows, and one horizontal sum per output. B = 1 (CSR) is the
// scalar form of the same loop (one gathered x per stored weight), for comparison and for 1 row.
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

static inline v8 ld8(const float* p) { v8 r; __builtin_memcpy(&r, p, 32); return r; }
// (p[0:4], q[0:4]) as one 8-float vector; q == nullptr: zeros in the upper half.
static inline v8 ld44(const float* p, const float* q) {
    v4 lo, hi = (v4){};
    __builtin_memcpy(&lo, p, 16);
    if (q) __builtin_memcpy(&hi, q, 16);
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}
static inline float hsum(v8 a) {
    v4 s = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (s[0] + s[2]) + (s[1] + s[3]);
}

// One step: acc[r] += (the product of stored unit j, and j + 1 for B = 4, with row r of x), r < R.
// Returns how many stored blocks it used.
template <int B, int R, typename A>
static inline int32_t dot_step(const float* x, int64_t ldx, const int32_t* c, const float* w, int32_t j,
                               int32_t nb, A* acc) {
    if constexpr (B == 1) {
        for (int r = 0; r < R; ++r) acc[r] += w[j] * x[r * ldx + c[j]];
        return 1;
    } else if constexpr (B == 8) {
        const v8 wv = ld8(w + 8 * j);
        for (int r = 0; r < R; ++r) acc[r] += wv * ld8(x + r * ldx + c[j]);
        return 1;
    } else if (j + 1 < nb) {  // two 1x4 blocks: their 8 values are contiguous
        const v8 wv = ld8(w + 4 * j);
        for (int r = 0; r < R; ++r) acc[r] += wv * ld44(x + r * ldx + c[j], x + r * ldx + c[j + 1]);
        return 2;
    } else {
        const v8 wv = ld44(w + 4 * j, nullptr);
        for (int r = 0; r < R; ++r) acc[r] += wv * ld44(x + r * ldx + c[j], nullptr);
        return 1;
    }
}

static inline float total(float a) { return a; }
static inline float total(v8 a) { return hsum(a); }

// y[r, m] = bias[m] + W[m, :] . x[r, :] for rows r in [0, R) and output rows m in [m0, m1). With
// fewer than 4 rows two accumulator sets take turns (one FMA chain would wait on its latency).
template <int B, int R>
static void dot_rows(const float* __restrict x, int64_t ldx, const int32_t* rowptr, const int32_t* col,
                     const float* val, int64_t m0, int64_t m1, const float* bias, float* y, int64_t ldy) {
    typedef typename std::conditional<B == 1, float, v8>::type A;
    constexpr int S = R < 4 ? 2 : 1;
    for (int64_t m = m0; m < m1; ++m) {
        A acc[S][R];
        for (int s = 0; s < S; ++s)
            for (int r = 0; r < R; ++r) acc[s][r] = A{};
        const int32_t nb = rowptr[m + 1] - rowptr[m];
        const int32_t* c = col + rowptr[m];
        const float* w = val + (int64_t)rowptr[m] * B;
        int32_t j = 0;
        while (j < nb) {
            j += dot_step<B, R>(x, ldx, c, w, j, nb, acc[0]);
            if (S == 2 && j < nb) j += dot_step<B, R>(x, ldx, c, w, j, nb, acc[S - 1]);
        }
        const float b = bias ? bias[m] : 0.0f;
        for (int r = 0; r < R; ++r) y[r * ldy + m] = total(S == 2 ? acc[0][r] + acc[S - 1][r] : acc[0][r]) + b;
    }
}

template <int B>
static void run_dot(const float* x, int64_t N, int64_t ldx, const int32_t* rowptr, const int32_t* col,
                    const float* val, int64_t M, const float* bias, float* y, int64_t ldy, int nthreads) {
    const int64_t chunk = 64;  // output rows per work item
    const int64_t items = (M + chunk - 1) / chunk;
    if (nthreads > items) nthreads = (int)items;
    if (nthreads < 1) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t it = 0; it < items; ++it) {
        const int64_t m0 = it * chunk, m1 = m0 + chunk < M ? m0 + chunk : M;
        int64_t n = 0;
        for (; n + 8 <= N; n += 8) dot_rows<B, 8>(x + n * ldx, ldx, rowptr, col, val, m0, m1, bias, y + n * ldy, ldy);
        if (n + 4 <= N) { dot_rows<B, 4>(x + n * ldx, ldx, rowptr, col, val, m0, m1, bias, y + n * ldy, ldy); n += 4; }
        if (n + 2 <= N) { dot_rows<B, 2>(x + n * ldx, ldx, rowptr, col, val, m0, m1, bias, y + n * ldy, ldy); n += 2; }
        if (n < N) dot_rows<B, 1>(x + n * ldx, ldx, rowptr, col, val, m0, m1, bias, y + n * ldy, ldy);
    }
}

extern "C" {
int fcpts_spmm_version(void) { return 3; }

// x: B batches of (N, K) rows (row stride ldx, batch stride xbs) -> y: B x (N, M) (ldy, ybs), for a
// weight in CSR (block 1) or 1xB block-CSR (block 4 or 8: rowptr counts blocks, col[j] is block j's
// first input column, a multiple of block, and val holds block values per block). One batch with
// fewer than dot_below rows runs the few-rows kernel (run_dot), else the row-lane one.
void fcpts_bspmm_rowmajor(const float* x, int64_t B, int64_t N, int64_t K, int64_t ldx, int64_t xbs,
                          const int32_t* rowptr, const int32_t* col, const float* val, int64_t M,
                          const float* bias, float* y, int64_t ldy, int64_t ybs, int nthreads, int block,
                          int64_t dot_below) {
    if (B == 1 && N < dot_below) {
        if (block == 8) run_dot<8>(x, N, ldx, rowptr, col, val, M, bias, y, ldy, nthreads);
        else if (block == 4) run_dot<4>(x, N, ldx, rowptr, col, val, M, bias, y, ldy, nthreads);
        else run_dot<1>(x, N, ldx, rowptr, col, val, M, bias, y, ldy, nthreads);
    } else if (block == 1) {
        run<true, 1>(x, B, N, K, ldx, xbs, rowptr, col, val, M, bias, y, ldy, ybs, nthreads);
    } else if (block == 8) {
        run<true, 8>(x, B, N, K, ldx, xbs, rowptr, col, val, M, bias, y, ldy, ybs, nthreads);
    } else {
        run<true, 4>(x, B, N, K, ldx, xbs, rowptr, col, val, M, bias, y, ldy, ybs, nthreads);
    }
}

// xt: B batches of (K, N) (row stride ldx) -> yt: B x (M, N) (row stride ldy): y^T = W x^T.
void fcpts_bspmm_colmajor(const float* xt, int64_t B, int64_t N, int64_t K, int64_t ldx, int64_t xbs,
                          const int32_t* rowptr, const int32_t* col, const float* val, int64_t M,
                          const float* bias, float* yt, int64_t ldy, int64_t ybs, int nthreads, int block) {
    if (block == 1) run<false, 1>(xt, B, N, K, ldx, xbs, rowptr, col, val, M, bias, yt, ldy, ybs, nthreads);
    else if (block == 8) run<false, 8>(xt, B, N, K, ldx, xbs, rowptr, col, val, M, bias, yt, ldy, ybs, nthreads);
    else run<false, 4>(xt, B, N, K, ldx, xbs, rowptr, col, val, M, bias, yt, ldy, ybs, nthreads);
}
}
