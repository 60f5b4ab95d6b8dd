// Shared vocabulary of the kernel: index type, argument errors, threading and finite checks.
#pragma once

#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

// Hot loops are compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one at run
// time, so one wheel runs on any x86-64 CPU (no -march=native).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LARIMAR_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LARIMAR_MULTIVERSION
#endif

namespace larimar {

using index_t = std::int64_t;

// A bad argument. The message always starts with the argument's name, so bindings can
// pass it through unchanged ("W: expected 2 rows, got 3").
class InvalidArgument : public std::invalid_argument {
 public:
  InvalidArgument(const std::string& arg, const std::string& what)
      : std::invalid_argument(arg + ": " + what) {}
};

// Raised before allocating when a request would need more memory than the configured limit
// (bindings map it to MemoryError, like std::bad_alloc).
class ResourceLimit : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Largest allocation a single request may make, in bytes (default: the machine's physical
// memory). check_allocation throws ResourceLimit naming arg when `bytes` exceeds it; bytes
// is a double so that products of huge dimensions cannot overflow on the way.
void set_memory_limit(double bytes);
double memory_limit();
void check_allocation(double bytes, const std::string& arg, const std::string& what);

// Raised when a factorisation or solve cannot produce a trustworthy answer.
class NumericalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& arg, const std::string& what) {
  throw InvalidArgument(arg, what);
}

inline void require(bool ok, const std::string& arg, const std::string& what) {
  if (!ok) fail(arg, what);
}

inline std::string str(index_t v) { return std::to_string(v); }

// Every dimension must be positive and small enough for 32-bit BLAS (scipy-openblas32).
void check_dim(index_t value, const std::string& arg, const std::string& name);

// Rejects NaN and Inf anywhere in the array (parallel, early exit per thread).
template <class T>
void check_finite(const T* data, index_t count, const std::string& arg);

// A result that came out NaN or Inf from finite inputs overflowed the dtype: refuse it
// with an error naming the inputs rather than hand back Inf.
template <class T>
void check_result(const T* data, index_t count, const std::string& args);

void check_scalar(double value, const std::string& arg, bool allow_zero, bool allow_negative);

// Instruction set the multiversioned kernel loops run with on this CPU: "avx512f", "avx2"
// or "x86-64 baseline" (chosen at load time; no -march=native anywhere).
std::string simd_level();
// Whether reading [data, data + bytes) may wait on a disk: some of it lies in a file's memory
// map (Linux's /proc/self/maps) and is not resident now (mincore). False for anonymous memory
// and for a mapped file already in memory (model weights in use); true wherever the OS cannot
// say.
bool may_read_from_disk(const void* data, std::size_t bytes);

// Threads used by kernel loops (OpenMP) and by the BLAS for single large problems.
int num_threads();
void set_num_threads(int n);

// fn(lo, len) on `parts` contiguous blocks of [0, extent), one OpenMP thread each, the
// same block to the same thread number in every call: the split of a large product or solve
// into independent slices.
template <class Fn>
void for_blocks(index_t extent, index_t parts, Fn&& fn) {
  const index_t step = (extent + parts - 1) / parts;
#pragma omp parallel for num_threads(static_cast<int>(parts)) schedule(static)
  for (index_t p = 0; p < parts; ++p) {
    const index_t lo = p * step, len = extent - lo < step ? extent - lo : step;
    if (len > 0) fn(lo, len);
  }
}

// Threading model: the BLAS always runs single-threaded and every parallel loop is ours
// (OpenMP), so BLAS and OpenMP thread pools never compete for the cores: large single
// products are split into per-thread blocks (blas::gemm_parallel), batches run one episode
// per thread. Runs body(i) for i in [0, count) across OpenMP threads; the first exception
// thrown by any body is rethrown here.
template <class Body>
void parallel_for(index_t count, Body&& body) {
  const int threads = num_threads();
  if (count <= 1 || threads <= 1) {
    for (index_t i = 0; i < count; ++i) body(i);
    return;
  }
  std::exception_ptr error;
  const int team = static_cast<int>(count < threads ? count : threads);
#pragma omp parallel num_threads(team)
  {
#pragma omp for schedule(dynamic)
    for (index_t i = 0; i < count; ++i) {
      try {
        body(i);
      } catch (...) {
#pragma omp critical(larimar_parallel_error)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

template <class T>
constexpr double epsilon() {
  return static_cast<double>(std::numeric_limits<T>::epsilon());
}

// Default relative singular-value cutoff, as numpy.linalg.lstsq(rcond=None).
template <class T>
double default_rcond(index_t rows, index_t cols) {
  return static_cast<double>(rows > cols ? rows : cols) * epsilon<T>();
}

template <class Dst, class Src>
std::vector<Dst> convert(const Src* src, index_t count) {
  return std::vector<Dst>(src, src + count);
}

}  // namespace larimar
