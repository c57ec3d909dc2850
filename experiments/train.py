"""Train an experiment:  python experiments/train.py experiment=NAME key=value ...

Writes checkpoints, metrics.jsonl, loss_curve.png and the resolved config.yaml into Hydra's run
folder (`outputs/<name>/<time>`; sweeps with `-m` under `multirun/`). To resume an interrupted
run, point Hydra at its folder: `hydra.run.dir=outputs/<name>/<time>`.
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from probnet.training import register_configs, train_from_config

register_configs()


@hydra.main(version_base=None, config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    logging.getLogger("jax").setLevel(logging.WARNING)
    run_dir = HydraConfig.get().runtime.output_dir
    state = train_from_config(cfg, run_dir)
    print(f"trained {cfg.name} for {int(state.step)} steps into {run_dir}")


if __name__ == "__main__":
    main()
