// Every primitive's forward and backward on the CPU against the reference implementation
// (primitives.safetensors), in float and in double: the list of tests/golden_primitives.hpp.
#include "golden_primitives.hpp"

MPNET_GOLDEN_PRIMITIVE_TESTS("golden: ", mpnet::CpuBackend)
