// Runs functions at the same time, each on a thread of its own, for the tests of several
// backend contexts in one process. An exception leaving a std::thread would terminate the
// test program, so each thread's exception is kept and the first one rethrown after all
// have joined.
#pragma once
#include <exception>
#include <thread>
#include <vector>

namespace mpnet::test {

template <class... F>
void run_concurrently(F&&... f) {
    std::vector<std::exception_ptr> failed(sizeof...(F));
    std::vector<std::thread> threads;
    std::size_t i = 0;
    (threads.emplace_back([&fn = f, &slot = failed[i++]] {
         try {
             fn();
         } catch (...) {
             slot = std::current_exception();
         }
     }),
     ...);
    for (auto& t : threads) t.join();
    for (const auto& e : failed)
        if (e) std::rethrow_exception(e);
}

}  // namespace mpnet::test
