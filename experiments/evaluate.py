"""Evaluate a saved run:  python experiments/evaluate.py run_dir=PATH [num_batches=8 num_tasks=64]

Prints and writes `<run_dir>/evaluation.json`: the loss on fresh prior batches (mean and standard
error over batches) and the results of the experiment's `evaluators` (PFN runs: NLL per number of
context points against exact Bayes, type-II ML and NUTS; DT runs: KL to the exact posterior), whose
plots land in the run folder. Override an evaluator's arguments with `+options.NAME.ARG=VALUE`,
e.g. `+options.nll.num_datasets=200`; `plots=false` skips the figures.
"""

import json
import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from probnet.training import evaluate_run, register_configs

register_configs()


@hydra.main(version_base=None, config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    logging.getLogger("jax").setLevel(logging.WARNING)
    result = evaluate_run(
        cfg.run_dir,
        num_batches=cfg.num_batches,
        num_tasks=cfg.num_tasks,
        seed=cfg.seed,
        output=cfg.output,
        plots=cfg.plots,
        options=OmegaConf.to_container(cfg.options, resolve=True),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
