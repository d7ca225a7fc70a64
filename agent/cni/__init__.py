"""The `vpcni` CNI plugin (shim) and its installer; imports nothing, so the shim starts fast."""
