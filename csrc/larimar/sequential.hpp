// Larimar's memory state with sequential write and forget (docs/DESIGN.md section 2.5, Larimar eqs.
// 2-4).
#pragma once

#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "larimar/common.hpp"
#include "larimar/pinv.hpp"

namespace larimar {

// M = argmin_M |W M - Z|^2 + ridge |M - M0|^2 over the rows currently stored, where M0 is
// the prior (zero when none): the solution of C M = B with C = W^T W + ridge I and
// B = W^T Z + ridge M0. Kept as M, C, B and P = C^-1 in float64 whatever T is (Woodbury
// updates accumulate rounding). C and B are exact running sums, so any update can fall
// back to a fresh solve of C M = B that carries no drift. T is the dtype callers use.
template <class T>
class SequentialMemory {
 public:
  SequentialMemory(index_t memory_size, index_t code_size, const T* prior, double ridge);

  // Replace every stored row by this episode: W (n x K), Z (n x C).
  void write(const T* w, const T* z, index_t n);
  // Add (alpha > 0) or remove (alpha < 0) rows, weighted by |alpha|: Woodbury on P for few
  // rows, a fresh Cholesky of C' for many or when Woodbury would lose its digits. Throws,
  // state untouched, when removing the rows would leave C not positive definite.
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

  // The float64 state, for persistence: M (K x C), C (K x K), B (K x C), P (K x K).
  struct State {
    std::vector<double> memory, gram, rhs, precision;
  };
  State state() const;
  void set_state(const State& state);

 private:
  void check_rows(const T* w, const T* z, index_t n) const;
  void reset_state();
  void update_locked(const T* w, const T* z, index_t n, double alpha);
  bool woodbury_update(const std::vector<double>& wd, const std::vector<double>& zd, index_t n,
                       double alpha);
  void direct_update(const std::vector<double>& wd, const std::vector<double>& zd, index_t n,
                     double alpha);
  void write_underdetermined(const std::vector<double>& wd, const std::vector<double>& zd,
                             index_t n);
  void fold_pending() const;
  void invalidate();
  const LowRankPinv<T>& memory_pinv() const;
  // The checks, lock and result check around W = Z M^+ (project false) or (Z M^+) M
  // (project true); name is the query's argument name in errors.
  void through_memory_pinv(const T* z, index_t n, const char* name, bool project, T* out) const;

  index_t k_, c_;
  double ridge_;
  std::vector<double> prior_;      // K x C or empty
  std::vector<double> m_;          // K x C
  std::vector<double> precision_;  // K x K
  // C and B, with the rows of Woodbury updates waiting in pending_* to be folded in blocks
  // (one GEMM per block instead of a K x K pass per row). Rows are scaled by sqrt|alpha|.
  mutable std::vector<double> gram_;       // K x K
  mutable std::vector<double> rhs_;        // K x C
  mutable std::vector<double> pending_w_;  // rows x K
  mutable std::vector<double> pending_z_;  // rows x C
  mutable std::vector<double> pending_sign_;
  std::unique_ptr<LowRankPinv<T>> prior_pinv_;
  mutable std::unique_ptr<LowRankPinv<T>> memory_pinv_;
  mutable std::mutex cache_mutex_;
  // Readers (address, read, copies) share; write, update and set_state are exclusive.
  mutable std::shared_mutex state_mutex_;
};

}  // namespace larimar
