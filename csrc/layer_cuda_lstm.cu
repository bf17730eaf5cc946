// The CUDA layer driver (layer_cuda_driver.cuh) instantiated for the LSTM alone, in a
// translation unit of its own so that a build compiles the cells in parallel.
#include "layer_cuda_driver.cuh"

RNNFUSED_CUDA_CELL_ENTRY_POINTS(kLstm)
