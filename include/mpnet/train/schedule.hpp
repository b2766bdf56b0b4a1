// The EDM2 learning-rate schedule: inverse square-root decay after `decay` batches and a
// linear ramp-up over the first `rampup` images.
#pragma once
#include <algorithm>
#include <cmath>

namespace mpnet::train {

// lr(nimg) = ref_lr / sqrt(max(nimg / (ref_batches batch), 1)) * min(nimg / rampup_img, 1)
inline double learning_rate(double nimg, double batch, double ref_lr, double ref_batches, double rampup_img) {
    double lr = ref_lr;
    if (ref_batches > 0) lr /= std::sqrt(std::max(nimg / (ref_batches * batch), 1.0));
    if (rampup_img > 0) lr *= std::min(nimg / rampup_img, 1.0);
    return lr;
}

}  // namespace mpnet::train
