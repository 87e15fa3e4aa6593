"""sam2-cvat-track: track a whole CVAT job from its keyframes (see cli.py)."""
