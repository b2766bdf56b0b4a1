// select_cuda_device for a program whose other .cu files do not define it (mpnet-metrics).
#include "device_cuda.cuh"
