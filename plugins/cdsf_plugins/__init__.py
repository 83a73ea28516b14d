"""The built-in method plugins of cdsf-bench."""
