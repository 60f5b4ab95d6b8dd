// Larimar's memory state with sequential write and forget (DESIGN.md section 2, eqs. 2-4).
#pragma once

#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "larimar/common.hpp"
#include "larimar/pinv.hpp"

namespace larimar {

// M = argmin_M |W M - Z|^2 + ridge |M - M0|^2 over the rows currently stored, where M0 is
// the prior (zero when none). Kept as M, C = W^T W + ridge I and P = C^-1, in float64
// whatever T is, because Woodbury updates accumulate rounding. T is the dtype of the
// arrays callers pass and receive.
template <class T>
class SequentialMemory {
 public:
  SequentialMemory(index_t memory_size, index_t code_size, const T* prior, double ridge);

  // Replace every stored row by this episode: W (n x K), Z (n x C).
  void write(const T* w, const T* z, index_t n);
  // Add (alpha > 0) or remove (alpha < 0) rows, weighted by |alpha|. Woodbury on P for
  // few rows, a fresh Cholesky of C for many. Throws, state untouched, when removing the
  // rows would leave C not positive definite (they were never written).
  void update(const T* w, const T* z, index_t n, double alpha);

  // W (n x K) = Z (n x C) M^+; M^+ computed once per memory state.
  void address(const T* z, index_t n, T* w) const;
  // W (n x K) = Z (n x C) M0^+; needs a prior.
  void prior_address(const T* z, index_t n, T* w) const;
  // z_read (n x C) = (Z M^+) M, computed as the projection of Z on M's row space.
  void read(const T* z, index_t n, T* out) const;

  void copy_memory(T* out) const;  // K x C
  index_t memory_size() const { return k_; }
  index_t code_size() const { return c_; }
  double ridge() const { return ridge_; }
  bool has_prior() const { return !prior_.empty(); }
  const std::vector<double>& prior() const { return prior_; }
  // Float64 state, for persistence: M (K x C), C and P (K x K).
  // Copies, taken under the state lock.
  std::vector<double> state_memory() const;
  std::vector<double> state_gram() const;
  std::vector<double> state_precision() const;
  void set_state(const double* m, const double* gram, const double* precision);

 private:
  void check_rows(const T* w, const T* z, index_t n) const;
  void reset_state();
  void update_locked(const T* w, const T* z, index_t n, double alpha);
  bool woodbury_update(const std::vector<double>& wd, std::vector<double>& resid, index_t n,
                       double alpha);
  void fold_pending() const;
  void invalidate();
  // M^+ in factored form, built on first use after each change of M.
  const LowRankPinv<T>& memory_pinv() const;

  index_t k_, c_;
  double ridge_;
  std::vector<double> prior_;      // K x C or empty
  std::vector<double> m_;          // K x C
  // C = W^T W + ridge I. Rows written by Woodbury updates wait in pending_ and are folded
  // into C in blocks (one GEMM per block instead of a K x K pass per row).
  mutable std::vector<double> gram_;       // K x K
  mutable std::vector<double> pending_;    // rows x K, each row scaled by sqrt|alpha|
  mutable std::vector<double> pending_sign_;
  std::vector<double> precision_;  // K x K
  std::unique_ptr<LowRankPinv<T>> prior_pinv_;
  mutable std::unique_ptr<LowRankPinv<T>> memory_pinv_;
  mutable std::mutex cache_mutex_;
  // Readers (address, read, copies) share; write, update and set_state are exclusive.
  mutable std::shared_mutex state_mutex_;
};

}  // namespace larimar
