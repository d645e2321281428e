// Fused CPU kernels for SparseYOLO's sparse convolution (OpenMP).
//
// A kernel map is a table `(K, N_out)` int32: the input row that feeds output row `o` through kernel
// offset `k`, or -1. Each output row is computed by exactly one thread in a fixed order of offsets, so
// results do not depend on the number of threads.
#include <torch/extension.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace {

// Below this much work a loop runs on the calling thread: waking the team costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 15;
// Largest kernel extent per axis that mark_output_sites handles (larger kernels take the PyTorch path).
constexpr int64_t kMaxTaps = 64;

void check_table(const torch::Tensor& table) {
  TORCH_CHECK(table.dim() == 2 && table.scalar_type() == torch::kInt32 && table.is_contiguous(),
              "table must be a contiguous int32 (K, N) tensor");
}

// Each output row is computed by one thread; its output channels are processed in blocks of B held in a
// local accumulator (registers), B | O. (A tiled gather -> micro-GEMM -> add variant measured slower.)
template <typename T, int B>
void gather_conv_kernel(const T* __restrict__ feat, const T* __restrict__ weight, const int32_t* __restrict__ table,
                        T* __restrict__ out, int64_t K, int64_t n_out, int64_t G, int64_t I, int64_t O) {
  const int64_t c_in = G * I, c_out = G * O;
#pragma omp parallel for schedule(static, 256) if (n_out * K >= kMinParallelWork)
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t jb = 0; jb < O; jb += B) {
        T acc[B] = {};
        for (int64_t k = 0; k < K; ++k) {
          const int32_t i = table[k * n_out + o];
          if (i < 0) continue;
          const T* src = feat + static_cast<int64_t>(i) * c_in + g * I;
          const T* w = weight + ((k * G + g) * I) * O + jb;
          for (int64_t c = 0; c < I; ++c) {
            const T v = src[c];
            const T* wc = w + c * O;
#pragma omp simd
            for (int j = 0; j < B; ++j) acc[j] += v * wc[j];
          }
        }
        T* dst = out + o * c_out + g * O + jb;
        for (int j = 0; j < B; ++j) dst[j] = acc[j];
      }
    }
  }
}

template <typename T>
void gather_conv_dispatch(const T* feat, const T* weight, const int32_t* table, T* out, int64_t K, int64_t n_out,
                          int64_t G, int64_t I, int64_t O) {
  if (O % 64 == 0) return gather_conv_kernel<T, 64>(feat, weight, table, out, K, n_out, G, I, O);
  if (O % 32 == 0) return gather_conv_kernel<T, 32>(feat, weight, table, out, K, n_out, G, I, O);
  if (O % 16 == 0) return gather_conv_kernel<T, 16>(feat, weight, table, out, K, n_out, G, I, O);
  if (O % 8 == 0) return gather_conv_kernel<T, 8>(feat, weight, table, out, K, n_out, G, I, O);
  if (O % 4 == 0) return gather_conv_kernel<T, 4>(feat, weight, table, out, K, n_out, G, I, O);
  return gather_conv_kernel<T, 1>(feat, weight, table, out, K, n_out, G, I, O);
}

// grad_weight partial of one chunk of pairs: dst (I, O) = sum_p A[p]^T Bm[p] over contiguous tiles
// A (n, I), Bm (n, O); 4 input channels x B outputs of accumulators stay in registers.
template <typename T, int B>
void outer_accumulate(const T* __restrict__ A, const T* __restrict__ Bm, T* __restrict__ dst, int64_t n, int64_t I,
                      int64_t O) {
  for (int64_t jb = 0; jb < O; jb += B) {
    int64_t c = 0;
    for (; c + 4 <= I; c += 4) {
      T acc[4][B] = {};
      for (int64_t p = 0; p < n; ++p) {
        const T* a = A + p * I + c;
        const T* b = Bm + p * O + jb;
        const T a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
#pragma omp simd
        for (int j = 0; j < B; ++j) {
          acc[0][j] += a0 * b[j];
          acc[1][j] += a1 * b[j];
          acc[2][j] += a2 * b[j];
          acc[3][j] += a3 * b[j];
        }
      }
      for (int r = 0; r < 4; ++r)
        for (int j = 0; j < B; ++j) dst[(c + r) * O + jb + j] += acc[r][j];
    }
    for (; c < I; ++c) {
      T acc[B] = {};
      for (int64_t p = 0; p < n; ++p) {
        const T a0 = A[p * I + c];
        const T* b = Bm + p * O + jb;
#pragma omp simd
        for (int j = 0; j < B; ++j) acc[j] += a0 * b[j];
      }
      for (int j = 0; j < B; ++j) dst[c * O + jb + j] += acc[j];
    }
  }
}

template <typename T>
void outer_dispatch(const T* A, const T* Bm, T* dst, int64_t n, int64_t I, int64_t O) {
  if (O % 32 == 0) return outer_accumulate<T, 32>(A, Bm, dst, n, I, O);
  if (O % 16 == 0) return outer_accumulate<T, 16>(A, Bm, dst, n, I, O);
  if (O % 8 == 0) return outer_accumulate<T, 8>(A, Bm, dst, n, I, O);
  if (O % 4 == 0) return outer_accumulate<T, 4>(A, Bm, dst, n, I, O);
  return outer_accumulate<T, 1>(A, Bm, dst, n, I, O);
}

// grad_weight (K, G, I, O). Pairs of offset k are in_rows/out_rows[bounds[k]:bounds[k+1]]; offset `identity`
// (if >= 0) pairs every row with itself. Work is split into fixed chunks of pairs whose partial sums are
// added in chunk order, so the result does not depend on the number of threads.
template <typename T>
void weight_grad_kernel(const T* feat, const T* grad, const int64_t* in_rows, const int64_t* out_rows,
                        const int64_t* bounds, int64_t identity, int64_t n_identity, T* gw, int64_t K, int64_t G,
                        int64_t I, int64_t O) {
  constexpr int64_t kChunk = 2048;
  const int64_t c_in = G * I, c_out = G * O;
  std::vector<int64_t> task_k, task_start, task_end, first_task(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) {
    first_task[k] = static_cast<int64_t>(task_k.size());
    const int64_t s = k == identity ? 0 : bounds[k];
    const int64_t e = k == identity ? n_identity : bounds[k + 1];
    for (int64_t a = s; a < e; a += kChunk) {
      task_k.push_back(k);
      task_start.push_back(a);
      task_end.push_back(std::min(e, a + kChunk));
    }
  }
  first_task[K] = static_cast<int64_t>(task_k.size());
  const int64_t n_tasks = first_task[K];
  std::vector<T> partial(static_cast<size_t>(n_tasks) * G * I * O, T(0));
#pragma omp parallel if (n_tasks > 1)
  {
    std::vector<T> A(kChunk * I), Bm(kChunk * O);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tasks; ++t) {
      const bool ident = task_k[t] == identity;
      const int64_t n = task_end[t] - task_start[t];
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t p = 0; p < n; ++p) {
          const int64_t q = task_start[t] + p;
          const int64_t i = ident ? q : in_rows[q];
          const int64_t o = ident ? q : out_rows[q];
          std::copy_n(feat + i * c_in + g * I, I, A.data() + p * I);
          std::copy_n(grad + o * c_out + g * O, O, Bm.data() + p * O);
        }
        outer_dispatch<T>(A.data(), Bm.data(), partial.data() + (t * G + g) * I * O, n, I, O);
      }
    }
  }
  const int64_t block = G * I * O;
#pragma omp parallel for schedule(static) if (n_tasks * block >= kMinParallelWork)
  for (int64_t k = 0; k < K; ++k) {
    T* dst = gw + k * block;
    for (int64_t t = first_task[k]; t < first_task[k + 1]; ++t) {
      const T* src = partial.data() + t * block;
      for (int64_t j = 0; j < block; ++j) dst[j] += src[j];
    }
  }
}

// Open-addressing hash table (linear probing) from non-negative int64 keys to int32 rows, for coordinate sets
// whose padded box is too large for an index grid: `slots` (C,) int64 keys (-1: empty) and `rows` (C,) int32,
// C a power of two >= 2 N.
inline int64_t hash_slot(int64_t key, int64_t mask) {
  uint64_t x = static_cast<uint64_t>(key);  // splitmix64 finaliser
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<int64_t>(x & static_cast<uint64_t>(mask));
}

// Neighbour table (K, N) int32 = find(base[n] + step[k]) for a key -> row (or -1) function `find`.
template <typename Find>
torch::Tensor lookup_table(const torch::Tensor& base, const torch::Tensor& step, Find find) {
  TORCH_CHECK(base.scalar_type() == torch::kInt64 && step.scalar_type() == torch::kInt64, "keys must be int64");
  auto b = base.contiguous();
  auto s = step.contiguous();
  const int64_t K = s.numel(), N = b.numel();
  auto table = torch::empty({K, N}, torch::kInt32);
  const int64_t* bp = b.data_ptr<int64_t>();
  const int64_t* sp = s.data_ptr<int64_t>();
  int32_t* t = table.data_ptr<int32_t>();
#pragma omp parallel for schedule(static) if (N * K >= kMinParallelWork)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t key = bp[n];
    for (int64_t k = 0; k < K; ++k) t[k * N + n] = find(key + sp[k]);
  }
  return table;
}

inline int32_t hash_find(const int64_t* slots, const int32_t* rows, int64_t mask, int64_t key) {
  if (key < 0) return -1;
  for (int64_t s = hash_slot(key, mask);; s = (s + 1) & mask) {
    if (slots[s] == key) return rows[s];
    if (slots[s] < 0) return -1;
  }
}

// out (N, O) of a 2D conv of a dense image x (B, C, H, W) evaluated at output sites `sites` (N, 3) int32
// (b, oy, ox): sum over taps (ky, kx) and channels c of x[b, c, oy * s - p + ky * d, ox * s - p + kx * d] *
// w[ky, kx, c, :] (w laid out (k, k, C, O)), over pixels inside the image and, if `mask` (B, H, W) is given,
// where it is true. One thread per site, output channels in blocks of B held in registers.
template <typename T, int B>
void conv2d_at_sites_kernel(const T* __restrict__ x, const T* __restrict__ w, const int32_t* __restrict__ sites,
                            const bool* __restrict__ mask, T* __restrict__ out, int64_t n, int64_t C, int64_t H,
                            int64_t W, int64_t O, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t plane = H * W;
#pragma omp parallel for schedule(static, 256) if (n * k * k * C >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = sites[3 * i], y0 = sites[3 * i + 1] * s - p, x0 = sites[3 * i + 2] * s - p;
    const T* img = x + b * C * plane;
    const bool* m = mask ? mask + b * plane : nullptr;
    for (int64_t jb = 0; jb < O; jb += B) {
      T acc[B] = {};
      for (int64_t ky = 0; ky < k; ++ky) {
        const int64_t iy = y0 + ky * d;
        if (iy < 0 || iy >= H) continue;
        for (int64_t kx = 0; kx < k; ++kx) {
          const int64_t ix = x0 + kx * d;
          if (ix < 0 || ix >= W) continue;
          const int64_t at = iy * W + ix;
          if (m && !m[at]) continue;
          const T* wt = w + (ky * k + kx) * C * O + jb;
          for (int64_t c = 0; c < C; ++c) {
            const T v = img[c * plane + at];
            const T* wc = wt + c * O;
#pragma omp simd
            for (int j = 0; j < B; ++j) acc[j] += v * wc[j];
          }
        }
      }
      T* dst = out + i * O + jb;
      for (int j = 0; j < B; ++j) dst[j] = acc[j];
    }
  }
}

}  // namespace

// See conv2d_at_sites_kernel; weight (k, k, C, O) contiguous, mask (B, H, W) bool or an empty tensor.
torch::Tensor conv2d_at_sites(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& sites,
                              const torch::Tensor& mask, int64_t stride, int64_t padding, int64_t dilation) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "x must be a contiguous (B, C, H, W) tensor");
  TORCH_CHECK(weight.dim() == 4 && weight.is_contiguous() && weight.size(0) == weight.size(1) &&
                  weight.size(2) == x.size(1),
              "weight must be a contiguous (k, k, C, O) tensor");
  TORCH_CHECK(sites.scalar_type() == torch::kInt32 && sites.dim() == 2 && sites.size(1) == 3 && sites.is_contiguous(),
              "sites must be contiguous int32 (N, 3)");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "x and weight dtypes differ");
  const bool masked = mask.numel() > 0;
  if (masked)
    TORCH_CHECK(mask.scalar_type() == torch::kBool && mask.is_contiguous() && mask.numel() == x.size(0) * x.size(2) * x.size(3),
                "mask must be a contiguous bool (B, H, W) tensor");
  const int64_t n = sites.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t k = weight.size(0), O = weight.size(3);
  auto out = torch::empty({n, O}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_at_sites", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    const int32_t* sp = sites.data_ptr<int32_t>();
    const bool* mp = masked ? mask.data_ptr<bool>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    if (O % 16 == 0)
      conv2d_at_sites_kernel<scalar_t, 16>(xp, wp, sp, mp, op, n, C, H, W, O, k, stride, padding, dilation);
    else if (O % 8 == 0)
      conv2d_at_sites_kernel<scalar_t, 8>(xp, wp, sp, mp, op, n, C, H, W, O, k, stride, padding, dilation);
    else if (O % 4 == 0)
      conv2d_at_sites_kernel<scalar_t, 4>(xp, wp, sp, mp, op, n, C, H, W, O, k, stride, padding, dilation);
    else
      conv2d_at_sites_kernel<scalar_t, 1>(xp, wp, sp, mp, op, n, C, H, W, O, k, stride, padding, dilation);
  });
  return out;
}

// (slots, rows, duplicated) of keys (N,) int64 >= 0, row i at key i.
std::tuple<torch::Tensor, torch::Tensor, bool> hash_build(const torch::Tensor& keys) {
  TORCH_CHECK(keys.scalar_type() == torch::kInt64 && keys.dim() == 1, "keys must be int64 (N,)");
  auto k = keys.contiguous();
  const int64_t n = k.numel();
  int64_t capacity = 16;
  while (capacity < 2 * n) capacity <<= 1;
  const int64_t mask = capacity - 1;
  auto slots = torch::full({capacity}, -1, torch::kInt64);
  auto rows = torch::empty({capacity}, torch::kInt32);
  int64_t* sl = slots.data_ptr<int64_t>();
  int32_t* rw = rows.data_ptr<int32_t>();
  const int64_t* kp = k.data_ptr<int64_t>();
  bool duplicated = false;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t key = kp[i];
    TORCH_CHECK(key >= 0, "hash keys must be non-negative");
    int64_t s = hash_slot(key, mask);
    while (sl[s] >= 0 && sl[s] != key) s = (s + 1) & mask;
    if (sl[s] == key) {
      duplicated = true;
    } else {
      sl[s] = key;
      rw[s] = static_cast<int32_t>(i);
    }
  }
  return {slots, rows, duplicated};
}

// table (K, N) int32 = row at key base[n] + step[k] (-1 where no site sits).
torch::Tensor hash_lookup(const torch::Tensor& slots, const torch::Tensor& rows, const torch::Tensor& base,
                          const torch::Tensor& step) {
  TORCH_CHECK(slots.scalar_type() == torch::kInt64 && rows.scalar_type() == torch::kInt32 && slots.is_contiguous() &&
                  rows.is_contiguous() && slots.numel() == rows.numel(),
              "slots/rows must be a contiguous int64/int32 pair");
  const int64_t* sl = slots.data_ptr<int64_t>();
  const int32_t* rw = rows.data_ptr<int32_t>();
  const int64_t mask = slots.numel() - 1;
  return lookup_table(base, step, [=](int64_t key) { return hash_find(sl, rw, mask, key); });
}

// out (N_out, G*O) = sum_k features[table[k, o]] @ blockdiag(weight[k]); weight (K, G, I, O).
torch::Tensor gather_conv(const torch::Tensor& features, const torch::Tensor& weight, const torch::Tensor& table) {
  check_table(table);
  TORCH_CHECK(features.is_contiguous() && weight.is_contiguous(), "features and weight must be contiguous");
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == table.size(0), "weight must be (K, G, I, O)");
  TORCH_CHECK(features.dim() == 2 && features.size(1) == weight.size(1) * weight.size(2), "features (N, G*I)");
  TORCH_CHECK(features.scalar_type() == weight.scalar_type(), "features and weight dtypes differ");
  const int64_t K = weight.size(0), G = weight.size(1), I = weight.size(2), O = weight.size(3);
  const int64_t n_out = table.size(1);
  auto out = torch::empty({n_out, G * O}, features.options());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "gather_conv", [&] {
    gather_conv_dispatch<scalar_t>(features.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                                 table.data_ptr<int32_t>(), out.data_ptr<scalar_t>(), K, n_out, G, I, O);
  });
  return out;
}

// Offset-major pair lists of a table, skipping offset `skip` (-1: none): (in_rows, out_rows, counts[K]).
std::vector<torch::Tensor> table_pairs(const torch::Tensor& table, int64_t skip) {
  check_table(table);
  const int64_t K = table.size(0), N = table.size(1);
  const int32_t* t = table.data_ptr<int32_t>();
  auto counts = torch::zeros({K}, torch::kInt64);
  int64_t* cnt = counts.data_ptr<int64_t>();
#pragma omp parallel for schedule(dynamic, 1) if (K * N >= kMinParallelWork)
  for (int64_t k = 0; k < K; ++k) {
    if (k == skip) continue;
    int64_t c = 0;
    for (int64_t o = 0; o < N; ++o) c += t[k * N + o] >= 0;
    cnt[k] = c;
  }
  std::vector<int64_t> start(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) start[k + 1] = start[k] + cnt[k];
  auto in_rows = torch::empty({start[K]}, torch::kInt64);
  auto out_rows = torch::empty({start[K]}, torch::kInt64);
  int64_t* ip = in_rows.data_ptr<int64_t>();
  int64_t* op = out_rows.data_ptr<int64_t>();
#pragma omp parallel for schedule(dynamic, 1) if (K * N >= kMinParallelWork)
  for (int64_t k = 0; k < K; ++k) {
    if (k == skip) continue;
    int64_t at = start[k];
    for (int64_t o = 0; o < N; ++o) {
      const int32_t i = t[k * N + o];
      if (i >= 0) {
        ip[at] = i;
        op[at] = o;
        ++at;
      }
    }
  }
  return {in_rows, out_rows, counts};
}

// grad_weight (K, G, I, O) of gather_conv from the offset-major pair lists (see table_pairs).
torch::Tensor gather_conv_weight_grad(const torch::Tensor& features, const torch::Tensor& grad_out,
                                      const torch::Tensor& in_rows, const torch::Tensor& out_rows,
                                      const torch::Tensor& bounds, int64_t identity, int64_t G, int64_t I, int64_t O) {
  TORCH_CHECK(features.is_contiguous() && grad_out.is_contiguous(), "features and grad_out must be contiguous");
  TORCH_CHECK(features.scalar_type() == grad_out.scalar_type(), "features and grad_out dtypes differ");
  TORCH_CHECK(in_rows.scalar_type() == torch::kInt64 && out_rows.scalar_type() == torch::kInt64 &&
                  bounds.scalar_type() == torch::kInt64,
              "pair lists must be int64");
  const int64_t K = bounds.numel() - 1;
  auto gw = torch::zeros({K, G, I, O}, features.options());
  auto ir = in_rows.contiguous();
  auto orr = out_rows.contiguous();
  auto bd = bounds.contiguous();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "gather_conv_weight_grad", [&] {
    weight_grad_kernel<scalar_t>(features.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                                 ir.data_ptr<int64_t>(), orr.data_ptr<int64_t>(), bd.data_ptr<int64_t>(), identity,
                                 features.size(0), gw.data_ptr<scalar_t>(), K, G, I, O);
  });
  return gw;
}

// Keys (N,) int64 of int32 rows (batch, *coords): batch * strides[0] + sum_a coords[a] * strides[1 + a] + shift.
torch::Tensor encode_keys(const torch::Tensor& indices, std::vector<int64_t> strides, int64_t shift) {
  TORCH_CHECK(indices.scalar_type() == torch::kInt32 && indices.dim() == 2, "indices must be int32 (N, 1+D)");
  const int64_t W = indices.size(1), n = indices.size(0);
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == W, "one stride per index column");
  auto idx = indices.contiguous();
  const int32_t* ip = idx.data_ptr<int32_t>();
  auto keys = torch::empty({n}, torch::kInt64);
  int64_t* kp = keys.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) if (n * W >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    int64_t key = shift;
    for (int64_t a = 0; a < W; ++a) key += static_cast<int64_t>(ip[i * W + a]) * strides[a];
    kp[i] = key;
  }
  return keys;
}

// Index grid (cells,) int32: row number at each key, -1 elsewhere. Second result: whether a key repeats.
std::tuple<torch::Tensor, bool> grid_build(const torch::Tensor& keys, int64_t cells) {
  TORCH_CHECK(keys.scalar_type() == torch::kInt64, "keys must be int64");
  auto k = keys.contiguous();
  const int64_t n = k.numel();
  const int64_t* kp = k.data_ptr<int64_t>();
  auto grid = torch::empty({cells}, torch::kInt32);
  int32_t* g = grid.data_ptr<int32_t>();
#pragma omp parallel for schedule(static) if (cells >= kMinParallelWork)
  for (int64_t c = 0; c < cells; ++c) g[c] = -1;
  for (int64_t i = 0; i < n; ++i) g[kp[i]] = static_cast<int32_t>(i);
  bool duplicated = false;
  for (int64_t i = 0; i < n; ++i) duplicated |= g[kp[i]] != static_cast<int32_t>(i);
  return {grid, duplicated};
}

// Occupancy (B * prod(out_shape),) uint8 of the output sites of a regular conv (transposed=false: output o
// is active when o * stride - padding + t * dilation holds an input) or a transposed conv (transposed=true:
// input i writes i * stride - padding + t * dilation), for every kernel tap t.
torch::Tensor mark_output_sites(const torch::Tensor& indices, std::vector<int64_t> out_shape,
                                std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t batch_size,
                                bool transposed) {
  TORCH_CHECK(indices.scalar_type() == torch::kInt32 && indices.dim() == 2, "indices must be int32 (N, 1+D)");
  const int64_t D = static_cast<int64_t>(out_shape.size());
  TORCH_CHECK(indices.size(1) == D + 1 && D >= 1 && D <= 3, "indices width must be 1 + D, D in 1..3");
  for (int64_t a = 0; a < D; ++a)
    TORCH_CHECK(kernel[a] >= 1 && kernel[a] <= kMaxTaps, "kernel size per axis must be 1..64");
  auto idx = indices.contiguous();
  const int32_t* ip = idx.data_ptr<int32_t>();
  const int64_t n = idx.size(0);
  int64_t cells = batch_size, taps = 1;
  std::vector<int64_t> strides(D);
  for (int64_t a = D - 1; a >= 0; --a) {
    strides[a] = cells / batch_size;
    cells *= out_shape[a];
    taps *= kernel[a];
  }
  const int64_t batch_stride = cells / batch_size;
  auto occupied = torch::zeros({cells}, torch::kUInt8);
  uint8_t* occ = occupied.data_ptr<uint8_t>();
#pragma omp parallel for schedule(static) if (n * taps >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* row = ip + i * (D + 1);
    // the output coordinates each axis reaches (key parts), then their cartesian product
    int64_t part[3][kMaxTaps];
    int64_t count[3] = {0, 0, 0};
    bool empty = false;
    for (int64_t a = 0; a < D; ++a) {
      for (int64_t t = 0; t < kernel[a]; ++t) {
        int64_t v;
        if (transposed) {
          v = row[a + 1] * stride[a] - padding[a] + t * dilation[a];
        } else {
          const int64_t shifted = row[a + 1] + padding[a] - t * dilation[a];
          if (shifted < 0 || shifted % stride[a] != 0) continue;
          v = shifted / stride[a];
        }
        if (v >= 0 && v < out_shape[a]) part[a][count[a]++] = v * strides[a];
      }
      empty |= count[a] == 0;
    }
    if (empty) continue;
    int64_t pos[3] = {0, 0, 0};
    const int64_t base = row[0] * batch_stride;
    while (true) {
      int64_t key = base;
      for (int64_t a = 0; a < D; ++a) key += part[a][pos[a]];
      occ[key] = 1;  // every writer stores the same value
      int64_t a = D - 1;
      while (a >= 0 && ++pos[a] == count[a]) pos[a--] = 0;
      if (a < 0) break;
    }
  }
  return occupied;
}

// table (K, N) int32 = grid[base[n] + step[k]] (grid int32, -1 where empty).
torch::Tensor grid_lookup(const torch::Tensor& grid, const torch::Tensor& base, const torch::Tensor& step) {
  TORCH_CHECK(grid.scalar_type() == torch::kInt32 && grid.is_contiguous(), "grid must be contiguous int32");
  const int32_t* g = grid.data_ptr<int32_t>();
  return lookup_table(base, step, [=](int64_t key) { return g[key]; });
}

// The table of the transposed map: (K, n_in) int32 with out[k, table[k, o]] = o.
torch::Tensor invert_table(const torch::Tensor& table, int64_t n_in) {
  check_table(table);
  const int64_t K = table.size(0), N = table.size(1);
  auto inv = torch::full({K, n_in}, -1, table.options());
  const int32_t* t = table.data_ptr<int32_t>();
  int32_t* r = inv.data_ptr<int32_t>();
#pragma omp parallel for schedule(static) if (K * N >= kMinParallelWork)
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t o = 0; o < N; ++o) {
      const int32_t i = t[k * N + o];
      if (i >= 0) r[k * n_in + i] = static_cast<int32_t>(o);
    }
  }
  return inv;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather_conv", &gather_conv, "fused gather-GEMM conv over a kernel-map table");
  m.def("gather_conv_weight_grad", &gather_conv_weight_grad, "deterministic weight gradient from pair lists");
  m.def("table_pairs", &table_pairs, "offset-major pair lists of a kernel-map table");
  m.def("mark_output_sites", &mark_output_sites, "occupancy of conv / transposed conv output sites");
  m.def("encode_keys", &encode_keys, "int64 keys of int32 coordinate rows");
  m.def("grid_build", &grid_build, "index grid of row numbers at keys");
  m.def("grid_lookup", &grid_lookup, "neighbour table from an index grid");
  m.def("conv2d_at_sites", &conv2d_at_sites, "2D conv of a dense image at given output sites");
  m.def("hash_build", &hash_build, "open-addressing hash table of row numbers at keys");
  m.def("hash_lookup", &hash_lookup, "neighbour table from a hash table");
  m.def("invert_table", &invert_table, "table of the transposed kernel map");
}
