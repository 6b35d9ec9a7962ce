"""Post-processing pipeline steps as sans-IO two-party objects over the native kernels."""
