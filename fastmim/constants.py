"""Constants shared by the data pipelines, the teachers and the configurations (no imports: cheap)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
