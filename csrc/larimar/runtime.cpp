#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "larimar/common.hpp"
#include "larimar/linalg.hpp"

namespace larimar {

namespace {
std::atomic<int> g_threads{0};  // 0: not chosen yet, use the OpenMP default

double physical_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? double(pages) * double(page) : 1e18;
}
std::atomic<double> g_memory_limit{physical_memory()};

// The BLAS is single-threaded for the life of the process (see common.hpp).
const bool g_blas_single = [] {
  blas::set_threads(1);
  return true;
}();
}  // namespace

void check_dim(index_t value, const std::string& arg, const std::string& name) {
  require(value > 0, arg, "expected " + name + " > 0, got " + str(value) + " (empty input)");
  require(value <= std::numeric_limits<int>::max(), arg,
          name + " = " + str(value) + " exceeds the 32-bit BLAS limit");
}

namespace {

// True when no entry is NaN or Inf: |x| <= max is false exactly for those. Blocks of 16K
// entries, each an OR over comparisons with no early exit inside, so that the compiler
// vectorises it (a short-circuit && per entry does not); large arrays split over threads.
#define LARIMAR_ALL_FINITE(T)                                                         \
  LARIMAR_MULTIVERSION                                                                \
  bool finite_block(const T* data, index_t count) {                                   \
    constexpr T kMax = std::numeric_limits<T>::max();                                 \
    int bad = 0;                                                                      \
    _Pragma("omp simd reduction(| : bad)") for (index_t i = 0; i < count; ++i) bad |= \
        std::abs(data[i]) <= kMax ? 0 : 1;                                            \
    return bad == 0;                                                                  \
  }
LARIMAR_ALL_FINITE(float)
LARIMAR_ALL_FINITE(double)
#undef LARIMAR_ALL_FINITE

template <class T>
bool all_finite(const T* data, index_t count) {
  constexpr index_t kBlock = index_t(1) << 14;
  const index_t blocks = (count + kBlock - 1) / kBlock;
  bool finite = true;
#pragma omp parallel for reduction(&& : finite) schedule(static) \
    num_threads(count > (1 << 16) && !omp_in_parallel() ? num_threads() : 1)
  for (index_t b = 0; b < blocks; ++b)
    finite = finite && finite_block(data + b * kBlock, std::min(kBlock, count - b * kBlock));
  return finite;
}

}  // namespace

template <class T>
void check_finite(const T* data, index_t count, const std::string& arg) {
  require(all_finite(data, count), arg, "contains NaN or Inf; expected finite values");
}

template <class T>
void check_result(const T* data, index_t count, const std::string& args) {
  require(all_finite(data, count), args,
          "the result overflows the range of the dtype; rescale the inputs or use float64");
}

template void check_result<float>(const float*, index_t, const std::string&);
template void check_result<double>(const double*, index_t, const std::string&);
template void check_finite<float>(const float*, index_t, const std::string&);
template void check_finite<double>(const double*, index_t, const std::string&);

void check_scalar(double value, const std::string& arg, bool allow_zero, bool allow_negative) {
  require(std::isfinite(value), arg, "expected a finite number, got " + std::to_string(value));
  if (!allow_negative) require(value >= 0, arg, "expected >= 0, got " + std::to_string(value));
  if (!allow_zero) require(value != 0, arg, "expected a non-zero value, got 0");
}

std::string simd_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  return "x86-64 baseline";
#else
  return "portable C++";
#endif
}

void set_memory_limit(double bytes) {
  require(std::isfinite(bytes) && bytes > 0, "limit",
          "expected a positive number of bytes, got " + std::to_string(bytes));
  g_memory_limit.store(bytes);
}

double memory_limit() { return g_memory_limit.load(); }

void check_allocation(double bytes, const std::string& arg, const std::string& what) {
  const double limit = g_memory_limit.load();
  if (bytes <= limit) return;
  char buf[160];
  std::snprintf(buf, sizeof buf, " needs %.3g GiB, over the memory limit of %.3g GiB",
                bytes / 1073741824.0, limit / 1073741824.0);
  throw ResourceLimit(arg + ": " + what + buf + " (larimar_ext.set_memory_limit)");
}

namespace {
// Whether some byte of [lo, hi) lies in a file mapping (nonzero inode in /proc/self/maps).
bool file_mapped(std::uintptr_t lo, std::uintptr_t hi) {
  std::FILE* maps = std::fopen("/proc/self/maps", "r");
  if (maps == nullptr) return true;
  bool file = false, seen = false;
  char line[4096];
  // Lines: "start-end perms offset dev inode [path]".
  while (!file && std::fgets(line, sizeof line, maps) != nullptr) {
    unsigned long start = 0, end = 0, inode = 0;
    if (std::sscanf(line, "%lx-%lx %*s %*s %*s %lu", &start, &end, &inode) != 3) {
      file = true;  // a line this parser does not read: assume the worst
      break;
    }
    if (end <= lo || start >= hi) continue;
    seen = true;
    file = inode != 0;
  }
  std::fclose(maps);
  return file || !seen;
}
}  // namespace

bool may_read_from_disk(const void* data, std::size_t bytes) {
  if (bytes == 0) return false;
  const std::uintptr_t page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const std::uintptr_t lo = reinterpret_cast<std::uintptr_t>(data) / page * page;
  const std::uintptr_t hi = reinterpret_cast<std::uintptr_t>(data) + bytes;
  if (!file_mapped(lo, hi)) return false;
  std::vector<unsigned char> resident((hi - lo + page - 1) / page);
  if (mincore(reinterpret_cast<void*>(lo), hi - lo, resident.data()) != 0) return true;
  return std::any_of(resident.begin(), resident.end(), [](unsigned char r) { return !(r & 1); });
}

int num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

void set_num_threads(int n) {
  require(n > 0, "n", "expected a positive thread count, got " + std::to_string(n));
  g_threads.store(n, std::memory_order_relaxed);
}

}  // namespace larimar
