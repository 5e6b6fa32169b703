"""Evaluation beyond MultiGen: the VISOR spatial prompts and scores (visor), OptiGen's language-model worst
pairs (optigen), FID (fid) and CLIP score (clip_score), and the promotion gate over them (gate)."""
