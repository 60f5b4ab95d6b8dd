// pybind11 bindings: float32/float64 overloads, shape checks, GIL release. No memory math here.
//
// Dtype and rank are checked in one layer, larimar_ext._arrays.Boundary (the errors that name
// the argument and the array it took its dtype from: docs/RELIABILITY.md), which also makes
// the documented copies. An array argument here is therefore a C-contiguous numpy array of
// exactly the overload's dtype; pybind11 refuses anything else without converting it
// (`noconvert`, TypeError "incompatible function arguments"), so even a direct call of
// _core cannot hand the kernel another layout, and a missing axis raises IndexError.
// What stays here is what only the binding sees: how the arguments' shapes fit together
// (ValueError naming the argument), the size of each result against the memory limit, and
// the GIL, released while the kernel runs. Kernel InvalidArgument -> ValueError,
// NumericalError -> RuntimeError, ResourceLimit and bad_alloc -> MemoryError.
//
// A new op is a kernel function, an `Op` template here (shapes in, `compute` out) and one
// `def_float_op` line; docs/ADDING_AN_OP.md lists the other files it touches.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "larimar/address.hpp"
#include "larimar/common.hpp"
#include "larimar/int8_linear.hpp"
#include "larimar/kv_store.hpp"
#include "larimar/linalg.hpp"
#include "larimar/lstsq.hpp"
#include "larimar/pinv.hpp"
#include "larimar/sequential.hpp"
#include "larimar/sparse_lstsq.hpp"
#include "larimar/topk.hpp"

namespace py = pybind11;
using larimar::index_t;

namespace {

// An array argument as Boundary hands it over (see the top of the file).
template <class T>
using Array = py::array_t<T, py::array::c_style>;
template <class T>
using OptionalArray = std::optional<Array<T>>;  // None -> std::nullopt

// The keyword of an array argument: matched only without conversion.
py::arg array_arg(const char* name) { return py::arg(name).noconvert(); }

void same_dim(index_t a, index_t b, const std::string& name, const std::string& what) {
  if (a != b)
    throw py::value_error(name + ": " + what + " (" + std::to_string(a) + " vs " +
                          std::to_string(b) + ")");
}

// 1 <= k <= n, checked before the (rows, k) results of a search are sized.
void check_k(index_t k, index_t n, const char* name, const char* of_what) {
  if (k < 1 || k > n)
    throw py::value_error(std::string(name) + ": expected 1 <= " + name + " <= number of " +
                          of_what + " (" + std::to_string(n) + "), got " + std::to_string(k));
}

// One result array of a call: its element type and shape.
template <class T>
struct Out {
  std::vector<py::ssize_t> shape;
};

// A result array, after checking its size against the memory limit (so a request for a
// petabyte fails with MemoryError naming `arg` instead of asking the allocator).
template <class T>
Array<T> output(const std::vector<py::ssize_t>& shape, const char* arg) {
  double bytes = sizeof(T);
  for (py::ssize_t d : shape) bytes *= static_cast<double>(d);
  larimar::check_allocation(bytes, arg, "the result");
  return Array<T>(shape);
}

// Runs f with the GIL released. f must not touch a Python object: array dimensions are read
// before (shape() may raise), data pointers are plain reads of the array's struct.
template <class F>
void without_gil(F&& f) {
  py::gil_scoped_release release;
  f();
}

// The shape of every kernel call: allocate the results (each sized against the memory limit,
// naming `arg`), run kernel(result data pointers...) without the GIL, return the one result
// or a tuple of them.
template <class... Ts, class Kernel>
auto compute(const char* arg, Kernel&& kernel, const Out<Ts>&... outs) {
  std::tuple<Array<Ts>...> results{output<Ts>(outs.shape, arg)...};  // allocated left to right
  std::apply(
      [&](auto&... r) {
        auto data = std::make_tuple(r.mutable_data()...);
        without_gil([&] { std::apply(kernel, data); });
      },
      results);
  if constexpr (sizeof...(Ts) == 1)
    return std::get<0>(std::move(results));
  else
    return std::apply([](auto&... r) { return py::make_tuple(r...); }, results);
}

// The two arrays of a batchable op: 2-D each, or 3-D with one leading batch size.
struct BatchedPair {
  bool batched;
  index_t batch, rows_a, cols_a, rows_b, cols_b;
  std::vector<py::ssize_t> shape(index_t rows, index_t cols) const {
    return batched ? std::vector<py::ssize_t>{batch, rows, cols}
                   : std::vector<py::ssize_t>{rows, cols};
  }
};

template <class T>
BatchedPair batched_pair(const Array<T>& a, const char* a_name, const Array<T>& b,
                         const char* b_name) {
  same_dim(b.ndim(), a.ndim(), b_name, std::string("expected as many dimensions as ") + a_name);
  const int d = static_cast<int>(a.ndim());
  const bool batched = d == 3;
  const BatchedPair p{batched,        batched ? a.shape(0) : 1, a.shape(d - 2),
                      a.shape(d - 1), b.shape(d - 2),           b.shape(d - 1)};
  if (batched)
    same_dim(b.shape(0), p.batch, b_name, std::string("expected the batch size of ") + a_name);
  return p;
}

// None -> the kernel's default (signalled as -1); otherwise a finite cutoff >= 0.
double rcond_value(std::optional<double> rcond) {
  if (!rcond) return -1.0;
  if (!std::isfinite(*rcond) || *rcond < 0)
    throw py::value_error("rcond: expected None or a finite number >= 0, got " +
                          std::to_string(*rcond));
  return *rcond;
}

// ------------------------------------------------------------------------ functional ops
// Each op is a class template over the dtype with one static `call`: def_float_op binds
// its float and double instances as the two overloads of one Python function.

template <class T>
struct LstsqWrite {
  static py::array call(Array<T> w, Array<T> z, double ridge, std::optional<double> rcond) {
    const BatchedPair p = batched_pair(w, "W", z, "Z");
    same_dim(p.rows_b, p.rows_a, "Z", "expected as many rows as W");
    larimar::LstsqOptions options;
    options.ridge = ridge;
    options.rcond = rcond_value(rcond);
    return compute(
        "W",
        [&](T* m) {
          larimar::lstsq_write(w.data(), z.data(), m, p.batch, p.rows_a, p.cols_a, p.cols_b,
                               options);
        },
        Out<T>{p.shape(p.cols_a, p.cols_b)});
  }
};

// Queries Z (B? x N x C) against a matrix R (B? x K x C) through R^+: addresses Z R^+
// (N x K results) or reads Z R^+ R (N x C results).
template <class T, bool kRead>
struct ThroughPinv {
  static py::array call(Array<T> z, Array<T> r, std::optional<double> rcond) {
    const char *z_name = kRead ? "Zq" : "Z", *r_name = kRead ? "M" : "R";
    const BatchedPair p = batched_pair(z, z_name, r, r_name);
    const index_t b = p.batch, n = p.rows_a, c = p.cols_a, k = p.rows_b;
    same_dim(p.cols_b, c, r_name, std::string("expected the code size of ") + z_name);
    const double cutoff = rcond_value(rcond);
    return compute(
        r_name,
        [&](T* out) {
          if constexpr (kRead)
            larimar::pinv_read(z.data(), r.data(), out, b, n, k, c, cutoff);
          else
            larimar::pinv_address(z.data(), r.data(), out, b, n, k, c, cutoff);
        },
        Out<T>{p.shape(n, kRead ? c : k)});
  }
};
template <class T>
using PinvAddress = ThroughPinv<T, false>;
template <class T>
using PinvRead = ThroughPinv<T, true>;

template <class T>
struct GaussianAddress {
  static py::object call(Array<T> z, Array<T> r, double alpha, std::optional<index_t> top_k) {
    const index_t n = z.shape(0), c = z.shape(1), k = r.shape(0);
    same_dim(r.shape(1), c, "R", "expected the code size of Z");
    if (!top_k)
      return compute(
          "R", [&](T* w) { larimar::gaussian_address(z.data(), r.data(), n, k, c, alpha, w); },
          Out<T>{{n, k}});
    const index_t kk = *top_k;
    check_k(kk, k, "top_k", "keys");  // before the (N, top_k) outputs are allocated
    return compute(
        "top_k",
        [&](index_t* ids, T* w) {
          larimar::gaussian_address_topk(z.data(), r.data(), n, k, c, alpha, kk, ids, w);
        },
        Out<index_t>{{n, kk}}, Out<T>{{n, kk}});
  }
};

template <class T>
struct OnehotAddress {
  static py::tuple call(Array<T> z, Array<T> r) {
    same_dim(r.shape(1), z.shape(1), "R", "expected the code size of Z");
    const index_t n = z.shape(0), c = z.shape(1), k = r.shape(0);
    return compute(
        "R",
        [&](index_t* ids, T* w) { larimar::onehot_address(z.data(), r.data(), n, k, c, ids, w); },
        Out<index_t>{{n, 1}}, Out<T>{{n, 1}});
  }
};

template <class T>
struct ReadDense {
  static py::array call(Array<T> w, Array<T> m) {
    const BatchedPair p = batched_pair(w, "W", m, "M");
    same_dim(p.rows_b, p.cols_a, "M", "expected as many memory slots as W has columns");
    return compute(
        "M",
        [&](T* out) {
          larimar::read_dense(w.data(), m.data(), out, p.batch, p.rows_a, p.cols_a, p.cols_b);
        },
        Out<T>{p.shape(p.rows_a, p.cols_b)});
  }
};

template <class T>
struct ReadSparse {
  static py::array call(Array<index_t> ids, Array<T> w, Array<T> m) {
    same_dim(w.shape(0), ids.shape(0), "W", "expected indices and weights of the same shape");
    same_dim(w.shape(1), ids.shape(1), "W", "expected indices and weights of the same shape");
    const index_t n = ids.shape(0), kk = ids.shape(1), k = m.shape(0), c = m.shape(1);
    return compute(
        "M",
        [&](T* out) { larimar::read_sparse(ids.data(), w.data(), n, kk, m.data(), k, c, out); },
        Out<T>{{n, c}});
  }
};

template <class T>
struct GaussianReadScored {
  static py::array call(Array<T> scores, Array<T> values, const std::string& metric_name,
                        double alpha, OptionalArray<T> q, OptionalArray<T> key_sq) {
    const larimar::Metric metric = larimar::parse_metric(metric_name);
    const index_t n = scores.shape(0), k = scores.shape(1), c = values.shape(2);
    same_dim(values.shape(0), n, "values", "expected one row of candidates per row of scores");
    same_dim(values.shape(1), k, "values", "expected one value per score");
    // Q and key_sq: None is a null pointer; the kernel says which metric needs them.
    index_t d = 0;
    if (q) {
      same_dim(q->shape(0), n, "Q", "expected one query per row of scores");
      d = q->shape(1);
    }
    if (key_sq) {
      same_dim(key_sq->shape(0), n, "key_sq", "expected the shape of scores");
      same_dim(key_sq->shape(1), k, "key_sq", "expected the shape of scores");
    }
    const T* pq = q ? q->data() : nullptr;
    const T* pks = key_sq ? key_sq->data() : nullptr;
    return compute(
        "values",
        [&](T* out) {
          larimar::gaussian_read_scored(scores.data(), values.data(), n, k, c, metric, pq, d, pks,
                                        alpha, out);
        },
        Out<T>{{n, c}});
  }
};

template <class T>
struct Topk {
  static py::tuple call(Array<T> q, Array<T> keys, index_t k, const std::string& metric_name) {
    const larimar::Metric metric = larimar::parse_metric(metric_name);
    same_dim(keys.shape(1), q.shape(1), "keys", "expected the dimension of Q");
    const index_t nq = q.shape(0), nk = keys.shape(0), d = q.shape(1);
    check_k(k, nk, "k", "keys");
    return compute(
        "k",
        [&](index_t* ids, T* scores) {
          larimar::topk(q.data(), nq, keys.data(), nk, d, k, metric, ids, scores);
        },
        Out<index_t>{{nq, k}}, Out<T>{{nq, k}});
  }
};

template <class T>
struct SparseLstsqWrite {
  static py::tuple call(Array<index_t> ids, Array<T> w, Array<T> z, index_t memory_size,
                        double ridge, OptionalArray<T> prior, double tol, index_t max_iter) {
    same_dim(w.shape(0), ids.shape(0), "weights", "expected the shape of indices");
    same_dim(w.shape(1), ids.shape(1), "weights", "expected the shape of indices");
    same_dim(z.shape(0), ids.shape(0), "Z", "expected one row per row of indices");
    const index_t n = ids.shape(0), kk = ids.shape(1), c = z.shape(1);
    if (memory_size < 1)
      throw py::value_error("memory_size: expected >= 1, got " + std::to_string(memory_size));
    if (prior) {
      same_dim(prior->shape(0), memory_size, "prior", "expected memory_size rows");
      same_dim(prior->shape(1), c, "prior", "expected the code size of Z");
    }
    const T* pp = prior ? prior->data() : nullptr;
    larimar::SparseLstsqOptions options;
    options.ridge = ridge;
    options.tol = tol;
    options.max_iter = max_iter;
    larimar::SparseLstsqReport report;
    py::array m = compute(
        "memory_size",
        [&](T* out) {
          report = larimar::sparse_lstsq_write(ids.data(), w.data(), n, kk, z.data(), c,
                                               memory_size, pp, out, options);
        },
        Out<T>{{memory_size, c}});
    py::dict info;
    info["touched"] = report.touched;
    info["iterations"] = report.iterations;
    info["residual"] = report.residual;
    return py::make_tuple(m, info);
  }
};

// Binds Op<float>::call and Op<double>::call as the overloads of one function `name`.
template <template <class> class Op, class... Args>
void def_float_op(py::module_& m, const char* name, const char* doc, const Args&... args) {
  m.def(name, &Op<float>::call, doc, args...);
  m.def(name, &Op<double>::call, doc, args...);
}

// ------------------------------------------------------------------------- memory objects
// A copy of an object's contents: a fresh array of `shape`, filled by fill(data), which
// returns the rows it wrote (at most shape[0]: the object's size may have changed since
// the shape was read, see KeyValueStore::copy_keys); the array is cut to them.
template <class T, class Fill>
py::object copy_out(std::vector<py::ssize_t> shape, Fill&& fill) {
  py::array_t<T> out(shape);
  const index_t rows = fill(out.mutable_data());
  if (rows == shape[0]) return std::move(out);
  return out[py::slice(0, rows, 1)];
}

py::object vector_copy(const std::vector<double>& v, std::vector<py::ssize_t> shape) {
  return copy_out<double>(shape, [&](double* out) {
    std::copy(v.begin(), v.end(), out);
    return shape[0];
  });
}

// A 2-D argument of a memory object: `rows` rows (when given) of `cols` columns, the
// memory's own sizes; the message names the size by `cols_name`.
template <class T>
index_t rows_of(const Array<T>& a, const char* name, index_t cols, const char* cols_name,
                std::optional<index_t> rows = std::nullopt, const char* rows_what = nullptr) {
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + ": expected a 2-D array (rows, " + cols_name +
                          " columns), got " + std::to_string(a.ndim()) + " dimensions");
  same_dim(a.shape(1), cols, name, std::string("expected ") + cols_name + " columns");
  if (rows) same_dim(a.shape(0), *rows, name, rows_what);
  return a.shape(0);
}

// A query method of a memory object: arg (n x cols()) in, op's (n x width()) result out.
template <class T, class Self>
auto rows_query(const char* arg, index_t (Self::*cols)() const, const char* cols_name,
                index_t (Self::*width)() const, void (Self::*op)(const T*, index_t, T*) const) {
  return [=](const Self& self, Array<T> z) {
    const index_t n = rows_of(z, arg, (self.*cols)(), cols_name);
    return compute(
        arg, [&](T* out) { (self.*op)(z.data(), n, out); }, Out<T>{{n, (self.*width)()}});
  };
}

// A store method that takes saved rows (keys, values, counts), checked against the store's
// sizes and run without the GIL.
template <class T, class Store>
auto saved_rows_method(void (Store::*op)(const T*, const T*, const double*, index_t)) {
  return [op](Store& self, Array<T> keys, Array<T> values, Array<double> counts) {
    const index_t n = rows_of(keys, "keys", self.key_dim(), "key_dim");
    rows_of(values, "values", self.value_dim(), "value_dim", n, "expected one row per key");
    same_dim(counts.shape(0), n, "counts", "expected one count per key");
    without_gil([&] { (self.*op)(keys.data(), values.data(), counts.data(), n); });
  };
}

template <class T>
void bind_prepared_pinv(py::module_& m, const char* name) {
  using Pinv = larimar::PreparedPinv<T>;
  py::class_<Pinv>(m, name)
      .def(py::init([](Array<T> r, std::optional<double> rcond) {
             const index_t k = r.shape(0), c = r.shape(1);
             const double cutoff = rcond_value(rcond);
             const T* data = r.data();
             std::unique_ptr<Pinv> pinv;
             without_gil([&] { pinv = std::make_unique<Pinv>(data, k, c, cutoff); });
             return pinv;
           }),
           array_arg("R"), py::arg("rcond").none(true))
      .def("address", rows_query<T>("Z", &Pinv::cols, "C", &Pinv::rows, &Pinv::address),
           array_arg("Z"))
      .def("project", rows_query<T>("Z", &Pinv::cols, "C", &Pinv::cols, &Pinv::project),
           array_arg("Z"))
      .def("matrix",
           [](const Pinv& self) {
             return compute(
                 "R", [&](T* out) { self.matrix(out); }, Out<T>{{self.cols(), self.rows()}});
           })
      .def_property_readonly("rank", &Pinv::rank)
      .def_property_readonly("rows", &Pinv::rows)
      .def_property_readonly("cols", &Pinv::cols);
}

template <class T>
void bind_sequential(py::module_& m, const char* name) {
  using Mem = larimar::SequentialMemory<T>;
  py::class_<Mem>(m, name)
      .def(py::init([](index_t k, index_t c, OptionalArray<T> prior, double ridge) {
             if (!prior) return std::make_unique<Mem>(k, c, nullptr, ridge);
             rows_of(*prior, "prior", c, "code_size", k, "expected memory_size rows");
             const T* pp = prior->data();
             std::unique_ptr<Mem> mem;
             without_gil([&] { mem = std::make_unique<Mem>(k, c, pp, ridge); });
             return mem;
           }),
           py::arg("memory_size"), py::arg("code_size"), array_arg("prior"), py::arg("ridge"))
      .def(
          "write",
          [](Mem& self, OptionalArray<T> w, Array<T> z) {
            const index_t n = rows_of(z, "Z", self.code_size(), "code_size");
            if (!w) {  // W = Z M0^+, computed into a scratch array first
              w = compute(
                  "Z", [&](T* out) { self.prior_address(z.data(), n, out); },
                  Out<T>{{n, self.memory_size()}});
            } else {
              rows_of(*w, "W", self.memory_size(), "memory_size", n,
                      "expected one row per row of Z");
            }
            without_gil([&] { self.write(w->data(), z.data(), n); });
          },
          array_arg("W"), array_arg("Z"))
      .def(
          "update",
          [](Mem& self, Array<T> w, Array<T> z, double alpha) {
            const index_t n = rows_of(z, "Z", self.code_size(), "code_size");
            rows_of(w, "W", self.memory_size(), "memory_size", n, "expected one row per row of Z");
            without_gil([&] { self.update(w.data(), z.data(), n, alpha); });
          },
          array_arg("W"), array_arg("Z"), py::arg("alpha"))
      .def("address",
           rows_query<T>("Z", &Mem::code_size, "code_size", &Mem::memory_size, &Mem::address),
           array_arg("Z"))
      .def("read", rows_query<T>("Zq", &Mem::code_size, "code_size", &Mem::code_size, &Mem::read),
           array_arg("Zq"))
      .def("memory",
           [](const Mem& self) {
             return copy_out<T>({self.memory_size(), self.code_size()}, [&](T* out) {
               self.copy_memory(out);
               return self.memory_size();
             });
           })
      .def("state",
           [](const Mem& self) {
             const index_t k = self.memory_size(), c = self.code_size();
             const typename Mem::State st = self.state();
             py::dict d;
             d["memory"] = vector_copy(st.memory, {k, c});
             d["gram"] = vector_copy(st.gram, {k, k});
             d["rhs"] = vector_copy(st.rhs, {k, c});
             d["precision"] = vector_copy(st.precision, {k, k});
             if (self.has_prior()) d["prior"] = vector_copy(self.prior(), {k, c});
             return d;
           })
      .def(
          "set_state",
          [](Mem& self, Array<double> memory, Array<double> gram, Array<double> rhs,
             Array<double> precision) {
            const index_t k = self.memory_size(), c = self.code_size();
            auto take = [&](const Array<double>& a, const char* name, index_t rows, index_t cols) {
              same_dim(a.shape(0), rows, name, "expected " + std::to_string(rows) + " rows");
              same_dim(a.shape(1), cols, name, "expected " + std::to_string(cols) + " columns");
              return std::vector<double>(a.data(), a.data() + rows * cols);
            };
            typename Mem::State st;
            st.memory = take(memory, "memory", k, c);
            st.gram = take(gram, "gram", k, k);
            st.rhs = take(rhs, "rhs", k, c);
            st.precision = take(precision, "precision", k, k);
            self.set_state(st);
          },
          array_arg("memory"), array_arg("gram"), array_arg("rhs"), array_arg("precision"))
      .def_property_readonly("memory_size", &Mem::memory_size)
      .def_property_readonly("code_size", &Mem::code_size)
      .def_property_readonly("ridge", &Mem::ridge);
}

// The number of queries of a search of a store or key view, once Q fits its keys and k its
// size (before the (nq, k) results are allocated).
template <class Keys, class T>
index_t search_rows(const Keys& self, const Array<T>& q, index_t k) {
  const index_t nq = rows_of(q, "Q", self.key_dim(), "key_dim");
  check_k(k, self.size(), "k", "stored keys");
  return nq;
}

// search(Q, k) -> (ids (nq, k), scores (nq, k)) of a store or key view.
template <class Keys, class T>
py::object search_method(const Keys& self, Array<T> q, index_t k) {
  const index_t nq = search_rows(self, q, k);
  return compute(
      "k", [&](index_t* ids, T* scores) { self.search(q.data(), nq, k, ids, scores); },
      Out<index_t>{{nq, k}}, Out<T>{{nq, k}});
}

// key_sq_norms(ids (n,)) -> (n,) of a store or key view.
template <class Keys, class T>
Array<T> key_sq_norms_method(const Keys& self, Array<index_t> ids) {
  const index_t n = ids.shape(0);
  return compute("ids", [&](T* out) { self.key_sq_norms(ids.data(), n, out); }, Out<T>{{n}});
}

template <class T>
void bind_kv(py::module_& m, const char* name) {
  using Store = larimar::KeyValueStore<T>;
  py::class_<Store>(m, name)
      .def(py::init([](index_t d, index_t v, const std::string& metric, bool merge,
                       const std::string& codes) {
             return std::make_unique<Store>(d, v, larimar::parse_metric(metric), merge,
                                            larimar::parse_key_codes(codes));
           }),
           py::arg("key_dim"), py::arg("value_dim"), py::arg("metric"),
           py::arg("merge_identical") = true, py::arg("key_codes") = "none")
      .def(
          "add",
          [](Store& self, Array<T> keys, Array<T> values) {
            const index_t n = rows_of(keys, "keys", self.key_dim(), "key_dim");
            rows_of(values, "values", self.value_dim(), "value_dim", n, "expected one row per key");
            return compute(
                "keys", [&](index_t* ids) { self.add(keys.data(), values.data(), n, ids); },
                Out<index_t>{{n}});
          },
          array_arg("keys"), array_arg("values"))
      .def(
          "write",
          [](Store& self, Array<T> q, Array<T> values, index_t k, double alpha) {
            const index_t n = rows_of(q, "Q", self.key_dim(), "key_dim");
            rows_of(values, "values", self.value_dim(), "value_dim", n,
                    "expected one row per query");
            without_gil([&] { self.write(q.data(), values.data(), n, k, alpha); });
          },
          array_arg("Q"), array_arg("values"), py::arg("k"), py::arg("alpha"))
      .def("search", &search_method<Store, T>, array_arg("Q"), py::arg("k"))
      .def(
          "search_and_reconstruct",
          [](const Store& self, Array<T> q, index_t k) {
            const index_t nq = search_rows(self, q, k);
            return compute(
                "k",
                [&](index_t* ids, T* scores, T* values) {
                  self.search_and_reconstruct(q.data(), nq, k, ids, scores, values);
                },
                Out<index_t>{{nq, k}}, Out<T>{{nq, k}}, Out<T>{{nq, k, self.value_dim()}});
          },
          array_arg("Q"), py::arg("k"))
      .def(
          "read",
          [](const Store& self, Array<T> q, index_t k, std::optional<double> alpha) {
            const index_t nq = rows_of(q, "Q", self.key_dim(), "key_dim");
            return compute(
                "Q", [&](T* out) { self.read(q.data(), nq, k, alpha, out); },
                Out<T>{{nq, self.value_dim()}});
          },
          array_arg("Q"), py::arg("k"), py::arg("alpha").none(true))
      .def(
          "reconstruct",
          [](const Store& self, Array<index_t> ids) {
            const index_t n = ids.shape(0);
            return compute(
                "ids", [&](T* out) { self.reconstruct(ids.data(), n, out); },
                Out<T>{{n, self.value_dim()}});
          },
          array_arg("ids"))
      .def("key_sq_norms", &key_sq_norms_method<Store, T>, array_arg("ids"))
      .def("keys",
           [](const Store& self) {
             const index_t n = self.size();
             return copy_out<T>({n, self.key_dim()},
                                [&](T* out) { return self.copy_keys(out, n); });
           })
      .def("values",
           [](const Store& self) {
             const index_t n = self.size();
             return copy_out<T>({n, self.value_dim()},
                                [&](T* out) { return self.copy_values(out, n); });
           })
      .def("counts",
           [](const Store& self) {
             const index_t n = self.size();
             return copy_out<double>({n}, [&](double* out) { return self.copy_counts(out, n); });
           })
      .def("assign", saved_rows_method<T>(&Store::assign), array_arg("keys"), array_arg("values"),
           array_arg("counts"))
      .def("append_saved", saved_rows_method<T>(&Store::append_saved), array_arg("keys"),
           array_arg("values"), array_arg("counts"))
      .def("codes",
           [](const Store& self) -> py::tuple {
             const index_t n = self.size();
             py::array_t<std::int8_t> codes({n, self.key_dim()});
             py::array_t<T> scales({n});
             index_t rows = 0;
             without_gil(
                 [&] { rows = self.copy_codes(codes.mutable_data(), scales.mutable_data(), n); });
             if (rows == n) return py::make_tuple(codes, scales);
             return py::make_tuple(codes[py::slice(0, rows, 1)], scales[py::slice(0, rows, 1)]);
           })
      .def(
          "append_codes",
          [](Store& self, Array<std::int8_t> codes, Array<T> scales, Array<T> values,
             Array<double> counts) {
            const index_t n = rows_of(codes, "codes", self.key_dim(), "key_dim");
            same_dim(scales.shape(0), n, "scales", "expected one scale per key");
            rows_of(values, "values", self.value_dim(), "value_dim", n, "expected one row per key");
            same_dim(counts.shape(0), n, "counts", "expected one count per key");
            without_gil([&] {
              self.append_codes(codes.data(), scales.data(), values.data(), counts.data(), n);
            });
          },
          array_arg("codes"), array_arg("scales"), array_arg("values"), array_arg("counts"))
      .def("__len__", &Store::size)
      .def_property_readonly("merge_identical", &Store::merge_identical)
      .def_property_readonly(
          "key_codes", [](const Store& self) { return larimar::key_codes_name(self.key_codes()); })
      .def_property_readonly("nbytes", [](const Store& self) { return self.bytes(false); })
      .def_property_readonly("reserved_nbytes", [](const Store& self) { return self.bytes(true); })
      .def_property_readonly("key_dim", &Store::key_dim)
      .def_property_readonly("value_dim", &Store::value_dim)
      .def_property_readonly("metric",
                             [](const Store& self) { return larimar::metric_name(self.metric()); });
}

template <class T>
void bind_key_view(py::module_& m, const char* name) {
  using View = larimar::KeyView<T>;
  py::class_<View>(m, name)
      .def(py::init([](Array<T> keys, const std::string& metric, const std::string& codes,
                       bool projected_screen, bool coarse_screen, bool neighbourhoods) {
             if (keys.ndim() != 2) throw py::value_error("keys: expected a 2-D array");
             return std::make_unique<View>(
                 keys.data(), keys.shape(0), keys.shape(1), larimar::parse_metric(metric),
                 larimar::parse_key_codes(codes), projected_screen, coarse_screen, neighbourhoods);
           }),
           py::keep_alive<1, 2>(),  // the view reads keys for as long as it lives
           array_arg("keys"), py::arg("metric"), py::arg("key_codes") = "none",
           py::arg("projected_screen") = true, py::arg("coarse_screen") = true,
           py::arg("neighbourhoods") = true, py::call_guard<py::gil_scoped_release>())
      .def(
          "search",
          [](const View& self, Array<T> q, index_t k, std::optional<Array<index_t>> hints) {
            const index_t nq = search_rows(self, q, k);
            index_t h = 0;
            if (hints) {
              if (hints->ndim() != 2 || hints->shape(0) != nq || hints->shape(1) < 1)
                throw py::value_error("hints: expected int64 row ids (" + std::to_string(nq) +
                                      ", h >= 1), one row per query");
              h = hints->shape(1);
            }
            const index_t* hint_ids = hints ? hints->data() : nullptr;
            return compute(
                "k",
                [&](index_t* ids, T* scores) {
                  self.search(q.data(), nq, k, ids, scores, hint_ids, h);
                },
                Out<index_t>{{nq, k}}, Out<T>{{nq, k}});
          },
          array_arg("Q"), py::arg("k"), py::arg("hints").none(true) = py::none())
      .def("key_sq_norms", &key_sq_norms_method<View, T>, array_arg("ids"))
      .def("__len__", &View::size)
      .def_property_readonly("nbytes", &View::bytes)
      .def_property_readonly("key_dim", &View::key_dim)
      .def_property_readonly(
          "key_codes", [](const View& self) { return larimar::key_codes_name(self.key_codes()); })
      .def_property_readonly("keys_may_be_mapped", &View::keys_may_be_mapped)
      .def_property_readonly("projected_dims", &View::projected_dims)
      .def_property_readonly("projected_coarse_dims", &View::projected_coarse_dims)
      .def_property_readonly("projected_answers", &View::projected_answers)
      .def_property_readonly("projected_coarse_answers", &View::projected_coarse_answers)
      .def_property_readonly("projected_neighbour_answers", &View::projected_neighbour_answers)
      .def_property_readonly("projected_neighbourhoods", &View::projected_neighbourhoods)
      .def_property_readonly("metric",
                             [](const View& self) { return larimar::metric_name(self.metric()); });
}

void bind_int8_linear(py::module_& m) {
  using Layer = larimar::Int8Linear;
  py::class_<Layer>(m, "Int8LinearF32")
      .def(py::init([](Array<float> weight, OptionalArray<float> bias) {
             if (weight.ndim() != 2)
               throw py::value_error("weight: expected a 2-D array (out_features, in_features)");
             const index_t out = weight.shape(0), in = weight.shape(1);
             if (bias) {
               if (bias->ndim() != 1)
                 throw py::value_error("bias: expected a 1-D array (out_features,)");
               same_dim(bias->shape(0), out, "bias", "expected one value per output row");
             }
             const float* w = weight.data();
             const float* b = bias ? bias->data() : nullptr;
             std::unique_ptr<Layer> layer;
             without_gil([&] { layer = std::make_unique<Layer>(w, b, out, in); });
             return layer;
           }),
           array_arg("weight"), array_arg("bias").none(true))
      .def("forward",
           rows_query<float>("x", &Layer::in_features, "in_features", &Layer::out_features,
                             &Layer::forward),
           array_arg("x"))
      .def("weight_codes",
           [](const Layer& self) {
             return compute(
                 "weight",
                 [&](std::int8_t* codes, float* scales) { self.weight_codes(codes, scales); },
                 Out<std::int8_t>{{self.out_features(), self.in_features()}},
                 Out<float>{{self.out_features()}});
           })
      .def_property_readonly("in_features", &Layer::in_features)
      .def_property_readonly("out_features", &Layer::out_features)
      .def_property_readonly("has_bias", &Layer::has_bias)
      .def_property_readonly("nbytes", &Layer::bytes);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "larimar-ext native kernel (see larimar_ext for the public API; types: _core.pyi)";
  m.attr("__version__") = LARIMAR_VERSION;

  m.def("info", []() {
    py::dict d;
    d["blas_vendor"] = larimar::blas::vendor();
    d["blas_threads"] = larimar::blas::threads();
    d["openmp_threads"] = larimar::num_threads();
    d["openmp_version"] = _OPENMP;
    d["simd"] = larimar::simd_level();
    d["int8_isa"] = larimar::int8_isa();
    return d;
  });
  m.def("int8_isas", &larimar::int8_isas_supported,
        "The int8 scan paths this CPU runs, best first (the first is the default)");
  m.def("set_int8_isa", &larimar::set_int8_isa, py::arg("isa"),
        "Runs the int8 key scan on one path (\"auto\": the best this CPU has); for tests");
  m.def("set_num_threads", &larimar::set_num_threads, py::arg("n"));
  m.def("set_memory_limit", &larimar::set_memory_limit, py::arg("limit"));
  m.def("get_memory_limit", &larimar::memory_limit);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const larimar::ResourceLimit& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
  m.def("get_num_threads", &larimar::num_threads);
  m.def(
      "check_alpha",
      [](std::optional<double> alpha, index_t k) {
        if (alpha)
          larimar::check_alpha(*alpha);
        else
          larimar::check_hard_read_k(k);
        return alpha;
      },
      "alpha if it is a valid Gaussian temperature (finite, > 0), or None for a hard read, "
      "which takes k = 1; else ValueError naming alpha",
      py::arg("alpha"), py::arg("k") = 1);

  def_float_op<LstsqWrite>(m, "lstsq_write", "M = W^+ Z (ridge > 0: the Tikhonov solution)",
                           array_arg("W"), array_arg("Z"), py::arg("ridge"),
                           py::arg("rcond").none(true));
  def_float_op<PinvAddress>(m, "pinv_address", "W = Z R^+", array_arg("Z"), array_arg("R"),
                            py::arg("rcond").none(true));
  def_float_op<PinvRead>(m, "pinv_read", "z = (Zq M^+) M", array_arg("Zq"), array_arg("M"),
                         py::arg("rcond").none(true));
  def_float_op<GaussianAddress>(m, "gaussian_address", "Gaussian soft keys, dense or top_k",
                                array_arg("Z"), array_arg("R"), py::arg("alpha"),
                                py::arg("top_k").none(true));
  def_float_op<OnehotAddress>(m, "onehot_address", "nearest key by L2 distance", array_arg("Z"),
                              array_arg("R"));
  def_float_op<ReadDense>(m, "read_dense", "z = W M", array_arg("W"), array_arg("M"));
  def_float_op<ReadSparse>(m, "read_sparse", "z = sum_j weights[:, j] M[indices[:, j]]",
                           array_arg("indices"), array_arg("weights"), array_arg("M"));
  def_float_op<GaussianReadScored>(m, "gaussian_read_scored", "the soft read of scored candidates",
                                   array_arg("scores"), array_arg("values"), py::arg("metric"),
                                   py::arg("alpha"), array_arg("Q").none(true),
                                   array_arg("key_sq").none(true));
  def_float_op<Topk>(m, "topk", "exact top-k search", array_arg("Q"), array_arg("keys"),
                     py::arg("k"), py::arg("metric"));
  def_float_op<SparseLstsqWrite>(
      m, "sparse_lstsq_write", "least-squares write through sparse addresses", array_arg("indices"),
      array_arg("weights"), array_arg("Z"), py::arg("memory_size"), py::arg("ridge"),
      array_arg("prior").none(true), py::arg("tol"), py::arg("max_iter"));

  bind_prepared_pinv<float>(m, "PreparedPinvF32");
  bind_prepared_pinv<double>(m, "PreparedPinvF64");
  bind_sequential<float>(m, "SequentialMemoryF32");
  bind_sequential<double>(m, "SequentialMemoryF64");
  bind_kv<float>(m, "KeyValueStoreF32");
  bind_kv<double>(m, "KeyValueStoreF64");
  bind_key_view<float>(m, "KeyViewF32");
  bind_int8_linear(m);
  bind_key_view<double>(m, "KeyViewF64");
}
