"""Train a DDPM on images with Accelerate and export a stock diffusers DDPMPipeline.

    accelerate launch train_ddpm.py                                   # the quickstart preset
    accelerate launch train_ddpm.py --config configs/report_sfhq64.yaml --train_data_dir data/sfhq_part1
    python train_ddpm.py --config configs/report_sfhq64.yaml --dry_run

Every option: python train_ddpm.py --help. The options live in pipeline/config.py.
"""

from pipeline.commands import train_main


if __name__ == "__main__":
    train_main()
