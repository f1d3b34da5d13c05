"""Training and evaluation data: the nnU-Net raw reader and synthetic phantoms."""
