"""The data layer: sources that read cohorts, preprocessing, the cache, splits and the device pipeline."""
