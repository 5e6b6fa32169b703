"""Caption ranking: which of an image's captions the sample keeps."""
