"""Grounding: a mask for each noun (COCO, LVIS and COCO-Stuff annotations, or Grounded-SAM), and the RLE masks themselves."""
