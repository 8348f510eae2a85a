// Native autograd nodes of the decorrelation path (stableff/models/native.py builds and loads them).
//
// The same operations, in the same order, as the Python nodes they stand in for:
//   scatter_sum_and_view          = stableff.models.invariants._ScatterSumAndLeadingView
//   weighted_off_diagonal_squares = stableff.measures.correlation._WeightedOffDiagonalSquares
// so results are the same to the bit (tests/test_native.py); what they save is the Python of the
// nodes, which on a small molecule is a large part of what decorrelation costs per step.
#include <torch/extension.h>
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// runs: flat, 7 per run: start, size, s0, s1, s2, column, width; s1 == 0 marks scalars
static void write_invariants(const std::vector<int64_t>& runs, int64_t num_scalars, int64_t num_vec, const Tensor& features, Tensor& out) {
  for (size_t r = 0; r < runs.size(); r += 7) {
    int64_t start = runs[r], size = runs[r + 1], s0 = runs[r + 2], s1 = runs[r + 3], s2 = runs[r + 4], column = runs[r + 5], width = runs[r + 6];
    Tensor run = features.narrow(1, start, size);
    if (s1 == 0) { out.narrow(1, column, width).copy_(run); continue; }
    Tensor components = run.reshape({-1, s0, s1, s2});
    Tensor target = out.narrow(1, column, width).view({-1, s0, s2});
    Tensor first = components.select(-2, 0);
    at::addcmul_out(target, at::full({}, 1e-12, first.options()), first, first);
    for (int64_t m = 1; m < s1; ++m) { Tensor c = components.select(-2, m); target.addcmul_(c, c); }
  }
  if (num_vec) out.narrow(1, num_scalars, num_vec).sqrt_();
}

static void add_invariant_gradient(const std::vector<int64_t>& runs, int64_t num_scalars, int64_t num_vec, const Tensor& features, const Tensor& invariants, const Tensor& grad, Tensor target) {
  Tensor grad_over_norm;
  if (num_vec) grad_over_norm = grad.narrow(1, num_scalars, num_vec) / invariants.narrow(1, num_scalars, num_vec);
  for (size_t r = 0; r < runs.size(); r += 7) {
    int64_t start = runs[r], size = runs[r + 1], s0 = runs[r + 2], s1 = runs[r + 3], s2 = runs[r + 4], column = runs[r + 5], width = runs[r + 6];
    Tensor part = target.narrow(1, start, size);
    if (s1 == 0) { part.add_(grad.narrow(1, column, width)); continue; }
    Tensor factor = grad_over_norm.narrow(1, column - num_scalars, width).reshape({-1, s0, 1, s2});
    part.view({-1, s0, s1, s2}).addcmul_(features.narrow(1, start, size).reshape({-1, s0, s1, s2}), factor);
  }
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
    ctx->saved_data["nv"] = num_vec;
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
      add_invariant_gradient(runs, ctx->saved_data["ns"].toInt(), ctx->saved_data["nv"].toInt(), src.narrow(0, 0, count), invariants, grad_inv, grad_src.narrow(0, 0, count));
    }
    return {grad_src, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::vector<Tensor> scatter_sum_and_view(Tensor src, Tensor index, int64_t dim_size, std::vector<int64_t> runs, int64_t num_scalars, int64_t num_vec, int64_t count) {
  return ScatterSumAndView::apply(src, index, dim_size, runs, num_scalars, num_vec, count);
}

struct WeightedOffDiagonalSquares : public torch::autograd::Function<WeightedOffDiagonalSquares> {
  static variable_list forward(AutogradContext* ctx, std::vector<double> weights, double eps, at::TensorList features) {
    std::vector<Tensor> losses, measures, saved;
    for (size_t k = 0; k < features.size(); ++k) {
      const Tensor& x = features[k];
      double weight = weights[k];
      int64_t n = x.size(0), d = x.size(1);
      Tensor centred = x - x.mean({0}, true);
      Tensor covariance = centred.transpose(0, 1).mm(centred);
      Tensor t = torch::diagonal(covariance).add(static_cast<double>(n) * eps).rsqrt_();
      Tensor tt = torch::outer(t, t);
      Tensor off = covariance.mul_(tt).fill_diagonal_(0.0);
      int64_t m = d * (d - 1);
      measures.push_back(off.abs().sum().div(m));
      Tensor rows = off.square().sum({1});
      losses.push_back(rows.sum().mul(weight / static_cast<double>(m)));
      Tensor h = off.mul_(tt);
      h.diagonal().copy_(rows.mul_(tt.diagonal()).neg_());
      saved.push_back(centred);
      saved.push_back(h.mul_(4.0 * weight / static_cast<double>(m)));
    }
    ctx->save_for_backward(saved);
    Tensor measure = torch::stack(measures);
    ctx->mark_non_differentiable({measure});
    return {torch::stack(losses).sum(), measure};
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
