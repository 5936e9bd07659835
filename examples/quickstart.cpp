// SPDX-License-Identifier: MIT
// normlayers in one page: all five layers forward and backward, train and eval
// mode, an SGD step on the parameters, caller buffers, TensorMaps, the
// functional form, and errors.
#include <normlayers/normlayers.hpp>

#include <iostream>
#include <vector>

namespace nl = normlayers;
using Tensor2 = Eigen::Tensor<float, 2, Eigen::RowMajor>;  // (batch, features): an MLP
using Tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;  // (batch, channels, length)

// Forward and backward in training mode, forward in eval mode, then one SGD step.
template <typename Layer, typename X>
void show(const char* name, Layer& layer, const X& x, const X& dy) {
  X y = layer.forward(x);          // also layer(x) or layer.forward(x, y_buffer)
  X dx = layer.backward(x, dy);    // adds into weight_grad() (and bias_grad())
  layer.eval();  // BatchNorm, tracking InstanceNorm: running statistics; others: the same
  X z = layer.forward(x);
  layer.train();
  layer.for_each_parameter([&](std::string_view p, Eigen::Tensor<float, 1>& v) {
    v -= (p == "weight" ? layer.weight_grad() : layer.bias_grad()) * 0.1f;  // by PyTorch name
  });
  layer.zero_grad();
  std::cout << name << ": train y[0] = " << y.data()[0] << ", dx[0] = " << dx.data()[0]
            << ", eval y[0] = " << z.data()[0] << "\n";
}

int main() {
  Tensor2 x(8, 32), dy(8, 32);
  x.setRandom();
  dy.setRandom();
  nl::BatchNorm<float> bn(32);      // torch.nn.BatchNorm1d(32): per feature over the batch
  nl::LayerNorm<float> ln({32});    // per sample over the last dim
  nl::GroupNorm<float> gn(4, 32);   // per sample over 4 groups of 8 features
  nl::RMSNorm<float> rms({32});     // x / rms(x) * weight, no mean, no bias
  show("BatchNorm", bn, x, dy);
  show("LayerNorm", ln, x, dy);
  show("GroupNorm", gn, x, dy);
  show("RMSNorm", rms, x, dy);
  std::cout << "BatchNorm running_mean[0] = " << bn.running_mean()(0) << " after "
            << bn.num_batches_tracked() << " training batches\n";

  // InstanceNorm needs a spatial axis: (N, C, L); affine and running stats are opt-in.
  Tensor3 seq(2, 4, 16), dseq(2, 4, 16);
  seq.setRandom();
  dseq.setRandom();
  nl::InstanceNormOptions io;
  io.affine = true;
  io.track_running_stats = true;
  nl::InstanceNorm<float> in(4, io);
  show("InstanceNorm", in, seq, dseq);

  // Caller buffers, in place, over your own memory (TensorMap, either storage order).
  std::vector<float> buffer(8 * 32, 1.5f);
  Eigen::TensorMap<Eigen::Tensor<float, 2>> mapped(buffer.data(), 8, 32);
  ln.forward(mapped, mapped);
  rms.backward(x, dy, dy);  // dx overwrites dy

  // The functional form keeps the saved statistics in your hands.
  std::vector<float> mean(8), rstd(8), dweight(32, 0.f), dbias(32, 0.f);
  Tensor2 y(8, 32), dx(8, 32);
  nl::layer_norm_forward(x, y, {32}, ln.weight(), ln.bias(), 1e-5, mean, rstd);
  nl::layer_norm_backward(x, dy, dx, {32}, ln.weight(), mean, rstd, dweight, dbias);
  std::cout << "functional: mean[0] = " << mean[0] << ", rstd[0] = " << rstd[0] << "\n";

  // Bad input throws std::invalid_argument and changes nothing.
  try {
    Tensor2 one(1, 32);
    one.setRandom();
    bn.forward(one);  // training BatchNorm needs more than one value per channel
  } catch (const std::invalid_argument& e) {
    std::cout << "error: " << e.what() << "\n";
  }
  return 0;
}
