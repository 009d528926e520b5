"""VisionSSM evaluators: accuracy, params/FLOPs, throughput, ERF and attention maps."""
