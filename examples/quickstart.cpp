// SPDX-License-Identifier: MIT
// normlayers in one page: LayerNorm and RMSNorm forward and backward, train and
// eval mode, caller buffers, and the stateless functional form.
#include <normlayers/normlayers.hpp>

#include <iostream>
#include <vector>

namespace nl = normlayers;
using Tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;  // (batch, tokens, hidden)

int main() {
  Tensor3 x(2, 4, 16), dy(2, 4, 16);
  x.setRandom();
  dy.setRandom();

  // LayerNorm over the last dim, PyTorch's defaults (eps 1e-5, weight and bias).
  nl::LayerNorm<float> ln({16});
  Tensor3 y = ln.forward(x);       // also ln(x); saves mean and rstd for backward
  Tensor3 dx = ln.backward(x, dy);  // adds dweight, dbias into ln.weight_grad(), ln.bias_grad()
  std::cout << "LayerNorm: y(0,0,0) = " << y(0, 0, 0) << ", dx(0,0,0) = " << dx(0, 0, 0)
            << ", dweight[0] = " << ln.weight_grad()(0) << "\n";

  // An SGD step on the parameters, by name as in a PyTorch state_dict.
  ln.for_each_parameter([&](std::string_view name, Eigen::Tensor<float, 1>& p) {
    const auto& grad = name == "weight" ? ln.weight_grad() : ln.bias_grad();
    p -= grad * 0.1f;
  });
  ln.zero_grad();

  // RMSNorm (eps unset: machine epsilon of float, as torch.nn.RMSNorm).
  nl::RMSNorm<float> rms({16});
  rms.eval();  // LayerNorm and RMSNorm compute the same in both modes
  Tensor3 z(2, 4, 16);
  rms.forward(x, z);        // into a caller buffer, no allocation of the output
  rms.backward(x, dy, dy);  // in place: dx overwrites dy
  std::cout << "RMSNorm: z(0,0,0) = " << z(0, 0, 0) << ", rrms[0] = " << rms.saved_rrms()(0)
            << "\n";

  // Column-major tensors and TensorMaps over your own memory work the same way.
  std::vector<float> buffer(2 * 4 * 16, 1.5f);
  Eigen::TensorMap<Eigen::Tensor<float, 3>> mapped(buffer.data(), 2, 4, 16);
  ln.forward(mapped, mapped);  // in place over `buffer`

  // The functional form keeps the saved statistics in your hands.
  std::vector<float> mean(8), rstd(8), dweight(16, 0.f), dbias(16, 0.f);
  nl::layer_norm_forward(x, y, {16}, ln.weight(), ln.bias(), 1e-5, mean, rstd);
  nl::layer_norm_backward(x, dy, dx, {16}, ln.weight(), mean, rstd, dweight, dbias);
  std::cout << "functional: mean[0] = " << mean[0] << ", rstd[0] = " << rstd[0] << "\n";

  // Bad input throws and changes nothing.
  try {
    Tensor3 wrong(2, 4, 15);
    ln.forward(wrong);
  } catch (const std::invalid_argument& e) {
    std::cout << "error: " << e.what() << "\n";
  }
  return 0;
}
