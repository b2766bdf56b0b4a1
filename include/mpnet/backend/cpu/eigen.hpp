// Row-major Eigen views of raw buffers, the shapes every CPU kernel multiplies.
#pragma once
#include <Eigen/Core>

namespace mpnet::cpu {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatMap = Eigen::Map<RowMatrix<T>>;
template <class T>
using ConstMatMap = Eigen::Map<const RowMatrix<T>>;

}  // namespace mpnet::cpu
