"""The seed workflows: the four-scenario guidance (`advice`), fine-tuning (`finetune`), CAE and small-CNN
pre-training (`pretrain`, its plots in `pretrain_plots`) and the layer sweep (`sweep`)."""
