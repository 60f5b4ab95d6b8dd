// pybind11 bindings: dtype dispatch, shape checks, GIL release. No memory math here.
// Arrays must be numpy arrays of float32 or float64, C-contiguous (the Python layer makes
// the documented copies); anything else raises TypeError naming the argument. Kernel
// InvalidArgument -> ValueError, NumericalError -> RuntimeError, bad_alloc -> MemoryError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <cmath>
#include <string>
#include <vector>

#include "larimar/address.hpp"
#include "larimar/common.hpp"
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

enum class DType { F32, F64 };

py::array as_array(py::handle obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + ": expected a numpy array, got " +
                         std::string(py::str(py::type::of(obj))));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!(a.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + ": expected a C-contiguous array");
  return a;
}

DType dtype_of(const py::array& a, const char* name) {
  if (a.dtype().is(py::dtype::of<float>())) return DType::F32;
  if (a.dtype().is(py::dtype::of<double>())) return DType::F64;
  throw py::type_error(std::string(name) + ": expected float32 or float64, got " +
                       std::string(py::str(a.dtype())));
}

template <class T>
py::array_t<T> typed(py::handle obj, const char* name, int ndim_min, int ndim_max) {
  py::array a = as_array(obj, name);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": expected " + std::string(py::str(py::dtype::of<T>())) +
                         " like the other arrays of this call, got " + std::string(py::str(a.dtype())));
  if (a.ndim() < ndim_min || a.ndim() > ndim_max) {
    std::string want = ndim_min == ndim_max ? std::to_string(ndim_min) + "-D"
                                            : std::to_string(ndim_min) + "-D or " + std::to_string(ndim_max) + "-D";
    throw py::value_error(std::string(name) + ": expected a " + want + " array, got " +
                          std::to_string(a.ndim()) + "-D");
  }
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

py::array_t<index_t> typed_ids(py::handle obj, const char* name) {
  py::array a = as_array(obj, name);
  if (!a.dtype().is(py::dtype::of<index_t>()))
    throw py::type_error(std::string(name) + ": expected int64 indices, got " + std::string(py::str(a.dtype())));
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + ": expected a 2-D array, got " + std::to_string(a.ndim()) + "-D");
  return py::reinterpret_borrow<py::array_t<index_t>>(a);
}

void same_dim(index_t a, index_t b, const std::string& name, const std::string& what) {
  if (a != b)
    throw py::value_error(name + ": " + what + " (" + std::to_string(a) + " vs " + std::to_string(b) + ")");
}

// A result array, after checking its size against the memory limit (so a request for a
// petabyte fails with MemoryError naming `arg` instead of asking the allocator).
template <class T>
py::array_t<T> output(const std::vector<py::ssize_t>& shape, const char* arg) {
  double bytes = sizeof(T);
  for (py::ssize_t d : shape) bytes *= static_cast<double>(d);
  larimar::check_allocation(bytes, arg, "the result");
  return py::array_t<T>(shape);
}

// The two arrays of a batchable op: 2-D each, or 3-D with one leading batch size.
struct BatchedPair {
  bool batched;
  index_t batch, rows_a, cols_a, rows_b, cols_b;
  std::vector<py::ssize_t> shape(index_t rows, index_t cols) const {
    return batched ? std::vector<py::ssize_t>{batch, rows, cols} : std::vector<py::ssize_t>{rows, cols};
  }
};

template <class T>
BatchedPair batched_pair(const py::array_t<T>& a, const char* a_name, const py::array_t<T>& b,
                         const char* b_name) {
  same_dim(b.ndim(), a.ndim(), b_name, std::string("expected as many dimensions as ") + a_name);
  const int d = static_cast<int>(a.ndim());
  const bool batched = d == 3;
  const BatchedPair p{batched, batched ? a.shape(0) : 1, a.shape(d - 2), a.shape(d - 1),
                      b.shape(d - 2), b.shape(d - 1)};
  if (batched) same_dim(b.shape(0), p.batch, b_name, std::string("expected the batch size of ") + a_name);
  return p;
}

// Calls f<float> or f<double> on the dtype of the first array.
template <class F>
auto dispatch(py::handle first, const char* name, F&& f) {
  return dtype_of(as_array(first, name), name) == DType::F32 ? f(float{}) : f(double{});
}

// None -> the kernel's default (signalled as -1); otherwise a finite cutoff >= 0.
double rcond_value(const py::object& rcond) {
  if (rcond.is_none()) return -1.0;
  const double v = rcond.cast<double>();
  if (!std::isfinite(v) || v < 0)
    throw py::value_error("rcond: expected None or a finite number >= 0, got " + std::to_string(v));
  return v;
}

template <class T>
py::array lstsq_write(py::handle w_obj, py::handle z_obj, double ridge, py::object rcond_obj) {
  auto w = typed<T>(w_obj, "W", 2, 3);
  auto z = typed<T>(z_obj, "Z", 2, 3);
  const BatchedPair p = batched_pair(w, "W", z, "Z");
  const index_t b = p.batch, n = p.rows_a, k = p.cols_a, c = p.cols_b;
  same_dim(p.rows_b, n, "Z", "expected as many rows as W");
  auto m = output<T>(p.shape(k, c), "W");
  larimar::LstsqOptions options;
  options.ridge = ridge;
  options.rcond = rcond_value(rcond_obj);
  const T *pw = w.data(), *pz = z.data();
  T* pm = m.mutable_data();
  {
    py::gil_scoped_release release;
    larimar::lstsq_write(pw, pz, pm, b, n, k, c, options);
  }
  return m;
}

// The ops on queries Z (B? x N x C) against a matrix R (B? x K x C) through R^+: addresses
// Z R^+ (N x K results) or reads Z R^+ R (N x C results). Kernel is larimar::pinv_address or
// larimar::pinv_read.
template <class T, class Kernel>
py::array through_pinv(py::handle z_obj, py::handle r_obj, py::object rcond_obj, const char* z_name,
                       const char* r_name, bool result_is_read, Kernel kernel) {
  auto z = typed<T>(z_obj, z_name, 2, 3);
  auto r = typed<T>(r_obj, r_name, 2, 3);
  const BatchedPair p = batched_pair(z, z_name, r, r_name);
  const index_t b = p.batch, n = p.rows_a, c = p.cols_a, k = p.rows_b;
  same_dim(p.cols_b, c, r_name, std::string("expected the code size of ") + z_name);
  auto out = output<T>(p.shape(n, result_is_read ? c : k), r_name);
  const double rcond = rcond_value(rcond_obj);
  const T *pz = z.data(), *pr = r.data();
  T* po = out.mutable_data();
  {
    py::gil_scoped_release release;
    kernel(pz, pr, po, b, n, k, c, rcond);
  }
  return out;
}

template <class T>
py::object gaussian_address(py::handle z_obj, py::handle r_obj, double alpha, py::object top_k) {
  auto z = typed<T>(z_obj, "Z", 2, 2);
  auto r = typed<T>(r_obj, "R", 2, 2);
  const index_t n = z.shape(0), c = z.shape(1), k = r.shape(0);
  same_dim(r.shape(1), c, "R", "expected the code size of Z");
  const T *pz = z.data(), *pr = r.data();
  if (top_k.is_none()) {
    auto w = output<T>({n, k}, "R");
    T* pw = w.mutable_data();
    py::gil_scoped_release release;
    larimar::gaussian_address(pz, pr, n, k, c, alpha, pw);
    return std::move(w);
  }
  const index_t kk = top_k.cast<index_t>();
  if (kk < 1 || kk > k)  // checked before the (N, top_k) outputs are allocated
    throw py::value_error("top_k: expected 1 <= top_k <= number of keys (" + std::to_string(k) + "), got " + std::to_string(kk));
  auto ids = output<index_t>({n, kk}, "top_k");
  auto w = output<T>({n, kk}, "top_k");
  index_t* pi = ids.mutable_data();
  T* pw = w.mutable_data();
  {
    py::gil_scoped_release release;
    larimar::gaussian_address_topk(pz, pr, n, k, c, alpha, kk, pi, pw);
  }
  return py::make_tuple(ids, w);
}

template <class T>
py::tuple onehot_address(py::handle z_obj, py::handle r_obj) {
  auto z = typed<T>(z_obj, "Z", 2, 2);
  auto r = typed<T>(r_obj, "R", 2, 2);
  same_dim(r.shape(1), z.shape(1), "R", "expected the code size of Z");
  const index_t n = z.shape(0), c = z.shape(1), k = r.shape(0);
  py::array_t<index_t> ids({n, index_t(1)});
  py::array_t<T> w({n, index_t(1)});
  const T *pz = z.data(), *pr = r.data();
  index_t* pi = ids.mutable_data();
  T* pw = w.mutable_data();
  {
    py::gil_scoped_release release;
    larimar::onehot_address(pz, pr, n, k, c, pi, pw);
  }
  return py::make_tuple(ids, w);
}

template <class T>
py::array read_dense(py::handle w_obj, py::handle m_obj) {
  auto w = typed<T>(w_obj, "W", 2, 3);
  auto m = typed<T>(m_obj, "M", 2, 3);
  const BatchedPair p = batched_pair(w, "W", m, "M");
  const index_t b = p.batch, n = p.rows_a, k = p.cols_a, c = p.cols_b;
  same_dim(p.rows_b, k, "M", "expected as many memory slots as W has columns");
  auto out = output<T>(p.shape(n, c), "M");
  const T *pw = w.data(), *pm = m.data();
  T* po = out.mutable_data();
  {
    py::gil_scoped_release release;
    larimar::read_dense(pw, pm, po, b, n, k, c);
  }
  return out;
}

template <class T>
py::array read_sparse(py::handle ids_obj, py::handle w_obj, py::handle m_obj) {
  auto ids = typed_ids(ids_obj, "W");
  auto w = typed<T>(w_obj, "W", 2, 2);
  auto m = typed<T>(m_obj, "M", 2, 2);
  same_dim(w.shape(0), ids.shape(0), "W", "expected indices and weights of the same shape");
  same_dim(w.shape(1), ids.shape(1), "W", "expected indices and weights of the same shape");
  const index_t n = ids.shape(0), kk = ids.shape(1), k = m.shape(0), c = m.shape(1);
  auto out = output<T>({n, c}, "M");
  const index_t* pi = ids.data();
  const T *pw = w.data(), *pm = m.data();
  T* po = out.mutable_data();
  {
    py::gil_scoped_release release;
    larimar::read_sparse(pi, pw, n, kk, pm, k, c, po);
  }
  return out;
}

template <class T>
py::array gaussian_read_scored(py::handle s_obj, py::handle v_obj, const std::string& metric_name,
                               double alpha, py::object q_obj, py::object ksq_obj) {
  const larimar::Metric metric = larimar::parse_metric(metric_name);
  auto scores = typed<T>(s_obj, "scores", 2, 2);
  auto values = typed<T>(v_obj, "values", 3, 3);
  const index_t n = scores.shape(0), k = scores.shape(1), c = values.shape(2);
  same_dim(values.shape(0), n, "values", "expected one row of candidates per row of scores");
  same_dim(values.shape(1), k, "values", "expected one value per score");
  // Q and key_sq: None is a null pointer; the kernel says which metric needs them.
  py::array_t<T> q, key_sq;
  const T *pq = nullptr, *pks = nullptr;
  index_t d = 0;
  if (!q_obj.is_none()) {
    q = typed<T>(q_obj, "Q", 2, 2);
    same_dim(q.shape(0), n, "Q", "expected one query per row of scores");
    d = q.shape(1);
    pq = q.data();
  }
  if (!ksq_obj.is_none()) {
    key_sq = typed<T>(ksq_obj, "key_sq", 2, 2);
    same_dim(key_sq.shape(0), n, "key_sq", "expected the shape of scores");
    same_dim(key_sq.shape(1), k, "key_sq", "expected the shape of scores");
    pks = key_sq.data();
  }
  auto out = output<T>({n, c}, "values");
  const T *ps = scores.data(), *pv = values.data();
  T* po = out.mutable_data();
  {
    py::gil_scoped_release release;
    larimar::gaussian_read_scored(ps, pv, n, k, c, metric, pq, d, pks, alpha, po);
  }
  return out;
}

template <class T>
py::tuple topk(py::handle q_obj, py::handle keys_obj, index_t k, const std::string& metric_name) {
  const larimar::Metric metric = larimar::parse_metric(metric_name);
  auto q = typed<T>(q_obj, "Q", 2, 2);
  auto keys = typed<T>(keys_obj, "keys", 2, 2);
  same_dim(keys.shape(1), q.shape(1), "keys", "expected the dimension of Q");
  const index_t nq = q.shape(0), nk = keys.shape(0), d = q.shape(1);
  if (k < 1 || k > nk)
    throw py::value_error("k: expected 1 <= k <= number of keys (" + std::to_string(nk) + "), got " + std::to_string(k));
  auto ids = output<index_t>({nq, k}, "k");
  auto scores = output<T>({nq, k}, "k");
  const T *pq = q.data(), *pk = keys.data();
  index_t* pi = ids.mutable_data();
  T* ps = scores.mutable_data();
  {
    py::gil_scoped_release release;
    larimar::topk(pq, nq, pk, nk, d, k, metric, pi, ps);
  }
  return py::make_tuple(ids, scores);
}

template <class T>
py::tuple sparse_lstsq_write(py::handle ids_obj, py::handle w_obj, py::handle z_obj, index_t memory_size,
                             double ridge, py::object prior_obj, double tol, index_t max_iter) {
  auto ids = typed_ids(ids_obj, "indices");
  auto w = typed<T>(w_obj, "weights", 2, 2);
  auto z = typed<T>(z_obj, "Z", 2, 2);
  same_dim(w.shape(0), ids.shape(0), "weights", "expected the shape of indices");
  same_dim(w.shape(1), ids.shape(1), "weights", "expected the shape of indices");
  same_dim(z.shape(0), ids.shape(0), "Z", "expected one row per row of indices");
  const index_t n = ids.shape(0), kk = ids.shape(1), c = z.shape(1);
  if (memory_size < 1) throw py::value_error("memory_size: expected >= 1, got " + std::to_string(memory_size));
  const T* pp = nullptr;
  py::array_t<T> prior;
  if (!prior_obj.is_none()) {
    prior = typed<T>(prior_obj, "prior", 2, 2);
    same_dim(prior.shape(0), memory_size, "prior", "expected memory_size rows");
    same_dim(prior.shape(1), c, "prior", "expected the code size of Z");
    pp = prior.data();
  }
  auto m = output<T>({memory_size, c}, "memory_size");
  larimar::SparseLstsqOptions options;
  options.ridge = ridge;
  options.tol = tol;
  options.max_iter = max_iter;
  const index_t* pi = ids.data();
  const T *pw = w.data(), *pz = z.data();
  T* pm = m.mutable_data();
  larimar::SparseLstsqReport report;
  {
    py::gil_scoped_release release;
    report = larimar::sparse_lstsq_write(pi, pw, n, kk, pz, c, memory_size, pp, pm, options);
  }
  py::dict info;
  info["touched"] = report.touched;
  info["iterations"] = report.iterations;
  info["residual"] = report.residual;
  return py::make_tuple(m, info);
}

py::array_t<double> vector_copy(const std::vector<double>& v, std::vector<py::ssize_t> shape) {
  py::array_t<double> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

template <class T>
void bind_sequential(py::module_& m, const char* name) {
  using Mem = larimar::SequentialMemory<T>;
  py::class_<Mem>(m, name)
      .def(py::init([](index_t k, index_t c, py::object prior_obj, double ridge) {
             if (prior_obj.is_none()) return std::make_unique<Mem>(k, c, nullptr, ridge);
             auto prior = typed<T>(prior_obj, "prior", 2, 2);
             same_dim(prior.shape(0), k, "prior", "expected memory_size rows");
             same_dim(prior.shape(1), c, "prior", "expected code_size columns");
             const T* pp = prior.data();
             py::gil_scoped_release release;
             return std::make_unique<Mem>(k, c, pp, ridge);
           }),
           py::arg("memory_size"), py::arg("code_size"), py::arg("prior"), py::arg("ridge"))
      .def("write", [](Mem& self, py::handle w_obj, py::handle z_obj) {
        auto z = typed<T>(z_obj, "Z", 2, 2);
        same_dim(z.shape(1), self.code_size(), "Z", "expected code_size columns");
        const index_t n = z.shape(0);
        py::array_t<T> w_default;
        const T* pw;
        if (w_obj.is_none()) {
          w_default = py::array_t<T>({n, self.memory_size()});
          T* out = w_default.mutable_data();
          const T* pz = z.data();
          py::gil_scoped_release release;
          self.prior_address(pz, n, out);
          pw = out;
        } else {
          auto w = typed<T>(w_obj, "W", 2, 2);
          same_dim(w.shape(0), n, "W", "expected one row per row of Z");
          same_dim(w.shape(1), self.memory_size(), "W", "expected memory_size columns");
          w_default = w;
          pw = w.data();
        }
        const T* pz = z.data();
        py::gil_scoped_release release;
        self.write(pw, pz, n);
      })
      .def("update", [](Mem& self, py::handle w_obj, py::handle z_obj, double alpha) {
        auto z = typed<T>(z_obj, "Z", 2, 2);
        auto w = typed<T>(w_obj, "W", 2, 2);
        same_dim(z.shape(1), self.code_size(), "Z", "expected code_size columns");
        same_dim(w.shape(0), z.shape(0), "W", "expected one row per row of Z");
        same_dim(w.shape(1), self.memory_size(), "W", "expected memory_size columns");
        const T *pw = w.data(), *pz = z.data();
        const index_t n = z.shape(0);
        py::gil_scoped_release release;
        self.update(pw, pz, n, alpha);
      })
      .def("address", [](const Mem& self, py::handle z_obj) {
        auto z = typed<T>(z_obj, "Z", 2, 2);
        same_dim(z.shape(1), self.code_size(), "Z", "expected code_size columns");
        const index_t n = z.shape(0);
        py::array_t<T> w({n, self.memory_size()});
        const T* pz = z.data();
        T* pw = w.mutable_data();
        {
          py::gil_scoped_release release;
          self.address(pz, n, pw);
        }
        return w;
      })
      .def("read", [](const Mem& self, py::handle z_obj) {
        auto z = typed<T>(z_obj, "Zq", 2, 2);
        same_dim(z.shape(1), self.code_size(), "Zq", "expected code_size columns");
        const index_t n = z.shape(0);
        py::array_t<T> out({n, self.code_size()});
        const T* pz = z.data();
        T* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          self.read(pz, n, po);
        }
        return out;
      })
      .def("memory", [](const Mem& self) {
        py::array_t<T> out({self.memory_size(), self.code_size()});
        self.copy_memory(out.mutable_data());
        return out;
      })
      .def("state", [](const Mem& self) {
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
      .def("set_state", [](Mem& self, py::handle m_obj, py::handle g_obj, py::handle b_obj, py::handle p_obj) {
        const index_t k = self.memory_size(), c = self.code_size();
        auto take = [&](py::handle obj, const char* name, index_t rows, index_t cols) {
          auto a = typed<double>(obj, name, 2, 2);
          same_dim(a.shape(0), rows, name, "expected " + std::to_string(rows) + " rows");
          same_dim(a.shape(1), cols, name, "expected " + std::to_string(cols) + " columns");
          return std::vector<double>(a.data(), a.data() + rows * cols);
        };
        typename Mem::State st;
        st.memory = take(m_obj, "memory", k, c);
        st.gram = take(g_obj, "gram", k, k);
        st.rhs = take(b_obj, "rhs", k, c);
        st.precision = take(p_obj, "precision", k, k);
        self.set_state(st);
      })
      .def_property_readonly("memory_size", &Mem::memory_size)
      .def_property_readonly("code_size", &Mem::code_size)
      .def_property_readonly("ridge", &Mem::ridge);
}

template <class T>
void bind_kv(py::module_& m, const char* name) {
  using Store = larimar::KeyValueStore<T>;
  py::class_<Store>(m, name)
      .def(py::init([](index_t d, index_t v, const std::string& metric, bool merge) {
             return std::make_unique<Store>(d, v, larimar::parse_metric(metric), merge);
           }),
           py::arg("key_dim"), py::arg("value_dim"), py::arg("metric"),
           py::arg("merge_identical") = true)
      .def("add", [](Store& self, py::handle k_obj, py::handle v_obj) {
        auto keys = typed<T>(k_obj, "keys", 2, 2);
        auto values = typed<T>(v_obj, "values", 2, 2);
        same_dim(keys.shape(1), self.key_dim(), "keys", "expected key_dim columns");
        same_dim(values.shape(1), self.value_dim(), "values", "expected value_dim columns");
        same_dim(values.shape(0), keys.shape(0), "values", "expected one row per key");
        const index_t n = keys.shape(0);
        py::array_t<index_t> ids(n);
        const T *pk = keys.data(), *pv = values.data();
        index_t* pi = ids.mutable_data();
        {
          py::gil_scoped_release release;
          self.add(pk, pv, n, pi);
        }
        return ids;
      })
      .def("write", [](Store& self, py::handle q_obj, py::handle v_obj, index_t k, double alpha) {
        auto q = typed<T>(q_obj, "Q", 2, 2);
        auto values = typed<T>(v_obj, "values", 2, 2);
        same_dim(q.shape(1), self.key_dim(), "Q", "expected key_dim columns");
        same_dim(values.shape(1), self.value_dim(), "values", "expected value_dim columns");
        same_dim(values.shape(0), q.shape(0), "values", "expected one row per query");
        const T *pq = q.data(), *pv = values.data();
        const index_t n = q.shape(0);
        py::gil_scoped_release release;
        self.write(pq, pv, n, k, alpha);
      })
      .def("search", [](const Store& self, py::handle q_obj, index_t k) {
        auto q = typed<T>(q_obj, "Q", 2, 2);
        same_dim(q.shape(1), self.key_dim(), "Q", "expected key_dim columns");
        const index_t nq = q.shape(0), size = self.size();
        if (k < 1 || k > size)  // before the (nq, k) results are allocated
          throw py::value_error("k: expected 1 <= k <= number of stored keys (" + std::to_string(size) +
                                "), got " + std::to_string(k));
        auto ids = output<index_t>({nq, k}, "k");
        auto scores = output<T>({nq, k}, "k");
        const T* pq = q.data();
        index_t* pi = ids.mutable_data();
        T* ps = scores.mutable_data();
        {
          py::gil_scoped_release release;
          self.search(pq, nq, k, pi, ps);
        }
        return py::make_tuple(ids, scores);
      })
      .def("reconstruct", [](const Store& self, py::handle ids_obj) {
        auto ids = typed<index_t>(ids_obj, "ids", 1, 1);
        const index_t n = ids.shape(0);
        auto out = output<T>({n, self.value_dim()}, "ids");
        const index_t* pi = ids.data();
        T* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          self.reconstruct(pi, n, po);
        }
        return out;
      })
      .def("key_sq_norms", [](const Store& self, py::handle ids_obj) {
        auto ids = typed<index_t>(ids_obj, "ids", 1, 1);
        const index_t n = ids.shape(0);
        auto out = output<T>({n}, "ids");
        const index_t* pi = ids.data();
        T* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          self.key_sq_norms(pi, n, po);
        }
        return out;
      })
      .def("search_and_reconstruct", [](const Store& self, py::handle q_obj, index_t k) {
        auto q = typed<T>(q_obj, "Q", 2, 2);
        same_dim(q.shape(1), self.key_dim(), "Q", "expected key_dim columns");
        const index_t nq = q.shape(0), size = self.size();
        if (k < 1 || k > size)
          throw py::value_error("k: expected 1 <= k <= number of stored keys (" + std::to_string(size) +
                                "), got " + std::to_string(k));
        auto ids = output<index_t>({nq, k}, "k");
        auto scores = output<T>({nq, k}, "k");
        auto values = output<T>({nq, k, self.value_dim()}, "k");
        const T* pq = q.data();
        index_t* pi = ids.mutable_data();
        T *ps = scores.mutable_data(), *pv = values.mutable_data();
        {
          py::gil_scoped_release release;
          self.search_and_reconstruct(pq, nq, k, pi, ps, pv);
        }
        return py::make_tuple(ids, scores, values);
      })
      .def("read", [](const Store& self, py::handle q_obj, index_t k, double alpha) {
        auto q = typed<T>(q_obj, "Q", 2, 2);
        same_dim(q.shape(1), self.key_dim(), "Q", "expected key_dim columns");
        const index_t nq = q.shape(0);
        py::array_t<T> out({nq, self.value_dim()});
        const T* pq = q.data();
        T* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          self.read(pq, nq, k, alpha, po);
        }
        return out;
      })
      .def("keys", [](const Store& self) {
        py::array_t<T> out({self.size(), self.key_dim()});
        self.copy_keys(out.mutable_data());
        return out;
      })
      .def("values", [](const Store& self) {
        py::array_t<T> out({self.size(), self.value_dim()});
        self.copy_values(out.mutable_data());
        return out;
      })
      .def("counts", [](const Store& self) {
        py::array_t<double> out(self.size());
        self.copy_counts(out.mutable_data());
        return out;
      })
      .def("assign", [](Store& self, py::handle k_obj, py::handle v_obj, py::handle c_obj) {
        auto keys = typed<T>(k_obj, "keys", 2, 2);
        auto values = typed<T>(v_obj, "values", 2, 2);
        auto counts = typed<double>(c_obj, "counts", 1, 1);
        same_dim(keys.shape(1), self.key_dim(), "keys", "expected key_dim columns");
        same_dim(values.shape(1), self.value_dim(), "values", "expected value_dim columns");
        same_dim(values.shape(0), keys.shape(0), "values", "expected one row per key");
        same_dim(counts.shape(0), keys.shape(0), "counts", "expected one count per key");
        const T *pk = keys.data(), *pv = values.data();
        const double* pc = counts.data();
        const index_t n = keys.shape(0);
        py::gil_scoped_release release;
        self.assign(pk, pv, pc, n);
      })
      .def("__len__", &Store::size)
      .def_property_readonly("merge_identical", &Store::merge_identical)
      .def_property_readonly("nbytes", &Store::nbytes)
      .def_property_readonly("key_dim", &Store::key_dim)
      .def_property_readonly("value_dim", &Store::value_dim)
      .def_property_readonly("metric", [](const Store& self) { return larimar::metric_name(self.metric()); });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "larimar-ext native kernel (see larimar_ext for the public API)";
  m.attr("__version__") = LARIMAR_VERSION;

  m.def("info", []() {
    py::dict d;
    d["blas_vendor"] = larimar::blas::vendor();
    d["blas_threads"] = larimar::blas::threads();
    d["openmp_threads"] = larimar::num_threads();
    d["openmp_version"] = _OPENMP;
    d["simd"] = larimar::simd_level();
    return d;
  });
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

  m.def("lstsq_write", [](py::handle w, py::handle z, double ridge, py::object rcond) {
    return dispatch(w, "W", [&](auto t) { return lstsq_write<decltype(t)>(w, z, ridge, rcond); });
  }, py::arg("W"), py::arg("Z"), py::arg("ridge"), py::arg("rcond"));
  m.def("pinv_address", [](py::handle z, py::handle r, py::object rcond) {
    return dispatch(z, "Z", [&](auto t) {
      using T = decltype(t);
      return through_pinv<T>(z, r, rcond, "Z", "R", false, larimar::pinv_address<T>);
    });
  }, py::arg("Z"), py::arg("R"), py::arg("rcond"));
  m.def("pinv_read", [](py::handle z, py::handle mm, py::object rcond) {
    return dispatch(z, "Zq", [&](auto t) {
      using T = decltype(t);
      return through_pinv<T>(z, mm, rcond, "Zq", "M", true, larimar::pinv_read<T>);
    });
  }, py::arg("Zq"), py::arg("M"), py::arg("rcond"));
  m.def("gaussian_address", [](py::handle z, py::handle r, double alpha, py::object top_k) {
    return dispatch(z, "Z", [&](auto t) { return gaussian_address<decltype(t)>(z, r, alpha, top_k); });
  }, py::arg("Z"), py::arg("R"), py::arg("alpha"), py::arg("top_k"));
  m.def("onehot_address", [](py::handle z, py::handle r) {
    return dispatch(z, "Z", [&](auto t) { return onehot_address<decltype(t)>(z, r); });
  }, py::arg("Z"), py::arg("R"));
  m.def("read_dense", [](py::handle w, py::handle mm) {
    return dispatch(w, "W", [&](auto t) { return read_dense<decltype(t)>(w, mm); });
  }, py::arg("W"), py::arg("M"));
  m.def("read_sparse", [](py::handle ids, py::handle w, py::handle mm) {
    return dispatch(w, "W", [&](auto t) { return read_sparse<decltype(t)>(ids, w, mm); });
  }, py::arg("indices"), py::arg("weights"), py::arg("M"));
  m.def("gaussian_read_scored", [](py::handle scores, py::handle values, const std::string& metric,
                                   double alpha, py::object q, py::object key_sq) {
    return dispatch(scores, "scores", [&](auto t) {
      return gaussian_read_scored<decltype(t)>(scores, values, metric, alpha, q, key_sq);
    });
  }, py::arg("scores"), py::arg("values"), py::arg("metric"), py::arg("alpha"), py::arg("Q"),
     py::arg("key_sq"));
  m.def("topk", [](py::handle q, py::handle keys, index_t k, const std::string& metric) {
    return dispatch(q, "Q", [&](auto t) { return topk<decltype(t)>(q, keys, k, metric); });
  }, py::arg("Q"), py::arg("keys"), py::arg("k"), py::arg("metric"));
  m.def("sparse_lstsq_write", [](py::handle ids, py::handle w, py::handle z, index_t memory_size,
                                 double ridge, py::object prior, double tol, index_t max_iter) {
    return dispatch(z, "Z", [&](auto t) {
      return sparse_lstsq_write<decltype(t)>(ids, w, z, memory_size, ridge, prior, tol, max_iter);
    });
  }, py::arg("indices"), py::arg("weights"), py::arg("Z"), py::arg("memory_size"), py::arg("ridge"),
     py::arg("prior"), py::arg("tol"), py::arg("max_iter"));

  bind_sequential<float>(m, "SequentialMemoryF32");
  bind_sequential<double>(m, "SequentialMemoryF64");
  bind_kv<float>(m, "KeyValueStoreF32");
  bind_kv<double>(m, "KeyValueStoreF64");
}
