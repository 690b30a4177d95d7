"""The audit: balance, quality, duplicates and leakage, label noise, and the FiftyOne view of it all."""
