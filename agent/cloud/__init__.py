"""Ports and adapters for EC2 and IMDS, and the embedded EC2 emulator."""
