// Many Euler steps of linear cells in one call, without Python or dispatcher work per step.
// Compiled on first use by neurosim.dynamics.fused (plain C++ and OpenMP, called through
// ctypes); see there for the equations, the arguments and when the eager path runs instead.
#include <omp.h>

#include <cstdint>
#include <type_traits>

#include <algorithm>
#include <cmath>
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
  for (; j < hi; ++j) r[j] = activate<T>(kind, u[j], a, b);
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
// four at a time, the sums kept in acc (L1) and updated once per four rows
template <typename T>
inline void panel(const T* kt, int64_t S, int64_t n, const T* x, int64_t ldx, int64_t B,
                  int64_t lo, int64_t hi, T* acc, int64_t lda) {
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

// Arguments (addresses are of float32 or float64 arrays, as T):
//   u, r: B x ldu / B x ldr state rows; layout: P x 7 int64 (u0 n r0 s0 S activation
//   and 1 where the operator is W_p, n x S row-major: dot products over rows; 0 where it
//   is KT_p, S x n row-major: panel over sources);
//   params: P x 5 double (decay rate fixed_step(<0: none) a b); weights: P addresses of
//   the operators (0: none); currents: P addresses (0: none) with rows 1 or B;
//   step_currents: P addresses (0: none) of K x rows x n currents added at step k (stimuli),
//   rows (step_rows) 1 or B;
//   dts: K step sizes; scratch: (threads + 1) x B x (sum n); records: R x (source 0 u / 1 r, every, M,
//   address of M int64 columns, address of the output, records x B x M); check: stop
//   after a step that made a potential non-finite (else run all K steps).
template <typename T>
int64_t run(int64_t B, T* U, int64_t ldu, T* Rr, int64_t ldr, int64_t P, const int64_t* lay,
            const double* par, const int64_t* weights, const int64_t* currents,
            const int64_t* current_rows, const int64_t* step_currents,
            const int64_t* step_rows, int64_t K, const double* dt, int jacobi, T* acc,
            int64_t R, const int64_t* records, int64_t step0, int threads, int check) {
  std::vector<const T*> W(P, nullptr), I(P, nullptr), D(P, nullptr);
  std::vector<int64_t> Irows(P, 0), Drows(P, 0), off(P, 0);
  int64_t total = 0;
  for (int64_t p = 0; p < P; ++p) {
    W[p] = reinterpret_cast<const T*>(weights[p]);
    I[p] = reinterpret_cast<const T*>(currents[p]);
    Irows[p] = current_rows[p];
    D[p] = reinterpret_cast<const T*>(step_currents[p]);
    Drows[p] = step_rows[p];
    off[p] = total;
    total += lay[p * 7 + 1];
  }
  std::vector<int64_t> written(R, 0);
  int64_t done = K;
  int finite = 1;
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
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
      const int64_t n = lay[p * 7 + 1];
      if (!jacobi) return std::make_pair(split(n, id), split(n, id + 1));
      return std::make_pair(std::clamp(g0 - off[p], int64_t(0), n),
                            std::clamp(g1 - off[p], int64_t(0), n));
    };
    // The product r[:, s0:s0+S] KT_p: from W_p = KT_p^T (column-major KT_p), this thread's
    // rows of W_p into acc; from a row-major KT_p, this thread's sources (rows of KT_p) for
    // every neuron into its own partial sums (acc's block id + 1), added up by the update.
    // Either way each sum's order depends on the thread count only, never on the chunk.
    auto product = [&](int64_t p) {
      const int64_t* L = lay + p * 7;
      const int64_t n = L[1], s0 = L[3], S = L[4];
      const auto [lo, hi] = range(p);
      T* a = acc + off[p];
      if (L[6]) {                       // W_p row-major (n x S): dot products
        int64_t j = lo;
        for (; j + 4 <= hi; j += 4)
          for (int64_t b = 0; b < B; ++b) {
            T out[4];
            dot4<T>(W[p] + j * S, S, Rr + b * ldr + s0, out);
            for (int r = 0; r < 4; ++r) a[b * total + j + r] = out[r];
          }
        for (; j < hi; ++j)
          for (int64_t b = 0; b < B; ++b)
            a[b * total + j] = dot<T>(W[p] + j * S, Rr + b * ldr + s0, S);
      }
      else {                            // KT_p row-major (S x n): this thread's sources
        const int64_t i0 = split4(S, id), i1 = split4(S, id + 1);
        panel<T>(W[p] + i0 * n, i1 - i0, n, Rr + s0 + i0, ldr, B, 0, n,
                 acc + (id + 1) * B * total + off[p], total);
      }
    };
    // u_p <- (1 - h d) u_p + h (acc_p + I_p); r_p <- sigma(u_p), this thread's neurons
    auto update = [&](int64_t p, int64_t k, int& ok) {
      const double step_dt = dt[k];
      const int64_t* L = lay + p * 7;
      const double* Q = par + p * 5;
      const int64_t u0 = L[0], n = L[1], r0 = L[2], kind = L[5];
      const double step = Q[2] >= 0 ? Q[2] : step_dt * Q[1];
      const T h = T(step), keep = T(1.0 - step * Q[0]), a = T(Q[3]), c = T(Q[4]);
      const auto [lo, hi] = range(p);
      for (int64_t b = 0; b < B; ++b) {
        const T* cur = I[p] ? I[p] + (Irows[p] > 1 ? b : 0) * n : nullptr;
        const T* now = D[p] ? D[p] + (k * Drows[p] + (Drows[p] > 1 ? b : 0)) * n : nullptr;
        const T* ap = acc + off[p] + b * total;
        const T* parts = acc + B * total + off[p] + b * total;   // row-major KT_p: partial sums
        T* up = U + b * ldu + u0;
        T* rp = Rr + b * ldr + r0;
        for (int64_t j = lo; j < hi; ++j) {
          T product = T(0);
          if (W[p] && L[6]) {
            product = ap[j];
          } else if (W[p]) {
            for (int64_t t = 0; t < nt; ++t) product += parts[t * B * total + j];
          }
          const T drive = product + (cur ? cur[j] : T(0)) + (now ? now[j] : T(0));
          const T v = keep * up[j] + h * drive;
          ok &= std::isfinite(v) ? 1 : 0;
          up[j] = v;
        }
        activate_range<T>(kind, up, rp, lo, hi, a, c);
      }
    };
    if (jacobi) {                       // r = sigma(u) first, as the eager step's rhs does
      for (int64_t p = 0; p < P; ++p) {
        const int64_t* L = lay + p * 7;
        const double* Q = par + p * 5;
        const auto [lo, hi] = range(p);
        for (int64_t b = 0; b < B; ++b)
          activate_range<T>(L[5], U + b * ldu + L[0], Rr + b * ldr + L[2], lo, hi, T(Q[3]),
                            T(Q[4]));
      }
#pragma omp barrier
    }
    for (int64_t k = 0; k < K; ++k) {
      int ok = 1;
      if (jacobi) {
        for (int64_t p = 0; p < P; ++p)
          if (W[p]) product(p);
#pragma omp barrier
        for (int64_t p = 0; p < P; ++p) update(p, k, ok);
      } else {
        for (int64_t p = 0; p < P; ++p) {
          if (W[p]) product(p);
#pragma omp barrier
          update(p, k, ok);
          if (p + 1 < P) {
#pragma omp barrier
          }
        }
      }
      if (!ok && check) {
#pragma omp atomic write
        finite = 0;
      }
      // the step is complete; the next one's products only read u and r, so thread 0 copies
      // this step's records meanwhile, and a non-finite flag is read by all before any
      // thread can reach the next update
#pragma omp barrier
      if (id == 0) {                    // the records of step step0 + k + 1
        const int64_t step = step0 + k + 1;
        for (int64_t m = 0; m < R; ++m) {
          const int64_t* rec = records + m * 5;
          if (step % rec[1] != 0) continue;
          const int64_t M = rec[2];
          const int64_t* cols = reinterpret_cast<const int64_t*>(rec[3]);
          const T* src = rec[0] == 0 ? U : Rr;
          const int64_t ld = rec[0] == 0 ? ldu : ldr;
          T* out = reinterpret_cast<T*>(rec[4]) + written[m] * B * M;
          for (int64_t b = 0; b < B; ++b)
            for (int64_t c = 0; c < M; ++c) out[b * M + c] = src[b * ld + cols[c]];
          ++written[m];
        }
      }
      int go;
#pragma omp atomic read
      go = finite;
      if (!go) {
        if (id == 0) done = k + 1;
        break;
      }
    }
  }
  return done;
}

}  // namespace

// neurosim_euler_f32 and neurosim_euler_f64: run<float> and run<double> for ctypes
#define NEUROSIM_EULER(NAME, T)                                                              \
  int64_t NAME(int64_t B, T* u, int64_t ldu, T* r, int64_t ldr, int64_t P,                  \
               const int64_t* layout, const double* params, const int64_t* weights,         \
               const int64_t* currents, const int64_t* current_rows,                        \
               const int64_t* step_currents, const int64_t* step_rows, int64_t K,           \
               const double* dts, int jacobi, T* scratch, int64_t R, const int64_t* records, \
               int64_t step0, int threads, int check) {                                     \
    return run<T>(B, u, ldu, r, ldr, P, layout, params, weights, currents, current_rows,   \
                  step_currents, step_rows, K, dts, jacobi, scratch, R, records, step0,     \
                  threads, check);                                                          \
  }

extern "C" {
NEUROSIM_EULER(neurosim_euler_f32, float)
NEUROSIM_EULER(neurosim_euler_f64, double)
}  // extern "C"
