// The trainer's uploads of each step's inputs, without waiting for the device where the
// backend allows it.
//
// copy_from_host returns once its host buffer may be reused, and on the GPU that means once
// the stream has run everything queued before the copy: a trainer that uploads the next
// round's batch that way leaves the GPU idle while the host prepares it. A backend with
// B::PinnedSlot (backend/cuda/pinned_slot.cuh) uploads through page-locked memory instead:
// the copies are queued on the stream and return at once. Two slots take turns, so the host
// fills one while the device may still be copying out of the other, and refills a slot only
// once the device has run the copies out of it. Elsewhere (the CPU) an upload is
// copy_from_host. Either way a tensor holds its values for every kernel queued after the
// upload, which is all the trainer relies on.
#pragma once
#include <array>
#include <concepts>
#include <cstddef>
#include <memory>
#include <span>

#include "mpnet/core/tensor.hpp"

namespace mpnet::train {

// An upload that waits: what Adam's and the EMA's stage() use when given no staging.
struct CopyFromHost {
    template <Scalar T, Backend B>
    void operator()(Tensor<T, B>& t, std::span<const T> values) const {
        t.copy_from_host(values);
    }
};

template <class B>
concept PinnedUploads = requires(typename B::PinnedSlot& slot, void* dst, const void* src, std::size_t n) {
    typename B::PinnedSlot;
    { B::PinnedSlot::space_for(n) } -> std::same_as<std::size_t>;
    slot.acquire();
    slot.upload(dst, src, n);
    slot.release();
};

namespace detail {
template <class B>
struct PinnedSlotOf {
    struct type {};  // no slots: every upload is copy_from_host
};
template <PinnedUploads B>
struct PinnedSlotOf<B> {
    using type = typename B::PinnedSlot;
};
}  // namespace detail

template <Backend B>
class HostStaging {
public:
    // A batch of uploads into one slot; its uploads are marked done when it goes.
    class Batch {
    public:
        template <Scalar T>
        void operator()(Tensor<T, B>& t, std::span<const T> values) {
            if constexpr (PinnedUploads<B>) {
                check(values.size() == static_cast<std::size_t>(t.numel()), "HostStaging: ", values.size(),
                      " values for shape ", t.shape());
                if (t.numel()) slot_->upload(t.data(), values.data(), t.bytes());
            } else {
                t.copy_from_host(values);
            }
        }
        Batch(const Batch&) = delete;
        Batch& operator=(const Batch&) = delete;
        ~Batch() {
            if constexpr (PinnedUploads<B>) slot_->release();
        }

    private:
        friend class HostStaging;
        explicit Batch(typename detail::PinnedSlotOf<B>::type* slot) : slot_(slot) {
            if constexpr (PinnedUploads<B>) slot_->acquire();
        }
        typename detail::PinnedSlotOf<B>::type* slot_;
    };

    // Room for batches of uploads of up to these sizes in bytes (a slot's space: each
    // upload's own, rounded up to its alignment).
    explicit HostStaging(std::span<const std::size_t> upload_bytes) {
        if constexpr (PinnedUploads<B>) {
            std::size_t bytes = 0;
            for (const std::size_t n : upload_bytes) bytes += B::PinnedSlot::space_for(n);
            for (auto& s : slots_) s = std::make_unique<Slot>(bytes);
        }
    }

    // The next batch of uploads, in the slot used two batches ago, once the device has run
    // the copies out of it.
    [[nodiscard]] Batch next() {
        next_ ^= 1;
        return Batch(slots_[next_].get());
    }

private:
    using Slot = typename detail::PinnedSlotOf<B>::type;
    std::array<std::unique_ptr<Slot>, 2> slots_;
    int next_ = 0;
};

}  // namespace mpnet::train
