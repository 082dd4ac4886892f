"""Train a DDPM on images with Accelerate and export a stock diffusers DDPMPipeline.

    accelerate launch train_ddpm.py                                   # the quickstart preset
    accelerate launch train_ddpm.py --config configs/report_sfhq64.yaml --train_data_dir data/sfhq_part1
    python train_ddpm.py --config configs/report_sfhq64.yaml --dry_run

Every option: python train_ddpm.py --help. The options live in pipeline/config.py.
"""

from pipeline.arguments import parse_config
from pipeline.errors import exit_on_error
from pipeline.train import dry_run, train


def main(argv=None) -> None:
    with exit_on_error():
        config = parse_config(argv)
        dry_run(config) if config.dry_run else train(config)


if __name__ == "__main__":
    main()
