"""Activation range protection: profiled bounds of requantized layer outputs, and the schemes that use them."""
