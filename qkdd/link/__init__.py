"""One QKD link: device, peer session, post-processing pipeline, QBER gate and key store, in one nursery."""
