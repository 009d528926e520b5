"""VisionSSM trainer and data pipeline."""
