// Native autograd nodes of the decorrelation path (stableff/models/native.py builds and loads them).
//
// The same quantities as the Python nodes they stand in for:
//   scatter_sum_and_view          = stableff.models.invariants._ScatterSumAndLeadingView
//   weighted_off_diagonal_squares = stableff.measures.correlation._WeightedOffDiagonalSquares
// with the small element-wise work as loops over the data instead of dozens of aten operations:
// on a small molecule the operations' dispatch (and the Python of the nodes) is most of what
// decorrelation costs per step. The same numbers up to rounding (tests/test_native.py); the
// matrix products, scatter and gathers are aten's, as in the Python nodes.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// runs: flat, 7 per run: start, size, s0, s1, s2, column, width; s1 == 0 marks scalars.
// A vector run is viewed [n, s0, s1, s2] (components on axis 2); its norms are [n, s0 * s2].
// The view and its gradient are plain loops over the rows (one pass each): on a small molecule the
// dozens of aten operations they replace cost more in dispatch than in arithmetic. The same sums in
// the same order as the Python node's (eps + x0^2 + x1^2 + ..., then the square root; the gradient
// adds x * (grad / norm)); aten fuses some of its multiply-adds and not others (by position in its
// vector loop), so the two agree to rounding, not to the bit.
template <typename T>
static void write_invariants_rows(const std::vector<int64_t>& runs, int64_t num_scalars, int64_t num_vec, const T* x, int64_t x_stride, T* out, int64_t out_stride, int64_t begin, int64_t end) {
  for (int64_t e = begin; e < end; ++e) {
    const T* row = x + e * x_stride;
    T* target = out + e * out_stride;
    for (size_t r = 0; r < runs.size(); r += 7) {
      int64_t start = runs[r], size = runs[r + 1], s0 = runs[r + 2], s1 = runs[r + 3], s2 = runs[r + 4], column = runs[r + 5];
      if (s1 == 0) { for (int64_t k = 0; k < size; ++k) target[column + k] = row[start + k]; continue; }
      for (int64_t a = 0; a < s0; ++a) {
        const T* block = row + start + a * s1 * s2;
        T* norms = target + column + a * s2;
        for (int64_t b = 0; b < s2; ++b) norms[b] = static_cast<T>(1e-12) + block[b] * block[b];
        for (int64_t m = 1; m < s1; ++m)
          for (int64_t b = 0; b < s2; ++b) norms[b] += block[m * s2 + b] * block[m * s2 + b];
      }
    }
    for (int64_t c = num_scalars; c < num_scalars + num_vec; ++c) target[c] = std::sqrt(target[c]);
  }
}

template <typename T>
static void add_invariant_gradient_rows(const std::vector<int64_t>& runs, int64_t num_scalars, const T* x, int64_t x_stride, const T* inv, int64_t inv_stride, const T* grad, int64_t grad_stride, T* target, int64_t target_stride, int64_t begin, int64_t end) {
  for (int64_t e = begin; e < end; ++e) {
    const T* row = x + e * x_stride;
    const T* norms = inv + e * inv_stride;
    const T* g = grad + e * grad_stride;
    T* out = target + e * target_stride;
    for (size_t r = 0; r < runs.size(); r += 7) {
      int64_t start = runs[r], size = runs[r + 1], s0 = runs[r + 2], s1 = runs[r + 3], s2 = runs[r + 4], column = runs[r + 5];
      if (s1 == 0) { for (int64_t k = 0; k < size; ++k) out[start + k] += g[column + k]; continue; }
      for (int64_t a = 0; a < s0; ++a)
        for (int64_t b = 0; b < s2; ++b) {
          int64_t c = column + a * s2 + b;
          T factor = g[c] / norms[c];
          for (int64_t m = 0; m < s1; ++m) {
            int64_t k = start + (a * s1 + m) * s2 + b;
            out[k] += row[k] * factor;
          }
        }
    }
  }
}

static constexpr int64_t kRowsPerTask = 256;

static void write_invariants(const std::vector<int64_t>& runs, int64_t num_scalars, int64_t num_vec, const Tensor& features, Tensor& out) {
  TORCH_CHECK(features.is_cpu(), "the native decorrelation nodes take CPU tensors");
  Tensor x = features.stride(1) == 1 ? features : features.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "write_invariants", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int64_t xs = x.stride(0), os = out.stride(0);
    at::parallel_for(0, x.size(0), kRowsPerTask, [&](int64_t begin, int64_t end) { write_invariants_rows<scalar_t>(runs, num_scalars, num_vec, xp, xs, op, os, begin, end); });
  });
}

static void add_invariant_gradient(const std::vector<int64_t>& runs, int64_t num_scalars, const Tensor& features, const Tensor& invariants, const Tensor& grad_in, Tensor target) {
  Tensor x = features.stride(1) == 1 ? features : features.contiguous();
  Tensor grad = grad_in.stride(1) == 1 ? grad_in : grad_in.contiguous();
  TORCH_CHECK(target.stride(1) == 1 && invariants.stride(1) == 1, "add_invariant_gradient: rows must be contiguous");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "add_invariant_gradient", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* ip = invariants.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* tp = target.data_ptr<scalar_t>();
    int64_t xs = x.stride(0), is = invariants.stride(0), gs = grad.stride(0), ts = target.stride(0);
    at::parallel_for(0, x.size(0), kRowsPerTask, [&](int64_t begin, int64_t end) { add_invariant_gradient_rows<scalar_t>(runs, num_scalars, xp, xs, ip, is, gp, gs, tp, ts, begin, end); });
  });
}

struct ScatterSumAndView : public torch::autograd::Function<ScatterSumAndView> {
  static variable_list forward(AutogradContext* ctx, Tensor src, Tensor index, int64_t dim_size, std::vector<int64_t> runs, int64_t num_scalars, int64_t num_vec, int64_t count) {
    ctx->set_materialize_grads(false);
    std::vector<int64_t> shape = src.sizes().vec(); shape[0] = dim_size;
    Tensor summed = src.new_zeros(shape).index_add_(0, index, src);
    Tensor invariants = src.new_empty({count, num_scalars + num_vec});
    write_invariants(runs, num_scalars, num_vec, src.narrow(0, 0, count), invariants);
    ctx->save_for_backward({src, index, invariants});
    ctx->saved_data["runs"] = runs;
    ctx->saved_data["ns"] = num_scalars;
    ctx->saved_data["count"] = count;
    return {summed, invariants};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Tensor src = saved[0], index = saved[1], invariants = saved[2];
    Tensor grad_summed = grads[0], grad_inv = grads[1];
    if (!grad_summed.defined() && !grad_inv.defined()) return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    Tensor grad_src = grad_summed.defined() ? grad_summed.index_select(0, index) : src.new_zeros(src.sizes());
    if (grad_inv.defined()) {
      TORCH_CHECK(!torch::GradMode::is_enabled(), "edge features are differentiable once (a loss on them cannot be differentiated again)");
      int64_t count = ctx->saved_data["count"].toInt();
      auto runs = ctx->saved_data["runs"].toIntVector();
      add_invariant_gradient(runs, ctx->saved_data["ns"].toInt(), src.narrow(0, 0, count), invariants, grad_inv, grad_src.narrow(0, 0, count));
    }
    return {grad_src, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::vector<Tensor> scatter_sum_and_view(Tensor src, Tensor index, int64_t dim_size, std::vector<int64_t> runs, int64_t num_scalars, int64_t num_vec, int64_t count) {
  return ScatterSumAndView::apply(src, index, dim_size, runs, num_scalars, num_vec, count);
}

// The [d, d] work of one layer's loss on C = X_c^T X_c in one pass: t_i = (C_ii + n eps)^(-1/2),
// R_ij = C_ij t_i t_j (i != j), mean |R_ij| and sum R_ij^2 (accumulated in double), and
// H = scale * (R_ij t_i t_j off the diagonal, -t_i^2 sum_j R_ij^2 on it): the loss node's dozen
// small aten operations per layer as one loop (the same numbers up to rounding).
static std::pair<double, double> off_diagonal_work(const Tensor& covariance, int64_t n, double eps, double scale, Tensor& h) {
  TORCH_CHECK(covariance.is_cpu(), "the native decorrelation nodes take CPU tensors");
  int64_t d = covariance.size(0);
  double abs_sum = 0.0, square_sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES(covariance.scalar_type(), "off_diagonal_work", [&] {
    const scalar_t* c = covariance.data_ptr<scalar_t>();
    scalar_t* out = h.data_ptr<scalar_t>();
    std::vector<scalar_t> t(d);
    for (int64_t i = 0; i < d; ++i) t[i] = static_cast<scalar_t>(1) / std::sqrt(c[i * d + i] + static_cast<scalar_t>(static_cast<double>(n) * eps));
    for (int64_t i = 0; i < d; ++i) {
      double row = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        if (j == i) continue;
        scalar_t tt = t[i] * t[j];
        scalar_t r = c[i * d + j] * tt;
        abs_sum += std::abs(static_cast<double>(r));
        row += static_cast<double>(r) * static_cast<double>(r);
        out[i * d + j] = static_cast<scalar_t>(scale) * (r * tt);
      }
      square_sum += row;
      out[i * d + i] = static_cast<scalar_t>(-scale * row) * (t[i] * t[i]);
    }
  });
  return {abs_sum, square_sum};
}

struct WeightedOffDiagonalSquares : public torch::autograd::Function<WeightedOffDiagonalSquares> {
  static variable_list forward(AutogradContext* ctx, std::vector<double> weights, double eps, at::TensorList features) {
    std::vector<Tensor> saved;
    std::vector<double> measures;
    double loss = 0.0;
    for (size_t k = 0; k < features.size(); ++k) {
      const Tensor& x = features[k];
      int64_t n = x.size(0), d = x.size(1);
      double m = static_cast<double>(d * (d - 1));
      Tensor centred = x - x.mean({0}, true);
      Tensor covariance = centred.transpose(0, 1).mm(centred).contiguous();
      Tensor h = at::empty_like(covariance);
      auto sums = off_diagonal_work(covariance, n, eps, 4.0 * weights[k] / m, h);
      measures.push_back(sums.first / m);
      loss += sums.second * (weights[k] / m);
      saved.push_back(centred);
      saved.push_back(h);
    }
    ctx->save_for_backward(saved);
    // corr_l as float64 (read once, by .tolist()): no cast per step
    Tensor measure = at::empty({static_cast<int64_t>(measures.size())}, at::TensorOptions().dtype(at::kDouble));
    std::copy(measures.begin(), measures.end(), measure.data_ptr<double>());
    ctx->mark_non_differentiable({measure});
    return {torch::scalar_tensor(loss, features[0].options()), measure};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    torch::NoGradGuard no_grad;
    auto saved = ctx->get_saved_variables();
    variable_list out = {Tensor(), Tensor()};
    for (size_t k = 0; k < saved.size(); k += 2) out.push_back(saved[k].mm(saved[k + 1].mul(grads[0])));
    return out;
  }
};

std::vector<Tensor> weighted_off_diagonal_squares(std::vector<double> weights, double eps, std::vector<Tensor> features) {
  return WeightedOffDiagonalSquares::apply(weights, eps, at::TensorList(features));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("scatter_sum_and_view", &scatter_sum_and_view); m.def("weighted_off_diagonal_squares", &weighted_off_diagonal_squares); }
