"""The fercurate command line (installed as the package fercurate_cli)."""
