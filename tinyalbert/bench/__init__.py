"""tinyalbert against PyTorch + transformers (`AlbertForPreTraining`) on the same cores.

    python -m tinyalbert.bench                 # every section: about an hour on a quiet 2-core machine
    python -m tinyalbert.bench --smoke         # every line on tiny configs: checks the script, measures nothing
    python -m tinyalbert.bench --only matmul forward --repeats 7

`run` has the command line and the results file, `sections` what each section measures, `measure` how
(interleaved repeats, worker processes, FLOP counts) and what a line reports, and `worker` the program that
runs one side in a process of its own.  Method and figures: docs/performance.md.
"""
from .measure import StepWorker, model_flops
from .run import bundled_config, main
from .worker import make_batch

__all__ = ["StepWorker", "bundled_config", "main", "make_batch", "model_flops"]
