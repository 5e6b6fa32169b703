"""MultiGen (TokenCompose, CVPR 2024): prompts, seeded generation, OWLv2 detection, MG1-MG5 scores,
reports and cross-attention maps. :func:`tokencompose.tasks.multigen.run.evaluate_models` runs it all."""
