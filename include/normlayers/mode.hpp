// SPDX-License-Identifier: MIT
#pragma once

namespace normlayers {

// Train/eval mode, as torch.nn.Module.train()/eval(). Every module has one; it
// is explicit and never inferred from the input (a batch of one in training is
// an error where the layer needs batch statistics, not a silent switch).
// Modules start in training mode.
class Trainable {
 public:
  void train(bool on = true) noexcept { training_ = on; }
  void eval() noexcept { training_ = false; }
  bool is_training() const noexcept { return training_; }

 private:
  bool training_ = true;
};

}  // namespace normlayers
