// Standalone tests of the kernel, no Python: `cmake -DLARIMAR_BUILD_TESTS=ON` then
// `ctest` (tests/test_native.py builds and runs it under pytest).
#include <atomic>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "larimar/address.hpp"
#include "larimar/kv_store.hpp"
#include "larimar/lstsq.hpp"
#include "larimar/pinv.hpp"
#include "larimar/sequential.hpp"
#include "larimar/sparse_lstsq.hpp"
#include "larimar/topk.hpp"

using larimar::index_t;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

std::vector<double> random_matrix(index_t rows, index_t cols, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> a(rows * cols);
  for (double& x : a) x = normal(rng);
  return a;
}

double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
  return std::sqrt(num / den);
}

// A (rows x inner) B (inner x cols), row-major.
std::vector<double> product(const std::vector<double>& a, const std::vector<double>& b,
                            index_t rows, index_t inner, index_t cols) {
  std::vector<double> out(rows * cols, 0.0);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      for (index_t t = 0; t < inner; ++t) out[i * cols + j] += a[i * inner + t] * b[t * cols + j];
  return out;
}

// M = W^+ Z for a square invertible W must satisfy W M = Z.
void test_lstsq_square(std::mt19937& rng) {
  const index_t n = 24, c = 5;
  const auto w = random_matrix(n, n, rng), z = random_matrix(n, c, rng);
  std::vector<double> m(n * c);
  larimar::lstsq_write(w.data(), z.data(), m.data(), 1, n, n, c, {});
  check(rel_diff(product(w, m, n, n, c), z) < 1e-10, "lstsq_write square: W M == Z");
}

// Wide W (N < K): the minimum-norm solution lies in W's row space and fits exactly.
void test_lstsq_wide_fits(std::mt19937& rng) {
  const index_t n = 6, k = 20, c = 3;
  const auto w = random_matrix(n, k, rng), z = random_matrix(n, c, rng);
  std::vector<double> m(k * c);
  larimar::lstsq_write(w.data(), z.data(), m.data(), 1, n, k, c, {});
  check(rel_diff(product(w, m, n, k, c), z) < 1e-10, "lstsq_write wide: W M == Z");
}

// R^+ of a full-row-rank R satisfies R R^+ = I: with Z = R, W = R R^+ = I.
void test_pinv_identity(std::mt19937& rng) {
  const index_t k = 8, c = 30;
  const auto r = random_matrix(k, c, rng);
  std::vector<double> w(k * k), eye(k * k, 0.0);
  for (index_t i = 0; i < k; ++i) eye[i * k + i] = 1.0;
  larimar::pinv_address(r.data(), r.data(), w.data(), 1, k, k, c, -1);
  check(rel_diff(w, eye) < 1e-10, "pinv_address: R R^+ == I");
}

void test_topk_ties() {
  // Keys 0 and 2 equal: the lower index ranks first.
  const std::vector<float> keys = {1, 0, 0, 1, 1, 0}, q = {1, 0};
  index_t ids[3];
  float scores[3];
  larimar::topk(q.data(), 1, keys.data(), 3, 2, 3, larimar::Metric::InnerProduct, ids, scores);
  check(ids[0] == 0 && ids[1] == 2 && ids[2] == 1, "topk: ties keep ascending ids");
  bool threw = false;
  try {
    larimar::topk(q.data(), 1, keys.data(), 3, 2, 4, larimar::Metric::InnerProduct, ids, scores);
  } catch (const larimar::InvalidArgument& e) {
    threw = std::string(e.what()).rfind("k:", 0) == 0;
  }
  check(threw, "topk: k > number of keys is an InvalidArgument naming k");
}

// Writing rows one at a time, then forgetting some, equals the batch ridge solve.
void test_sequential_invariant(std::mt19937& rng) {
  const index_t k = 10, c = 4, rows = 30;
  const double ridge = 1e-3;
  const auto w = random_matrix(rows, k, rng), z = random_matrix(rows, c, rng);
  larimar::SequentialMemory<double> mem(k, c, nullptr, ridge);
  for (index_t i = 0; i < rows; ++i) mem.update(&w[i * k], &z[i * c], 1, 1.0);
  for (index_t i = 0; i < 5; ++i) mem.update(&w[i * k], &z[i * c], 1, -1.0);
  // Batch: (W^T W + ridge I) M = W^T Z over rows 5..29, by normal equations + Gauss-Jordan.
  std::vector<double> a(k * k, 0.0), b(k * c, 0.0);
  for (index_t i = 5; i < rows; ++i)
    for (index_t p = 0; p < k; ++p) {
      for (index_t q = 0; q < k; ++q) a[p * k + q] += w[i * k + p] * w[i * k + q];
      for (index_t j = 0; j < c; ++j) b[p * c + j] += w[i * k + p] * z[i * c + j];
    }
  for (index_t p = 0; p < k; ++p) a[p * k + p] += ridge;
  for (index_t p = 0; p < k; ++p) {
    const double piv = a[p * k + p];
    for (index_t q = 0; q < k; ++q) a[p * k + q] /= piv;
    for (index_t j = 0; j < c; ++j) b[p * c + j] /= piv;
    for (index_t r = 0; r < k; ++r) {
      if (r == p) continue;
      const double f = a[r * k + p];
      for (index_t q = 0; q < k; ++q) a[r * k + q] -= f * a[p * k + q];
      for (index_t j = 0; j < c; ++j) b[r * c + j] -= f * b[p * c + j];
    }
  }
  check(rel_diff(mem.state().memory, b) < 1e-8, "sequential write/forget == batch ridge solve");
  bool threw = false;
  const auto stranger = random_matrix(1, k, rng);

  for (int i = 0; i < 3 && !threw; ++i) {
    try {
      mem.update(stranger.data(), &z[0], 1, -1.0);
      mem.update(stranger.data(), &z[0], 1, -1.0);
    } catch (const larimar::InvalidArgument&) {
      threw = true;
    }
  }
  check(threw, "sequential: forgetting a row never written is refused");
}

void test_kv_store_mean() {
  larimar::KeyValueStore<float> store(2, 1, larimar::Metric::Cosine);
  const std::vector<float> keys = {1, 0, 0, 1, 1, 0}, values = {2, 5, 4};
  index_t ids[3];
  store.add(keys.data(), values.data(), 3, ids);
  float out = 0;
  const std::vector<float> q = {0.9f, 0.1f};
  store.read(q.data(), 1, 1, std::nullopt, &out);
  check(store.size() == 2 && ids[2] == 0 && out == 3.0f,
        "kv_store: identical keys share a slot holding the mean");
}

// A copy of the store's rows never writes past the caller's buffer, whatever the size is by
// the time it runs (a concurrent add may have grown the store since the caller sized it).
void test_kv_store_copy_bounded() {
  larimar::KeyValueStore<float> store(2, 1, larimar::Metric::L2);
  const std::vector<float> keys = {1, 0, 0, 1, 2, 2}, values = {2, 5, 4};
  index_t ids[3];
  store.add(keys.data(), values.data(), 3, ids);
  std::vector<float> k(2 * 2 + 1, -1.0f), v(3 + 1, -1.0f);
  std::vector<double> c(2 + 1, -1.0);
  const index_t nk = store.copy_keys(k.data(), 2), nv = store.copy_values(v.data(), 5),
                nc = store.copy_counts(c.data(), 2);
  check(nk == 2 && k[3] == 1.0f && k[4] == -1.0f && nv == 3 && v[2] == 4.0f && v[3] == -1.0f &&
            nc == 2 && c[1] == 1.0 && c[2] == -1.0,
        "kv_store: copies stop at the caller's rows or the store's size");
}

void test_sparse_lstsq_one_hot() {
  const std::vector<index_t> ids = {1, 1, 3};
  const std::vector<double> weights = {1, 1, 1}, z = {2, 4, 7};
  std::vector<double> m(4);
  larimar::sparse_lstsq_write<double>(ids.data(), weights.data(), 3, 1, z.data(), 1, 4, nullptr,
                                      m.data(), {});
  check(m[0] == 0 && m[1] == 3 && m[2] == 0 && m[3] == 7,
        "sparse_lstsq: one-hot is the per-slot mean");
}

// Readers search and read while one thread adds: every read returns a whole stored value
// and the final store holds every row once.
void test_concurrent_key_value_store(std::mt19937& rng) {
  const index_t d = 16, v = 4, batch = 64, batches = 32;
  const auto keys64 = random_matrix(batch * batches, d, rng);
  const std::vector<float> keys(keys64.begin(), keys64.end());
  std::vector<float> values(batch * batches * v);
  for (size_t i = 0; i < values.size(); ++i) values[i] = float(i);  // row r holds r*v .. r*v+3
  larimar::KeyValueStore<float> store(d, v, larimar::Metric::Cosine);
  std::vector<index_t> ids(batch);
  store.add(keys.data(), values.data(), batch, ids.data());
  std::atomic<bool> done{false}, torn{false};
  std::atomic<long> reads{0};
  auto reader = [&](unsigned seed) {
    std::mt19937 r(seed);
    float out[4 * v];
    index_t found[4];
    float scores[4];
    while (!done.load()) {
      const index_t row = r() % (batch * batches);
      store.search(&keys[row * d], 1, 1, found, scores);
      store.read(&keys[row * d], 1, 1, std::nullopt, out);
      // A whole value row: v consecutive numbers starting at a multiple of v.
      const long first = long(out[0]);
      bool whole = first % v == 0;
      for (index_t t = 1; t < v; ++t) whole = whole && out[t] == float(first + t);
      if (!whole) torn = true;
      ++reads;
    }
  };
  std::vector<std::thread> readers;
  for (unsigned t = 0; t < 3; ++t) readers.emplace_back(reader, 100 + t);
  for (index_t b = 1; b < batches; ++b) {
    while (reads.load() < 8 * b) std::this_thread::yield();  // interleave with the readers
    store.add(&keys[b * batch * d], &values[b * batch * v], batch, ids.data());
  }
  done = true;
  for (auto& t : readers) t.join();
  check(!torn && reads > 0 && store.size() == batch * batches,
        "concurrent key-value store: whole reads, all rows stored (" +
            std::to_string(reads.load()) + " reads)");
}

// Readers read an episodic memory while one thread rewrites it: no crash, no torn state
// (each read equals the read of one of the two episodes).
void test_concurrent_sequential_memory(std::mt19937& rng) {
  const index_t k = 32, c = 12, n = 6;
  const auto w1 = random_matrix(n, k, rng), z1 = random_matrix(n, c, rng);
  const auto w2 = random_matrix(n, k, rng), z2 = random_matrix(n, c, rng);
  const auto q = random_matrix(3, c, rng);
  std::vector<double> expect1(3 * c), expect2(3 * c);
  {
    larimar::SequentialMemory<double> a(k, c, nullptr, 1e-6), b(k, c, nullptr, 1e-6);
    a.write(w1.data(), z1.data(), n);
    b.write(w2.data(), z2.data(), n);
    a.read(q.data(), 3, expect1.data());
    b.read(q.data(), 3, expect2.data());
  }
  larimar::SequentialMemory<double> mem(k, c, nullptr, 1e-6);
  mem.write(w1.data(), z1.data(), n);
  std::atomic<bool> done{false}, torn{false};
  std::atomic<long> reads{0};
  auto reader = [&]() {
    std::vector<double> out(3 * c);
    while (!done.load()) {
      mem.read(q.data(), 3, out.data());
      if (rel_diff(out, expect1) > 1e-9 && rel_diff(out, expect2) > 1e-9) torn = true;
      ++reads;
    }
  };
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) readers.emplace_back(reader);
  for (int i = 0; i < 200; ++i) {
    while (reads.load() < i) std::this_thread::yield();
    if (i % 2)
      mem.write(w1.data(), z1.data(), n);
    else
      mem.write(w2.data(), z2.data(), n);
  }
  done = true;
  for (auto& t : readers) t.join();
  check(!torn, "concurrent sequential memory: every read saw a whole state");
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  test_lstsq_square(rng);
  test_lstsq_wide_fits(rng);
  test_pinv_identity(rng);
  test_topk_ties();
  test_sequential_invariant(rng);
  test_kv_store_mean();
  test_kv_store_copy_bounded();
  test_sparse_lstsq_one_hot();
  test_concurrent_key_value_store(rng);
  test_concurrent_sequential_memory(rng);
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
