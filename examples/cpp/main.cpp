// A C++ program using fastmim's operators through the linked library (libfastmim_ops): each op and its
// backward against the plain libtorch computation (conv2d then gather, normalize then loss, einsum), with
// libtorch autograd giving the expected gradients. Exits non-zero on a mismatch; CI builds and runs it.
#include <fastmim/api.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

namespace {

int failures = 0;

void expect_close(const char* what, const at::Tensor& got, const at::Tensor& want, double tol = 1e-9) {
  const double err = (got - want).abs().max().item<double>();
  const bool ok = got.sizes() == want.sizes() && err <= tol * (1 + want.abs().max().item<double>());
  std::printf("%-34s max |error| %.3e %s\n", what, err, ok ? "ok" : "MISMATCH");
  failures += ok ? 0 : 1;
}

at::Tensor gather_rows(const at::Tensor& rows, const at::Tensor& index) {  // [.., N, D] at [.., K]
  return rows.gather(-2, index.unsqueeze(-1).expand({index.size(0), index.size(1), rows.size(-1)}));
}

void check_masked_patch_embed() {
  const auto f64 = torch::dtype(torch::kFloat64);
  auto images = torch::randn({2, 3, 16, 24}, f64);
  auto weight = torch::randn({10, 3, 8, 8}, f64).requires_grad_();
  auto bias = torch::randn({10}, f64).requires_grad_();
  auto pos = torch::randn({6, 10}, f64).requires_grad_();
  auto ids = torch::tensor({0, 5, 2, 4, 1, 3}, torch::kLong).view({2, 3});
  auto tokens = torch::conv2d(images, weight, bias, 8).flatten(2).transpose(1, 2) + pos;
  auto want = gather_rows(tokens, ids);
  auto got = fastmim::masked_patch_embed(images, ids, weight.detach(), bias.detach(), pos.detach());
  expect_close("masked_patch_embed", got, want.detach());
  auto grad = torch::randn_like(want);
  auto expected = torch::autograd::grad({want}, {weight, bias, pos}, {grad});
  auto [gi, gw, gb, gp] = fastmim::masked_patch_embed_backward(grad, images, ids, weight.detach(),
                                                                {false, true, true, true});
  expect_close("masked_patch_embed grad weight", gw, expected[0]);
  expect_close("masked_patch_embed grad bias", gb, expected[1]);
  expect_close("masked_patch_embed grad pos_embed", gp, expected[2]);
}

void check_align_loss() {
  const auto f64 = torch::dtype(torch::kFloat64);
  auto pred = torch::randn({3, 2, 4, 12}, f64).requires_grad_();
  auto target = torch::randn({3, 2, 9, 12}, f64);
  auto ids = torch::tensor({7, 0, 3, 2, 6, 5}, torch::kLong).view({2, 3});
  auto rows = torch::cat({torch::zeros({2, 1}, torch::kLong), ids + 1}, 1);
  auto t = torch::stack({gather_rows(target[0], rows), gather_rows(target[1], rows), gather_rows(target[2], rows)});
  t = torch::layer_norm(t, {12}, {}, {}, 1e-5);
  auto want = torch::smooth_l1_loss(pred, t, at::Reduction::None).mean({1, 2, 3});
  auto [losses, grad_rows] = fastmim::align_loss(pred.detach(), target, rows);
  expect_close("align_loss", losses, want.detach());
  auto grad_loss = torch::rand({3}, f64);
  auto expected = torch::autograd::grad({want}, {pred}, {grad_loss});
  expect_close("align_loss grad pred", fastmim::align_loss_backward(grad_loss, grad_rows, "smooth_l1"), expected[0]);
}

void check_dynamic_align() {
  const auto f64 = torch::dtype(torch::kFloat64);
  auto hidden = torch::randn({4, 2, 5, 16}, f64).requires_grad_();
  auto mix = torch::randn({3, 4}, f64).requires_grad_();
  auto weight = torch::randn({3, 8, 16}, f64).requires_grad_();
  auto bias = torch::randn({3, 8}, f64).requires_grad_();
  auto want = torch::einsum("lbtd,led->lbte", {torch::einsum("ls,sbtd->lbtd", {mix, hidden}), weight}) +
              bias.view({3, 1, 1, 8});
  auto got = fastmim::dynamic_align(hidden.detach(), mix.detach(), weight.detach(), bias.detach());
  expect_close("dynamic_align", got, want.detach());
  auto grad = torch::randn_like(want);
  auto expected = torch::autograd::grad({want}, {hidden, mix, weight, bias}, {grad});
  auto [gh, gm, gw, gb] =
      fastmim::dynamic_align_backward(grad, hidden.detach(), mix.detach(), weight.detach(), {true, true, true, true});
  expect_close("dynamic_align grad hidden", gh, expected[0]);
  expect_close("dynamic_align grad mix", gm, expected[1]);
  expect_close("dynamic_align grad head_weight", gw, expected[2]);
  expect_close("dynamic_align grad head_bias", gb, expected[3]);
}

}  // namespace

int main() {
  torch::manual_seed(0);
  check_masked_patch_embed();
  check_align_loss();
  check_dynamic_align();
  try {  // a bad argument is reported by name
    fastmim::align_loss(torch::randn({2, 1, 3, 4}), torch::randn({2, 1, 5, 4}), torch::tensor({{0, 1, 9}}));
    std::printf("out-of-range rows was not reported\n");
    ++failures;
  } catch (const c10::IndexError& error) {
    const std::string message = error.what_without_backtrace();
    const bool named = message.find("rows") != std::string::npos;
    std::printf("bad rows reported: %s\n", named ? "ok" : "MISMATCH");
    failures += named ? 0 : 1;
  }
  std::printf(failures == 0 ? "all ok\n" : "%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
