"""rnnfused: fused LSTM kernels with the regularizers recurrent networks need applied inside the
recurrence (zoneout, variational dropout, candidate dropout, weight drop), as a drop-in
replacement for torch.nn.LSTM.

    rnnfused.LSTM            the module (nn.LSTM's API plus the regularization rates)
    rnnfused.GRU             the same for torch.nn.GRU (its API plus the rates)
    rnnfused.functional      one fused layer (lstm_layer), its masks (lstm_masks), draw_seed
    rnnfused.reference       the pure-PyTorch oracle of the same math
    rnnfused.cpu_gemm        which library (oneDNN, MKL, the small-batch kernel) runs each CPU product
    rnnfused.regularization  the regularizers that live outside the recurrence (AWD-LSTM's
                             locked and embedding dropout, AR/TAR, early stopping)
"""
from . import _ops, cpu_gemm, functional, reference, regularization
from ._ops import has_cuda_kernels
from .convert import convert
from .functional import draw_seed, gru_layer, gru_masks, lstm_layer, lstm_masks
from .modules import GRU, LSTM
from .regularization import (EarlyStopping, EmbeddingDropout, LockedDropout, ar_loss,
                             embedding_dropout, tar_loss)

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "functional", "cpu_gemm", "reference", "regularization", "lstm_layer", "lstm_masks",
           "gru_layer", "gru_masks", "draw_seed", "has_cuda_kernels", "LockedDropout", "EmbeddingDropout",
           "embedding_dropout", "EarlyStopping", "ar_loss", "tar_loss", "convert", "__version__"]
