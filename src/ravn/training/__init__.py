"""Training stages: post-training reconstruction and quantization-aware fine-tuning."""
