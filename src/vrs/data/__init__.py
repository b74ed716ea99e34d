"""Data sets as uint8 image tensors (N, C, H, W) plus int64 labels; pixels become [0,1] floats on the device."""
