// Loops over Eigen's SIMD packets for the elementwise kernels whose plain-loop form the
// compiler leaves scalar (transcendental functions, reductions).
//
// Every element goes through the same packet code, the tail included (through a padded
// packet), and reductions add in an order fixed by the length alone. So a value never
// depends on where it lies in memory: an image's result is the same in any batch and at
// any alignment, which the sampler's and the trainer's reproducibility rely on.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <cstdint>

namespace mpnet::cpu::packet {

template <class T>
using Packet = typename Eigen::internal::packet_traits<T>::type;
template <class T>
inline constexpr int64_t width = Eigen::internal::unpacket_traits<Packet<T>>::size;

// out[i] = f(in[i]...) for i < n, where f maps packets to a packet (lane by lane).
template <class T, class F, class... In>
void transform(int64_t n, T* out, F&& f, const In*... in) {
    using P = Packet<T>;
    constexpr int64_t w = width<T>;
    int64_t i = 0;
    for (; i + w <= n; i += w) Eigen::internal::pstoreu(out + i, f(Eigen::internal::ploadu<P>(in + i)...));
    if (i == n) return;
    const auto padded = [&](const T* p) {  // the last n - i elements, zeros after them
        alignas(64) T buffer[w] = {};
        std::copy(p + i, p + n, buffer);
        return Eigen::internal::pload<P>(buffer);
    };
    alignas(64) T result[w];
    Eigen::internal::pstore(result, f(padded(in)...));
    std::copy(result, result + (n - i), out + i);
}

// sum_i a[i] b[i], in packets from the first element on, then the tail.
template <class T>
T dot(const T* a, const T* b, int64_t n) {
    using namespace Eigen::internal;
    using P = Packet<T>;
    constexpr int64_t w = width<T>;
    P acc0 = pset1<P>(T(0)), acc1 = acc0;  // two chains hide the FMA latency
    int64_t i = 0;
    for (; i + 2 * w <= n; i += 2 * w) {
        acc0 = pmadd(ploadu<P>(a + i), ploadu<P>(b + i), acc0);
        acc1 = pmadd(ploadu<P>(a + i + w), ploadu<P>(b + i + w), acc1);
    }
    if (i + w <= n) {
        acc0 = pmadd(ploadu<P>(a + i), ploadu<P>(b + i), acc0);
        i += w;
    }
    T s = predux(padd(acc0, acc1));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// sum_i a[i], in the order of dot.
template <class T>
T sum(const T* a, int64_t n) {
    using namespace Eigen::internal;
    using P = Packet<T>;
    constexpr int64_t w = width<T>;
    P acc0 = pset1<P>(T(0)), acc1 = acc0;
    int64_t i = 0;
    for (; i + 2 * w <= n; i += 2 * w) {
        acc0 = padd(ploadu<P>(a + i), acc0);
        acc1 = padd(ploadu<P>(a + i + w), acc1);
    }
    if (i + w <= n) {
        acc0 = padd(ploadu<P>(a + i), acc0);
        i += w;
    }
    T s = predux(padd(acc0, acc1));
    for (; i < n; ++i) s += a[i];
    return s;
}

}  // namespace mpnet::cpu::packet
