"""The seed workflows: the four-scenario guidance (`advice`), fine-tuning (`finetune`), pre-training of the CAE
and the small CNN (`pretrain`, with its plots) and the layer sweep (`sweep`)."""
