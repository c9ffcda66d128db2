// Many Euler steps of linear cells in one call, without Python or dispatcher work per step.
// Compiled on first use by neurosim.dynamics.fused (plain C++ and OpenMP, called through
// ctypes); see there for the equations, the arguments and when the eager path runs instead.
#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

namespace {

#ifdef __AVX512F__
constexpr int64_t VBYTES = 64;
#else
constexpr int64_t VBYTES = 32;
#endif

enum Act : int64_t { LINEAR = 0, RELU = 1, CLIP = 2, SIGMOID = 3, TANH = 4, LEAKY = 5 };

template <typename T>
inline T activate(int64_t kind, T u, T a, T b) {
  switch (kind) {
    case RELU: return u > T(0) ? u : T(0);
    case CLIP: return std::min(std::max(u, a), b);
    case SIGMOID: return T(1) / (T(1) + std::exp(-u));
    case TANH: return std::tanh(u);
    case LEAKY: return u > T(0) ? u : a * u;
    default: return u;
  }
}

// e^x for 16 (AVX-512) or 8 floats at once, within 2 ulp of expf for |x| <= 87: x = k ln 2 + f
// (Cody-Waite, |f| <= ln 2 / 2), e^f by Cephes' degree-7 polynomial, 2^k from the exponent
// bits. Beyond +-87 the argument is clamped (e^-87 ~ 1.6e-38 and e^87 ~ 6e37: sigmoid is then
// 1 or 0 to float precision); a NaN stays NaN.
typedef float vfloat __attribute__((vector_size(VBYTES)));
typedef int32_t vint __attribute__((vector_size(VBYTES)));

inline vfloat vexp(vfloat x) {
  const vfloat hi = x < 87.0f ? x : 87.0f;       // NaN compares false: kept below via select
  vfloat c = hi > -87.0f ? hi : -87.0f;
  c = x == x ? c : x;
  const vfloat k = __builtin_convertvector(
      __builtin_convertvector(c * 1.44269504088896341f + (c < 0.0f ? -0.5f : 0.5f), vint),
      vfloat);
  vfloat f = c - k * 0.693359375f;
  f = f - k * -2.12194440e-4f;
  vfloat y = vfloat{} + 1.9875691500e-4f;
  y = y * f + 1.3981999507e-3f;
  y = y * f + 8.3334519073e-3f;
  y = y * f + 4.1665795894e-2f;
  y = y * f + 1.6666665459e-1f;
  y = y * f + 5.0000001201e-1f;
  y = y * (f * f) + f + 1.0f;
  const vint bits = (__builtin_convertvector(k, vint) + 127) << 23;
  vfloat scale;
  __builtin_memcpy(&scale, &bits, VBYTES);
  return y * scale;
}

// r[j] = sigma(u[j]) for j in [lo, hi): float sigmoid vectorized, the rest element-wise
template <typename T>
inline void activate_range(int64_t kind, const T* u, T* r, int64_t lo, int64_t hi, T a, T b) {
  int64_t j = lo;
  if constexpr (std::is_same_v<T, float>) {
    if (kind == SIGMOID) {
      constexpr int64_t V = VBYTES / sizeof(float);
      for (; j + V <= hi; j += V) {
        vfloat v;
        __builtin_memcpy(&v, u + j, VBYTES);
        const vfloat s = 1.0f / (1.0f + vexp(-v));
        __builtin_memcpy(r + j, &s, VBYTES);
      }
    }
  }
  switch (kind) {                       // one loop per kind, so that the compiler vectorises
    case RELU: for (; j < hi; ++j) r[j] = u[j] > T(0) ? u[j] : T(0); break;
    case CLIP: for (; j < hi; ++j) r[j] = std::min(std::max(u[j], a), b); break;
    case LEAKY: for (; j < hi; ++j) r[j] = u[j] > T(0) ? u[j] : a * u[j]; break;
    case LINEAR: for (; j < hi; ++j) r[j] = u[j]; break;
    default: for (; j < hi; ++j) r[j] = activate<T>(kind, u[j], a, b);
  }
}

// sum_i w[i] x[i] over vectors of VBYTES (one register each), four accumulators
template <typename T>
inline T dot(const T* w, const T* x, int64_t S) {
  constexpr int64_t V = VBYTES / sizeof(T);
  typedef T vec __attribute__((vector_size(VBYTES)));
  vec s0 = {}, s1 = {}, s2 = {}, s3 = {}, wv, xv;
  int64_t i = 0;
  for (; i + 4 * V <= S; i += 4 * V) {
    __builtin_memcpy(&wv, w + i, VBYTES); __builtin_memcpy(&xv, x + i, VBYTES); s0 += wv * xv;
    __builtin_memcpy(&wv, w + i + V, VBYTES); __builtin_memcpy(&xv, x + i + V, VBYTES); s1 += wv * xv;
    __builtin_memcpy(&wv, w + i + 2 * V, VBYTES); __builtin_memcpy(&xv, x + i + 2 * V, VBYTES); s2 += wv * xv;
    __builtin_memcpy(&wv, w + i + 3 * V, VBYTES); __builtin_memcpy(&xv, x + i + 3 * V, VBYTES); s3 += wv * xv;
  }
  for (; i + V <= S; i += V) {
    __builtin_memcpy(&wv, w + i, VBYTES); __builtin_memcpy(&xv, x + i, VBYTES); s0 += wv * xv;
  }
  s0 = (s0 + s1) + (s2 + s3);
  T s = 0;
  for (int64_t l = 0; l < V; ++l) s += s0[l];
  for (; i < S; ++i) s += w[i] * x[i];
  return s;
}

// out[r] = sum_i w[r S + i] x[i] for four consecutive rows r of w: one load of x per four
// rows (about 10 % faster than four separate dot products here)
template <typename T>
inline void dot4(const T* w, int64_t S, const T* x, T* out) {
  constexpr int64_t V = VBYTES / sizeof(T);
  typedef T vec __attribute__((vector_size(VBYTES)));
  vec a0 = {}, a1 = {}, a2 = {}, a3 = {}, xv, wv;
  const T *w0 = w, *w1 = w + S, *w2 = w + 2 * S, *w3 = w + 3 * S;
  int64_t i = 0;
  for (; i + V <= S; i += V) {
    __builtin_memcpy(&xv, x + i, VBYTES);
    __builtin_memcpy(&wv, w0 + i, VBYTES); a0 += wv * xv;
    __builtin_memcpy(&wv, w1 + i, VBYTES); a1 += wv * xv;
    __builtin_memcpy(&wv, w2 + i, VBYTES); a2 += wv * xv;
    __builtin_memcpy(&wv, w3 + i, VBYTES); a3 += wv * xv;
  }
  T s[4] = {0, 0, 0, 0};
  for (int64_t l = 0; l < V; ++l) {
    s[0] += a0[l];
    s[1] += a1[l];
    s[2] += a2[l];
    s[3] += a3[l];
  }
  for (; i < S; ++i) {
    s[0] += w0[i] * x[i];
    s[1] += w1[i] * x[i];
    s[2] += w2[i] * x[i];
    s[3] += w3[i] * x[i];
  }
  for (int r = 0; r < 4; ++r) out[r] = s[r];
}

// acc[b * lda + j] = sum_i x[b * ldx + i] kt[i * n + j], j in [lo, hi): rows of KT streamed
// four at a time, the sums kept in acc (L1) and updated once per four rows; with `ahead` > 0
// each row is prefetched (into L2) that many elements ahead of its reads (operators read from
// memory: a core keeps more of its misses in flight than the hardware prefetchers start)
template <typename T>
inline void panel(const T* kt, int64_t S, int64_t n, const T* x, int64_t ldx, int64_t B,
                  int64_t lo, int64_t hi, T* acc, int64_t lda, int64_t ahead = 0) {
  constexpr int64_t V = VBYTES / sizeof(T);
  typedef T vec __attribute__((vector_size(VBYTES)));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = lo; j < hi; ++j) acc[b * lda + j] = T(0);
  const int64_t vend = lo + (hi - lo) / V * V;
  for (int64_t i = 0; i < S; i += 4) {
    const int64_t m = std::min<int64_t>(4, S - i);
    const T* r0 = kt + i * n;
    const T* r1 = m > 1 ? r0 + n : r0;
    const T* r2 = m > 2 ? r0 + 2 * n : r0;
    const T* r3 = m > 3 ? r0 + 3 * n : r0;
    for (int64_t b = 0; b < B; ++b) {
      const T* xb = x + b * ldx + i;
      const T x0 = xb[0], x1 = m > 1 ? xb[1] : T(0), x2 = m > 2 ? xb[2] : T(0),
              x3 = m > 3 ? xb[3] : T(0);
      T* ab = acc + b * lda;
      int64_t j = lo;
      for (; j < vend; j += V) {
        vec a, w0, w1, w2, w3;
        if (ahead) {
          __builtin_prefetch(r0 + j + ahead, 0, 2);
          __builtin_prefetch(r1 + j + ahead, 0, 2);
          __builtin_prefetch(r2 + j + ahead, 0, 2);
          __builtin_prefetch(r3 + j + ahead, 0, 2);
        }
        __builtin_memcpy(&a, ab + j, VBYTES);
        __builtin_memcpy(&w0, r0 + j, VBYTES);
        __builtin_memcpy(&w1, r1 + j, VBYTES);
        __builtin_memcpy(&w2, r2 + j, VBYTES);
        __builtin_memcpy(&w3, r3 + j, VBYTES);
        a += x0 * w0 + x1 * w1 + x2 * w2 + x3 * w3;
        __builtin_memcpy(ab + j, &a, VBYTES);
      }
      for (; j < hi; ++j) ab[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j];
    }
  }
}

// The operator KT_p packed for panel_packed (mode 4): sources in groups of four (the last
// padded with zero rows), each group's four rows interleaved by vectors of V neurons, so that
// a panel streams one contiguous block instead of four rows: element (i, j) at
// (i / 4) * 4 np + (j / V) * 4 V + (i % 4) * V + j % V, np = n rounded up to V (zero padding).
template <typename T>
constexpr int64_t packed_width(int64_t n) {
  constexpr int64_t V = VBYTES / sizeof(T);
  return (n + V - 1) / V * V;
}

// panel over sources [0, S) of a packed operator (kp at the group of source 0; S a multiple of
// 4 or the operator's last sources): the same sums, in the same order, as panel
template <typename T>
inline void panel_packed(const T* kp, int64_t S, int64_t n, const T* x, int64_t ldx, int64_t B,
                         T* acc, int64_t lda) {
  constexpr int64_t V = VBYTES / sizeof(T);
  typedef T vec __attribute__((vector_size(VBYTES)));
  const int64_t np = packed_width<T>(n), vend = n / V * V;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) acc[b * lda + j] = T(0);
  for (int64_t i = 0; i < S; i += 4) {
    const int64_t m = std::min<int64_t>(4, S - i);
    const T* g = kp + i * np;                         // group i / 4: 4 np values
    for (int64_t b = 0; b < B; ++b) {
      const T* xb = x + b * ldx + i;
      const T x0 = xb[0], x1 = m > 1 ? xb[1] : T(0), x2 = m > 2 ? xb[2] : T(0),
              x3 = m > 3 ? xb[3] : T(0);
      T* ab = acc + b * lda;
      int64_t j = 0;
      for (; j < vend; j += V) {
        const T* q = g + 4 * j;
        vec a, w0, w1, w2, w3;
        __builtin_memcpy(&a, ab + j, VBYTES);
        __builtin_memcpy(&w0, q, VBYTES);
        __builtin_memcpy(&w1, q + V, VBYTES);
        __builtin_memcpy(&w2, q + 2 * V, VBYTES);
        __builtin_memcpy(&w3, q + 3 * V, VBYTES);
        a += x0 * w0 + x1 * w1 + x2 * w2 + x3 * w3;
        __builtin_memcpy(ab + j, &a, VBYTES);
      }
      for (; j < n; ++j) {
        const T* q = g + 4 * vend + (j - vend);
        ab[j] += x0 * q[0] + x1 * q[V] + x2 * q[2 * V] + x3 * q[3 * V];
      }
    }
  }
}

// ---- register-blocked products for batches above the dot-product sizes (mode 2) ----------
// acc[b * lda + j] = sum_i x[b * ldx + i] kt[i * n + j] for MB samples and NV vectors of
// columns, the sum over i in order (so its value does not depend on the thread count); the
// last vector holds `tail` columns (masked loads) when PARTIAL. With ADD the sums start from
// acc's values instead of 0.
#ifdef __AVX512F__
constexpr int GEMM_MB = 5, GEMM_NV = 4;
#else
constexpr int GEMM_MB = 6, GEMM_NV = 2;
#endif

template <typename T> struct Vec;
template <> struct Vec<float> { typedef float type __attribute__((vector_size(VBYTES))); };
template <> struct Vec<double> { typedef double type __attribute__((vector_size(VBYTES))); };
template <typename T>
using vec_t = typename Vec<T>::type;

// the first c (< VBYTES / sizeof(T)) elements at p, the rest 0, without reading past them
template <typename T>
inline vec_t<T> load_part(const T* p, int64_t c) {
  vec_t<T> v;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    v = (vec_t<T>)_mm512_maskz_loadu_ps((__mmask16)((1u << c) - 1), p);
  } else {
    v = (vec_t<T>)_mm512_maskz_loadu_pd((__mmask8)((1u << c) - 1), p);
  }
#elif defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)c),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    v = (vec_t<T>)_mm256_maskload_ps(p, m);
  } else {
    const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(c), _mm256_setr_epi64x(0, 1, 2, 3));
    v = (vec_t<T>)_mm256_maskload_pd(p, m);
  }
#else
  v = vec_t<T>{};
  std::memcpy(&v, p, c * sizeof(T));
#endif
  return v;
}

template <typename T, int MB, int NV, bool PARTIAL, bool ADD>
inline void gemm_block(const T* kt, int64_t S, int64_t n, const T* x, int64_t ldx, T* acc,
                       int64_t lda, int64_t tail) {
  constexpr int64_t V = VBYTES / sizeof(T);
  typedef vec_t<T> vec;
  vec c[MB][NV];
  for (int a = 0; a < MB; ++a)
    for (int v = 0; v < NV; ++v) {
      if (!ADD) c[a][v] = vec{};
      else if (PARTIAL && v == NV - 1) c[a][v] = load_part<T>(acc + a * lda + v * V, tail);
      else std::memcpy(&c[a][v], acc + a * lda + v * V, VBYTES);
    }
  for (int64_t i = 0; i < S; ++i) {
    const T* row = kt + i * n;
    vec w[NV];
    for (int v = 0; v < NV; ++v) {
      if (PARTIAL && v == NV - 1) w[v] = load_part<T>(row + v * V, tail);
      else std::memcpy(&w[v], row + v * V, VBYTES);
    }
    for (int a = 0; a < MB; ++a) {
      const T xa = x[a * ldx + i];
      for (int v = 0; v < NV; ++v) c[a][v] += xa * w[v];
    }
  }
  for (int a = 0; a < MB; ++a)
    for (int v = 0; v < NV; ++v)
      std::memcpy(acc + a * lda + v * V, &c[a][v],
                  (PARTIAL && v == NV - 1 ? tail : V) * sizeof(T));
}

// MB samples, columns [lo, hi): blocks of GEMM_NV vectors, then a last block of fewer
template <typename T, int MB, bool ADD>
inline void gemm_rows(const T* kt, int64_t S, int64_t n, const T* x, int64_t ldx, T* acc,
                      int64_t lda, int64_t lo, int64_t hi) {
  constexpr int64_t V = VBYTES / sizeof(T);
  int64_t j = lo;
  for (; j + GEMM_NV * V <= hi; j += GEMM_NV * V)
    gemm_block<T, MB, GEMM_NV, false, ADD>(kt + j, S, n, x, ldx, acc + j, lda, V);
  const int64_t rest = hi - j;
  if (rest <= 0) return;
  const int64_t nv = (rest + V - 1) / V, tail = rest - (nv - 1) * V;
#define NEUROSIM_TAIL(NVV)                                                                   \
  if (nv == NVV) {                                                                           \
    if (tail == V) gemm_block<T, MB, NVV, false, ADD>(kt + j, S, n, x, ldx, acc + j, lda, V); \
    else gemm_block<T, MB, NVV, true, ADD>(kt + j, S, n, x, ldx, acc + j, lda, tail);        \
    return;                                                                                  \
  }
  NEUROSIM_TAIL(1)
  if constexpr (GEMM_NV >= 2) { NEUROSIM_TAIL(2) }
  if constexpr (GEMM_NV >= 3) { NEUROSIM_TAIL(3) }
  if constexpr (GEMM_NV >= 4) { NEUROSIM_TAIL(4) }
#undef NEUROSIM_TAIL
}

// all B samples over sources [0, S) and columns [lo, hi), in blocks of samples
template <typename T, bool ADD>
void gemm_panel(const T* kt, int64_t S, int64_t n, const T* x, int64_t ldx, int64_t B,
                int64_t lo, int64_t hi, T* acc, int64_t lda) {
  int64_t b = 0;
  for (; b + GEMM_MB <= B; b += GEMM_MB)
    gemm_rows<T, GEMM_MB, ADD>(kt, S, n, x + b * ldx, ldx, acc + b * lda, lda, lo, hi);
  switch (B - b) {
    case 1: gemm_rows<T, 1, ADD>(kt, S, n, x + b * ldx, ldx, acc + b * lda, lda, lo, hi); break;
    case 2: gemm_rows<T, 2, ADD>(kt, S, n, x + b * ldx, ldx, acc + b * lda, lda, lo, hi); break;
    case 3: gemm_rows<T, 3, ADD>(kt, S, n, x + b * ldx, ldx, acc + b * lda, lda, lo, hi); break;
    case 4: gemm_rows<T, 4, ADD>(kt, S, n, x + b * ldx, ldx, acc + b * lda, lda, lo, hi); break;
    case 5:
      if constexpr (GEMM_MB > 5)
        gemm_rows<T, 5, ADD>(kt, S, n, x + b * ldx, ldx, acc + b * lda, lda, lo, hi);
      break;
    default: break;
  }
}

// acc[b * lda + j] (+)= sum_i x[b * ldx + i] kt[i * n + j], all B samples, columns [lo, hi):
// panels of GEMM_KC sources x GEMM_NC columns (a quarter of a MiB: they stay in L2 while every
// block of samples passes over them, so a large operator streams from memory once per step).
// Each sum still runs over i in order: a panel continues the sums the one before left in acc.
constexpr int64_t GEMM_KC = 256, GEMM_NC_BYTES = 1024;

template <typename T, bool ADD>
void gemm(const T* kt, int64_t S, int64_t n, const T* x, int64_t ldx, int64_t B, int64_t lo,
          int64_t hi, T* acc, int64_t lda) {
  constexpr int64_t NC = GEMM_NC_BYTES / sizeof(T);
  for (int64_t j0 = lo; j0 < hi; j0 += NC) {
    const int64_t j1 = std::min(hi, j0 + NC);
    for (int64_t k0 = 0; k0 < S; k0 += GEMM_KC) {
      const int64_t k = std::min(S - k0, GEMM_KC);
      if (ADD || k0 > 0) gemm_panel<T, true>(kt + k0 * n, k, n, x + k0, ldx, B, j0, j1, acc, lda);
      else gemm_panel<T, false>(kt + k0 * n, k, n, x + k0, ldx, B, j0, j1, acc, lda);
    }
  }
}

// a width in pairs rounded up to whole vectors of 16
inline int64_t padded(int64_t width) { return (width + 15) / 16 * 16; }

// ---- bfloat16 products (projections with precision "bfloat16"), AVX512-BF16 only ----------
// kp: columns of the operator as (S + 1) / 2 pairs of rows, n x 2 bfloat16 each (pair i:
// rows 2i, 2i+1 interleaved per column; n padded so that whole vectors load: pack_pairs); xp: B x (S + 1) / 2 pairs of activities rounded to bfloat16 (round
// to nearest even, as torch rounds). Products are exact in float32, summed in order of pairs.
#ifdef __AVX512BF16__
constexpr bool HAS_BF16 = true;

template <int MB, int NV, bool PARTIAL, bool ADD>
inline void bf16_block(const uint32_t* kp, int64_t S2, int64_t n, const uint32_t* xp,
                       int64_t ldx, float* acc, int64_t lda, int64_t tail) {
  const __mmask16 mask = PARTIAL ? (__mmask16)((1u << tail) - 1) : (__mmask16)0xFFFF;
  __m512 c[MB][NV];
  for (int a = 0; a < MB; ++a)
    for (int v = 0; v < NV; ++v) {
      const bool part = PARTIAL && v == NV - 1;
      c[a][v] = !ADD ? _mm512_setzero_ps()
                     : part ? _mm512_maskz_loadu_ps(mask, acc + a * lda + v * 16)
                            : _mm512_loadu_ps(acc + a * lda + v * 16);
    }
  for (int64_t i = 0; i < S2; ++i) {
    const uint32_t* row = kp + i * n;
    __m512bh w[NV];
    for (int v = 0; v < NV; ++v)
      w[v] = (__m512bh)_mm512_loadu_si512(row + v * 16);       // padded: whole vectors
    for (int a = 0; a < MB; ++a) {
      const __m512bh xa = (__m512bh)_mm512_set1_epi32((int)xp[a * ldx + i]);
      for (int v = 0; v < NV; ++v) c[a][v] = _mm512_dpbf16_ps(c[a][v], xa, w[v]);
    }
  }
  for (int a = 0; a < MB; ++a)
    for (int v = 0; v < NV; ++v) {
      if (PARTIAL && v == NV - 1) _mm512_mask_storeu_ps(acc + a * lda + v * 16, mask, c[a][v]);
      else _mm512_storeu_ps(acc + a * lda + v * 16, c[a][v]);
    }
}

template <int MB, bool ADD>
inline void bf16_rows(const uint32_t* kp, int64_t S2, int64_t n, const uint32_t* xp,
                      int64_t ldx, float* acc, int64_t lda, int64_t lo, int64_t hi) {
  int64_t j = lo;
  for (; j + 64 <= hi; j += 64)
    bf16_block<MB, 4, false, ADD>(kp + j, S2, n, xp, ldx, acc + j, lda, 16);
  const int64_t rest = hi - j;
  if (rest <= 0) return;
  const int64_t nv = (rest + 15) / 16, tail = rest - (nv - 1) * 16;
#define NEUROSIM_TAIL(NVV)                                                                   \
  if (nv == NVV) {                                                                           \
    if (tail == 16) bf16_block<MB, NVV, false, ADD>(kp + j, S2, n, xp, ldx, acc + j, lda, 16); \
    else bf16_block<MB, NVV, true, ADD>(kp + j, S2, n, xp, ldx, acc + j, lda, tail);         \
    return;                                                                                  \
  }
  NEUROSIM_TAIL(1)
  NEUROSIM_TAIL(2)
  NEUROSIM_TAIL(3)
  NEUROSIM_TAIL(4)
#undef NEUROSIM_TAIL
}

// rows [lo, hi) of a row-major n x S bfloat16 operator W (the transpose of KT) as (S + 1) / 2
// pairs of sources interleaved per neuron: kp[(i * w + j) * 2 + e] = W[(lo + j) S + 2 i + e]
// for j < hi - lo, in rows of w pairs (w >= padded(hi - lo); the padding, zeroed by
// zero_columns, lets products load whole vectors). A pair of one neuron is two neighbours in
// its row of W: the packing is a transpose of 32-bit pairs, done in 16 x 16 tiles (one cache
// line read and written per row of a tile).
// a 16 x 16 matrix of 32-bit words, one row per register, transposed in place
inline void transpose16(__m512i* r) {
  __m512i t[16], u[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    u[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
    u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
  }
  for (int k = 0; k < 2; ++k)
    for (int m = 0; m < 4; ++m) {
      t[8 * k + m] = _mm512_shuffle_i32x4(u[8 * k + m], u[8 * k + 4 + m], 0x88);
      t[8 * k + 4 + m] = _mm512_shuffle_i32x4(u[8 * k + m], u[8 * k + 4 + m], 0xdd);
    }
  for (int m = 0; m < 8; ++m) {
    r[m] = _mm512_shuffle_i32x4(t[m], t[8 + m], 0x88);
    r[8 + m] = _mm512_shuffle_i32x4(t[m], t[8 + m], 0xdd);
  }
}

inline void pack_pairs(const uint16_t* wt, int64_t S, int64_t lo, int64_t hi, uint32_t* kp,
                       int64_t w) {
  const int64_t real = hi - lo, S2 = (S + 1) / 2;
  for (int64_t j0 = 0; j0 < real; j0 += 16) {
    const int64_t j1 = std::min(j0 + 16, real);
    for (int64_t i0 = 0; i0 < S2; i0 += 16) {
      const int64_t i1 = std::min(i0 + 16, S2);
      if (j1 - j0 == 16 && i1 - i0 == 16 && 2 * i1 <= S) {    // a whole tile: transposed
        __m512i r[16];                                        // in registers
        for (int j = 0; j < 16; ++j)
          r[j] = _mm512_loadu_si512(wt + (lo + j0 + j) * S + 2 * i0);
        transpose16(r);
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(kp + (i0 + i) * w + j0, r[i]);
        continue;
      }
      for (int64_t j = j0; j < j1; ++j) {
        const uint16_t* row = wt + (lo + j) * S;
        for (int64_t i = i0; i < i1; ++i) {
          const uint32_t second = 2 * i + 1 < S ? row[2 * i + 1] : 0;
          kp[i * w + j] = row[2 * i] | (second << 16);
        }
      }
    }
  }
}

// columns [from, w) of the S2 rows of w pairs at kp set to zero
inline void zero_columns(uint32_t* kp, int64_t S2, int64_t from, int64_t w) {
  for (int64_t i = 0; i < S2; ++i)
    for (int64_t j = from; j < w; ++j) kp[i * w + j] = 0;
}

// round x[b * ldx + i] (i < S) to bfloat16 pairs: xp[b * S2 + i / 2]
inline void to_bf16_pairs(const float* x, int64_t ldx, int64_t B, int64_t S, uint32_t* xp) {
  const int64_t S2 = (S + 1) / 2;
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = x + b * ldx;
    uint16_t* out = reinterpret_cast<uint16_t*>(xp + b * S2);
    int64_t i = 0;
    for (; i + 32 <= S; i += 32)
      _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xb + i + 16),
                                                                _mm512_loadu_ps(xb + i)));
    for (; i < S; ++i) {
      uint32_t bits;
      std::memcpy(&bits, xb + i, 4);
      out[i] = (bits & 0x7fffffffu) > 0x7f800000u
                   ? (uint16_t)((bits >> 16) | 0x40)                    // NaN stays NaN
                   : (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    }
    if (S % 2) out[S] = 0;
  }
}

// pairs [0, S2) of all B samples, columns [lo, hi), in blocks of samples
template <bool ADD>
void bf16_panel(const uint32_t* kp, int64_t S2, int64_t n, const uint32_t* xp, int64_t ldx,
                int64_t B, int64_t lo, int64_t hi, float* acc, int64_t lda) {
  int64_t b = 0;
  for (; b + 5 <= B; b += 5) bf16_rows<5, ADD>(kp, S2, n, xp + b * ldx, ldx, acc + b * lda, lda, lo, hi);
  switch (B - b) {
    case 1: bf16_rows<1, ADD>(kp, S2, n, xp + b * ldx, ldx, acc + b * lda, lda, lo, hi); break;
    case 2: bf16_rows<2, ADD>(kp, S2, n, xp + b * ldx, ldx, acc + b * lda, lda, lo, hi); break;
    case 3: bf16_rows<3, ADD>(kp, S2, n, xp + b * ldx, ldx, acc + b * lda, lda, lo, hi); break;
    case 4: bf16_rows<4, ADD>(kp, S2, n, xp + b * ldx, ldx, acc + b * lda, lda, lo, hi); break;
    default: break;
  }
}

// the bfloat16 product in panels of GEMM_KC pairs x GEMM_NC_BYTES / 4 columns (as gemm)
template <bool ADD>
void bf16_gemm(const uint32_t* kp, int64_t S, int64_t n, const uint32_t* xp, int64_t B,
               int64_t lo, int64_t hi, float* acc, int64_t lda) {
  const int64_t S2 = (S + 1) / 2;
  constexpr int64_t NC = GEMM_NC_BYTES / 4;
  for (int64_t j0 = lo; j0 < hi; j0 += NC) {
    const int64_t j1 = std::min(hi, j0 + NC);
    for (int64_t k0 = 0; k0 < S2; k0 += GEMM_KC) {
      const int64_t k = std::min(S2 - k0, GEMM_KC);
      if (ADD || k0 > 0) bf16_panel<true>(kp + k0 * n, k, n, xp + k0, S2, B, j0, j1, acc, lda);
      else bf16_panel<false>(kp + k0 * n, k, n, xp + k0, S2, B, j0, j1, acc, lda);
    }
  }
}
#else
constexpr bool HAS_BF16 = false;
#endif

// Arguments (addresses are of float32 or float64 arrays, as T):
//   u, r: B x ldu / B x ldr state rows; layout: P x 9 int64 (u0 n r0 s0 S activation mode
//   ls0 lS): mode 1 (3) where the operator is W_p, n x S row-major (dot products over its
//   rows, threads sharing the neurons (the samples)),
//   0 or 2 where it is KT_p, S x n row-major (0: each thread's share of the sources, partial
//   sums; 2: register blocks over samples and this thread's neurons, for larger batches),
//   4 as 0 from KT_p packed by groups of four sources (neurosim_pack_panels_*), 5 as 0 with
//   each row prefetched PREFETCH_BYTES ahead (operators beyond the last-level cache);
//   ls0, lS: the sources of the bfloat16 operator (lS = 0: none);
//   params: P x 6 double (decay rate fixed_step(<0: none) a b c), c the elementwise
//   self-coupling; weights: P addresses of the operators (0: none); low_weights: P addresses
//   of the bfloat16 operators W_p^low, n x lS row-major (0: none; float32 and AVX512-BF16
//   builds);
//   currents: P addresses (0: none) with rows 1 or B;
//   step_currents: P addresses (0: none) of K x rows x n currents added at step k (stimuli),
//   rows (step_rows) 1 or B;
//   dts: K step sizes; scratch: (threads + 1) x B x (sum n); records: R x (source 0 u / 1 r, every, M,
//   address of M int64 columns, address of the output, records x B x M); check: stop
//   after a step that made a potential non-finite (else run all K steps);
//   packed: P addresses (0: none) of the bfloat16 operators already packed (pack_pairs over
//   all n neurons, rows of padded(n) pairs; neurosim_pack_bf16), else each call packs them;
//   holds: P x 2 (refresh_every, full) (or none): population p's separate operator product
//   (low_weights) is held: recomputed into held[p] (B x n, rows of n) at the steps k with
//   (step0 + k) % refresh_every == 0, and at the call's first step unless fresh (held[p]
//   then holds the product of an earlier step), added to the drive at every step; with full
//   the separate operator is KT_p^low in T (lS x n, row-major), not bfloat16 (only held);
//   silent: P flags (or none): at the call's first step the products of population p are
//   exactly zero (its sources are silent at rest: sigma(0) = 0) and are skipped;
//   by_samples: the threads share the samples instead of the neurons (modes 1 to 3 only,
//   each product then of this thread's samples and all neurons, with the sums in the same
//   order), for operators that fit in a core's L2 cache (each thread reads all of them), with
//   no barrier between steps and no cache line that another thread writes. Without check,
//   tiles of 5 to 20 samples each run through all K steps (their state stays in the core's
//   caches), handed out as threads come free; with check, each thread steps its own samples
//   in tiles of SAMPLE_TILE, one barrier per step, so that all stop after the same step.
constexpr int64_t SAMPLE_TILE = 20;
// a thread's share of a row-major operator summed over its sources (mode 0) above this size
// is read in two halves whose order alternates from step to step (see the product)
constexpr int64_t ZIGZAG_BYTES = 512 * 1024;
// modes whose threads each sum over a share of the sources into partial sums
inline bool by_sources(int64_t mode) { return mode == 0 || mode == 4 || mode == 5; }
// how far ahead of its reads mode 5 prefetches each row of KT_p (measured on the peer network
// at N = 4,000: 2 KiB 1.15x, 4 KiB 1.11x, 16 KiB 1.03x)
constexpr int64_t PREFETCH_BYTES = 2048;

template <typename T>
int64_t run(int64_t B, T* U0, int64_t ldu, T* R0, int64_t ldr, int64_t P, const int64_t* lay,
            const double* par0, const int64_t* weights, const int64_t* low_weights,
            const int64_t* currents, const int64_t* current_rows, const int64_t* step_currents,
            const int64_t* step_rows, int64_t K, const double* dt, int jacobi, T* acc0,
            int64_t R, const int64_t* records, int64_t step0, int threads, int check,
            const int64_t* packed_weights, const int64_t* silent, int by_samples, int64_t M,
            const int64_t* member_ptrs, const double* member_params, const int64_t* holds,
            const int64_t* held, int fresh) {
  constexpr int64_t NL = 9, NP = 6;      // layout and params per population
  std::vector<const T*> W0(P, nullptr), I0(P, nullptr), D(P, nullptr);
  std::vector<T*> H0(P, nullptr);
  // p's separate operator is bfloat16 pairs (else KT_p^low in T); p's product is held
  auto bf16_low = [&](int64_t p) { return !(holds && holds[2 * p + 1]); };
  auto holding = [&](int64_t p) { return holds && holds[2 * p] > 1; };
  std::vector<const uint32_t*> LW0(P, nullptr), PK0(P, nullptr);
  std::vector<int64_t> Irows(P, 0), Drows(P, 0), off(P, 0);
  int64_t total = 0, low_sources = 0;
  for (int64_t p = 0; p < P; ++p) {
    W0[p] = reinterpret_cast<const T*>(weights[p]);
    LW0[p] = reinterpret_cast<const uint32_t*>(low_weights[p]);
    PK0[p] = reinterpret_cast<const uint32_t*>(packed_weights[p]);
    if (LW0[p] && bf16_low(p)) low_sources = std::max(low_sources, lay[p * NL + 8]);
    if (holding(p)) {
      if (!held || !held[p] || !LW0[p]) return -1;
      H0[p] = reinterpret_cast<T*>(held[p]);
    } else if (!bf16_low(p)) {
      return -1;                          // a full-precision separate operator is held
    }
    I0[p] = reinterpret_cast<const T*>(currents[p]);
    Irows[p] = current_rows[p];
    D[p] = reinterpret_cast<const T*>(step_currents[p]);
    Drows[p] = step_rows[p];
    off[p] = total;
    total += lay[p * NL + 1];
  }
  for (int64_t p = 0; p < P; ++p)
    if (W0[p] && by_sources(lay[p * NL + 6])) by_samples = 0;    // partial sums: threads share sources
  // several members in one call: tiles of samples through all steps only, every bfloat16
  // operator packed beforehand
  // (member table rows: u r W[P] LW[P] PK[P] I[P] H[P])
  const int64_t row = 2 + 5 * P;
  if (M > 1) {
    if (!by_samples || check || R || !member_ptrs || !member_params) return -1;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t p = 0; p < P; ++p)
        if ((member_ptrs[m * row + 2 + P + p] && bf16_low(p) &&
             !member_ptrs[m * row + 2 + 2 * P + p]) ||
            (holding(p) && !member_ptrs[m * row + 2 + 4 * P + p]))
          return -1;
  }
  // by samples, one packing of each bfloat16 operator that all threads read (all neurons)
  std::vector<std::vector<uint32_t>> shared(by_samples ? P : 0);
  for (int64_t p = 0; p < (by_samples ? P : 0); ++p)
    if (LW0[p] && bf16_low(p) && !PK0[p])
      shared[p].resize((lay[p * NL + 8] + 1) / 2 * padded(lay[p * NL + 1]));
  std::vector<int64_t> written(R, 0);
  int64_t done = K;
  int finite = 1;
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    // the member this thread steps (member 0: the call's own arguments): its state, operators,
    // currents, parameters and products (acc: one block of B rows per member)
    std::vector<const T*> W(W0), I(I0);
    std::vector<T*> H(H0);
    std::vector<const uint32_t*> LW(LW0), PK(PK0);
    T *U = U0, *Rr = R0, *acc = acc0;
    const double* par = par0;
    auto member = [&](int64_t m) {
      if (M <= 1) return;
      const int64_t* e = member_ptrs + m * row;
      U = reinterpret_cast<T*>(e[0]);
      Rr = reinterpret_cast<T*>(e[1]);
      for (int64_t p = 0; p < P; ++p) {
        W[p] = reinterpret_cast<const T*>(e[2 + p]);
        LW[p] = reinterpret_cast<const uint32_t*>(e[2 + P + p]);
        PK[p] = reinterpret_cast<const uint32_t*>(e[2 + 2 * P + p]);
        I[p] = reinterpret_cast<const T*>(e[2 + 3 * P + p]);
        H[p] = reinterpret_cast<T*>(e[2 + 4 * P + p]);
      }
      par = member_params + m * P * NP;
      acc = acc0 + m * B * total;
    };
    std::vector<uint32_t> pairs(B * ((low_sources + 1) / 2));   // activities in bfloat16
    std::vector<std::vector<uint32_t>> packed(P);     // this thread's columns of LW, in pairs
    int64_t widest = 0;
    for (int64_t p = 0; p < P; ++p) widest = std::max(widest, lay[p * NL + 1]);
    std::vector<T> drive(widest);                     // one row's drive, this thread's neurons
    std::vector<T> half;                              // partial sums of a half share (mode 0)
    for (int64_t p = 0; p < P; ++p)
      if (W[p] && by_sources(lay[p * NL + 6])) half.resize(std::max<int64_t>(half.size(), B * lay[p * NL + 1]));
    // This thread's neurons of population p: Gauss-Seidel splits each population, Jacobi
    // the neurons of all populations together (so that small populations do not leave a
    // thread idle), at 64-byte boundaries.
    constexpr int64_t line = 64 / sizeof(T);
    auto split = [&](int64_t n, int64_t part) {
      return std::min(n, ((n + nt - 1) / nt + line - 1) / line * line * part);
    };
    const int64_t g0 = split(total, id), g1 = split(total, id + 1);
    auto split4 = [&](int64_t n, int64_t part) {
      return std::min(n, ((n + nt - 1) / nt + 3) / 4 * 4 * part);
    };
    auto range = [&](int64_t p) {
      const int64_t n = lay[p * NL + 1];
      if (!jacobi) return std::make_pair(split(n, id), split(n, id + 1));
      return std::make_pair(std::clamp(g0 - off[p], int64_t(0), n),
                            std::clamp(g1 - off[p], int64_t(0), n));
    };
    // The product r[:, s0:s0+S] KT_p: from W_p = KT_p^T (column-major KT_p), this thread's
    // rows of W_p into acc; from a row-major KT_p, this thread's sources (rows of KT_p) for
    // every neuron into its own partial sums (acc's block id + 1), added up by the update, or
    // (mode 2) this thread's neurons into acc, sums in source order. Then the bfloat16
    // operator's product, this thread's neurons, added into acc (or written, when nothing
    // else is there). Either way each sum's order depends on the thread count only, never on
    // the chunk.
    // (by samples: every neuron of samples [t0, t1), the caller's tile)
    // whether step k recomputes population p's held product
    auto due = [&](int64_t p, int64_t k) {
      return (k == 0 && !fresh) || (step0 + k) % holds[2 * p] == 0;
    };
    auto product = [&](int64_t p, int64_t k, int64_t t0, int64_t t1) {
      const int64_t* L = lay + p * NL;
      const int64_t n = L[1], s0 = L[3], S = L[4];
      const auto [lo, hi] = by_samples ? std::make_pair(int64_t(0), n) : range(p);
      T* a = acc + off[p];
      if (!W[p]) {
      } else if (L[6] == 1 || L[6] == 3) {   // W_p row-major (n x S): dot products, for this
        // thread's neurons and every sample (1) or every neuron and this thread's samples (3:
        // a narrow population in a large batch)
        const bool rows = L[6] == 1 && !by_samples;
        const int64_t j0 = rows ? lo : 0, j1 = rows ? hi : n;
        const int64_t b0 = by_samples ? t0 : rows ? 0 : B * id / nt,
                      b1 = by_samples ? t1 : rows ? B : B * (id + 1) / nt;
        int64_t j = j0;
        for (; j + 4 <= j1; j += 4)
          for (int64_t b = b0; b < b1; ++b) {
            T out[4];
            dot4<T>(W[p] + j * S, S, Rr + b * ldr + s0, out);
            for (int r = 0; r < 4; ++r) a[b * total + j + r] = out[r];
          }
        for (; j < j1; ++j)
          for (int64_t b = b0; b < b1; ++b)
            a[b * total + j] = dot<T>(W[p] + j * S, Rr + b * ldr + s0, S);
      } else if (L[6] == 2) {           // KT_p row-major (S x n): blocks over this thread's neurons
        gemm<T, false>(W[p], S, n, Rr + t0 * ldr + s0, ldr, t1 - t0, lo, hi, a + t0 * total,
                       total);
      } else {                          // KT_p row-major (S x n), prefetched (mode 5) or
        // packed (mode 4): this thread's sources
        const int64_t i0 = split4(S, id), i1 = split4(S, id + 1);
        T* part = acc + (id + 1) * B * total + off[p];
        auto sum = [&](int64_t from, int64_t to, T* out, int64_t ld) {
          if (L[6] == 4)
            panel_packed<T>(W[p] + from * packed_width<T>(n), to - from, n, Rr + s0 + from, ldr,
                            B, out, ld);
          else
            panel<T>(W[p] + from * n, to - from, n, Rr + s0 + from, ldr, B, 0, n, out, ld,
                     L[6] == 5 ? PREFETCH_BYTES / int64_t(sizeof(T)) : 0);
        };
        if ((i1 - i0) * n * static_cast<int64_t>(sizeof(T)) <= ZIGZAG_BYTES) {
          sum(i0, i1, part, total);
        } else {
          // a share beyond a core's L2: its two halves of rows, the first into part and the
          // second into half, then part += half; odd steps (of the phase, so a cut run
          // repeats the uncut one) take the second half first, so that every step starts on
          // the rows that the step before read last, still in cache. The same sums in the
          // same order either way.
          const int64_t mid = std::min(i1, i0 + ((i1 - i0) / 2 + 3) / 4 * 4);
          auto first = [&] { sum(i0, mid, part, total); };
          auto second = [&] { sum(mid, i1, half.data(), n); };
          if ((step0 + k) & 1) second(), first();
          else first(), second();
          for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < n; ++j) part[b * total + j] += half[b * n + j];
        }
      }
      if (!LW[p] || hi <= lo || (H[p] && !due(p, k))) return;
      // the separate operator's product: added into acc, or written into the held rows
      T* out = H[p] ? H[p] + t0 * n : a + t0 * total;
      const int64_t ld = H[p] ? n : total;
      const bool add = !H[p] && W[p] && !by_sources(L[6]);
      if (!bf16_low(p)) {                 // KT_p^low in T, row-major (held only)
        gemm<T, false>(reinterpret_cast<const T*>(LW[p]), L[8], n, Rr + t0 * ldr + L[7], ldr,
                       t1 - t0, lo, hi, out, ld);
        return;
      }
#ifdef __AVX512BF16__
      if constexpr (std::is_same_v<T, float>) {
        to_bf16_pairs(Rr + t0 * ldr + L[7], ldr, t1 - t0, L[8], pairs.data());
        // packed beforehand: all neurons in rows of padded(n), this thread's from column lo
        const uint32_t* kp = PK[p] ? PK[p] + lo
                             : by_samples ? shared[p].data() : packed[p].data();
        const int64_t w = PK[p] ? padded(n) : padded(hi - lo);
        if (add)
          bf16_gemm<true>(kp, L[8], w, pairs.data(), t1 - t0, 0, hi - lo, out + lo, ld);
        else
          bf16_gemm<false>(kp, L[8], w, pairs.data(), t1 - t0, 0, hi - lo, out + lo, ld);
      }
#endif
    };
    // whether population p's products are skipped at step k (zero: silent sources)
    auto quiet = [&](int64_t p, int64_t k) { return k == 0 && silent && silent[p]; };
    // u_p <- (1 - h d) u_p + h (acc_p + I_p); r_p <- sigma(u_p), this thread's neurons of
    // samples [t0, t1) (by samples: every neuron)
    auto update = [&](int64_t p, int64_t k, int& ok, int64_t t0, int64_t t1) {
      const double step_dt = dt[k];
      const int64_t* L = lay + p * NL;
      const double* Q = par + p * NP;
      const int64_t u0 = L[0], n = L[1], r0 = L[2], kind = L[5];
      const double step = Q[2] >= 0 ? Q[2] : step_dt * Q[1];
      const T h = T(step), keep = T(1.0 - step * Q[0]), a = T(Q[3]), c = T(Q[4]),
              self = T(Q[5]);
      const bool none = quiet(p, k);                          // no product this step
      // acc holds the product (a held one is in H)
      const bool in_acc = !none && ((W[p] && !by_sources(L[6])) || (LW[p] && !H[p]));
      const bool parts = !none && W[p] && by_sources(L[6]);         // partial sums per thread
      const auto [lo, hi] = by_samples ? std::make_pair(int64_t(0), n) : range(p);
      // drive = ((sum of partial sums) + acc + c r_p) + I + I_k, then u <- keep u + h drive;
      // simple loops over this thread's neurons, which the compiler vectorises
      for (int64_t b = t0; b < t1; ++b) {
        const T* cur = I[p] ? I[p] + (Irows[p] > 1 ? b : 0) * n : nullptr;
        const T* now = D[p] ? D[p] + (k * Drows[p] + (Drows[p] > 1 ? b : 0)) * n : nullptr;
        const T* ap = acc + off[p] + b * total;
        const T* pp = acc + B * total + off[p] + b * total;   // row-major KT_p: partial sums
        T* up = U + b * ldu + u0;
        T* rp = Rr + b * ldr + r0;
        T* d = drive.data();
        if (parts) {
          for (int64_t j = lo; j < hi; ++j) d[j - lo] = pp[j];
          for (int64_t t = 1; t < nt; ++t)
            for (int64_t j = lo; j < hi; ++j) d[j - lo] += pp[t * B * total + j];
          if (in_acc)
            for (int64_t j = lo; j < hi; ++j) d[j - lo] += ap[j];
        } else if (in_acc) {
          for (int64_t j = lo; j < hi; ++j) d[j - lo] = ap[j];
        } else {
          for (int64_t j = lo; j < hi; ++j) d[j - lo] = T(0);
        }
        if (H[p]) {
          T* hp = H[p] + b * n;
          if (none)                     // silent sources: the held product is zero
            for (int64_t j = lo; j < hi; ++j) hp[j] = T(0);
          for (int64_t j = lo; j < hi; ++j) d[j - lo] += hp[j];
        }
        if (self != T(0))
          for (int64_t j = lo; j < hi; ++j) d[j - lo] += self * rp[j];
        if (cur)
          for (int64_t j = lo; j < hi; ++j) d[j - lo] += cur[j];
        if (now)
          for (int64_t j = lo; j < hi; ++j) d[j - lo] += now[j];
        int bad = 0;                    // |v| <= max fails exactly when v is not finite
        for (int64_t j = lo; j < hi; ++j) {
          const T v = keep * up[j] + h * d[j - lo];
          bad |= !(std::abs(v) <= std::numeric_limits<T>::max());
          up[j] = v;
        }
        ok &= bad == 0 ? 1 : 0;
        activate_range<T>(kind, up, rp, lo, hi, a, c);
      }
    };
    // rows [t0, t1) of the records of step step0 + k + 1 (out_index: records written)
    auto record = [&](int64_t k, int64_t t0, int64_t t1, std::vector<int64_t>& out_index) {
      const int64_t step = step0 + k + 1;
      for (int64_t m = 0; m < R; ++m) {
        const int64_t* rec = records + m * 5;
        if (step % rec[1] != 0) continue;
        const int64_t M = rec[2];
        const int64_t* cols = reinterpret_cast<const int64_t*>(rec[3]);
        const T* src = rec[0] == 0 ? U : Rr;
        const int64_t ld = rec[0] == 0 ? ldu : ldr;
        T* out = reinterpret_cast<T*>(rec[4]) + out_index[m] * B * M;
        for (int64_t b = t0; b < t1; ++b)
          for (int64_t c = 0; c < M; ++c) out[b * M + c] = src[b * ld + cols[c]];
        ++out_index[m];
      }
    };
    // a potential of this thread became non-finite (ok == 0): flag it for all threads
    auto flag = [&](int ok) {
      if (!ok) {
#pragma omp atomic write
        finite = 0;
      }
    };
    // after the barrier that follows step k: whether to stop there (thread 0 notes the steps
    // taken)
    auto stopped = [&](int64_t k) {
      int go;
#pragma omp atomic read
      go = finite;
      if (!go && id == 0) done = k + 1;
      return !go;
    };
    // step k of samples [t0, t1), every neuron (threads sharing the samples)
    auto step_tile = [&](int64_t k, int& ok, int64_t t0, int64_t t1) {
      if (jacobi) {
        for (int64_t p = 0; p < P; ++p)
          if ((W[p] || LW[p]) && !quiet(p, k)) product(p, k, t0, t1);
        for (int64_t p = 0; p < P; ++p) update(p, k, ok, t0, t1);
        return;
      }
      for (int64_t p = 0; p < P; ++p) {
        if ((W[p] || LW[p]) && !quiet(p, k)) product(p, k, t0, t1);
        update(p, k, ok, t0, t1);
      }
    };
    std::vector<int64_t> at(R, 0);      // record indices (tiles through all steps)
    // this thread's samples (by samples) or all of them
    const int64_t b0 = by_samples ? B * id / nt : 0, b1 = by_samples ? B * (id + 1) / nt : B;
    if (jacobi && !(by_samples && !check)) {   // r = sigma(u) first, as the eager step's rhs
      for (int64_t p = 0; p < P; ++p) {
        const int64_t* L = lay + p * NL;
        const double* Q = par + p * NP;
        const auto [lo, hi] = by_samples ? std::make_pair(int64_t(0), L[1]) : range(p);
        for (int64_t b = b0; b < b1; ++b)
          activate_range<T>(L[5], U + b * ldu + L[0], Rr + b * ldr + L[2], lo, hi, T(Q[3]),
                            T(Q[4]));
      }
      if (!by_samples) {
#pragma omp barrier
      }
    }
#ifdef __AVX512BF16__
    for (int64_t p = 0; p < P; ++p)
      if (LW[p] && bf16_low(p) && !PK[p]) {
        const int64_t S2 = (lay[p * NL + 8] + 1) / 2, n = lay[p * NL + 1];
        if (by_samples) {               // this thread's 16-column blocks of the shared packing
          const int64_t share = ((n + nt - 1) / nt + 15) / 16 * 16;
          const int64_t lo = std::min(n, share * id), hi = std::min(n, share * (id + 1));
          if (hi > lo)
            pack_pairs(reinterpret_cast<const uint16_t*>(LW[p]), lay[p * NL + 8], lo, hi,
                       shared[p].data() + lo, padded(n));
          if (hi == n && hi > lo) zero_columns(shared[p].data(), S2, n, padded(n));
          continue;
        }
        const auto [lo, hi] = range(p);
        const int64_t w = padded(std::max<int64_t>(hi - lo, 0));
        packed[p].resize(S2 * w);
        if (hi > lo) {
          pack_pairs(reinterpret_cast<const uint16_t*>(LW[p]), lay[p * NL + 8], lo, hi,
                     packed[p].data(), w);
          zero_columns(packed[p].data(), S2, hi - lo, w);
        }
      }
    if (by_samples) {
#pragma omp barrier
    }
#endif
    if (by_samples && !check) {
      // tiles of samples, each through all K steps (its state stays in this core's caches),
      // handed out as the threads come free
      // One member: tiles of 20, 15, 10 or 5 samples (whole register blocks), the largest of
      // those that leave the busiest thread the fewest samples. Several: tiles of up to 20
      // samples of each member, and the last few split in equal parts of whole blocks so
      // that every thread gets the same number of samples (large tiles go first).
      std::vector<std::array<int64_t, 3>> jobs;     // (member, first sample, end)
      if (M > 1) {
        const int64_t size = std::min<int64_t>(20, B);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t t0 = 0; t0 < B; t0 += size) jobs.push_back({m, t0, std::min(B, t0 + size)});
        const int64_t extra = static_cast<int64_t>(jobs.size()) % nt;
        if (extra) {
          std::vector<std::array<int64_t, 3>> tail(jobs.end() - extra, jobs.end());
          jobs.resize(jobs.size() - extra);
          for (const auto& j : tail) {
            const int64_t part = ((j[2] - j[1] + nt - 1) / nt + 4) / 5 * 5;
            for (int64_t a = j[1]; a < j[2]; a += part)
              jobs.push_back({j[0], a, std::min(j[2], a + part)});
          }
        }
      } else {
        int64_t tile = 20, most = B + 20;
        for (int64_t size = 20; size >= 5; size -= 5) {
          const int64_t count = (B + size - 1) / size, load = (count + nt - 1) / nt * size;
          if (load < most) tile = size, most = load;
        }
        for (int64_t t0 = 0; t0 < B; t0 += tile) jobs.push_back({0, t0, std::min(B, t0 + tile)});
      }
      const int64_t count = static_cast<int64_t>(jobs.size());
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t job = 0; job < count; ++job) {
        member(jobs[job][0]);
        const int64_t t0 = jobs[job][1], t1 = jobs[job][2];
        if (jacobi)                   // r = sigma(u) first, as the eager step's rhs does
          for (int64_t p = 0; p < P; ++p) {
            const double* Q = par + p * NP;
            for (int64_t b = t0; b < t1; ++b)
              activate_range<T>(lay[p * NL + 5], U + b * ldu + lay[p * NL],
                                Rr + b * ldr + lay[p * NL + 2], 0, lay[p * NL + 1], T(Q[3]),
                                T(Q[4]));
          }
        int ok = 1;
        for (int64_t k = 0; k < K; ++k) {
          step_tile(k, ok, t0, t1);
          // this step's records: those due at steps step0 + 1 .. step0 + k + 1, less one
          for (int64_t m = 0; m < R; ++m) {
            const int64_t every = records[m * 5 + 1];
            at[m] = (step0 + k + 1) / every - step0 / every - 1;
          }
          record(k, t0, t1, at);
        }
      }
    } else if (by_samples) {
      // each thread its own samples, tile by tile, every population in turn; a barrier per
      // step only to stop all threads after the same step when a potential became non-finite
      std::vector<int64_t> mine(R, 0);
      for (int64_t k = 0; k < K; ++k) {
        int ok = 1;
        for (int64_t t0 = b0; t0 < b1; t0 += SAMPLE_TILE) {
          step_tile(k, ok, t0, std::min(b1, t0 + SAMPLE_TILE));
        }
        record(k, b0, b1, mine);
        if (!check) continue;
        flag(ok);
#pragma omp barrier
        if (stopped(k)) break;
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        int ok = 1;
        if (jacobi) {
          for (int64_t p = 0; p < P; ++p)
            if ((W[p] || LW[p]) && !quiet(p, k)) product(p, k, 0, B);
#pragma omp barrier
          for (int64_t p = 0; p < P; ++p) update(p, k, ok, 0, B);
        } else {
          for (int64_t p = 0; p < P; ++p) {
            if ((W[p] || LW[p]) && !quiet(p, k)) product(p, k, 0, B);
#pragma omp barrier
            update(p, k, ok, 0, B);
            if (p + 1 < P) {
#pragma omp barrier
            }
          }
        }
        if (check) flag(ok);
        // the step is complete; the next one's products only read u and r, so thread 0
        // copies this step's records meanwhile, and a non-finite flag is read by all before
        // any thread can reach the next update
#pragma omp barrier
        if (id == 0) record(k, 0, B, written);
        if (stopped(k)) break;
      }
    }
  }
  return done;
}

// KT (S x n, row-major) packed for panel_packed into kp ((S + 3) / 4 groups of 4 np values),
// threads sharing the groups
template <typename T>
void pack_panels(const T* kt, int64_t S, int64_t n, T* kp, int threads) {
  constexpr int64_t V = VBYTES / sizeof(T);
  const int64_t np = packed_width<T>(n), groups = (S + 3) / 4;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    T* out = kp + g * 4 * np;
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t i = 4 * g + r;
      for (int64_t j0 = 0; j0 < np; j0 += V) {
        T* o = out + 4 * j0 + r * V;
        for (int64_t l = 0; l < V; ++l)
          o[l] = i < S && j0 + l < n ? kt[i * n + j0 + l] : T(0);
      }
    }
  }
}

}  // namespace

// neurosim_euler_f32 and neurosim_euler_f64: run<float> and run<double> for ctypes;
// neurosim_bfloat16: 1 when this build multiplies bfloat16 operators (AVX512-BF16)
#define NEUROSIM_EULER(NAME, T)                                                              \
  int64_t NAME(int64_t B, T* u, int64_t ldu, T* r, int64_t ldr, int64_t P,                  \
               const int64_t* layout, const double* params, const int64_t* weights,         \
               const int64_t* low_weights, const int64_t* currents,                         \
               const int64_t* current_rows, const int64_t* step_currents,                   \
               const int64_t* step_rows, int64_t K, const double* dts, int jacobi,          \
               T* scratch, int64_t R, const int64_t* records, int64_t step0, int threads,   \
               int check, const int64_t* packed, const int64_t* silent, int by_samples,      \
               int64_t members, const int64_t* member_ptrs, const double* member_params,    \
               const int64_t* holds, const int64_t* held, int fresh) {                      \
    return run<T>(B, u, ldu, r, ldr, P, layout, params, weights, low_weights, currents,    \
                  current_rows, step_currents, step_rows, K, dts, jacobi, scratch, R,       \
                  records, step0, threads, check, packed, silent, by_samples, members,      \
                  member_ptrs, member_params, holds, held, fresh);                          \
  }

extern "C" {
NEUROSIM_EULER(neurosim_euler_f32, float)
NEUROSIM_EULER(neurosim_euler_f64, double)
int neurosim_bfloat16() { return HAS_BF16 ? 1 : 0; }
// the vector width in bytes that packed operators (neurosim_pack_panels_*) are laid out by
int neurosim_vector_bytes() { return VBYTES; }
// KT (S x n, row-major) packed as the loop's mode 4 reads it: (S + 3) / 4 groups of four
// rows, interleaved by vectors of neurons (the layout of panel_packed), zero padded
void neurosim_pack_panels_f32(const float* kt, int64_t S, int64_t n, float* kp, int threads) {
  pack_panels<float>(kt, S, n, kp, threads);
}
void neurosim_pack_panels_f64(const double* kt, int64_t S, int64_t n, double* kp, int threads) {
  pack_panels<double>(kt, S, n, kp, threads);
}

// a row-major n x S bfloat16 operator W packed as the loop reads it: (S + 1) / 2 rows of
// padded(n) pairs (pack_pairs over all neurons, the padding zero), threads sharing the
// 16-neuron blocks; 0 when this build has no bfloat16 products
int neurosim_pack_bf16(const uint16_t* w, int64_t S, int64_t n, uint32_t* kp, int threads) {
#ifdef __AVX512BF16__
  const int64_t blocks = (n + 15) / 16, w_pad = padded(n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t lo = blk * 16, hi = std::min(n, lo + 16);
    pack_pairs(w, S, lo, hi, kp + lo, w_pad);
  }
  zero_columns(kp, (S + 1) / 2, n, w_pad);
  return 1;
#else
  (void)w; (void)S; (void)n; (void)kp; (void)threads;
  return 0;
#endif
}
}  // extern "C"
