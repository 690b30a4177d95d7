"""Dataset cards of each source and the template that `fercurate export` fills (a package so they ship with fercurate)."""
