"""Import before numpy: one BLAS thread per process.

numpy's BLAS keeps a worker thread per core spinning after every call. The daemon runs a few
small matrix products per window (the model's log-mel front end), so one thread is as fast,
and the spinning workers were two thirds of the daemon's CPU (bench/bench_runtime.py).
An explicit setting in the environment wins.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
