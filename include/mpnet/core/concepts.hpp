// The two concepts every template in mpnet is written against.
#pragma once
#include <concepts>
#include <cstddef>
#include <string_view>

#include "mpnet/core/float16.hpp"

namespace mpnet {

// Element types of the float reference path (double for gradient checks).
template <class T>
concept Scalar = std::same_as<T, float> || std::same_as<T, double>;

// The 16-bit formats activations may be stored in (core/float16.hpp); computed in float.
template <class T>
concept HalfStorage = std::same_as<T, float16> || std::same_as<T, bfloat16>;

// What a Tensor may hold: a Scalar, or a 16-bit storage format.
template <class T>
concept Element = Scalar<T> || HalfStorage<T>;

// A backend owns memory and the primitive kernels. Memory is reached through the static
// functions below; kernels are free functions found by argument-dependent lookup on the
// backend's tag type (`mp_silu_forward(B{}, x, y)`), so each backend keeps its kernels in
// its own namespace and headers, and the layers never name a backend. Their list is the
// Kernels concept of backend/kernels.hpp, which needs the types of ops/ and so lives above
// this layer.
template <class B>
concept Backend = std::default_initializable<B> &&
    requires(std::size_t bytes, void* dst, const void* src) {
        { B::name } -> std::convertible_to<std::string_view>;
        { B::allocate(bytes) } -> std::same_as<void*>;
        B::deallocate(dst, bytes);
        B::copy(dst, src, bytes);            // within the backend
        B::copy_to_host(dst, src, bytes);    // backend -> host
        B::copy_from_host(dst, src, bytes);  // host -> backend
        B::zero(dst, bytes);
        B::synchronize();
    };

// Returns a backend's cached free blocks to the system, where its allocator caches (after a
// phase whose tensor sizes will not recur); a no-op for backends without such a cache.
template <Backend B>
void release_cached_memory() {
    if constexpr (requires { B::release_cached(); }) B::release_cached();
}

namespace detail {
struct NoMemoryPlan {
    struct Region {
        explicit Region(NoMemoryPlan&) {}
    };
};
template <class B>
struct MemoryPlanOf {
    using type = NoMemoryPlan;
};
template <class B>
    requires requires { typename B::MemoryPlan; }
struct MemoryPlanOf<B> {
    using type = typename B::MemoryPlan;
};
}  // namespace detail

// Memory planned for a phase that recurs with the same tensors (a training step, a network
// evaluation): hold one with the code that runs the phase and open a
// `typename MemoryPlanFor<B>::Region region(plan);` around each run. The backend's own plan
// where it has one (the CPU's places the phase's blocks in one arena from their lifetimes),
// otherwise nothing.
template <Backend B>
using MemoryPlanFor = typename detail::MemoryPlanOf<B>::type;

}  // namespace mpnet
