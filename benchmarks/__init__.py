"""
The benchmark of Pseudo-IoU and AutoAssign against Detectron2's RetinaNet and FCOS, one module
per concern (``benchmarks/README.md`` has the method and the results):

* :mod:`benchmarks.settings` - what defines a run (:class:`BenchSettings`, defaults);
* :mod:`benchmarks.models` - what is measured: the four models on a shared backbone, the
  random input batches, and the calls that are timed (train step, inference, assignment + loss,
  post-processing);
* :mod:`benchmarks.timing` - how it is timed: device syncs around each call, interleaved
  rounds, peak memory;
* :mod:`benchmarks.syncs` - how host-device synchronisations are counted (a
  ``TorchDispatchMode`` on any device, ``torch.cuda.set_sync_debug_mode`` on CUDA);
* :mod:`benchmarks.report` - how results are reported: ratios to FCOS, the targets, tables,
  the scaling plot, the JSON / markdown files;
* ``benchmarks/benchmark.py`` - the command line (``make bench``, ``make bench-syncs``): the
  runs that combine the above.

It is not part of the installed project: run it from a checkout (``benchmark.py`` puts the
repository root on ``sys.path``).
"""
