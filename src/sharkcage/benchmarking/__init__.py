"""``sharkcage bench``: sharkcage against the other Python process pools.

Every sample runs in a fresh interpreter (:mod:`sharkcage.benchmarking.driver`,
one peer, one workload, one JSON line out), under a timeout and in its own
process group, so a peer that hangs is reported as ``hung`` and never hangs
the bench, and no sample inherits another's warm caches or leftover workers.

* :mod:`~sharkcage.benchmarking.workloads` — what is measured, and the task
  functions the workers run;
* :mod:`~sharkcage.benchmarking.peers` — one small adapter per pool library;
* :mod:`~sharkcage.benchmarking.runner` — the sample subprocesses and the
  repeat/rotation loop;
* :mod:`~sharkcage.benchmarking.report` — medians, ratios, JSON, markdown
  and the PNG chart.
"""
