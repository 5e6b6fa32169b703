"""The source stage: which images a build takes and what the source says about each (captions, annotations)."""
