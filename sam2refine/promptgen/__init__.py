"""The U-Net prompt generator that proposes organs: model, training data, training."""
