"""Ray Tune's orchestration overhead per trivial trial, the reference of `spatiallock bench queue`.

Runs TRIALS trials whose trainable returns at once (the same as our noop jobs) on a local Ray
cluster of this machine's CPUs, and prints one JSON object: wall seconds for all of them and
milliseconds per trial. Ray's own start-up is excluded (ray.init runs before the clock).

Usage: ray_tune_overhead.py [TRIALS]   (needs `pip install "ray[tune]"`)
"""
import json
import os
import sys
import time

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
import ray  # noqa: E402
from ray import tune  # noqa: E402

trials = int(sys.argv[1]) if len(sys.argv) > 1 else 200
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)


def trainable(config):
    return {"score": config["x"]}


start = time.perf_counter()
tuner = tune.Tuner(
    trainable,
    param_space={"x": tune.grid_search(list(range(trials)))},
    tune_config=tune.TuneConfig(max_concurrent_trials=os.cpu_count()),
    run_config=tune.RunConfig(verbose=0, storage_path=os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else None),
)
results = tuner.fit()
seconds = time.perf_counter() - start
errors = sum(1 for r in results if r.error is not None)
ray.shutdown()
print(json.dumps({
    "trials": trials,
    "errors": errors,
    "seconds": seconds,
    "ms_per_trial": 1000.0 * seconds / trials,
    "cpus": os.cpu_count(),
    "ray": ray.__version__,
}))
