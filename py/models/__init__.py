"""VisionSSM models: VMamba, Vim, DyVM and PVMamba families (see the models issue)."""
